"""The transformer's paged KV-cache path is an exact replacement for the full forward pass, for a
GPT-2 shape and for a Llama shape with grouped-query attention, rotary positions and a sliding window."""
import pytest
import torch

from engine.kv_cache import BlockPool, BlockTable, KVCache
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


def paged(model, int8=False, n_blocks=32, block_tokens=8, kernel=True):
    c = model.config
    cache = KVCache(c.n_layer, n_blocks, block_tokens, c.n_kv_head, c.head_dim, int8=int8, kernel=kernel)
    cache.window = c.sliding_window or None
    return cache, BlockPool(n_blocks, block_tokens)


def cached_logits(model, idx, prefill, cache, pool):
    """Prefill `prefill` tokens, then decode the rest one token a forward, through the pool."""
    table = BlockTable()
    assert pool.grow(table, idx.size(1))
    pos = torch.arange(prefill)[None]
    out = [model(idx[:, :prefill], pos, cache.batch([table.blocks], pos, window=cache.window))]
    for t in range(prefill, idx.size(1)):
        pos = torch.tensor([[t]])
        out.append(model(idx[:, t:t + 1], pos, cache.batch([table.blocks], pos, window=cache.window)))
    return torch.cat(out, dim=1)


@torch.no_grad()
@pytest.mark.parametrize("kernel", [True, False], ids=["C kernel", "PyTorch"])
@pytest.mark.parametrize("prefill", [1, 7, 30])
def test_cached_decoding_matches_full_forward(model, prefill, kernel):
    idx = torch.randint(0, 97, (1, 40))
    full = model(idx)
    assert torch.allclose(cached_logits(model, idx, prefill, *paged(model, kernel=kernel)), full, atol=1e-4)


@torch.no_grad()
def test_int8_cache_stays_close(model):
    idx = torch.randint(0, 97, (1, 40))
    full = model(idx)
    cached = cached_logits(model, idx, 5, *paged(model, int8=True))
    assert (cached - full).abs().max() < 0.05 * full.abs().max()  # int8 keys/values: ~1 % of the range
    assert (cached.argmax(-1) == full.argmax(-1)).float().mean() > 0.9


@torch.no_grad()
def test_batched_rows_at_different_positions(model):
    """Two sequences of different lengths decode in one batch, each from its own blocks."""
    a, b = torch.randint(0, 97, (1, 12)), torch.randint(0, 97, (1, 5))
    cache, pool = paged(model)
    tables = [BlockTable(), BlockTable()]
    for table, seq in zip(tables, (a, b)):
        assert pool.grow(table, seq.size(1) + 1)
        pos = torch.arange(seq.size(1))[None]
        model(seq, pos, cache.batch([table.blocks], pos, window=cache.window))
    nxt = torch.tensor([[3], [4]])
    pos = torch.tensor([[12], [5]])
    batched = model(nxt, pos, cache.batch([t.blocks for t in tables], pos, window=cache.window))[:, -1]
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
