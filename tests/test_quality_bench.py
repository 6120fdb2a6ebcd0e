"""The issue-6 measurement scripts: word share, strict decoding, the byte-level twin, and both benches
end to end on a tiny model (bench/quality.py, bench/sample_quality.py)."""
import math

import pytest
import torch

from bench import compressors, quality, sample_quality
from bench.model import sampled_byte_probs
from bitlm.bits.frames import bits_to_bytes, bytes_to_bits, text_to_bits
from bitlm.train.data import load_corpus, split_corpus
from bitlm.train.evaluate import evaluate_model, vocabulary, word_share, words
from bitlm.model.config import byte_level_config
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.trainer import PRESETS

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
    rows = quality.main(["--model", model, "--corpus", corpus, "--minutes", "0.01", "--threads", "1", "--seeds", "2"])
    out = capsys.readouterr().out
    installed = [n for n in compressors.COMPRESSORS if n not in compressors.missing()]
    assert [r["name"] for r in rows] == [
        "shipped bit model, non-overlapping windows", "shipped bit model, sliding windows, stride 72 bits",
        "shipped bit model, streaming (window slides, 16 lanes)",
        "bit model (p=9, parity), 0.01 min, seed 1337", "bit model (p=9, parity), 0.01 min, seed 1338",
        "bit model (p=9, parity), 0.01 min, mean of 2",
        "byte-level model (p=8, 256-way), 0.01 min, seed 1337", "byte-level model (p=8, 256-way), 0.01 min, seed 1338",
        "byte-level model (p=8, 256-way), 0.01 min, mean of 2", *installed]
    assert "preset tiny schedule" in out and "| bz2 -9 | — | — |" in out and "load average" in out
    assert "same data (first batch digest" in out and "(half range)" in out
    assert rows[3]["params"] - rows[6]["params"] == 256 * PRESETS["tiny"][0].n_embd
    assert all(r["bits_per_byte"] > 0 for r in rows)
    assert all(math.isfinite(r["given_train"]) for r in rows if r["name"] in installed)   # repetitive text: ~0
    heldout = len(TEXT.encode()) - int(len(TEXT) * 0.9)
    assert f"{heldout:,} bytes" in out

    rows = quality.main(["--model", model, "--corpus", corpus, "--skip-equal-budget", "--max-bytes", "100"])
    assert len(rows) == 3 + len(installed) and "× byte model is left out" not in capsys.readouterr().out
    rows = quality.main(["--model", model, "--corpus", corpus, "--skip-shipped", "--seeds", "1", "--minutes", "0.01",
                         "--max-bytes", "100"])
    assert not any(r["shipped"] for r in rows) and len(rows) == 4 + len(installed)


def test_quality_bench_scores_the_whole_held_out_split(tiny_checkpoint, monkeypatch, capsys):
    """The published figure is over every byte of the held-out split (the tail of every document),
    nothing of the training split, nothing left out."""
    model, corpus = tiny_checkpoint
    docs = load_corpus(corpus)
    heldout = b"".join(t.encode() for t in split_corpus(docs)[1])
    scored = []
    real = quality.evaluate_model
    monkeypatch.setattr(quality, "evaluate_model", lambda m, data, **kw: scored.append(data) or real(m, data, **kw))
    quality.main(["--model", model, "--corpus", corpus, "--skip-equal-budget"])
    capsys.readouterr()
    assert scored and all(d == heldout for d in scored)


def test_bits_per_byte_leaves_the_parity_bits_out(one_thread):
    """bits per byte sums the cross-entropy of the 8 data bits of every byte; the parity bit's loss is
    reported apart. Shown on a model whose parity bits are NOT forced, so they cost real bits."""
    torch.manual_seed(0)
    model = BitTransformerLM(PRESETS["tiny"][0]).eval()
    model.parity_penalty.zero_()                                    # parity bits now cost ~1 bit each
    data = TEXT.encode()[:300]
    r = evaluate_model(model, data, batch_size=4)
    bits = bytes_to_bits(data)
    window = model.config.block_size
    total_data = total_parity = 0.0
    with torch.no_grad():
        for lo in range(0, len(bits), window):
            chunk = bits[lo:lo + window]
            logits, _ = model(chunk, telemetry=False)
            ce = -logits[0].gather(-1, chunk.long().unsqueeze(-1)).squeeze(-1) / math.log(2)
            is_parity = torch.arange(len(chunk)) % 9 == 8
            total_data += ce[~is_parity].sum().item()
            total_parity += ce[is_parity].sum().item()
    assert r["bits_per_byte"] == pytest.approx(total_data / len(data), rel=1e-4)
    assert r["parity_loss"] == pytest.approx(total_parity / len(data), rel=1e-4) and r["parity_loss"] > 0.3


def test_equal_budget_twins_get_the_same_data_threads_and_time(tmp_path, one_thread):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    runs = quality.equal_budget(PRESETS["tiny"][0], "tiny", 0.01, str(corpus), seeds=2, threads=1, jobs=1,
                                max_bytes=200, batch_size=4)
    for bit, byte in zip(runs["bit"], runs["byte"]):
        assert quality.same_data(bit["digests"], byte["digests"])  # the same byte windows, batch after batch
        assert (bit["threads"], bit["minutes"], bit["seed"]) == (byte["threads"], byte["minutes"], byte["seed"]) \
            == (1, 0.01, bit["seed"])
    assert not quality.same_data(runs["bit"][0]["digests"], runs["bit"][1]["digests"])   # digests tell data apart


def test_trainer_validates_on_the_held_out_split(tmp_path, one_thread):
    """Validation figures come from the tail of every document, never from the training split."""
    from bitlm.train.trainer import Trainer, make_configs
    (tmp_path / "a.txt").write_text("a" * 900 + "B" * 100)
    (tmp_path / "b.txt").write_text("c" * 1800 + "D" * 200)
    model_config, train_config = make_configs("tiny", steps=2, eval_every=0, eval_bytes=10 ** 6)
    trainer = Trainer(model_config, train_config, corpus=str(tmp_path))
    assert trainer.val_data == b"B" * 100 + b"D" * 200
    windows = trainer.train_data.sample(64, model_config.block_size, torch.Generator().manual_seed(0))
    assert set(bits_to_bytes(windows.flatten())) <= set(b"ac")
    metrics = trainer.validate()
    assert metrics["val_bits_per_byte"] == pytest.approx(evaluate_model(trainer.model, b"B" * 100 + b"D" * 200,
                                                                        batch_size=train_config.batch_size)["bits_per_byte"])


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
    # speculation with a draft from the training split gives the plain generation's bits
    assert "speculation: 2/2 generations bit-identical to plain generation" in out


def test_sampled_byte_probs_are_the_samplers_byte_distribution():
    """bench/model.py's speculation ceiling rests on q: it must be a distribution over the 256 bytes,
    and at temperature ~0 all its mass sits on the byte greedy generation writes."""
    torch.manual_seed(0)
    model = BitTransformerLM(BitLMConfig(n_layer=1, n_head=2, n_embd=32, block_size=9 * 16, pos="alibi")).eval()
    prompt = text_to_bits("ab")
    greedy = model.generate(prompt, 9 * 6, temperature=0.0).bits.long()
    bits = torch.cat([prompt, greedy])
    for temperature in (1.0, 0.5):
        q = sampled_byte_probs(model, bits, temperature)
        assert q.shape == (8, 256)
        assert torch.allclose(q.sum(1), torch.ones(8), atol=1e-5)
    q = sampled_byte_probs(model, bits, 1e-4)
    written = [int(greedy[9 * j:9 * j + 8].dot(2 ** torch.arange(7, -1, -1))) for j in range(6)]
    assert q[2:8].argmax(1).tolist() == written
    assert (q[2:8].max(1).values > 0.99).all()
