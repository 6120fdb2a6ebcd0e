"""The compressor's command line (`python -m bitlm.cli.compress`): round trips of a binary file and of
stdin/stdout, gzip's flags (-d, -c, -k, -f, -q, -, several files), and for a wrong model, a truncated file, a flipped byte or an existing output: one line on
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
    one_line_error(capsys, "exists; pass -f")
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
        main(["--squeeze", str(src)])
    assert e.value.code == 2
    capsys.readouterr()
    assert main([str(tmp_path / "nothing-here")]) == 1
    one_line_error(capsys, "cannot read")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_gzip_flags(tmp_path, capsys):
    """No flag: FILE -> FILE.blm and the input goes; -d: back, the .blm goes; -k keeps; -c writes to
    stdout and keeps; -f overwrites; -q says nothing; an existing output without -f is refused, with the
    input untouched."""
    text = b"To be, or not to be, that is the question.\n" * 30
    src = _write(tmp_path / "a.txt", text)
    assert main([str(src), "--method", "nomodel"]) == 0
    assert not src.exists() and (tmp_path / "a.txt.blm").exists()
    assert "a.txt: 1,290 ->" in capsys.readouterr().err
    assert main(["-d", "-q", str(tmp_path / "a.txt.blm")]) == 0
    assert src.read_bytes() == text and not (tmp_path / "a.txt.blm").exists()
    assert capsys.readouterr().err == ""
    assert main(["-k", "-q", str(src), "--method", "cm"]) == 0
    assert src.exists() and nc.read_header((tmp_path / "a.txt.blm").read_bytes()).method_name == "cm"
    assert main(["-q", str(src), "--method", "zlib"]) == 1                   # a.txt.blm exists
    one_line_error(capsys, "a.txt.blm exists; pass -f")
    assert src.exists() and nc.read_header((tmp_path / "a.txt.blm").read_bytes()).method_name == "cm"
    assert main(["-f", "-k", "-q", str(src), "--method", "zlib"]) == 0
    assert nc.read_header((tmp_path / "a.txt.blm").read_bytes()).method_name == "zlib"
    assert main(["-d", str(tmp_path / "a.txt.blm")]) == 1                    # a.txt exists
    one_line_error(capsys, "a.txt exists; pass -f")
    capsys.readouterr()
    assert main(["-dc", str(tmp_path / "a.txt.blm")]) == 0
    assert capsys.readouterr().out.encode() == text and (tmp_path / "a.txt.blm").exists()
    assert main([str(tmp_path / "a.txt.blm")]) == 1
    one_line_error(capsys, "already ends in .blm")
    assert main(["-d", str(src)]) == 1
    one_line_error(capsys, "does not end in .blm")


def test_several_files_and_one_failure(tmp_path, capsys):
    """Each input is done; a failing one is reported on its own line and the exit status is 1."""
    a, b = _write(tmp_path / "a", b"alpha " * 20), _write(tmp_path / "b", b"beta " * 20)
    assert main(["-k", "-q", "--method", "nomodel", str(a), str(tmp_path / "missing"), str(b)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "missing: cannot read" in err[0]
    assert nc.decompress_file((tmp_path / "a.blm").read_bytes(), None) == b"alpha " * 20
    assert nc.decompress_file((tmp_path / "b.blm").read_bytes(), None) == b"beta " * 20


def test_stdin_to_stdout_with_flags():
    """No file: stdin to stdout, both ways, with a method that needs no model (no model is loaded)."""
    packed = cli("-q", "--method", "cm", "--model", "/nonexistent", stdin=DATA)
    assert packed.returncode == 0 and packed.stderr == b"" and nc.read_header(packed.stdout).method_name == "cm"
    back = cli("-d", "-", stdin=packed.stdout)
    assert back.returncode == 0 and back.stdout == DATA
    bad = cli("-d", stdin=packed.stdout[:-3])
    assert bad.returncode == 1 and bad.stdout == b"" and bad.stderr.count(b"\n") == 1 and b"damaged" in bad.stderr
