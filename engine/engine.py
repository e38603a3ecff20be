"""The Engine: one scheduler thread steps every running sequence together (continuous batching).

Requests join between steps (prefill), leave when finished or cancelled, and a request whose
prompt starts with tokens a free slot already holds reuses them (prefix reuse). The hot path is a
ladder: `_prefill` -> `_decode_step` -> `_emit`.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

import torch

from .kv_cache import KVCache
from .model import GPT
from .model_dir import default_model_dir, load_model_dir
from .sampling import SamplingParams, sample_token
from .tokenizer import Tokenizer


class EngineBusy(RuntimeError):
    """The request queue is full; front ends answer 429/busy."""


@dataclass
class Chunk:
    text: str                      # new text since the previous chunk
    tokens: int                    # tokens generated so far
    finish_reason: str | None = None


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str
    prompt_tokens: int = 0
    time_to_first_token: float = 0.0
    reused_tokens: int = 0


@dataclass
class EngineConfig:
    max_batch: int = 32            # KV-cache slots = sequences decoded together
    max_queue: int = 256           # waiting requests beyond which submit raises EngineBusy
    kv_int8: bool = False


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_chunk: Callable[[Chunk], None]
    generator: torch.Generator | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    slot: int = -1
    position: int = 0              # where the next token goes
    output_ids: list[int] = field(default_factory=list)
    pending: bytes = b""           # decoded bytes not yet a complete UTF-8 character
    text: str = ""
    emitted: int = 0               # characters of `text` already sent
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    reused_tokens: int = 0

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    def __init__(self, model: GPT, tokenizer: Tokenizer, device: str = "cpu",
                 config: EngineConfig | None = None, model_name: str = "code-assistant"):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, torch.device(device)
        self.config = config or EngineConfig()
        self.model_name = model_name
        c = model.config
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.cache = KVCache(c.n_layer, self.config.max_batch, c.n_head, c.n_embd // c.n_head, c.block_size,
                             dtype=dtype, device=self.device, int8=self.config.kv_int8)
        self.slot_tokens: list[list[int]] = [[] for _ in range(self.config.max_batch)]  # what each slot holds
        self.running: dict[int, Request] = {}
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.stats = {"requests": 0, "prefix_hits": 0, "prefix_tokens_reused": 0, "tokens_generated": 0}
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str = "cpu", quantize: str | None = None,
             config: EngineConfig | None = None) -> "Engine":
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        model, tokenizer, meta = load_model_dir(model_dir)
        if quantize not in (None, "none", "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        if quantize == "int8" and device == "cpu":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        model = model.to(device)
        name = meta.get("name") or model_dir.name
        return cls(model, tokenizer, device, config, model_name=name)

    # ---- public API -------------------------------------------------------------------------
    def build_prompt(self, prompt: str, suffix: str | None, max_tokens: int) -> list[int]:
        """Token ids for a plain or FIM prompt, trimmed from the far ends to leave room to generate."""
        budget = max(1, self.model.config.block_size - min(max_tokens, self.model.config.block_size // 2))
        if suffix is None:
            ids = self.tokenizer.encode(prompt)
            return ids[-budget:] if ids else [self.tokenizer.eot_id]
        pre, suf = self.tokenizer.encode(prompt), self.tokenizer.encode(suffix)
        room = budget - 3
        keep_suf = min(len(suf), room // 4 if len(pre) > room - room // 4 else room - len(pre))
        keep_pre = min(len(pre), room - keep_suf)
        t = self.tokenizer
        return ([t.fim_prefix_id] + pre[len(pre) - keep_pre:] + [t.fim_suffix_id] + suf[:keep_suf]
                + [t.fim_middle_id])

    def submit(self, prompt: str, suffix: str | None, params: SamplingParams,
               on_chunk: Callable[[Chunk], None]) -> Request:
        if self.waiting.qsize() >= self.config.max_queue:
            raise EngineBusy(f"queue full ({self.config.max_queue} waiting)")
        ids = self.build_prompt(prompt, suffix, params.max_tokens)
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**63))
        request = Request(ids, params, on_chunk, generator)
        self.waiting.put(request)
        self._wake.set()
        return request

    def complete(self, prompt: str, suffix: str | None = None, params: SamplingParams | None = None) -> Completion:
        params = params or SamplingParams()
        done = threading.Event()
        parts: list[Chunk] = []

        def on_chunk(chunk: Chunk) -> None:
            parts.append(chunk)
            if chunk.finish_reason:
                done.set()

        request = self.submit(prompt, suffix, params, on_chunk)
        done.wait()
        return self._completion(request, parts)

    async def stream(self, prompt: str, suffix: str | None = None,
                     params: SamplingParams | None = None) -> AsyncIterator[Chunk]:
        params = params or SamplingParams()
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Chunk] = asyncio.Queue()
        request = self.submit(prompt, suffix, params, lambda c: loop.call_soon_threadsafe(chunks.put_nowait, c))
        try:
            while True:
                chunk = await chunks.get()
                yield chunk
                if chunk.finish_reason:
                    return
        finally:
            request.cancel()  # client gone or done: frees the slot at the next step
            self._wake.set()

    def queue_depth(self) -> int:
        return self.waiting.qsize()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)

    # ---- scheduler --------------------------------------------------------------------------
    def _completion(self, request: Request, parts: list[Chunk]) -> Completion:
        ttft = (request.first_token_at - request.submitted) if request.first_token_at else 0.0
        return Completion("".join(p.text for p in parts), len(request.output_ids), parts[-1].finish_reason,
                          len(request.prompt_ids), ttft, request.reused_tokens)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop:
            if not self.running and self.waiting.empty():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            self._admit()
            self._drop_cancelled()
            if self.running:
                self._decode_step()

    def _free_slots(self) -> list[int]:
        return [s for s in range(self.config.max_batch) if s not in self.running]

    def _admit(self) -> None:
        free = self._free_slots()
        while free and not self.waiting.empty():
            request = self.waiting.get_nowait()
            if request.cancelled.is_set():
                self._finish(request, "cancelled")
                continue
            slot, reused = self._best_slot(request.prompt_ids, free)
            free.remove(slot)
            self._prefill(request, slot, reused)

    def _best_slot(self, ids: list[int], free: list[int]) -> tuple[int, int]:
        """The free slot holding the longest prefix of `ids` (at least one token is always recomputed)."""
        best, best_len = free[0], 0
        for slot in free:
            held = self.slot_tokens[slot]
            n = 0
            limit = min(len(held), len(ids) - 1)
            while n < limit and held[n] == ids[n]:
                n += 1
            if n > best_len:
                best, best_len = slot, n
        return best, best_len

    def _prefill(self, request: Request, slot: int, reused: int) -> None:
        request.slot, request.reused_tokens = slot, reused
        if reused:
            self.stats["prefix_hits"] += 1
            self.stats["prefix_tokens_reused"] += reused
        self.stats["requests"] += 1
        new = request.prompt_ids[reused:]
        idx = torch.tensor([new], device=self.device)
        positions = torch.arange(reused, len(request.prompt_ids), device=self.device).unsqueeze(0)
        slots = torch.tensor([slot], device=self.device)
        logits = self.model(idx, positions, self.cache.view(slots, positions), last_only=True)[0, -1]
        self.slot_tokens[slot] = list(request.prompt_ids)
        request.position = len(request.prompt_ids)
        self.running[slot] = request
        self._accept(request, sample_token(logits, request.params, request.generator))

    def _decode_step(self) -> None:
        requests = list(self.running.values())
        idx = torch.tensor([[r.output_ids[-1]] for r in requests], device=self.device)
        positions = torch.tensor([[r.position - 1] for r in requests], device=self.device)
        slots = torch.tensor([r.slot for r in requests], device=self.device)
        logits = self.model(idx, positions, self.cache.view(slots, positions))[:, -1]
        for row, request in enumerate(requests):
            self._accept(request, sample_token(logits[row], request.params, request.generator))

    def _accept(self, request: Request, token: int) -> None:
        """Record a sampled token (its KV is written by the next forward) and emit text."""
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        if token == self.tokenizer.eot_id or token in self.tokenizer.special_ids:
            return self._finish(request, "stop")
        request.output_ids.append(token)
        self.slot_tokens[request.slot].append(token)
        request.position += 1
        self.stats["tokens_generated"] += 1
        request.pending += self.tokenizer.decode_bytes([token])
        text, request.pending = _split_utf8(request.pending)
        request.text += text
        for stop in request.params.stop:
            cut = request.text.find(stop, max(0, request.emitted - len(stop)))
            if cut != -1:
                request.text = request.text[:cut]
                return self._finish(request, "stop")
        if len(request.output_ids) >= request.params.max_tokens or request.position >= self.model.config.block_size:
            return self._finish(request, "length")
        # Hold back a tail that could be the start of a stop string.
        hold = max((len(s) - 1 for s in request.params.stop), default=0)
        safe = len(request.text) - hold
        if safe > request.emitted:
            request.on_chunk(Chunk(request.text[request.emitted:safe], len(request.output_ids)))
            request.emitted = safe

    def _finish(self, request: Request, reason: str) -> None:
        if request.slot >= 0:
            self.running.pop(request.slot, None)
            # The slot's KV is valid for every token but the last sampled one (never forwarded).
            held = self.slot_tokens[request.slot]
            self.slot_tokens[request.slot] = held[:max(0, request.position - 1)]
        if reason != "cancelled" and request.pending:
            request.text += request.pending.decode("utf-8", errors="replace")
            request.pending = b""
        request.on_chunk(Chunk(request.text[request.emitted:], len(request.output_ids), reason))
        request.emitted = len(request.text)

    def _drop_cancelled(self) -> None:
        for request in [r for r in self.running.values() if r.cancelled.is_set()]:
            self._finish(request, "cancelled")


def _split_utf8(data: bytes) -> tuple[str, bytes]:
    """Decode the longest complete UTF-8 prefix; keep an incomplete trailing character for later."""
    for cut in range(len(data), max(-1, len(data) - 4), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError as e:
            if e.reason == "invalid start byte" or e.start < cut - 3:
                break
    return data.decode("utf-8", errors="replace"), b""
