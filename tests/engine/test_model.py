"""The transformer's KV-cache path is an exact replacement for the full forward pass, for a GPT-2
shape and for a Llama shape with grouped-query attention, rotary positions and a sliding window."""
import pytest
import torch

from engine.kv_cache import KVCache
from engine.model import ModelConfig, Transformer

SHAPES = {
    "gpt2": dict(arch="gpt2"),
    "llama-gqa-window": dict(arch="llama", n_kv_head=2, sliding_window=9, rope_theta=500.0),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request):
    torch.manual_seed(0)
    config = ModelConfig.for_arch(dict(vocab_size=97, block_size=48, n_layer=2, n_head=4, n_embd=32,
                                       **SHAPES[request.param]))
    model = Transformer(config).eval()
    with torch.no_grad():  # weights large enough that attention is far from uniform
        for p in model.parameters():
            p.mul_(4.0)
    return model


def kv_cache(model, slots, int8=False):
    c = model.config
    return KVCache(c.n_layer, slots, c.n_kv_head, c.head_dim, c.block_size, int8=int8)


def cached_logits(model, idx, prefill, cache, slot):
    c = model.config
    slots = torch.tensor([slot])
    pos = torch.arange(prefill)[None]
    out = [model(idx[:, :prefill], pos, cache.view(slots, pos))]
    for t in range(prefill, idx.size(1)):
        pos = torch.tensor([[t]])
        out.append(model(idx[:, t:t + 1], pos, cache.view(slots, pos)))
    return torch.cat(out, dim=1)


@torch.no_grad()
@pytest.mark.parametrize("prefill", [1, 7, 30])
def test_cached_decoding_matches_full_forward(model, prefill):
    idx = torch.randint(0, 97, (1, 40))
    cache = kv_cache(model, 3)
    full = model(idx)
    assert torch.allclose(cached_logits(model, idx, prefill, cache, slot=1), full, atol=1e-4)


@torch.no_grad()
def test_int8_cache_stays_close(model):
    idx = torch.randint(0, 97, (1, 40))
    full = model(idx)
    cached = cached_logits(model, idx, 5, kv_cache(model, 1, int8=True), slot=0)
    assert (cached - full).abs().max() < 0.05 * full.abs().max()  # int8 keys/values: ~1 % of the range
    assert (cached.argmax(-1) == full.argmax(-1)).float().mean() > 0.9


@torch.no_grad()
def test_batched_rows_at_different_positions(model):
    """Two sequences of different lengths decode in one batch, each from its own slot."""
    a, b = torch.randint(0, 97, (1, 12)), torch.randint(0, 97, (1, 5))
    cache = kv_cache(model, 2)
    for slot, seq in ((0, a), (1, b)):
        pos = torch.arange(seq.size(1))[None]
        model(seq, pos, cache.view(torch.tensor([slot]), pos))
    nxt = torch.tensor([[3], [4]])
    pos = torch.tensor([[12], [5]])
    batched = model(nxt, pos, cache.view(torch.tensor([0, 1]), pos))[:, -1]
    full_a = model(torch.cat([a, nxt[:1]], 1))[0, -1]
    full_b = model(torch.cat([b, nxt[1:]], 1))[0, -1]
    assert torch.allclose(batched[0], full_a, atol=1e-4)
    assert torch.allclose(batched[1], full_b, atol=1e-4)


def test_too_long_sequence_is_a_clear_error(model):
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 49, dtype=torch.long))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        ModelConfig(n_head=8, n_kv_head=3)
    with pytest.raises(ValueError, match="rope scaling 'dynamic' is not supported"):
        ModelConfig(position="rope", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
