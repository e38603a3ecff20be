"""The runner alone: one forward over rows of different kinds, compiled or in PyTorch, same tokens."""
from __future__ import annotations

import pytest
import torch

from engine import kernels
from engine.kv_cache import BlockPool, KVCache
from engine.quantize import load_int8_model
from engine.runner import Runner


def runner_for(model_dir, use_kernels: bool) -> tuple[Runner, BlockPool]:
    model, _ = load_int8_model(model_dir, use_kernels=use_kernels)
    c = model.config
    cache = KVCache(c.n_layer, 32, 8, c.n_kv_head, c.head_dim, kernel=use_kernels)
    return Runner(model.eval(), cache, torch.device("cpu"), kernels=use_kernels), BlockPool(32, 8)


@torch.no_grad()
def test_mixed_rows_give_the_same_tokens_compiled_and_in_pytorch(tiny_model_dir):
    """A decode row with a draft, a padded decode row and a prefill chunk of another sequence in
    one forward: every real position's next token is the same on both paths."""
    if kernels.decode_kernel() is None:
        pytest.skip("the decode kernel did not build (no C compiler?): nothing to compare")
    compiled, pool = runner_for(tiny_model_dir, True)
    pytorch, _ = runner_for(tiny_model_dir, False)
    assert compiled.decode_path == {"kernels": "c", "reason": None}
    assert pytorch.decode_path == {"kernels": "pytorch", "reason": "EngineConfig.kernels is False"}
    prompts = [[5, 17, 42, 9, 100, 7, 3, 64, 12, 8], [33, 2, 91, 14, 6, 71], [8, 8, 120, 4]]
    tables = []
    for prompt in prompts[:2]:  # two sequences prefilled; the third arrives in the mixed step
        table = pool.claim_prefix([])
        assert pool.grow(table, 24)
        tables.append(table.blocks)
    for runner in (compiled, pytorch):
        for prompt, blocks in zip(prompts[:2], tables):
            runner.forward([prompt], [list(range(len(prompt)))], [blocks], last_only=True)
    third = pool.claim_prefix([])
    assert pool.grow(third, 8)
    tables.append(third.blocks)
    # row 0: last token + 2 drafted; row 1: last token alone (padded); row 2: a 4-token prefill chunk
    idx = [[1, 2, 3, 3], [4, 4, 4, 4], prompts[2]]
    positions = [[10, 11, 12, 12], [6, 6, 6, 6], [0, 1, 2, 3]]
    n_real = [3, 1, 4]
    out = [runner.forward(idx, positions, tables, n_real) for runner in (compiled, pytorch)]
    for b, n in enumerate(n_real):
        assert out[0][b, :n].argmax(-1).tolist() == out[1][b, :n].argmax(-1).tolist()
        assert torch.allclose(out[0][b, :n], out[1][b, :n], atol=1e-3), b
    last = [runner.forward(idx, positions, tables, n_real, last_only=True) for runner in (compiled, pytorch)]
    assert last[0].shape == (3, 1, out[0].shape[-1])
    assert torch.allclose(last[0][:, 0], torch.stack([out[0][b, n - 1] for b, n in enumerate(n_real)]), atol=1e-5)
