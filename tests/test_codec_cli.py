"""The compressor's command line (`python -m bitlm.cli.compress`): round trips of a binary file and of
stdin/stdout, and for a wrong model, a truncated file, a flipped byte or an existing output: one line on
stderr, exit status 1 and no output file (partial or not)."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitlm.compress import container as nc
from bitlm.cli.compress import main
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from tests.exact_helpers import TINY_V2

ROOT = Path(__file__).resolve().parent.parent
DATA = random.Random(1).randbytes(1500) + b"some text, some text, some text\n" * 40


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """Two different tiny v2 models saved as folders."""
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path_factory.mktemp(f"model{seed}")
        BitTransformerLM(BitLMConfig(**TINY_V2)).save_pretrained(path)
        out.append(path)
    return out[0], out[1]


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bitlm.cli.compress", *args], input=stdin, cwd=ROOT,
                          capture_output=True, timeout=300, env=env)


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m bitlm.cli.compress: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_binary_file_round_trip(models, tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(DATA)
    done = cli("compress", str(src), "--model", str(models[0]), "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert b"bytes (" in done.stderr and (tmp_path / "data.bin.blm").is_file()
    src.rename(tmp_path / "original.bin")
    done = cli("decompress", str(tmp_path / "data.bin.blm"), "--model", str(models[0]))
    assert done.returncode == 0, done.stderr
    assert src.read_bytes() == DATA


def test_stdin_stdout_round_trip(models):
    packed = cli("compress", "-", "--model", str(models[0]), stdin=DATA)
    assert packed.returncode == 0 and packed.stdout[:1] == bytes([nc.MAGIC])
    unpacked = cli("decompress", "-", "-o", "-", "--model", str(models[0]), stdin=packed.stdout)
    assert unpacked.returncode == 0 and unpacked.stdout == DATA


def test_wrong_model(models, tmp_path, capsys):
    blob = nc.compress_file(DATA[:300], BitTransformerLM.from_pretrained(models[0]), methods=("neural",)).blob
    (tmp_path / "x.blm").write_bytes(blob)
    assert main(["decompress", str(tmp_path / "x.blm"), "--model", str(models[1])]) == 1
    want = nc.neural_fingerprint(BitTransformerLM.from_pretrained(models[0])).hex()
    got = nc.neural_fingerprint(BitTransformerLM.from_pretrained(models[1])).hex()
    one_line_error(capsys, f"compressed with model {want}", f"loaded model is {got}", f"loaded from {models[1]}")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_file_leaves_no_output(models, tmp_path, capsys, damage):
    assert main(["compress", str(_write(tmp_path / "d.bin", DATA)), "--model", str(models[0])]) == 0
    blob = (tmp_path / "d.bin.blm").read_bytes()
    bad = blob[:-5] if damage == "truncated" else blob[:20] + bytes([blob[20] ^ 0xFF]) + blob[21:]
    (tmp_path / "d.bin.blm").write_bytes(bad)
    (tmp_path / "d.bin").unlink()
    capsys.readouterr()
    assert main(["decompress", str(tmp_path / "d.bin.blm"), "--model", str(models[0])]) == 1
    one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin.blm"]          # no output, no temp file


def test_existing_output_needs_force(models, tmp_path, capsys):
    src = _write(tmp_path / "e.txt", b"hello hello hello")
    _write(tmp_path / "e.txt.blm", b"precious")
    assert main(["compress", str(src), "--classic"]) == 1
    one_line_error(capsys, "exists; pass --force")
    assert (tmp_path / "e.txt.blm").read_bytes() == b"precious"
    assert main(["compress", str(src), "--classic", "--force"]) == 0
    assert nc.decompress_file((tmp_path / "e.txt.blm").read_bytes(), None) == b"hello hello hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.txt", "e.txt.blm"]


def test_other_failures_are_one_line(models, tmp_path, capsys):
    assert main(["compress", str(tmp_path / "missing.bin"), "--model", str(models[0])]) == 1
    one_line_error(capsys, "cannot read")
    src = _write(tmp_path / "f.bin", b"abc")
    assert main(["compress", str(src), "--model", str(tmp_path)]) == 1
    one_line_error(capsys, "cannot load the model")
    assert main(["decompress", str(src)]) == 1
    one_line_error(capsys, "does not end in .blm")
    assert main(["decompress", str(src), "-o", str(tmp_path / "g")]) == 1
    one_line_error(capsys, "not a BitLM compressed file")
    assert main(["compress", str(src), "--classic", "-o", str(tmp_path / "h"), "--device", "tpu:x"]) == 1
    one_line_error(capsys, "--device")
    assert main(["compress", str(src), "--classic", "-o", str(tmp_path / "h"), "--threads", "0"]) == 1
    one_line_error(capsys, "--threads must be ≥ 1")
    with pytest.raises(SystemExit) as e:
        main(["squeeze", str(src)])
    assert e.value.code == 2


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
