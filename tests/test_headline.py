"""The README's headline figures, recomputed and held to the values it prints (to the digits shown), so a change
that moves one fails here: the shipped model's held-out bits per byte (whole split, windows and stream), the
classic compressors' on the same bytes alone and given the training split (the tools of `bench.compressors`,
those installed), the bit codec's pydoc ratio and the file container's bound. Speeds are not pinned: they live
in benchmarks (docs/benchmarks.md)."""
from __future__ import annotations

import bz2
import lzma
import os
import re
import zlib
from pathlib import Path

import pytest
import torch

from bench import compressors
from bitlm import BitTransformerLM, compress_bits, compress_file, compression_ratio, decompress_file
from bitlm.bits.frames import text_to_bits
from bitlm.compress.container import MAX_HEADER_BYTES
from bitlm.train.data import load_corpus, split_corpus
from bitlm.train.evaluate import evaluate_model, evaluate_stream

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
NUMBER = re.compile(r"\d+\.\d+")


def row(label: str) -> list[str]:
    """The decimal numbers of the headline table's row that starts with `label`, in order."""
    for line in README.splitlines():
        if line.startswith(f"| {label}"):
            return NUMBER.findall(line.split("|", 2)[2])
    raise AssertionError(f"the README's headline table has no row {label!r}")


def printed(figures: list[float]) -> list[str]:
    return [f"{x:.3f}" for x in figures]


@pytest.fixture(scope="module")
def heldout() -> tuple[bytes, bytes]:
    train, held = split_corpus(load_corpus("shakespeare"))
    return "".join(train).encode("utf-8"), "".join(held).encode("utf-8")


def test_the_table_is_about_the_whole_held_out_split(heldout):
    assert f"{len(heldout[1]):,}".replace(",", " ") in README.split("\n|---")[0].splitlines()[-1]


@pytest.mark.slow
def test_the_shipped_models_held_out_figures(heldout):
    model = BitTransformerLM.from_pretrained(ROOT / "assets")
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        stream = evaluate_stream(model, heldout[1])["bits_per_byte"]
        windows = evaluate_model(model, heldout[1])["bits_per_byte"]
    finally:
        torch.set_num_threads(threads)
    assert row("**BitLM v2**") == printed([stream, windows])


@pytest.mark.slow
def test_the_classic_compressors_on_the_same_bytes(heldout):
    labels = {"zpaq -m5": "`zpaq -m5`", "PPMd (order 16, 1 GB)": "PPMd var. I"}
    got = compressors.bits_per_byte(heldout[1], heldout[0])
    for name, label in labels.items():
        if name not in got:
            continue                     # not installed here (zpaq comes with .ci/run, PPMd with requirements-dev)
        assert row(label) == printed([got[name]["alone"], got[name]["given_train"]]), name
    three = ("bz2 -9", "lzma -9e", "zlib -9")
    assert row("bz2 -9 / lzma -9e / zlib -9") == printed([got[n]["alone"] for n in three]
                                                         + [got[n]["given_train"] for n in three])


def test_the_bit_codecs_pydoc_ratio():
    bits = text_to_bits(load_corpus("pydoc").documents[0])
    shown = re.search(r"`compression_ratio` (\d+\.\d+) on CPython's docs", README)
    assert shown and shown.group(1) == f"{compression_ratio(bits, compress_bits(bits)):.3f}"


@pytest.mark.parametrize("data", [b"", b"x", os.urandom(5000), bytes(20_000), README.encode("utf-8")],
                         ids=["empty", "one byte", "random", "zeros", "text"])
def test_the_container_is_never_more_than_its_header_over_the_best_classic(data):
    shown = re.search(r"more than (\d+) bytes \(the header\) larger", README)
    assert shown and int(shown.group(1)) == MAX_HEADER_BYTES
    best = min(len(data), len(zlib.compress(data, 9)), len(bz2.compress(data, 9)),
               len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)))
    result = compress_file(data, None)
    assert len(result.blob) <= best + MAX_HEADER_BYTES
    assert decompress_file(result.blob, None) == data
