"""The paged KV pool: its bookkeeping, and attention over it against the contiguous reference."""
from __future__ import annotations

import random

import pytest
import torch

from engine.kv_cache import BlockPool, BlockTable, KVCache
from engine.model import ModelConfig, Transformer


def filled(pool: BlockPool, tokens: list[int]) -> BlockTable:
    """A sequence that claimed its cached prefix, got blocks for the rest and sealed them all."""
    table = pool.claim_prefix(tokens)
    assert pool.grow(table, len(tokens))
    pool.seal(table, tokens, len(tokens))
    return table


def test_a_prefix_is_reused_by_full_blocks_all_but_the_last_token():
    pool = BlockPool(n_blocks=16, block_tokens=4)
    first = filled(pool, list(range(10)))               # blocks for 0-3, 4-7 (sealed), 8-9
    assert len(first.blocks) == 3 and len(first.hashes) == 2
    assert pool.claim_prefix(list(range(10)) + [99]).blocks == first.blocks[:2]
    assert pool.claim_prefix(list(range(8))).blocks == first.blocks[:1]  # the last token is recomputed
    assert pool.claim_prefix([0, 1, 2, 7, 4, 5, 6, 7, 8]).blocks == []     # the chain breaks in block 0
    other = pool.claim_prefix([5] + list(range(1, 10)))
    assert other.blocks == []                           # same second block, different first: no match


def test_released_blocks_stay_cached_and_the_least_recent_goes_first():
    pool = BlockPool(n_blocks=5, block_tokens=2)        # 4 usable blocks
    a = filled(pool, [1, 2, 3, 4])
    pool.release(a)
    b = filled(pool, [5, 6, 7, 8])
    pool.release(b)
    assert pool.held() == 0 and pool.available() == 4 and len(pool.evictable) == 4
    c = BlockTable()
    assert pool.grow(c, 4)                              # needs 2: evicts a's blocks, released first
    assert pool.claim_prefix([1, 2, 3, 4, 0]).blocks == []
    again = pool.claim_prefix([5, 6, 7, 8, 0])
    assert len(again.blocks) == 2


def test_held_blocks_are_never_evicted_and_a_full_pool_says_no():
    pool = BlockPool(n_blocks=5, block_tokens=2)
    held = filled(pool, [1, 2, 3, 4, 5, 6])            # 3 of 4 blocks, held
    table = BlockTable()
    assert not pool.grow(table, 4) and table.blocks == []   # all or nothing
    assert pool.grow(table, 2)
    assert not pool.grow(BlockTable(), 1)
    assert pool.claim_prefix([1, 2, 3, 4, 5, 6, 7]).blocks == held.blocks  # still cached, shared
    assert pool.ref_count[held.blocks[0]] == 2


def test_a_lone_sequence_gets_consecutive_blocks_and_truncate_gives_back():
    pool = BlockPool(n_blocks=32, block_tokens=4)
    table = BlockTable()
    for n in range(1, 60, 3):
        assert pool.grow(table, n)
    assert table.blocks == list(range(1, 16))
    pool.truncate(table, 9)
    assert len(table.blocks) == 3 and pool.held() == 3


def reference_attention(q, k, v, window=None):
    """Dense causal (optionally windowed) attention over one sequence: q (H, T, D), k/v (H_kv, T, D)."""
    T = q.shape[1]
    pos = torch.arange(T)
    allowed = pos[None, :] <= pos[:, None]
    if window is not None:
        allowed &= pos[None, :] > pos[:, None] - window
    return torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=allowed[None, None],
                                                            enable_gqa=True)[0]


@pytest.mark.parametrize("kernel", [True, False], ids=["C kernel", "PyTorch"])
@pytest.mark.parametrize("int8,window,n_head,n_kv_head", [(False, None, 4, 4), (False, 5, 4, 2), (True, None, 4, 1),
                                                          (True, 3, 6, 2)])
def test_attend_over_random_batches_matches_dense_attention(int8, window, n_head, n_kv_head, kernel):
    """Sequences sharing prefixes, prefilled in pieces, then stepped together with rows of
    different widths (draft tokens, padding): every query's output equals dense attention over
    its own sequence."""
    torch.manual_seed(0)
    rng = random.Random(0)
    D, bt = 8, 4
    cache = KVCache(1, 64, bt, n_kv_head, D, int8=int8, kernel=kernel)
    if kernel and cache.kernel is None:
        pytest.skip("the paged attention kernel did not build (no C compiler?): the PyTorch path is tested")
    pool = BlockPool(64, bt)
    shared = [rng.randrange(50) for _ in range(9)]
    seqs = [shared + [rng.randrange(50) for _ in range(rng.randrange(1, 12))] for _ in range(5)]
    # A key and a value per (sequence content, position): what a model would compute.
    kv = {}

    def key_value(tokens, p):
        name = tuple(tokens[:p + 1])
        if name not in kv:
            kv[name] = (torch.randn(n_kv_head, D), torch.randn(n_kv_head, D))
        return kv[name]

    tables, done = [], []
    for tokens in seqs:  # prefill: reuse what is cached, compute the rest
        table = pool.claim_prefix(tokens)
        start = len(table.hashes) * bt
        assert pool.grow(table, len(tokens) + 4)
        positions = torch.arange(start, len(tokens))[None]
        k = torch.stack([key_value(tokens, p)[0] for p in range(start, len(tokens))], 1)[None]
        v = torch.stack([key_value(tokens, p)[1] for p in range(start, len(tokens))], 1)[None]
        cache.batch([table.blocks], positions, window=window).attend(0, torch.randn(1, n_head, k.shape[2], D), k, v)
        pool.seal(table, tokens, len(tokens))
        tables.append(table)
        done.append(len(tokens))
    assert any(t.blocks[:2] == tables[0].blocks[:2] for t in tables[1:])  # the shared prefix is one copy
    # One step: each row forwards 1-3 new tokens, padded to the widest.
    widths = [1, 3, 2, 1, 3]
    new = [[rng.randrange(50) for _ in range(w)] for w in widths]
    T = max(widths)
    positions = torch.tensor([[done[b] + min(t, widths[b] - 1) for t in range(T)] for b in range(5)])
    q = torch.randn(5, n_head, T, D)
    k = torch.zeros(5, n_kv_head, T, D)
    v = torch.zeros(5, n_kv_head, T, D)
    for b in range(5):
        for t in range(widths[b]):
            k[b, :, t], v[b, :, t] = key_value(seqs[b] + new[b], done[b] + t)
    out = cache.batch([t.blocks for t in tables], positions, widths, window).attend(0, q, k, v)
    for b in range(5):
        full = seqs[b] + new[b]
        keys = torch.stack([key_value(full, p)[0] for p in range(len(full))], 1)
        values = torch.stack([key_value(full, p)[1] for p in range(len(full))], 1)
        q_full = torch.zeros(n_head, len(full), D)
        q_full[:, done[b]:] = q[b, :, :widths[b]]
        expected = reference_attention(q_full, keys, values, window)[:, done[b]:]
        assert torch.allclose(out[b, :, :widths[b]], expected, atol=0.05 if int8 else 1e-5), b


@torch.no_grad()
def test_model_over_the_pool_with_prefix_reuse_matches_the_full_forward():
    torch.manual_seed(1)
    model = Transformer(ModelConfig(vocab_size=61, block_size=64, n_layer=2, n_head=4, n_embd=32)).eval()
    cache, pool = KVCache(2, 40, 4, 4, 8), BlockPool(40, 4)
    base = torch.randint(0, 61, (20,)).tolist()
    for tail in ([1, 2, 3], [1, 2, 4, 5, 6, 7], [9] * 11):
        tokens = base + tail
        table = pool.claim_prefix(tokens)
        start = len(table.hashes) * 4
        assert pool.grow(table, len(tokens))
        positions = torch.arange(start, len(tokens))[None]
        logits = model(torch.tensor([tokens[start:]]), positions, cache.batch([table.blocks], positions))
        full = model(torch.tensor([tokens]))[:, start:]
        assert torch.allclose(logits, full, atol=1e-5)
        pool.seal(table, tokens, len(tokens))
        pool.release(table)
    assert start == 20


def test_pool_size_follows_the_megabytes_not_the_context():
    cache = KVCache.sized(8, n_layer=2, block_tokens=16, n_kv_head=4, head_dim=16)
    assert cache.total_bytes() <= 8 * 2**20 and cache.n_blocks == 8 * 2**20 // (cache.bytes_per_token() * 16)
    small = KVCache.sized(8, n_layer=2, block_tokens=16, n_kv_head=4, head_dim=16, int8=True)
    assert small.n_blocks > 3 * cache.n_blocks and small.total_bytes() <= 8 * 2**20


def test_loading_the_kernel_leaves_the_process_floating_point_mode_alone():
    """A library built with -ffast-math would switch on flush-to-zero for the whole process."""
    import subprocess
    import sys

    code = ("import torch; from engine import kernels; lib = kernels.decode_kernel(); "
            "tiny = float('5e-324'); print(lib is not None, tiny > 0, bool(torch.tensor(1e-40) > 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "True":
        pytest.skip("the decode kernel did not build (no C compiler?)")
    assert out[1:] == ["True", "True"]
