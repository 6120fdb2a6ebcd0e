"""BitTransformerLM: causality, the factorized chain rule, loss/logits consistency, compressed forward,
cached generation, parity-safe sampling, saving/loading."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from bitlm.bits.frames import bits_to_bytes, bytes_to_bits, decode_bits, text_to_bits
from bitlm.bits.codec import CodecError, compress_bits
from bitlm.model.config import BitLMConfig
from bitlm.model.layers import PARITY_OFFSET
from bitlm.model.transformer import BitTransformerLM, _bit_conditionals, _gather_bits, model_output_decompress
from bitlm.model.telemetry import attention_entropy, lz_complexity, negentropy

TINY = dict(n_layer=2, n_head=2, n_embd=32, local_layers=1, local_embd=16)
VARIANTS = {
    "p9": dict(patch_size=9, parity=True, block_size=72),
    "p9-noparity": dict(patch_size=9, parity=False, block_size=72),
    "p4": dict(patch_size=4, parity=False, block_size=48),
    "p1": dict(patch_size=1, parity=False, block_size=40),
    "p9-local": dict(patch_size=9, parity=True, block_size=72, local="transformer"),
    "p3-local": dict(patch_size=3, parity=False, block_size=42, local="transformer"),
    "p9-learned": dict(patch_size=9, parity=True, block_size=72, pos="learned"),
    "p9-window": dict(patch_size=9, parity=True, block_size=72, attn_window=4),
}


def make(name: str = "p9", seed: int = 0, **overrides) -> BitTransformerLM:
    torch.manual_seed(seed)
    return BitTransformerLM(BitLMConfig(**{**TINY, **VARIANTS[name], **overrides})).eval()


def rand_bits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def framed(n_bytes: int, seed: int = 0) -> torch.Tensor:
    """Random bytes as parity-framed bits (what stream type 0 holds with parity on)."""
    g = torch.Generator().manual_seed(seed)
    return bytes_to_bits(bytes(torch.randint(0, 256, (n_bytes,), generator=g).tolist()))


def bit_ce(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-position CE in bits of the observed bits under (B, T, 2) log-prob logits."""
    return -logits.gather(-1, bits.long().unsqueeze(-1)).squeeze(-1) / math.log(2)


# ------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("bad", [
    dict(patch_size=0), dict(patch_size=13), dict(patch_size=8, parity=True), dict(block_size=100),
    dict(n_embd=30, n_head=4), dict(dropout=1.0), dict(local="megabyte"), dict(n_layer=2.5),
    dict(pos="rope"), dict(attn_window=-1), dict(attn_window=257), dict(pos="learned", attn_window=8),
    dict(parity="yes"), dict(local="transformer", local_embd=18, n_head=4), dict(n_stream_types=0),
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        BitLMConfig(**bad)


def test_config_defaults_are_a_about_1m_param_byte_patch_model():
    c = BitLMConfig()
    assert (c.patch_size, c.parity, c.block_size, c.local, c.n_patches) == (9, True, 2304, "factorized", 256)
    assert 0.7e6 < BitTransformerLM(c).num_params() < 1.5e6
    with pytest.raises(ValueError, match="unknown"):
        BitLMConfig.from_dict({"hidden_size": 768})


# ------------------------------------------------------------------------------------ forward

@pytest.mark.parametrize("name", list(VARIANTS))
def test_causality(name):
    """Changing bit t changes no logits at positions ≤ t (and does change some later one)."""
    model = make(name)
    T = model.config.block_size - 5                      # ends mid-patch for every p > 1
    bits = rand_bits(2, T, seed=1)
    base, _ = model(bits, telemetry=False)
    for t in [0, 3, 8, 9, 17, T // 2, T - 2]:
        flipped = bits.clone()
        flipped[:, t] ^= 1
        out, _ = model(flipped, telemetry=False)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-6)


@pytest.mark.parametrize("T", [1, 5, 9, 40, 72])
def test_forward_shapes_and_normalised_logits(T):
    model = make("p9")
    logits, tel = model(rand_bits(3, T))
    assert logits.shape == (3, T, 2) and logits.dtype == torch.float32
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(3, T))
    assert tel.p.shape == tel.entropy.shape == (3, T)
    assert tel.attention_entropy.shape == (2, 2) and tel.attention is None
    _, tel = model(rand_bits(3, T), return_attention=True)
    n = -(-T // 9)
    assert len(tel.attention) == 2 and tel.attention[0].shape == (3, 2, n, n)
    assert model(rand_bits(2, T), telemetry=False)[1] is None


@pytest.mark.parametrize("name", ["p9", "p1"])
def test_attention_telemetry(name):
    """The cheap default attention entropy (first sequence, fused kernel) equals the one computed from
    the explicit maps; maps are causal distributions over patch slots."""
    model = make(name)
    bits = rand_bits(3, 40, seed=2)
    _, cheap = model(bits)
    _, full = model(bits[:1], return_attention=True)
    torch.testing.assert_close(cheap.attention_entropy, full.attention_entropy, rtol=0, atol=1e-4)
    torch.testing.assert_close(full.attention_entropy, attention_entropy(full.attention), rtol=0, atol=1e-6)
    for att in full.attention:
        n = att.shape[-1]
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]))
        assert torch.all(att[..., ~torch.ones(n, n, dtype=torch.bool).tril()] == 0)
    assert cheap.C == pytest.approx(lz_complexity(bits[0]))                # first sequence by default
    _, every = model(bits, return_attention=True)
    assert every.C == pytest.approx(lz_complexity(bits))                   # whole batch when asked


def test_forward_rejects_bad_input():
    model = make("p9")
    with pytest.raises(ValueError, match="block_size"):
        model(rand_bits(1, 73))
    with pytest.raises(ValueError, match="0 and 1"):
        model(torch.tensor([[0, 2, 1]]))
    with pytest.raises(ValueError, match="stream_type"):
        model(rand_bits(1, 9), stream_type=2)
    with pytest.raises(ValueError):
        model(rand_bits(1, 0))


def test_parity_bit_is_near_certain_only_for_raw_streams():
    model = make("p9")
    bits = framed(8)[None]
    for name in ("p9", "p9-local"):
        logits, _ = make(name)(bits)
        logp_right = logits[0, PARITY_OFFSET::9].gather(-1, bits[0, PARITY_OFFSET::9].long().unsqueeze(-1))
        assert torch.all(logp_right > -1e-6)
    logits, _ = model(bits, stream_type=1)
    assert torch.all(logits[0, PARITY_OFFSET::9].exp() < 0.9)


def test_factorized_chain_rule():
    """The p per-bit CEs of a whole patch add up to the patch's pattern CE."""
    g = torch.Generator().manual_seed(0)
    for p in (1, 4, 9):
        lp = torch.log_softmax(3 * torch.randn(5, 2 ** p, generator=g), -1)
        patterns = torch.randint(0, 2 ** p, (5,), generator=g)
        bits = (patterns.unsqueeze(-1) >> torch.arange(p - 1, -1, -1)) & 1
        per_bit = _gather_bits(_bit_conditionals(lp, p), patterns, p).gather(-1, bits.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(per_bit.sum(-1), lp.gather(-1, patterns.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-5)
        torch.testing.assert_close(_bit_conditionals(lp, p).exp().sum(-1), torch.ones(5, 2 ** p - 1))


# ------------------------------------------------------------------------------------ loss

@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("T", [36, 40])
def test_loss_matches_forward_logits(name, T):
    model = make(name)
    bits = framed(5, seed=3)[:T].repeat(2, 1) if model.config.parity else rand_bits(2, T, seed=3)
    bits[1] = rand_bits(T, seed=4)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, 23:] = False                                   # a padded, shorter second row
    logits, _ = model(bits, telemetry=False)
    ce = bit_ce(logits, bits)
    for m in (None, mask):
        real = torch.ones_like(mask) if m is None else m
        stats = model.loss(bits, mask=m)
        torch.testing.assert_close(stats.loss, ce[real].mean(), rtol=0, atol=1e-5)
        torch.testing.assert_close(stats.nll_bits, (ce * real).sum(1), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(stats.data_nll_bits + stats.parity_nll_bits, stats.nll_bits, rtol=1e-5, atol=1e-4)
        assert torch.equal(stats.n_bits, real.sum(1))
        assert torch.equal(stats.correct, ((logits.argmax(-1) == bits) & real).sum(1))
        parity_pos = (torch.arange(T) % 9 == PARITY_OFFSET) & model.config.parity
        torch.testing.assert_close(stats.parity_nll_bits, (ce * real * parity_pos).sum(1), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(stats.n_bytes, (real & ~parity_pos).sum(1) / 8)
    stats.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_loss_stream_type_per_sample_and_errors():
    model = make("p9")
    bits = framed(4).repeat(2, 1)
    stats = model.loss(bits, stream_type=torch.tensor([0, 1]))
    assert stats.parity_nll_bits[1] == 0 and stats.n_bytes[1] == 36 / 8 and stats.n_bytes[0] == 4
    with pytest.raises(ValueError, match="no bits"):
        model.loss(bits, mask=torch.zeros_like(bits, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        model.loss(bits, mask=torch.ones(2, 5, dtype=torch.bool))


# ------------------------------------------------------------------------------------ compressed forward

def assert_same_telemetry(a, b):
    assert a.scalars() == b.scalars()
    assert torch.equal(a.p, b.p) and torch.equal(a.entropy, b.entropy)
    assert torch.equal(a.attention_entropy, b.attention_entropy)


@pytest.mark.parametrize("method", ["stored", "rle", "deflate", "auto"])
def test_forward_compressed_is_identical(method):
    model = make("p9")
    rows = [text_to_bits("Hello, bits!")[:72], torch.zeros(72, dtype=torch.uint8), framed(8, seed=5)]
    for bits in rows:
        stream = compress_bits(bits, method)
        logits, tel = model(bits[None])
        logits_c, tel_c = model.forward_compressed(stream)
        assert torch.equal(logits_c, logits)
        assert_same_telemetry(tel_c, tel)
        assert tel_c.on == "decompressed" and tel.on == "stream"
    batch = torch.stack(rows)
    logits, tel = model(batch)
    logits_c, tel_c = model.forward_compressed([compress_bits(b, method) for b in rows])
    assert torch.equal(logits_c, logits)
    assert_same_telemetry(tel_c, tel)


@pytest.mark.parametrize("method", ["stored", "rle", "deflate", "auto"])
def test_forward_compressed_unequal_lengths(method):
    model = make("p9")
    rows = [framed(3, seed=1), text_to_bits("Hi there"), torch.ones(40, dtype=torch.uint8)]
    streams = [compress_bits(b, method) for b in rows]
    T = max(len(b) for b in rows)
    padded = torch.zeros(len(rows), T, dtype=torch.uint8)
    for row, b in zip(padded, rows):
        row[: len(b)] = b
    logits_c, tel = model.forward_compressed(streams)
    assert torch.equal(logits_c, model(padded, telemetry=False)[0])        # same input, same numbers
    for i, b in enumerate(rows):                                          # each row as if alone
        torch.testing.assert_close(logits_c[i, : len(b)], model(b[None], telemetry=False)[0][0], rtol=0, atol=1e-6)
    real = torch.cat(rows)
    assert tel.K == pytest.approx(negentropy(real))
    assert tel.C == pytest.approx(lz_complexity(rows[0]))                  # first sequence (see forward)
    _, tel_s = model.forward_compressed(streams, on="stream")
    assert tel_s.on == "stream" and tel_s.K == pytest.approx(negentropy(streams))
    assert tel_s.C == pytest.approx(lz_complexity(streams)) and tel_s.S == tel.S


def test_forward_compressed_errors():
    model = make("p9")
    with pytest.raises(CodecError):
        model.forward_compressed(torch.ones(100, dtype=torch.uint8))
    with pytest.raises(ValueError, match="block_size"):
        model.forward_compressed(compress_bits(rand_bits(200)))
    with pytest.raises(ValueError):
        model.forward_compressed(torch.ones(80, dtype=torch.uint8), on="raw")


def test_model_output_decompress():
    bits = text_to_bits("round trip")
    assert torch.equal(model_output_decompress(compress_bits(bits)), bits)
    with pytest.raises(CodecError, match="not a valid compressed stream"):
        model_output_decompress(rand_bits(90))


# ------------------------------------------------------------------------------------ generation

CASES = [
    ("p9", dict(), 120),
    ("p9", dict(temperature=0.7, top_p=0.9), 100),
    ("p9", dict(top_k=1), 50),
    ("p9-noparity", dict(stream_type=1), 90),
    ("p4", dict(top_k=2, temperature=1.5), 130),
    ("p1", dict(), 90),
    ("p9-local", dict(), 120),
    ("p3-local", dict(temperature=0.8), 90),
    ("p9-learned", dict(), 120),
    ("p9-window", dict(temperature=0.9), 120),
]


@pytest.mark.parametrize("name,kwargs,n", CASES)
def test_cached_generation_equals_full_recompute(name, kwargs, n):
    """Same bits and per-bit probabilities (within 1e-5) with the KV cache as with a full forward
    per bit, through prompts ending mid-patch and context restarts (n exceeds the tiny block_size)."""
    model = make(name)
    prompt = text_to_bits("Hey")[:22]
    cached = model.generate(prompt, n, seed=7, **kwargs)
    full = model.generate(prompt, n, seed=7, use_cache=False, **kwargs)
    assert cached.bits.dtype == torch.uint8 and cached.bits.shape == (n,)
    assert torch.equal(cached.bits, full.bits)
    torch.testing.assert_close(cached.probs, full.probs, rtol=0, atol=1e-5)
    assert cached.parity_set == full.parity_set


@pytest.mark.parametrize("name", ["p9", "p9-window", "p9-local"])
def test_rolling_cache_over_many_windows_equals_recompute(monkeypatch, name):
    """A generation over more than three windows, with the cache rolling (and compacting every few
    steps), gives the bits and probabilities of recomputing every step from the same visible context:
    a full forward over the whole sequence, each slot seeing BOS and the window before it."""
    from bitlm.model.layers import KVCache
    monkeypatch.setattr(KVCache, "SLACK", 3)         # compact often, not only every 64 slots
    model = make(name)
    window = model.config.window
    n = 9 * (3 * window + 7) + 4                     # > 3 windows of patches, ends mid-patch
    prompt = text_to_bits("Hello")[:31]
    cached = model.generate(prompt, n, temperature=0.9, seed=11)
    full = model.generate(prompt, n, temperature=0.9, seed=11, use_cache=False)
    assert torch.equal(cached.bits, full.bits)
    torch.testing.assert_close(cached.probs, full.probs, rtol=0, atol=1e-5)
    seq = torch.cat([prompt, cached.bits])[None]
    logits, _ = model._forward(seq.long(), 0, telemetry=False, return_attention=False)   # longer than block_size
    torch.testing.assert_close(cached.probs[:-1], logits[0, len(prompt):-1, 1].exp(), rtol=0, atol=1e-5)


def test_sliding_generation_never_rereads(monkeypatch):
    """Every new patch costs one cached global step at any length: the slots the global transformer
    processes add up to the patches of prompt + output, once each (a v1 model re-reads 3/4 of its
    window at every restart)."""
    counts = {}
    for name in ("p9", "p9-learned"):
        model = make(name)
        slots = []
        step = model._global_step
        monkeypatch.setattr(model, "_global_step", lambda x, cache, w, step=step: slots.append(x.size(1)) or step(x, cache, w))
        prompt = text_to_bits("Hi")                           # 2 patches
        model.generate(prompt, 9 * 40, seed=1)                # 40 more: five 8-slot windows
        counts[name] = sum(slots)
    assert counts["p9"] == 2 + 40                             # BOS slot + one per patch, none twice
    assert counts["p9-learned"] > 60


@pytest.mark.parametrize("name,overrides", [
    ("p9", {}), ("p9-window", {}), ("p9", dict(patch_size=8, parity=False, block_size=64)),
])
def test_speculative_generation_gives_the_bits_of_plain_generation(monkeypatch, name, overrides):
    """With a draft, one cached step settles several patches when the guesses come true, and the cache
    forgets the slots that read a wrong guess: the bits are those of plain generation with the same
    seed, the probabilities within float rounding, over more than three windows of a rolling cache.
    The draft is built from the plain output with every 5th byte changed, so guesses both come true
    (fewer steps than patches) and fail (rollbacks)."""
    from bitlm.generate.draft import NGramDraft
    from bitlm.model.layers import KVCache
    monkeypatch.setattr(KVCache, "SLACK", 3)
    model = make(name, **overrides)
    parity, window = model.config.parity, model.config.window
    frame = 9 if parity else 8
    prompt = text_to_bits("Hello", parity=parity)[:frame * 4 + 3]            # ends mid-byte
    n = frame * (3 * window + 25) + 5
    plain = model.generate(prompt, n, temperature=0.9, seed=11)
    text = bytearray(bits_to_bytes(torch.cat([prompt, plain.bits])[:(len(prompt) + n) // frame * frame], parity=parity))
    text[::5] = bytes((b + 1) % 256 for b in text[::5])
    steps, rollbacks = [], []
    step, rollback = model._global_step, KVCache.rollback
    monkeypatch.setattr(model, "_global_step", lambda x, cache, w: steps.append(x.size(1)) or step(x, cache, w))
    monkeypatch.setattr(KVCache, "rollback", lambda self, r: rollbacks.append(r) or rollback(self, r))
    spec = model.generate(prompt, n, temperature=0.9, seed=11, draft=NGramDraft(bytes(text), parity=parity))
    assert torch.equal(spec.bits, plain.bits)
    torch.testing.assert_close(spec.probs, plain.probs, rtol=0, atol=1e-5)
    patches = (len(prompt) + n) // frame
    assert len(steps) < 0.8 * patches and rollbacks, (len(steps), patches, len(rollbacks))
    unrelated = model.generate(prompt, n, temperature=0.9, seed=11, draft=NGramDraft("zzz qqq " * 20, parity=parity))
    assert torch.equal(unrelated.bits, plain.bits)


def test_speculation_is_only_used_where_it_applies():
    """A draft with the wrong parity is refused; on a v1 model (it cannot roll its cache) or a codec
    stream it is ignored: same bits as without it."""
    from bitlm.generate.draft import NGramDraft
    with pytest.raises(ValueError, match="parity"):
        make("p9").generate(text_to_bits("Hi"), 18, draft=NGramDraft("abcdefgh" * 4, parity=False))
    with pytest.raises(ValueError, match="draft"):
        make("p9").generate(text_to_bits("Hi"), 18, draft="abc")
    for name, kwargs in (("p9-learned", {}), ("p9", dict(stream_type=1))):
        model = make(name)
        draft = NGramDraft("Hello there, " * 10)
        a = model.generate(text_to_bits("Hi"), 9 * 30, seed=3, **kwargs)
        b = model.generate(text_to_bits("Hi"), 9 * 30, seed=3, draft=draft, **kwargs)
        assert torch.equal(a.bits, b.bits)


def test_kv_cache_rolls_back_only_the_last_step():
    from bitlm.model.layers import KVCache
    model = make("p9")
    cache = KVCache(len(model.blocks), model.config.window)
    weights = model.step_weights()
    with torch.no_grad():
        model._global_step(torch.randn(1, 3, 32), cache, weights)
        model._global_step(torch.randn(1, 4, 32), cache, weights)
        with pytest.raises(ValueError, match="at most the 4"):
            cache.rollback(5)
        cache.rollback(3)
        assert cache.pos == 4 and cache.n == 4 and cache.row_pos[4:8].tolist() == [-1] * 4
        with pytest.raises(ValueError):
            cache.rollback(2)
        cache.rollback(1)
        assert cache.pos == 3


def test_step_weights_are_shared_until_a_weight_changes():
    """Decoders share one copy of the step weights; a training step, load_state_dict or to() makes
    the next decoder read the new weights (generation then equals the full forward again)."""
    model = make("p9")
    first = model.step_weights()
    assert model.step_weights() is first
    prompt = text_to_bits("Hi")
    before = model.generate(prompt, 9 * 4, temperature=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model.loss(text_to_bits("other").view(1, -1)).loss.backward()
    opt.step()
    model.eval()
    second = model.step_weights()
    assert second is not first
    assert not torch.equal(second[0][0], first[0][0])
    assert torch.equal(second[0][0], model.blocks[0].attn.c_attn.weight.detach().t())
    cached = model.generate(prompt, 9 * 4, temperature=0.0)
    full = model.generate(prompt, 9 * 4, temperature=0.0, use_cache=False)
    assert torch.equal(cached.bits, full.bits) and torch.allclose(cached.probs, full.probs, atol=1e-5)
    assert not torch.allclose(cached.probs, before.probs, atol=1e-3)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert model.step_weights() is not second


def test_sliding_window_sees_bos_and_the_last_window_slots():
    """Slot i's prediction depends on BOS and slots i - window + 2..i only (patches of those slots'
    inputs); changing an older patch changes nothing in the first layer's view, so with one layer the
    prediction is unchanged."""
    model = make("p9-window", n_layer=1)                      # window 4: BOS + 3 slots
    a = framed(12, seed=1)
    b = a.clone()
    b[9 * 2:9 * 3] = framed(1, seed=5)                        # patch 2: input of slot 3
    la, _ = model._forward(a[None].long(), 0, telemetry=False, return_attention=False)
    lb, _ = model._forward(b[None].long(), 0, telemetry=False, return_attention=False)
    same = slice(9 * 6, None)                                 # slots ≥ 6 no longer see slot 3
    torch.testing.assert_close(la[0, same], lb[0, same], rtol=0, atol=1e-6)
    assert not torch.allclose(la[0, 9 * 3:9 * 6], lb[0, 9 * 3:9 * 6])


def test_generate_stream_yields_growing_prefixes_of_generate():
    model = make("p9")
    prompt = text_to_bits("Hey")
    chunks = list(model.generate_stream(prompt, 100, temperature=0.8, seed=4, chunk_bits=27))
    assert [c.bits.numel() for c in chunks] == [27, 54, 81, 100]
    whole = model.generate(prompt, 100, temperature=0.8, seed=4)
    for c in chunks:
        assert torch.equal(c.bits, whole.bits[:c.bits.numel()]) and torch.equal(c.probs, whole.probs[:c.probs.numel()])
    assert chunks[-1].parity_set == whole.parity_set
    it = model.generate_stream(prompt, 10 ** 6, seed=4, chunk_bits=9)
    assert next(it).bits.numel() == 9
    it.close()                                                # stops: no million-bit loop left running
    with pytest.raises(ValueError, match="chunk_bits"):
        next(model.generate_stream(prompt, 10, chunk_bits=0))


def test_generate_stream_resumes_in_another_thread_and_close_leaves_grad_mode_alone():
    """Gradio resumes a streamed generation on other worker threads (grad mode is per thread), and
    closing one early must not switch gradients off in the thread that closes it."""
    import threading
    model = make("p9")
    it = model.generate_stream(text_to_bits("Hi"), 400, seed=2, chunk_bits=45)
    first = next(it)
    out = []
    worker = threading.Thread(target=lambda: out.append(next(it)))
    worker.start()
    worker.join()
    assert out and out[0].bits.numel() == 90 and torch.equal(out[0].bits[:45], first.bits)
    assert torch.is_grad_enabled()
    it.close()
    assert torch.is_grad_enabled()


def test_cached_probs_equal_forward_on_the_generated_sequence():
    model = make("p9", block_size=144)
    prompt = text_to_bits("ab")[:13]
    g = model.generate(prompt, 60, seed=3)
    logits, _ = model(torch.cat([prompt, g.bits])[None], telemetry=False)
    torch.testing.assert_close(g.probs, logits[0, len(prompt):, 1].exp(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["p9", "p9-local"])
@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 3.0])
def test_generated_text_always_passes_strict_parity(name, temperature):
    model = make(name)
    for seed in range(3):
        prompt = text_to_bits("Once upon a time")
        g = model.generate(prompt, 9 * 12, temperature=temperature, seed=seed)
        assert g.parity_set == 12
        assert len(bits_to_bytes(torch.cat([prompt, g.bits]))) == 16 + 12        # strict: raises on any error
        assert decode_bits(g.bits).parity_errors == 0
    g = model.generate(text_to_bits("x")[:4], 9 * 5, seed=0)                      # prompt ends mid-frame
    assert g.parity_set == 5 and decode_bits(torch.cat([text_to_bits("x")[:4], g.bits])[:45]).parity_errors == 0


def test_generate_sampling_controls():
    model = make("p9")
    prompt = text_to_bits("Hi")
    assert torch.equal(model.generate(prompt, 40, seed=1).bits, model.generate(prompt, 40, seed=1).bits)
    greedy = model.generate(prompt, 40, temperature=0)
    assert torch.equal(greedy.bits, model.generate(prompt, 40, top_k=1, seed=5).bits)
    assert torch.equal(greedy.bits, model.generate(prompt, 40, top_p=0.5, seed=9).bits)
    data = torch.arange(40) % 9 != PARITY_OFFSET
    assert torch.equal(greedy.bits[data], (greedy.probs[data] > 0.5).to(torch.uint8))
    runs = {tuple(model.generate(prompt, 40, seed=s, temperature=2.0).bits.tolist()) for s in range(4)}
    assert len(runs) > 1
    assert model.generate(prompt, 0).bits.shape == (0,)
    assert model.generate(torch.zeros(0, dtype=torch.uint8), 18, seed=0).parity_set == 2   # empty prompt
    assert model.generate(text_to_bits("x" * 20), 10, seed=0).bits.shape == (10,)         # prompt > block_size


@pytest.mark.parametrize("bad", [dict(n_bits=-1), dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(stream_type=3), dict(prompt_bits=torch.tensor([0, 2]))])
def test_generate_rejects_bad_arguments(bad):
    args = dict(prompt_bits=text_to_bits("a"), n_bits=9) | bad
    with pytest.raises(ValueError):
        make("p9").generate(**args)


def test_generate_decompress_output():
    model = make("p9-noparity")
    with pytest.raises(CodecError, match="not a valid compressed stream"):
        model.generate(torch.zeros(0, dtype=torch.uint8), 80, seed=0, stream_type=1, decompress_output=True)
    assert model.generate(text_to_bits("a"), 9).output is None


# ------------------------------------------------------------------------------------ save / load

@pytest.mark.parametrize("name", ["p9", "p9-local", "p1"])
def test_save_load_round_trip(tmp_path, name):
    model = make(name, seed=3)
    bits = rand_bits(2, 30)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    (tmp_path / "plain").write_text("")  # saved files get the same permissions as any file the user creates
    assert {(tmp_path / f).stat().st_mode for f in ("config.json", "model.safetensors", "plain")} == \
        {(tmp_path / "plain").stat().st_mode}
    loaded = BitTransformerLM.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded(bits, telemetry=False)[0], model(bits, telemetry=False)[0])
    assert json.loads((tmp_path / "config.json").read_text())["patch_size"] == model.config.patch_size


def test_v1_checkpoints_load_with_learned_positions(tmp_path):
    """A config.json written before `pos` existed is a learned-position (v1) model, and loads as one."""
    v1 = make("p9-learned", seed=2)
    v1.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["pos"], config["attn_window"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = BitTransformerLM.from_pretrained(tmp_path)
    assert loaded.config.pos == "learned" and hasattr(loaded, "pos_emb")
    bits = rand_bits(1, 50)
    assert torch.equal(loaded(bits, telemetry=False)[0], v1(bits, telemetry=False)[0])


def test_load_errors_are_clear(tmp_path):
    make("p9").save_pretrained(tmp_path / "good")
    good = tmp_path / "good"

    def clone(name: str):
        d = tmp_path / name
        d.mkdir()
        for f in ("config.json", "model.safetensors"):
            (d / f).write_bytes((good / f).read_bytes())
        return d

    with pytest.raises(FileNotFoundError, match="config.json"):
        BitTransformerLM.from_pretrained(tmp_path)                               # empty folder
    d = clone("nojson")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        BitTransformerLM.from_pretrained(d)
    d = clone("foreign_config")
    (d / "config.json").write_text(json.dumps({"hidden_size": 768, "model_type": "bert"}))
    with pytest.raises(ValueError, match="unknown to BitLMConfig"):
        BitTransformerLM.from_pretrained(d)
    d = clone("bad_value")
    (d / "config.json").write_text(json.dumps({"patch_size": 8}))
    with pytest.raises(ValueError, match="config.json"):
        BitTransformerLM.from_pretrained(d)
    d = clone("truncated")
    (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:300])
    with pytest.raises(ValueError, match="model.safetensors"):
        BitTransformerLM.from_pretrained(d)
    d = clone("other_shape")
    (d / "config.json").write_text(json.dumps({**json.loads((good / "config.json").read_text()), "n_embd": 64}))
    with pytest.raises(ValueError, match="model.safetensors"):
        BitTransformerLM.from_pretrained(d)
    d = clone("foreign_weights")
    save_file({"encoder.weight": torch.zeros(3)}, d / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        BitTransformerLM.from_pretrained(d)
    d = clone("pickle_only")
    (d / "model.safetensors").unlink()
    torch.save(make("p9").state_dict(), d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        BitTransformerLM.from_pretrained(d)
