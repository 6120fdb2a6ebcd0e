"""Held-out evaluation and the classic-compressor baseline (bitlm.train.evaluate)."""
import bz2
import lzma
import math
import zlib

import pytest
import torch

from bitlm.bits.frames import bytes_to_bits
from bitlm.train.data import load_corpus
from bitlm.cli.evaluate import main
from bitlm.train.evaluate import classic_bits_per_byte, evaluate_model, evaluate_stream, sliding_logprobs
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.checkpoints import save_checkpoint
from bitlm.train.trainer import PRESETS

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


def sliding_reference_bpb(model: BitTransformerLM, raw: bytes, window: int, stride: int) -> float:
    """Bits per byte from the definition: byte i is scored in the first window (ending at window,
    window + stride, ..., len(raw)) that ends after it, from that window's full forward logits."""
    ends = list(range(window, len(raw), stride)) + [len(raw)]
    ce = {}                                                              # window end -> (T,) CE in bits
    total = 0.0
    for i in range(len(raw)):
        end = next(e for e in ends if e > i)
        start = max(0, end - window)
        assert i < window or i - start >= window - stride                # the context guarantee
        if end not in ce:
            bits = bytes_to_bits(raw[start:end]).long()
            logits, _ = model(bits.unsqueeze(0), telemetry=False)       # (1, T, 2) log-probs
            ce[end] = -logits[0].gather(1, bits[:, None])[:, 0] / math.log(2)
        total += ce[end][9 * (i - start):9 * (i - start) + 8].sum().item()   # the byte's 8 data bits
    return total / len(raw)


@pytest.mark.parametrize("stride_bytes", [3, 16])
def test_sliding_windows_score_every_byte_once_with_context(stride_bytes):
    model = tiny_model(1)
    raw = TEXT.encode()[:157]                          # the tiny block is 144 bits = 16 bytes
    r = evaluate_model(model, raw, batch_size=3, stride_bits=9 * stride_bytes + 4)   # rounds down to frames
    assert r["n_bytes"] == len(raw) and r["n_bits"] == 9 * len(raw)
    assert r["bits_per_byte"] == pytest.approx(sliding_reference_bpb(model, raw, 16, stride_bytes), rel=1e-4)


def test_sliding_windows_edge_cases():
    model = tiny_model(2)
    raw = TEXT.encode()[:160]                          # exactly 10 windows of 16 bytes
    plain = evaluate_model(model, raw)
    full_stride = evaluate_model(model, raw, batch_size=4, stride_bits=144)
    for k in ("bits_per_byte", "parity_loss", "accuracy", "loss"):
        assert full_stride[k] == pytest.approx(plain[k], rel=1e-5)
    short = TEXT.encode()[:10]                         # shorter than a window: one window, as without a stride
    assert evaluate_model(model, short, stride_bits=72) == pytest.approx(evaluate_model(model, short))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert evaluate_model(model, raw, stride_bits=72)["bits_per_byte"] == pytest.approx(8.0)
    for bad in (8, 153):
        with pytest.raises(ValueError, match="stride_bits"):
            evaluate_model(model, raw, stride_bits=bad)


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
    main([str(plain), "--corpus", str(corpus_file), "--split", "all", "--stride", "72"])
    assert "sliding windows, stride 72 bits" in capsys.readouterr().out


def test_streaming_evaluation_is_each_lanes_full_sliding_forward():
    """evaluate_stream reads each lane as one stream through the rolling cache; the figure equals a full
    forward over each lane (slots seeing BOS and their window), data bits only."""
    torch.manual_seed(0)
    model = BitTransformerLM(BitLMConfig(block_size=72, n_layer=2, n_head=2, n_embd=32, attn_window=4)).eval()
    data = "ünïcode and ascii: streams slide past their window. " * 3
    raw = data.encode()
    r = evaluate_stream(model, raw, lanes=3)
    per_lane = -(-len(raw) // 3)
    total = 0.0
    with torch.no_grad():
        for i in range(3):
            bits = bytes_to_bits(raw[i * per_lane:(i + 1) * per_lane])
            logits, _ = model._forward(bits[None].long(), 0, telemetry=False, return_attention=False)
            ce = -logits[0].gather(-1, bits.long().unsqueeze(-1)).squeeze(-1) / math.log(2)
            total += ce.view(-1, 9)[:, :8].sum().item()
    assert r["n_bytes"] == len(raw)
    assert r["bits_per_byte"] == pytest.approx(total / len(raw), rel=1e-5)
    with pytest.raises(ValueError, match="cannot|sliding"):
        evaluate_stream(BitTransformerLM(BitLMConfig(block_size=72, n_layer=1, n_head=2, n_embd=16, pos="learned")), raw)
    with pytest.raises(ValueError, match="empty"):
        evaluate_stream(model, b"")


@pytest.mark.parametrize("stream_type,n_bits", [(0, 9 * 40), (1, 9 * 40 - 5), (1, 7)])
def test_sliding_logprobs_of_any_bits_equal_the_full_forward(stream_type, n_bits):
    """Bits of any length (a stream need not be whole patches) and either stream type: the same per-bit
    log-probabilities as one forward over all of them (which slides its window inside)."""
    torch.manual_seed(1)
    model = BitTransformerLM(BitLMConfig(block_size=9 * 40, n_layer=2, n_head=2, n_embd=32, attn_window=4)).eval()
    bits = torch.randint(0, 2, (n_bits,))
    with torch.no_grad():
        full, _ = model._forward(bits[None], stream_type, telemetry=False, return_attention=False)
    slid = sliding_logprobs(model, bits, stream_type)
    assert slid.shape == (n_bits, 2)
    assert torch.allclose(slid, full[0], atol=1e-5)
    with pytest.raises(ValueError, match="no bits"):
        sliding_logprobs(model, bits[:0])
