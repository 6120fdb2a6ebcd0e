"""Test helpers for the exact neural codec: a tiny v2 model fitted in seconds, the varied input set,
and a worker process (`python -m tests.exact_helpers encode|decode …`) that runs the codec under its
own thread count and chunk layout, so tests can show that a stream written one way decodes another.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import pytest
import torch

from bitlm.bits.frames import bytes_to_bits
from bitlm.train.data import load_corpus, split_corpus
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM

TINY_V2 = dict(n_layer=2, n_head=4, n_embd=32, block_size=9 * 64, attn_window=32)   # window < inputs: it slides


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for the module that imports this (coding steps are tiny; a shared 2-core
    machine only spin-waits with more), the caller's setting restored afterwards; and lanes split
    among threads from 2 on (`exact.SLOTS_PER_THREAD` = 1), so the tests' few lanes are split."""
    from bitlm.compress import exact
    threads, per = torch.get_num_threads(), exact.SLOTS_PER_THREAD
    torch.set_num_threads(1)
    exact.SLOTS_PER_THREAD = 1
    yield
    torch.set_num_threads(threads)
    exact.SLOTS_PER_THREAD = per


def teacher_forced(pred, arr: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, L) bytes -> (B, L, 256) frequencies of an `ExactPredictor`, chunk slots at a time (1: the
    decoder's one-slot steps)."""
    from bitlm.compress.exact import LaneState
    state = LaneState(pred, arr.size(0))
    parts = []
    for s in range(0, arr.size(1), chunk):
        e = min(s + chunk, arr.size(1))
        parts.append(pred.frequencies(state, arr[:, max(s - 1, 0):e - 1], e - s))
    return torch.cat(parts, dim=1)


def held_out(corpus: str, n: int) -> bytes:
    """The first n bytes of a corpus's held-out split."""
    return "".join(split_corpus(load_corpus(corpus))[1]).encode("utf-8")[:n]


def fitted_tiny(steps: int = 150, seed: int = 0) -> BitTransformerLM:
    """A tiny v2 model (2 x 32, window 32 slots) fitted for `steps` steps to the Shakespeare training
    split, so its predictions are far from uniform (a few seconds on one thread)."""
    torch.manual_seed(seed)
    model = BitTransformerLM(BitLMConfig(**TINY_V2))
    text = "".join(split_corpus(load_corpus("shakespeare"))[0])[:200_000].encode("utf-8")
    bits = bytes_to_bits(text)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    block = model.config.block_size
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, (bits.numel() - block) // 9, (16,), generator=gen) * 9
        batch = torch.stack([bits[s:s + block] for s in starts.tolist()])
        opt.zero_grad()
        model.loss(batch).loss.backward()
        opt.step()
    return model.eval()


def input_set() -> dict[str, bytes]:
    """The varied inputs every codec guarantee is tested on."""
    rng = random.Random(12)
    return {
        "shakespeare": held_out("shakespeare", 3000),
        "pydoc": held_out("pydoc", 1500),
        "random": rng.randbytes(700),
        "run": b"x" * 5000,
        "empty": b"",
        "one byte": b"\x00",
        "cjk and emoji": "漢字かな交じり文と絵文字 🎉🧮👩‍💻 한국어 ".encode() * 4,
        "invalid utf-8": b"\xff\xfe\xc3(\xa0\xa1\xe2\x82\xf0\x28\x8c\xbc" * 20 + b"tail\x80",
    }


def _worker(argv: list[str]) -> None:
    """encode MODEL DIR: write DIR/<i>-<method>.blm for each input and each of --methods (default:
    neural, cm, neural+cm); decode MODEL DIR: decode each and check it against the input. --threads and
    --chunk set this process's layout."""
    from bitlm.compress import container as nc, exact
    exact.SLOTS_PER_THREAD = 1             # split even these few lanes among --threads
    p = argparse.ArgumentParser()
    p.add_argument("action", choices=["encode", "decode"])
    p.add_argument("model")
    p.add_argument("dir")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--methods", nargs="+", default=["neural", "cm", "neural+cm"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = BitTransformerLM.from_pretrained(args.model)
    for i, (name, data) in enumerate(input_set().items()):
        for method in args.methods:
            path = Path(args.dir) / f"{i}-{method}.blm"
            if args.action == "encode":
                path.write_bytes(nc.compress_file(data, model, methods=(method,), chunk=args.chunk).blob)
            elif nc.decompress_file(path.read_bytes(), model) != data:
                sys.exit(f"{name}: decoded bytes differ ({method})")
    print(f"{args.action} ok with {torch.get_num_threads()} thread(s), int8 engine {exact._int8_engine()}")


if __name__ == "__main__":
    _worker(sys.argv[1:])
