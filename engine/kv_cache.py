"""A preallocated KV cache with one slot per running sequence, optionally stored as int8.

Buffers are (n_layer, n_slots, n_head, max_len, head_dim) and are written in place. A forward pass
works on a `SlotView`: the batch rows' slot ids and positions, which implements the model's
`update(layer, k, v, positions)`. When the batch's slots are consecutive (the scheduler keeps them
so where it can), keys and values are read as a slice of the buffer, with no gather copy.
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
        self.k_scale = self.v_scale = None
        if int8:  # one scale per (token, head): absmax over head_dim / 127
            self.k_scale = torch.zeros(shape[:-1] + (1,), dtype=dtype, device=device)
            self.v_scale = torch.zeros(shape[:-1] + (1,), dtype=dtype, device=device)
            # One layer's keys and values dequantized for attention, reused by every layer and step:
            # a fresh tensor per layer cost page faults that tripled a 100-row decode step.
            self.k_dequant = torch.zeros(shape[1:], dtype=dtype, device=device)
            self.v_dequant = torch.zeros(shape[1:], dtype=dtype, device=device)

    def bytes_per_token(self) -> int:
        """Cache bytes one token of one sequence occupies, over all layers, keys and values."""
        n_layer, _, n_head, _, head_dim = self.k.shape
        per_head = head_dim * self.k.element_size()
        if self.int8:
            per_head += self.k_scale.element_size()
        return 2 * n_layer * n_head * per_head

    def total_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._buffers())

    def _buffers(self) -> list[torch.Tensor]:
        return [self.k, self.v] + ([self.k_scale, self.v_scale] if self.int8 else [])

    def view(self, slots: list[int] | torch.Tensor, positions: torch.Tensor) -> "SlotView":
        return SlotView(self, slots, positions)

    def copy_prefix(self, src_slot: int, dst_slot: int, length: int) -> None:
        """Copy the first `length` cached positions of one slot into another (prefix reuse)."""
        if src_slot == dst_slot or length <= 0:
            return
        for buf in self._buffers():
            buf[:, dst_slot, :, :length] = buf[:, src_slot, :, :length]


class SlotView:
    """The cache as seen by one forward pass: row b of the batch lives in slot `slots[b]`."""

    def __init__(self, cache: KVCache, slots: list[int] | torch.Tensor, positions: torch.Tensor):
        if isinstance(slots, torch.Tensor):
            slots = slots.tolist()
        self.kv_len = int(positions.max()) + 1
        if self.kv_len > cache.max_len:
            raise ValueError(f"position {self.kv_len - 1} is past the cache length {cache.max_len}")
        self.cache, self.positions = cache, positions
        self.slot_index = torch.tensor(slots, device=positions.device)
        first = slots[0]
        # Consecutive slots are read as a slice (a view); others need a gather copy per layer.
        self.slot_range = slice(first, first + len(slots)) if slots == list(range(first, first + len(slots))) else None
        self.single = slots[0] if len(slots) == 1 else None
        self.first = int(positions[0, 0]) if self.single is not None else -1
        B, T = positions.shape
        if T == 1 and (B == 1 or bool((positions == self.kv_len - 1).all())):
            self.mask = None  # every row's query is the last cached position: nothing to hide
        else:
            key_pos = torch.arange(self.kv_len, device=positions.device)
            # (B, 1, T, S): a query attends to keys at positions up to its own; later cache rows are
            # stale. Additive and built once per forward (a boolean mask is converted in every layer).
            allowed = key_pos[None, None, None, :] <= positions[:, None, :, None]
            self.mask = torch.zeros(allowed.shape, dtype=cache.dtype, device=positions.device).masked_fill_(
                ~allowed, float("-inf"))

    def _store(self, buf, scale_buf, layer, x):
        if scale_buf is not None:
            scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127.0
            self._write(scale_buf, layer, scale)
            x = torch.round(x / scale)
        self._write(buf, layer, x)

    def _write(self, buf, layer, x):
        """x (B, H, T, D) into the rows' slots at their positions."""
        if self.single is not None and self.positions.shape[1] == int(self.positions[0, -1]) - self.first + 1:
            # One sequence, consecutive positions (every prefill, batch-1 decode): a slice copy.
            buf[layer, self.single, :, self.first:self.first + x.shape[2]] = x[0]
            return
        # (B, T, H, D): advanced indices on dims 0 and 2 put them first
        buf[layer][self.slot_index[:, None], :, self.positions] = x.transpose(1, 2).to(buf.dtype)

    def _load(self, buf, scale_buf, dequant, layer):
        rows = self.slot_range if self.slot_range is not None else self.slot_index
        x = buf[layer, rows, :, :self.kv_len]
        if scale_buf is None:
            return x
        out = dequant[:x.shape[0], :, :self.kv_len]
        return out.copy_(x).mul_(scale_buf[layer, rows, :, :self.kv_len])

    def update(self, layer, k, v, positions):
        c = self.cache
        self._store(c.k, c.k_scale, layer, k)
        self._store(c.v, c.v_scale, layer, v)
        k_all = self._load(c.k, c.k_scale, c.k_dequant if c.int8 else None, layer)
        v_all = self._load(c.v, c.v_scale, c.v_dequant if c.int8 else None, layer)
        return k_all, v_all, self.mask
