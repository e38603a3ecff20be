"""A paged KV cache: one pool of fixed-size blocks shared by every sequence (vLLM's block manager).

`KVCache` holds the tensors: keys and values of shape (n_layer, n_blocks, block_tokens, n_kv_head,
head_dim), token-major so that a run of consecutive blocks reads as one (positions, heads, dim)
view, optionally int8 with one scale per (token, head). A sequence holds a `BlockTable`: position p
lives in block `blocks[p // block_tokens]` at offset `p % block_tokens`. Each forward gets a
`PagedBatch` (the rows' block tables and positions), which implements the model's
`attend(layer, q, k, v)`: it writes this step's keys and values and attends over each row's cached
ones. The compiled kernels read the same tensors where they lie (`layout()`): `k[layer, block]`,
`k_scale[layer, block]` (int8) and the rows' block tables.

`BlockPool` is the bookkeeping alone: it hands out and takes back block ids (ref-counted); it
never decides who runs. Prefix reuse works on full blocks: a full block is named by a hash chain
over its tokens and every token before it, so one block serves every sequence that starts with the
same tokens, and many files' prefixes stay cached at once. A block nobody holds stays cached until
a new block is needed and no unused block is left; then the least recently released goes.
Block 0 is never handed out: padding tokens write there.
"""
from __future__ import annotations

import heapq
import math
import mmap
from collections import OrderedDict
from dataclasses import dataclass, field

import ctypes

import torch

from . import kernels

NULL_BLOCK = 0
KERNEL_MAX_QUERIES = 16  # wider rows (prefill) are compute-bound: SDPA's blocked kernel does better


@dataclass
class BlockTable:
    """One sequence's blocks; `hashes` names its leading full blocks whose tokens are final."""
    blocks: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)


class BlockPool:
    def __init__(self, n_blocks: int, block_tokens: int):
        if n_blocks < 2 or block_tokens < 1:
            raise ValueError(f"a pool needs at least 2 blocks of at least 1 token, got {n_blocks} x {block_tokens}")
        self.n_blocks, self.block_tokens = n_blocks, block_tokens
        self.ref_count = [0] * n_blocks
        self.key: list[tuple | None] = [None] * n_blocks   # (parent hash, tokens) of a cached block
        self.hash_of: list[int | None] = [None] * n_blocks
        self.cached: dict[int, int] = {}                    # chain hash -> block id
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, held by nobody; LRU first
        self._unused_heap = list(range(1, n_blocks))         # a heap, lowest id first; may hold stale ids
        self._is_unused = [False] + [True] * (n_blocks - 1)
        self._n_unused = n_blocks - 1

    # ---- counts -----------------------------------------------------------------------------
    def available(self) -> int:
        """Blocks a sequence could get now: unused plus cached but held by nobody."""
        return self._n_unused + len(self.evictable)

    def held(self) -> int:
        """Blocks some sequence holds."""
        return self.n_blocks - 1 - self.available()

    def blocks_for(self, n_positions: int) -> int:
        return -(-n_positions // self.block_tokens)

    # ---- handing out and taking back ----------------------------------------------------------
    def claim_prefix(self, tokens: list[int]) -> BlockTable:
        """A table holding the cached full blocks `tokens` starts with, all but the last token's
        (that one is always recomputed, for its logits)."""
        table, parent = BlockTable(), 0
        bt = self.block_tokens
        for i in range((len(tokens) - 1) // bt):
            key = (parent, tuple(tokens[i * bt:(i + 1) * bt]))
            h = hash(key)
            block = self.cached.get(h)
            if block is None or self.key[block] != key:
                break
            self._take(block)
            table.blocks.append(block)
            table.hashes.append(h)
            parent = h
        return table

    def grow(self, table: BlockTable, n_positions: int) -> bool:
        """Give `table` blocks for its first n_positions; all or nothing. A new block is the one
        after the table's last where that one is unused, so a lone sequence stays one run."""
        need = self.blocks_for(n_positions) - len(table.blocks)
        if need <= 0:
            return True
        if need > self.available():
            return False
        for _ in range(need):
            table.blocks.append(self._allocate(table.blocks[-1] + 1 if table.blocks else None))
        return True

    def seal(self, table: BlockTable, tokens: list[int], n_final: int) -> None:
        """Name the table's full blocks among the first n_final tokens (their KV is written and
        will not change), so later sequences can share them."""
        bt = self.block_tokens
        for i in range(len(table.hashes), n_final // bt):
            parent = table.hashes[-1] if table.hashes else 0
            key = (parent, tuple(tokens[i * bt:(i + 1) * bt]))
            h = hash(key)
            table.hashes.append(h)
            block = table.blocks[i]
            if h not in self.cached and self.hash_of[block] is None:
                self.cached[h], self.key[block], self.hash_of[block] = block, key, h

    def release(self, table: BlockTable) -> None:
        """Give back every block of `table`; cached ones stay findable until evicted."""
        for block in reversed(table.blocks):  # the tail first: evicted before the shared prefix
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                if self.hash_of[block] is not None:
                    self.evictable[block] = None
                else:
                    self._is_unused[block] = True
                    self._n_unused += 1
                    heapq.heappush(self._unused_heap, block)
        table.blocks, table.hashes = [], []

    def truncate(self, table: BlockTable, n_positions: int) -> None:
        """Drop the blocks past the first n_positions (a draft that was not accepted)."""
        keep = self.blocks_for(n_positions)
        extra = table.blocks[keep:]
        if extra:
            del table.blocks[keep:]
            self.release(BlockTable(extra))

    def _take(self, block: int) -> None:
        if self.ref_count[block] == 0:
            self.evictable.pop(block, None)
        self.ref_count[block] += 1

    def _allocate(self, prefer: int | None) -> int:
        if prefer is not None and prefer < self.n_blocks and self._is_unused[prefer]:
            block = prefer
        else:
            while self._unused_heap and not self._is_unused[self._unused_heap[0]]:
                heapq.heappop(self._unused_heap)  # stale: taken as someone's preferred block
            if self._n_unused:
                block = heapq.heappop(self._unused_heap)
            else:
                block, _ = self.evictable.popitem(last=False)
                del self.cached[self.hash_of[block]]
                self.key[block] = self.hash_of[block] = None
        if self._is_unused[block]:
            self._is_unused[block] = False
            self._n_unused -= 1
        self.ref_count[block] = 1
        return block


class KVCache:
    def __init__(self, n_layer: int, n_blocks: int, block_tokens: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", int8: bool = False,
                 kernel: bool = True):
        self.n_layer, self.n_blocks, self.block_tokens = n_layer, n_blocks, block_tokens
        self.n_kv_head, self.head_dim, self.int8, self.dtype = n_kv_head, head_dim, int8, dtype
        self.device = torch.device(device)
        shape = (n_layer, n_blocks, block_tokens, n_kv_head, head_dim)
        store = torch.int8 if int8 else dtype
        self.k = lazy_zeros(shape, store, self.device)
        self.v = lazy_zeros(shape, store, self.device)
        self.k_scale = self.v_scale = None
        if int8:  # one scale per (token, head): absmax over head_dim / 127
            self.k_scale = lazy_zeros(shape[:-1] + (1,), dtype, self.device)
            self.v_scale = lazy_zeros(shape[:-1] + (1,), dtype, self.device)
        # Gathered (and dequantized) keys and values, reused by every layer and step: a fresh
        # tensor per layer cost page faults that tripled a 100-row decode step.
        self._scratch: dict[str, torch.Tensor] = {}
        # Few-query steps (decode, draft verification) read the blocks with the decode kernel's
        # attention (engine/decode_kernel.c `paged_attention`) where it builds.
        self.kernel = None
        if kernel and self.device.type == "cpu" and dtype == torch.float32:
            self.kernel = kernels.decode_kernel()
            self._layout = self.layout()

    @classmethod
    def sized(cls, megabytes: float, n_layer: int, block_tokens: int, n_kv_head: int, head_dim: int,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              int8: bool = False, kernel: bool = True) -> "KVCache":
        """As many blocks as fit in `megabytes` (at least 2)."""
        per_token = bytes_per_token(n_layer, n_kv_head, head_dim, dtype, int8)
        n_blocks = max(2, int(megabytes * 2**20) // (per_token * block_tokens))
        return cls(n_layer, n_blocks, block_tokens, n_kv_head, head_dim, dtype, device, int8, kernel)

    def bytes_per_token(self) -> int:
        """Cache bytes one token of one sequence occupies, over all layers, keys and values."""
        return bytes_per_token(self.n_layer, self.n_kv_head, self.head_dim, self.dtype, self.int8)

    def total_bytes(self) -> int:
        tensors = [self.k, self.v] + ([self.k_scale, self.v_scale] if self.int8 else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch(self, tables: list[list[int]], positions: torch.Tensor, n_real: list[int] | None = None,
              window: int | None = None) -> "PagedBatch":
        """The cache as one forward sees it: row b's tokens sit at positions[b] (B, T) of the
        sequence whose blocks are tables[b]; only its first n_real[b] tokens are real (the rest
        pad the row and write to the null block)."""
        return PagedBatch(self, tables, positions, n_real, window)

    def layout(self) -> kernels.KVLayout:
        """The pool as the C kernels read it (pointers into these tensors: valid while they live)."""
        return block_pool_layout(self.k, self.v, self.k_scale, self.v_scale)

    def attend_compiled(self, layer: int, q: torch.Tensor, tables: torch.Tensor, positions: torch.Tensor,
                        n_real: torch.Tensor, window: int | None) -> torch.Tensor:
        """q (B, H, T, D) float32 over `layer`'s blocks of the rows' tables (B, max_blocks), their
        keys and values of this step already stored; (B, H, T, D), padding queries zero."""
        B, H, T, D = q.shape
        q = q.transpose(1, 2).contiguous()  # (B, T, H, D): a query's heads side by side, as the kernel reads them
        out = torch.empty_like(q)
        self.kernel.paged_attention(ctypes.byref(self._layout), layer, q.data_ptr(), H * D, positions.data_ptr(), B, T,
                                    n_real.data_ptr(), tables.data_ptr(), tables.shape[1], H, self.n_kv_head, D,
                                    window or 0, out.data_ptr(), kernels.threads())
        return out.transpose(1, 2)

    def scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        buf = self._scratch.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = torch.empty(max(n, buf.numel() if buf is not None else 0), dtype=dtype, device=self.device)
            self._scratch[name] = buf
        return buf[:n].view(shape)


def block_pool_layout(k: torch.Tensor, v: torch.Tensor, k_scale: torch.Tensor | None = None,
                      v_scale: torch.Tensor | None = None) -> kernels.KVLayout:
    """A paged pool: k, v (n_layer, n_blocks, block_tokens, n_kv_head, head_dim), token-major, fp32
    or int8 with scales (n_layer, n_blocks, block_tokens, n_kv_head, 1); rows pass block tables."""
    ss = k_scale.stride() if k_scale is not None else (0, 0, 0, 0, 0)
    return kernels.KVLayout(k.data_ptr(), v.data_ptr(), kernels.address(k_scale), kernels.address(v_scale),
                            k.stride(0), k.stride(1), k.stride(2), k.stride(3), ss[0], ss[1], ss[2], ss[3],
                            k.shape[2], int(k.dtype == torch.int8))


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros whose memory becomes resident only as it is written. On the CPU an anonymous mapping
    (the kernel's zero pages): torch.zeros writes every byte, which made each engine's whole pool
    resident at load (a test run of many engines was killed for memory)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    n = math.prod(shape)
    buffer = mmap.mmap(-1, max(1, n * torch.empty((), dtype=dtype).element_size()))
    return torch.frombuffer(buffer, dtype=dtype, count=n).view(shape)


def bytes_per_token(n_layer: int, n_kv_head: int, head_dim: int, dtype: torch.dtype, int8: bool) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_head = head_dim + itemsize if int8 else head_dim * itemsize
    return 2 * n_layer * n_kv_head * per_head


class PagedBatch:
    """One forward's rows over the pool. With a few queries a row and the C kernel built, attention
    reads each row's blocks where they are. Otherwise keys are read as one slice when there is one
    row whose blocks are consecutive (a lone sequence usually is), or each row's blocks are
    gathered into a padded (B, S) batch, and the mask hides what a row must not see."""

    def __init__(self, cache: KVCache, tables: list[list[int]], positions: torch.Tensor,
                 n_real: list[int] | None, window: int | None):
        B, T = positions.shape
        bt = cache.block_tokens
        self.cache, self.positions = cache, positions
        pos = positions.tolist()
        last = [row[(n_real[b] if n_real else T) - 1] for b, row in enumerate(pos)]
        self.kv_len = max(last) + 1
        n_blocks = -(-self.kv_len // bt)
        for b, table in enumerate(tables):
            if len(table) * bt <= last[b]:
                raise ValueError(f"row {b}: position {last[b]} is past its {len(table)} blocks")
        # Where each token's key and value go: a flat index into (n_blocks * block_tokens).
        slots = []
        for b, row in enumerate(pos):
            real = n_real[b] if n_real else T
            table = tables[b]
            slots.extend(table[p // bt] * bt + p % bt if t < real else NULL_BLOCK * bt
                         for t, p in enumerate(row))
        self.slots = torch.tensor(slots, device=positions.device)
        self.window = window
        first = tables[0][0]
        self.run = B == 1 and tables[0][:n_blocks] == list(range(first, first + n_blocks))
        self.first_block = first
        # A lone fp32 row whose blocks are one run reads as a slice: SDPA's kernel is faster there.
        self.kernel = cache.kernel if T <= KERNEL_MAX_QUERIES and not (self.run and not cache.int8) else None
        if self.kernel is not None:
            width = max(len(t) for t in tables)
            self.tables = torch.tensor([t + [NULL_BLOCK] * (width - len(t)) for t in tables], dtype=torch.int64)
            self.n_real = torch.tensor(n_real or [T] * B, dtype=torch.int64)
            self.positions = positions.to(torch.int64).contiguous()
            return
        if not self.run:
            padded = [t[:n_blocks] + [NULL_BLOCK] * (n_blocks - len(t[:n_blocks])) for t in tables]
            self.block_index = torch.tensor(padded, device=positions.device).view(-1)
        self.n_keys = self.kv_len if self.run else n_blocks * bt
        if T == 1 and window is None and (B == 1 or len(set(last)) == 1) and self.n_keys == self.kv_len:
            self.mask = None  # every row's query is its last cached position: nothing to hide
        else:
            key_pos = torch.arange(self.n_keys, device=positions.device)
            # (B, 1, T, S): a query attends to keys at positions up to its own (and within the
            # window); later rows of a block are stale. Additive, built once per forward.
            allowed = key_pos[None, None, None, :] <= positions[:, None, :, None]
            if window is not None:
                allowed &= key_pos[None, None, None, :] > positions[:, None, :, None] - window
            self.mask = torch.zeros(allowed.shape, dtype=cache.dtype, device=positions.device).masked_fill_(
                ~allowed, float("-inf"))

    def _store(self, buf: torch.Tensor, scale_buf: torch.Tensor | None, layer: int, x: torch.Tensor) -> None:
        """x (B, H_kv, T, D) into the pool at the rows' slots."""
        c = self.cache
        x = x.transpose(1, 2).reshape(-1, c.n_kv_head, c.head_dim)
        if scale_buf is not None:
            scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127.0
            scale_buf[layer].view(-1, c.n_kv_head, 1).index_copy_(0, self.slots, scale.to(scale_buf.dtype))
            x = torch.round(x / scale)
        buf[layer].view(-1, c.n_kv_head, c.head_dim).index_copy_(0, self.slots, x.to(buf.dtype))

    def _load(self, name: str, buf: torch.Tensor, scale_buf: torch.Tensor | None, layer: int) -> torch.Tensor:
        """(B, H_kv, S, D) keys or values of every row."""
        c = self.cache
        H, D = c.n_kv_head, c.head_dim
        if self.run:
            blocks = slice(self.first_block, self.first_block + -(-self.kv_len // c.block_tokens))
            x = buf[layer, blocks].view(-1, H, D)[:self.kv_len]
            if scale_buf is not None:
                out = c.scratch(name, (self.kv_len, H, D), c.dtype)
                x = out.copy_(x).mul_(scale_buf[layer, blocks].view(-1, H, 1)[:self.kv_len])
            return x.unsqueeze(0).transpose(1, 2)
        B = self.positions.shape[0]
        shape = (self.block_index.numel(), c.block_tokens, H, D)
        if scale_buf is None:
            x = torch.index_select(buf[layer], 0, self.block_index, out=c.scratch(name, shape, c.dtype))
        else:
            quantized = torch.index_select(buf[layer], 0, self.block_index, out=c.scratch(name + "8", shape, torch.int8))
            scale = torch.index_select(scale_buf[layer], 0, self.block_index,
                                       out=c.scratch(name + "s", shape[:-1] + (1,), c.dtype))
            x = c.scratch(name, shape, c.dtype).copy_(quantized).mul_(scale)
        return x.view(B, -1, H, D).transpose(1, 2)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v (B, H_kv, T, D) for this step; attend q (B, H, T, D) over each row's keys."""
        c = self.cache
        self._store(c.k, c.k_scale, layer, k)
        self._store(c.v, c.v_scale, layer, v)
        if self.kernel is not None:
            return c.attend_compiled(layer, q, self.tables, self.positions, self.n_real, self.window)
        keys = self._load("k", c.k, c.k_scale, layer).to(q.dtype)
        values = self._load("v", c.v, c.v_scale, layer).to(q.dtype)
        return torch.nn.functional.scaled_dot_product_attention(
            q, keys, values, attn_mask=self.mask, enable_gqa=q.shape[1] != keys.shape[1])
