"""The GPT's paged KV-cache path is an exact replacement for the full forward pass."""
import pytest
import torch

from engine.kv_cache import BlockPool, BlockTable, KVCache
from engine.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=48, n_layer=2, n_head=4, n_embd=32)).eval()


def paged(int8=False, n_blocks=32, block_tokens=8, kernel=True):
    return KVCache(2, n_blocks, block_tokens, 4, 8, int8=int8, kernel=kernel), BlockPool(n_blocks, block_tokens)


def cached_logits(model, idx, prefill, cache, pool):
    """Prefill `prefill` tokens, then decode the rest one token a forward, through the pool."""
    table = BlockTable()
    assert pool.grow(table, idx.size(1))
    pos = torch.arange(prefill)[None]
    out = [model(idx[:, :prefill], pos, cache.batch([table.blocks], pos))]
    for t in range(prefill, idx.size(1)):
        pos = torch.tensor([[t]])
        out.append(model(idx[:, t:t + 1], pos, cache.batch([table.blocks], pos)))
    return torch.cat(out, dim=1)


@torch.no_grad()
@pytest.mark.parametrize("kernel", [True, False], ids=["C kernel", "PyTorch"])
@pytest.mark.parametrize("prefill", [1, 7, 30])
def test_cached_decoding_matches_full_forward(model, prefill, kernel):
    idx = torch.randint(0, 97, (1, 40))
    full = model(idx)
    assert torch.allclose(cached_logits(model, idx, prefill, *paged(kernel=kernel)), full, atol=1e-5)


@torch.no_grad()
def test_int8_cache_stays_close(model):
    idx = torch.randint(0, 97, (1, 40))
    full = model(idx)
    cached = cached_logits(model, idx, 5, *paged(int8=True))
    assert (cached - full).abs().max() < 0.05
    assert (cached.argmax(-1) == full.argmax(-1)).float().mean() > 0.9


@torch.no_grad()
def test_batched_rows_at_different_positions(model):
    """Two sequences of different lengths decode in one batch, each from its own blocks."""
    a, b = torch.randint(0, 97, (1, 12)), torch.randint(0, 97, (1, 5))
    cache, pool = paged()
    tables = [BlockTable(), BlockTable()]
    for table, seq in zip(tables, (a, b)):
        assert pool.grow(table, seq.size(1) + 1)
        pos = torch.arange(seq.size(1))[None]
        model(seq, pos, cache.batch([table.blocks], pos))
    nxt = torch.tensor([[3], [4]])
    pos = torch.tensor([[12], [5]])
    batched = model(nxt, pos, cache.batch([t.blocks for t in tables], pos))[:, -1]
    full_a = model(torch.cat([a, nxt[:1]], 1))[0, -1]
    full_b = model(torch.cat([b, nxt[1:]], 1))[0, -1]
    assert torch.allclose(batched[0], full_a, atol=1e-5)
    assert torch.allclose(batched[1], full_b, atol=1e-5)


def test_too_long_sequence_is_a_clear_error(model):
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 49, dtype=torch.long))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
