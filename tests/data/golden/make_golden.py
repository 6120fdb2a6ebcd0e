"""Writes the golden streams of one exact-path version for tests/test_golden.py: run ONCE per version,
with the code whose stream format they pin, from the repository root:

    PYTHONPATH=. .venv/bin/python tests/data/golden/make_golden.py

Version 1 was written by commit 2d5e33c (then as `<name>.blm`, renamed `<name>.v1.blm` since), version 2
by the commit that introduced it (EXACT_VERSION 2). Each case is an original (`<name>.bin`) and the
container `compress_file(original, shipped model, methods=("neural",))` wrote for it
(`<name>.v<version>.blm`); golden.json holds the originals' SHA-256 and, per version, the files' SHA-256,
the shipped model's neural fingerprint, and the SHA-256 of the frequencies of a seeded tiny model (3
heads: not a power of two; window 24 slots < 80-byte lanes: the ring wraps) computed by teacher-forced
chunks and by one-slot steps (they must agree). Sources of the originals:

- shakespeare_300 / shakespeare_1500: the first 300 / 1500 bytes of the Shakespeare held-out split
  (`tests.exact_helpers.held_out("shakespeare", n)`),
- pydoc_topics_600: the first 600 bytes of `pydoc_data.topics.topics["assignment"]` (CPython 3.11.7) as UTF-8,
- numpy_so_400: the first 400 bytes of numpy 2.4.6's `numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so`
  (an ELF header and program headers).

The originals are stored, so the test never needs their sources again.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from bitlm.compress import container, exact  # noqa: E402
from bitlm.model.transformer import BitTransformerLM  # noqa: E402
from tests.exact_helpers import held_out  # noqa: E402
from tests.test_golden import TINY_INPUT_BYTES, tiny_frequencies, tiny_model  # noqa: E402


def originals() -> dict[str, bytes]:
    import pydoc_data.topics
    so = Path(numpy.__file__).parent / "_core" / "_multiarray_umath.cpython-311-x86_64-linux-gnu.so"
    return {"shakespeare_300": held_out("shakespeare", 300),
            "shakespeare_1500": held_out("shakespeare", 1500),
            "pydoc_topics_600": pydoc_data.topics.topics["assignment"].encode("utf-8")[:600],
            "numpy_so_400": so.read_bytes()[:400]}


def main() -> None:
    torch.set_num_threads(1)
    model = BitTransformerLM.from_pretrained(str(HERE.parents[2] / "assets")).eval()
    path = HERE / "golden.json"
    digest = json.loads(path.read_text()) if path.exists() else {"versions": {}}
    assert digest.get("tables_sha256", exact.TABLES_SHA256) == exact.TABLES_SHA256
    version = exact.EXACT_VERSION
    entry = {"neural_fingerprint": container.neural_fingerprint(model).hex(), "streams": {}}
    digest.setdefault("originals", {})
    digest["tables_sha256"] = exact.TABLES_SHA256
    for name, data in originals().items():
        blob = container.compress_file(data, model, methods=("neural",)).blob
        assert container.decompress_file(blob, model) == data
        (HERE / f"{name}.bin").write_bytes(data)
        (HERE / f"{name}.v{version}.blm").write_bytes(blob)
        digest["originals"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        entry["streams"][name] = {"blm_bytes": len(blob), "blm_sha256": hashlib.sha256(blob).hexdigest()}
        print(f"{name}: {len(data)} -> {len(blob)} bytes")
    pred = exact.ExactPredictor(tiny_model())
    chunks, steps = tiny_frequencies(pred, 64), tiny_frequencies(pred, 1)
    assert torch.equal(chunks, steps)
    entry["tiny_model"] = {"input_bytes": TINY_INPUT_BYTES, "shape": list(chunks.shape),
                           "freq_sha256": hashlib.sha256(chunks.numpy().astype("<i8").tobytes()).hexdigest()}
    digest["versions"][str(version)] = entry
    path.write_text(json.dumps(digest, indent=1) + "\n")
    print(json.dumps(entry["tiny_model"]))


if __name__ == "__main__":
    main()
