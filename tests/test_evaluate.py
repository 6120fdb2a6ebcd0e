"""Held-out evaluation and the classic-compressor baseline (bitlm.evaluate)."""
import bz2
import lzma
import zlib

import pytest
import torch

from bitlm.data import load_corpus
from bitlm.evaluate import classic_bits_per_byte, evaluate_model, main
from bitlm.model import BitTransformerLM
from bitlm.train import PRESETS, save_checkpoint

TEXT = "The quick brown fox jumps over the lazy dog. " * 20 + "ünïcödé ✓"


def tiny_model(seed: int = 0) -> BitTransformerLM:
    torch.manual_seed(seed)
    return BitTransformerLM(PRESETS["tiny"][0])


def test_uniform_model_scores_exactly_8_bits_per_byte():
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # uniform over the 256 frames with a correct parity bit
    r = evaluate_model(model, TEXT, batch_size=4)
    assert r["n_bytes"] == len(TEXT.encode()) and r["n_bits"] == 9 * r["n_bytes"]
    assert r["bits_per_byte"] == pytest.approx(8.0)
    assert r["parity_loss"] == pytest.approx(0.0, abs=1e-6)  # the model masks wrong-parity frames
    assert r["loss"] == pytest.approx(8 / 9)


def test_metrics_are_consistent_and_do_not_depend_on_batching():
    model = tiny_model()
    model.train()
    a = evaluate_model(model, TEXT, batch_size=1)
    b = evaluate_model(model, TEXT.encode(), batch_size=7)
    assert model.training  # mode restored
    for k in ("bits_per_byte", "parity_loss", "accuracy", "loss"):
        assert a[k] == pytest.approx(b[k], rel=1e-5)
    # loss over all bits = data bits + parity bits
    assert a["loss"] * a["n_bits"] == pytest.approx((a["bits_per_byte"] + a["parity_loss"]) * a["n_bytes"], rel=1e-5)
    assert 0.0 <= a["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(model, "")


def test_classic_compressors_match_spec_reference_on_pydoc():
    data = "\n".join(load_corpus("pydoc").documents).encode()
    assert len(data) == 466_195
    r = classic_bits_per_byte(data)
    # SPEC §6 reference row for pydoc_data.topics
    assert r == {"zlib -9": pytest.approx(2.305, abs=5e-4), "bz2 -9": pytest.approx(1.678, abs=5e-4),
                 "lzma -9e": pytest.approx(1.626, abs=5e-4)}


def test_classic_bits_per_byte_definition():
    data = TEXT.encode()
    r = classic_bits_per_byte(data)
    assert r["zlib -9"] == 8 * len(zlib.compress(data, 9)) / len(data)
    assert r["bz2 -9"] == 8 * len(bz2.compress(data, 9)) / len(data)
    assert r["lzma -9e"] == 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data)
    with pytest.raises(ValueError):
        classic_bits_per_byte(b"")


def test_cli_prints_model_beside_compressors(tmp_path, capsys):
    corpus_file = tmp_path / "text.txt"
    corpus_file.write_text(TEXT * 5)
    save_checkpoint(tmp_path / "run", "best", tiny_model(), {"step": 1})
    main([str(tmp_path / "run"), "--corpus", str(corpus_file), "--max-bytes", "300"])
    out = capsys.readouterr().out
    assert "300 bytes" in out
    for name in ("model", "zlib -9", "bz2 -9", "lzma -9e"):
        assert name in out
    plain = tmp_path / "plain"
    tiny_model().save_pretrained(plain)
    main([str(plain), "--corpus", str(corpus_file), "--split", "all"])
    assert f"{len((TEXT * 5).encode()):,} bytes" in capsys.readouterr().out
