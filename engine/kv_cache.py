"""A preallocated KV cache with one slot per running sequence, optionally stored as int8.

Buffers are (n_layer, n_slots, n_head, max_len, head_dim) and are written in place. A forward pass
works on a `SlotView`: the batch rows' slot ids and positions, which implements the model's
`update(layer, k, v, positions)`.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, n_slots: int, n_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 int8: bool = False):
        self.n_slots, self.max_len, self.int8, self.dtype = n_slots, max_len, int8, dtype
        shape = (n_layer, n_slots, n_head, max_len, head_dim)
        store = torch.int8 if int8 else dtype
        self.k = torch.zeros(shape, dtype=store, device=device)
        self.v = torch.zeros(shape, dtype=store, device=device)
        if int8:  # one scale per (token, head): absmax over head_dim / 127
            self.k_scale = torch.zeros(shape[:-1] + (1,), dtype=dtype, device=device)
            self.v_scale = torch.zeros(shape[:-1] + (1,), dtype=dtype, device=device)

    def bytes_per_token(self) -> int:
        """Cache bytes one token of one sequence occupies, over all layers, keys and values."""
        n_layer, _, n_head, _, head_dim = self.k.shape
        per_head = head_dim * self.k.element_size()
        if self.int8:
            per_head += self.k_scale.element_size()
        return 2 * n_layer * n_head * per_head

    def view(self, slots: torch.Tensor, positions: torch.Tensor) -> "SlotView":
        return SlotView(self, slots, positions)

    def copy_prefix(self, src_slot: int, dst_slot: int, length: int) -> None:
        """Copy the first `length` cached positions of one slot into another (prefix reuse)."""
        if src_slot == dst_slot or length <= 0:
            return
        buffers = [self.k, self.v] + ([self.k_scale, self.v_scale] if self.int8 else [])
        for buf in buffers:
            buf[:, dst_slot, :, :length] = buf[:, src_slot, :, :length]


class SlotView:
    """The cache as seen by one forward pass: row b of the batch lives in slot `slots[b]`."""

    def __init__(self, cache: KVCache, slots: torch.Tensor, positions: torch.Tensor):
        if positions.max().item() >= cache.max_len:
            raise ValueError(f"position {positions.max().item()} is past the cache length {cache.max_len}")
        self.cache, self.slots, self.positions = cache, slots, positions
        self.kv_len = int(positions.max().item()) + 1
        key_pos = torch.arange(self.kv_len, device=positions.device)
        # (B, 1, T, S): a query attends to keys at positions up to its own; later cache rows are stale.
        self.mask = (key_pos[None, None, None, :] <= positions[:, None, :, None])
        # Batch 1 reads the slot as a view, with no gather copy.
        self.single = int(slots[0]) if slots.numel() == 1 else None

    def _store(self, buf, scale_buf, layer, x):
        rows, pos = self.slots[:, None], self.positions
        x = x.transpose(1, 2)  # (B, T, H, D): advanced indices on dims 0 and 2 put them first
        if scale_buf is None:
            buf[layer][rows, :, pos] = x.to(buf.dtype)
            return
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127.0
        buf[layer][rows, :, pos] = torch.round(x / scale).to(torch.int8)
        scale_buf[layer][rows, :, pos] = scale.to(scale_buf.dtype)

    def _load(self, buf, scale_buf, layer):
        if self.single is not None:
            x = buf[layer, self.single:self.single + 1, :, :self.kv_len]
            s = None if scale_buf is None else scale_buf[layer, self.single:self.single + 1, :, :self.kv_len]
        else:
            x = buf[layer][self.slots, :, :self.kv_len]
            s = None if scale_buf is None else scale_buf[layer][self.slots, :, :self.kv_len]
        return x if s is None else x.to(s.dtype) * s

    def update(self, layer, k, v, positions):
        c = self.cache
        self._store(c.k, c.k_scale if c.int8 else None, layer, k)
        self._store(c.v, c.v_scale if c.int8 else None, layer, v)
        k_all = self._load(c.k, c.k_scale if c.int8 else None, layer)
        v_all = self._load(c.v, c.v_scale if c.int8 else None, layer)
        return k_all, v_all, self.mask
