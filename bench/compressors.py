"""What a user could pick instead of the model: classic and context-mixing compressors, alone and
given the training text (benchmark-only; the app needs none of this beyond the standard library).

`compressed_sizes(data)` gives the sizes in bytes of zlib -9, bz2 -9, lzma -9e, PPMd var. I
(`pyppmd`, order 16, 1 GB) and `zpaq -m5` (Debian's `zpaq`); a tool that is not installed is left
out (listed in `missing()`). `bits_per_byte(test, train)` gives each one's bits per byte of `test`
alone and, when `train` is given, *given the training text*: 8 · (size(train + test) − size(train)) /
len(test), the fair comparison for a model that was trained on `train`.
"""
from __future__ import annotations

import bz2
import lzma
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path


def _ppmd(data: bytes) -> int:
    import pyppmd
    return len(pyppmd.compress(data, max_order=16, mem_size=1 << 30, variant="I"))


def _zpaq(data: bytes) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        src, archive = Path(tmp) / "data", Path(tmp) / "data.zpaq"
        src.write_bytes(data)
        subprocess.run(["zpaq", "a", str(archive), str(src), "-m5"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return archive.stat().st_size


def _has_pyppmd() -> bool:
    try:
        import pyppmd  # noqa: F401
    except ImportError:
        return False
    return True


COMPRESSORS: dict[str, tuple[Callable[[bytes], int], Callable[[], bool]]] = {
    "zlib -9": (lambda d: len(zlib.compress(d, 9)), lambda: True),
    "bz2 -9": (lambda d: len(bz2.compress(d, 9)), lambda: True),
    "lzma -9e": (lambda d: len(lzma.compress(d, preset=9 | lzma.PRESET_EXTREME)), lambda: True),
    "PPMd (order 16, 1 GB)": (_ppmd, _has_pyppmd),
    "zpaq -m5": (_zpaq, lambda: shutil.which("zpaq") is not None),
}


def missing() -> list[str]:
    """Compressors left out because their tool is not installed (pip install pyppmd; apt-get install zpaq)."""
    return [name for name, (_, available) in COMPRESSORS.items() if not available()]


def bits_per_byte(test: bytes, train: bytes | None = None) -> dict[str, dict[str, float]]:
    """{name: {"alone": bits/byte of test, "given_train": bits/byte of test after train (NaN without
    train)}} for every installed compressor. Raises ValueError for empty test data."""
    if not test:
        raise ValueError("nothing to compress: the data is empty")
    out = {}
    for name, (size, available) in COMPRESSORS.items():
        if not available():
            continue
        alone = 8 * size(test) / len(test)
        given = 8 * (size(train + test) - size(train)) / len(test) if train else float("nan")
        out[name] = {"alone": alone, "given_train": given}
    return out
