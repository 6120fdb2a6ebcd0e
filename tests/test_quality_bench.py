"""The issue-6 measurement scripts: word share, strict decoding, the byte-level twin, and both benches
end to end on a tiny model (bench/quality.py, bench/sample_quality.py)."""
import math

import pytest
import torch

from bench import quality, sample_quality
from bitlm.bits import text_to_bits
from bitlm.evaluate import vocabulary, word_share, words
from bitlm.model import BitLMConfig, BitTransformerLM, byte_level_config
from bitlm.train import PRESETS

TEXT = ("KING.\nThe quick brown fox jumps over the lazy dog; the dog's day is done.\n\n"
        "QUEEN.\nMy lord, the fox is quick and the dog is lazy.\n\n") * 30


@pytest.fixture
def one_thread():
    """One torch thread for tiny models (thread hand-offs dominate them), restored afterwards: the
    benches' --threads sets the process-wide count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_words_are_case_folded_alphabetic_runs():
    assert words("Don't PANIC: x2y_z, ÉTÉ naïve\n") == ["don", "t", "panic", "x", "y", "z", "t", "na", "ve"]
    assert vocabulary(["The dog", "the DOG's day"]) == {"the", "dog", "s", "day"}


def test_word_share_counts_every_occurrence():
    vocab = {"the", "dog"}
    assert word_share("The dog, the cat; THE DOG!", vocab) == {"words": 6, "known": 5, "share": 5 / 6}
    empty = word_share("123 ... !!", vocab)
    assert (empty["words"], empty["known"]) == (0, 0) and math.isnan(empty["share"])


def test_scored_text_drops_partial_words_at_the_edges():
    assert sample_quality.scored_text("KING.\n", "Good morrow, my lo") == "Good morrow, my "
    assert sample_quality.scored_text("My lo", "rd, good morrow.") == ", good morrow."
    assert sample_quality.scored_text("My lord ", "good morrow.") == "good morrow."


def test_strict_decode_reports_parity_and_utf8_errors():
    bits = text_to_bits("héllo")
    assert sample_quality.strict_decode(bits, parity=True) == ("héllo", None)
    flipped = bits.clone()
    flipped[8] ^= 1                                                      # the first frame's parity bit
    text, error = sample_quality.strict_decode(flipped, parity=True)
    assert text == "héllo" and "parity" in error
    cut = text_to_bits("hé")[:-9]                                       # the second byte of é is missing
    text, error = sample_quality.strict_decode(cut, parity=True)
    assert text == "h\ufffd" and "UTF-8" in error


def test_generations_never_fail_on_parity(one_thread):
    torch.manual_seed(0)
    model = BitTransformerLM(PRESETS["tiny"][0])
    vocab = vocabulary([TEXT])
    for seed in range(2):
        r = sample_quality.sample(model, "KING.\n", 40, 0.8, seed, vocab)
        assert r["strict_error"] is None or "parity" not in r["strict_error"]
        assert r["words"] == len(words(sample_quality.scored_text("KING.\n", r["text"])))
        again = sample_quality.sample(model, "KING.\n", 40, 0.8, seed, vocab)
        assert again["text"] == r["text"]                               # fixed seeds reproduce


def test_byte_level_twin_keeps_the_global_model_and_the_context():
    base = PRESETS["base"][0]
    twin = byte_level_config(base)
    assert (twin.patch_size, twin.parity, twin.local) == (8, False, "factorized")
    assert twin.block_size // 8 == base.block_size // 9                 # same bytes of context
    assert (twin.n_layer, twin.n_head, twin.n_embd) == (base.n_layer, base.n_head, base.n_embd)
    tiny = PRESETS["tiny"][0]
    n_bit, n_byte = BitTransformerLM(tiny).num_params(), BitTransformerLM(byte_level_config(tiny)).num_params()
    assert n_bit - n_byte == (512 - 256) * tiny.n_embd                 # only the pattern table differs
    bits1 = BitLMConfig(patch_size=1, parity=False, block_size=2304)
    assert byte_level_config(bits1).block_size == 2304
    with pytest.raises(ValueError, match="no whole byte"):
        byte_level_config(BitLMConfig(patch_size=1, parity=False, block_size=7))


@pytest.fixture
def tiny_checkpoint(tmp_path, one_thread):
    torch.manual_seed(0)
    BitTransformerLM(PRESETS["tiny"][0]).save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    return str(tmp_path / "model"), str(corpus)


def test_quality_bench_end_to_end(tiny_checkpoint, capsys):
    model, corpus = tiny_checkpoint
    rows = quality.main(["--model", model, "--corpus", corpus, "--minutes", "0.01", "--threads", "1"])
    out = capsys.readouterr().out
    assert [r["name"].split(",")[0] for r in rows] == [
        "shipped bit model", "shipped bit model", "bit model (p=9", "byte-level model (p=8",
        "zlib -9", "bz2 -9", "lzma -9e"]
    assert "preset tiny schedule" in out and "| bz2 -9 | — | — |" in out and "load average" in out
    assert rows[2]["params"] - rows[3]["params"] == 256 * PRESETS["tiny"][0].n_embd
    assert all(r["bits_per_byte"] > 0 for r in rows)
    heldout = len(TEXT.encode()) - int(len(TEXT) * 0.9)
    assert f"{heldout:,} bytes" in out

    rows = quality.main(["--model", model, "--corpus", corpus, "--skip-equal-budget", "--max-bytes", "100"])
    assert len(rows) == 5 and "× byte model is left out" not in capsys.readouterr().out


def test_quality_bench_needs_a_model_and_a_preset(tiny_checkpoint, tmp_path, capsys):
    _, corpus = tiny_checkpoint
    with pytest.raises(SystemExit):
        quality.main(["--model", str(tmp_path / "nowhere"), "--corpus", corpus])
    assert "Train the shipped model first" in capsys.readouterr().err
    BitTransformerLM(BitLMConfig(block_size=144, n_layer=1, n_head=2, n_embd=8)).save_pretrained(tmp_path / "odd")
    with pytest.raises(SystemExit):
        quality.main(["--model", str(tmp_path / "odd"), "--corpus", corpus])
    assert "--preset" in capsys.readouterr().err


def test_sample_quality_bench_end_to_end(tiny_checkpoint, capsys):
    model, corpus = tiny_checkpoint
    results = sample_quality.main(["--model", model, "--corpus", corpus, "--bytes", "30", "--threads", "1",
                                   "--prompt", "KING.\n", "--prompt", "QUEEN.\nMy lo"])
    out = capsys.readouterr().out
    assert [r["seed"] for r in results] == [1234, 1235]
    assert "| all generations |" in out and "(baseline)" in out and "pass" in out.lower()
    # the baseline: held-out text of the same corpus is made of training words
    assert "| 100.0% | 1.000 |" in out
