"""The Engine: one scheduler thread steps every running sequence together (continuous batching).

Requests wait in a bounded queue, join between steps (`_prefill`), and leave when finished or
cancelled. A request whose prompt starts with tokens some slot already holds reuses their keys and
values (prefix reuse): in place when that slot is free, by copy when it is busy. The hot path reads
as a ladder: `_prefill` -> `_decode_step` -> `_choose_tokens` -> `_accept` -> `_emit`.
"""
from __future__ import annotations

import asyncio
import atexit
import codecs
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

import torch

from .cache_model import DEFAULT_WEIGHT, CacheModel, NgramCache
from .fast_decode import MAX_QUERIES, FastDecoder, slot_cache_layout
from .healing import HealingMasks, split_heal
from .kv_cache import KVCache
from .model import Transformer
from .model_dir import default_model_dir, load_model_dir, load_tokenizer_from_dir
from .prompt import ContextFile, PromptBuilder
from .sampling import SamplingParams, choose_tokens
from .tokenizer import Tokenizer

log = logging.getLogger("engine")


class EngineBusy(RuntimeError):
    """The request queue is full; front ends answer 429/busy."""


class EngineError(RuntimeError):
    """The engine failed on a request (closed, or an internal error in the scheduler)."""


# What a request that failed inside a step is told; the exception itself goes to the log only.
INTERNAL_ERROR = "internal error in the engine while generating this request"


@dataclass
class Chunk:
    text: str                      # new text since the previous chunk
    tokens: int                    # tokens generated so far
    finish_reason: str | None = None   # at the end: "stop" | "length" | "cancelled" ("error": see EngineError)


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
    kv_int8: bool = False          # int8 keys/values with a scale per (token, head): ~3.6x less cache memory
    prefix_reuse: bool = True
    token_healing: bool = True     # engine/healing.py
    # Prompt tokens a request may use at most (0: the model's whole context): bounds prefill time
    # for models with long contexts.
    context_tokens: int = 0
    # Weight of the per-request n-gram cache model mixed into decoding (engine/cache_model.py) when
    # SamplingParams.cache_weight is None; 0 turns it off.
    cache_weight: float = DEFAULT_WEIGHT
    # The compiled CPU kernels (engine/decode_kernel.c, built at first use): the int8 matmul and a
    # decode step in one call (engine/fast_decode.py). False runs the same int8 arithmetic in
    # PyTorch; without a compiler that happens anyway, with the reason logged.
    kernels: bool = True


# Maps (request, one row of next-token logits) -> logits row; called for every step of that request
# before the token is chosen (a per-sequence model mixed into decoding plugs in here).
LogitsProcessor = Callable[["Request", torch.Tensor], torch.Tensor]


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_chunk: Callable[[Chunk], None]
    generator: torch.Generator | None = None
    logits_processor: LogitsProcessor | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    slot: int = -1
    position: int = 0              # tokens in the slot, the last (just sampled) one not yet forwarded
    output_ids: list[int] = field(default_factory=list)
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    text: str = ""
    emitted: int = 0               # characters of `text` already sent
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    reused_tokens: int = 0
    error: str | None = None
    heal: bytes = b""              # bytes the next tokens must still spell (token healing)
    skip_bytes: int = 0            # leading output bytes the user already has (the healed token)
    healing_tokens: int = 0        # generated tokens that only re-spelled the healed text

    @property
    def generated(self) -> int:
        """Tokens that produced new text: what max_tokens limits and usage reports."""
        return len(self.output_ids) - self.healing_tokens

    def cancel(self) -> None:
        """Finish the request with "cancelled"; its slot is freed before the next decode step."""
        self.cancelled.set()


class Engine:
    """Continuous-batching inference over one model.

    `stats` (a fresh dict on each read) holds what the HTTP metrics export:
      queue_depth            requests waiting for a slot (gauge)
      running_batch_size     sequences in the current decode batch (gauge)
      kv_cache_usage_ratio   slots held by running sequences / slots (gauge, 0..1; a running sequence
                             owns its whole preallocated slot)
      prefix_cache_lookups   admitted requests that looked for a cached prefix (counter)
      prefix_cache_hits      of those, how many reused at least one cached token (counter)
      prefix_tokens_reused   prompt tokens not recomputed thanks to reuse (counter)
      tokens_generated       tokens emitted over all requests (counter)
      requests               requests admitted (counter)
      kv_bytes_per_token     KV-cache bytes one cached token takes (constant)
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, device: str = "cpu",
                 config: EngineConfig | None = None, model_name: str = "code-assistant"):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, torch.device(device)
        self.config = config or EngineConfig()
        if self.config.max_batch < 1 or self.config.max_queue < 0:
            raise ValueError("EngineConfig needs max_batch >= 1 and max_queue >= 0")
        self.model_name = model_name
        c = model.config
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.cache = KVCache(c.n_layer, self.config.max_batch, c.n_kv_head, c.head_dim, c.block_size,
                             dtype=dtype, device=self.device, int8=self.config.kv_int8)
        self.prompts = PromptBuilder(tokenizer, c.block_size, self.config.context_tokens)
        self.fast = FastDecoder.build(model, self.device) if self.config.kernels else None
        self._layout = slot_cache_layout(self.cache) if self.fast is not None else None
        self.slot_tokens: list[list[int]] = [[] for _ in range(self.config.max_batch)]  # tokens whose KV is valid
        self.slot_used_at = [0.0] * self.config.max_batch
        self.running: dict[int, Request] = {}
        self._waiting: deque[Request] = deque()
        self._lock = threading.Lock()
        self._counters = {"requests": 0, "prefix_cache_lookups": 0, "prefix_cache_hits": 0,
                          "prefix_tokens_reused": 0, "tokens_generated": 0}
        self._token_bytes = tokenizer.token_bytes()
        self._heal_mask = HealingMasks(self._token_bytes, tokenizer.n_vocab, self.device)
        self._snippet_caches: dict[str, NgramCache] = {}
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # stop the scheduler before the interpreter tears torch down

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str = "cpu", quantize: str | None = "int8",
             config: EngineConfig | None = None) -> "Engine":
        """Load a model directory (Hugging Face or this project's, float or int8). quantize="int8"
        runs int8 weights, None/"none" float ones."""
        if quantize not in (None, "none", "int8"):
            raise ValueError(f"quantize must be 'int8', 'none' or None, got {quantize!r}")
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        dtype = torch.float32
        if torch.device(device).type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if quantize == "int8":
            from .quantize import load_int8_model

            model, info = load_int8_model(model_dir, device, dtype, use_kernels=(config or EngineConfig()).kernels)
            tokenizer = load_tokenizer_from_dir(info)
        else:
            model, tokenizer, info = load_model_dir(model_dir, dtype)
            model = model.to(device=device)
        return cls(model, tokenizer, device, config, model_name=info.name)

    # ---- public API -------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        """Positions a sequence may use: prompt and generated tokens together."""
        return self.model.config.block_size

    def prompt_budget(self, max_tokens: int) -> int:
        """Prompt tokens a request that generates up to `max_tokens` may use."""
        return self.prompts.budget(max_tokens)

    def build_prompt(self, prompt: str, suffix: str | None, max_tokens: int, files: list | tuple = (),
                     path: str | None = None, max_prompt_tokens: int | None = None) -> list[int]:
        """Token ids of the family's layout for a plain or FIM prompt with neighbouring files,
        trimmed from the far ends to leave room to generate (engine/prompt.py)."""
        return self.prompts.build(prompt, suffix, max_tokens, context_files(files), path, max_prompt_tokens)

    def _heal_prompt(self, prompt: str) -> tuple[str, bytes]:
        if not self.config.token_healing:
            return prompt, b""
        return split_heal(prompt, self.tokenizer.split)

    def cache_model(self, prefix: str, suffix: str | None, extra_context: list | None,
                    weight: float | None) -> CacheModel | None:
        """The per-request n-gram cache over the whole prefix, suffix and neighbouring files (not
        only the part of them that fits the network's context)."""
        weight = self.config.cache_weight if weight is None else weight
        if weight <= 0:
            return None
        t = self.tokenizer
        history = t.encode(prefix)
        contexts = [history] + ([t.encode(suffix)] if suffix else [])
        shared = [self._snippet_cache(f.text) for f in context_files(extra_context)]
        return CacheModel(contexts, history, weight, shared=shared)

    def _snippet_cache(self, text: str) -> NgramCache:
        """A read-only cache of one snippet, kept for the next request: editors send the same
        neighbouring files keystroke after keystroke."""
        with self._lock:
            cache = self._snippet_caches.pop(text, None)
        if cache is None:
            cache = NgramCache()
            cache.add_sequence(self.tokenizer.encode(text))
        with self._lock:
            self._snippet_caches[text] = cache  # re-inserted last: least recently used goes first
            while len(self._snippet_caches) > 64:
                self._snippet_caches.pop(next(iter(self._snippet_caches)))
        return cache

    def submit(self, prompt: str, suffix: str | None, params: SamplingParams,
               on_chunk: Callable[[Chunk], None], logits_processor: LogitsProcessor | None = None,
               extra_context: list | None = None, path: str | None = None,
               max_prompt_tokens: int | None = None) -> Request:
        """Queue a request; `on_chunk` is called from the scheduler thread. Raises EngineBusy when full.

        `prompt` and `suffix` are the text before and after the cursor, whole: the engine decides
        what fits. `extra_context` (ContextFile, {"path", "text"} dicts or strings: neighbouring
        files, most relevant first) goes into the prompt as far as the budget allows and into the
        cache model whole; `path` names the file being completed; `max_prompt_tokens` lowers the
        prompt budget for this request.
        """
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if self._stop:
            raise EngineError("the engine is closed")
        files = context_files(extra_context)
        kept, heal = self._heal_prompt(prompt)
        ids = self.prompts.build(kept, suffix, params.max_tokens, files, path, max_prompt_tokens)
        generator = None
        if not params.greedy:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(params.seed if params.seed is not None else time.time_ns() % 2**63)
        if logits_processor is None:
            logits_processor = self.cache_model(kept, suffix, files, params.cache_weight)
        request = Request(ids, params, on_chunk, generator, logits_processor, heal=heal, skip_bytes=len(heal))
        with self._lock:
            if len(self._waiting) >= self.config.max_queue:
                raise EngineBusy(f"queue full ({self.config.max_queue} waiting)")
            self._waiting.append(request)
        self._wake.set()
        return request

    def complete(self, prompt: str, suffix: str | None = None, params: SamplingParams | None = None,
                 logits_processor: LogitsProcessor | None = None, extra_context: list | None = None,
                 path: str | None = None, max_prompt_tokens: int | None = None) -> Completion:
        params = params or SamplingParams()
        done = threading.Event()
        parts: list[Chunk] = []

        def on_chunk(chunk: Chunk) -> None:
            parts.append(chunk)
            if chunk.finish_reason:
                done.set()

        request = self.submit(prompt, suffix, params, on_chunk, logits_processor, extra_context, path,
                              max_prompt_tokens)
        done.wait()
        if request.error:
            raise EngineError(request.error)
        return self._completion(request, parts)

    async def stream(self, prompt: str, suffix: str | None = None, params: SamplingParams | None = None,
                     logits_processor: LogitsProcessor | None = None, extra_context: list | None = None,
                     path: str | None = None, max_prompt_tokens: int | None = None) -> AsyncIterator[Chunk]:
        params = params or SamplingParams()
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Chunk] = asyncio.Queue()
        request = self.submit(prompt, suffix, params, lambda c: loop.call_soon_threadsafe(chunks.put_nowait, c),
                              logits_processor, extra_context, path, max_prompt_tokens)
        try:
            while True:
                chunk = await chunks.get()
                if request.error:
                    raise EngineError(request.error)
                yield chunk
                if chunk.finish_reason:
                    return
        finally:
            request.cancel()  # client gone (or done): frees the slot at the next step
            self._wake.set()

    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def stats(self) -> dict:
        running = len(self.running)
        return {"queue_depth": len(self._waiting), "running_batch_size": running,
                "kv_cache_usage_ratio": running / self.config.max_batch,
                "kv_bytes_per_token": self.cache.bytes_per_token(), **self._counters}

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            left, self._waiting = list(self._waiting), deque()
        for request in left + list(self.running.values()):
            self._fail(request, "the engine was closed")

    # ---- scheduler --------------------------------------------------------------------------
    def _completion(self, request: Request, parts: list[Chunk]) -> Completion:
        ttft = (request.first_token_at - request.submitted) if request.first_token_at else 0.0
        return Completion("".join(p.text for p in parts), request.generated, parts[-1].finish_reason,
                          len(request.prompt_ids), ttft, request.reused_tokens)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop:
            if not self.running and not self._waiting:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self._drop_cancelled()
                self._admit()
                if self.running:
                    self._isolating([self.running[s] for s in sorted(self.running)], self._decode_step)
            except Exception:  # a bug outside any request's step must not hang every client
                log.exception("engine scheduler failed")
                for request in list(self.running.values()):
                    self._fail(request, INTERNAL_ERROR)

    def _isolating(self, requests: list[Request], step: Callable[[list[Request]], None]) -> None:
        """Run `step` over `requests`; when it raises, run it again for each request alone that it
        had not moved on yet, so a failure fails only the request that caused it.

        (A batch that failed while sampling may have drawn from the random generators of rows
        before the failing one; sampling raises for no valid parameters, so that is a bug's cost.)
        """
        progress = [len(r.output_ids) for r in requests]
        try:
            step(requests)
        except Exception:
            if len(requests) == 1:
                log.exception("engine step failed; failing its request")
                self._fail(requests[0], INTERNAL_ERROR)
                return
            log.warning("a step over %d requests failed; stepping them one at a time", len(requests))
            for request, before in zip(requests, progress):
                if self.running.get(request.slot) is request and len(request.output_ids) == before:
                    self._isolating([request], step)

    def _drop_cancelled(self) -> None:
        for request in [r for r in self.running.values() if r.cancelled.is_set()]:
            self._finish(request, "cancelled")
        if any(r.cancelled.is_set() for r in self._waiting):
            with self._lock:
                gone = [r for r in self._waiting if r.cancelled.is_set()]
                self._waiting = deque(r for r in self._waiting if not r.cancelled.is_set())
            for request in gone:
                self._finish(request, "cancelled")

    def _admit(self) -> None:
        while self._waiting and len(self.running) < self.config.max_batch:
            with self._lock:
                request = self._waiting.popleft()
            slot, reused = self._place(request.prompt_ids)
            self._isolating([request], lambda alone: self._prefill(alone[0], slot, reused))

    def _place(self, ids: list[int]) -> tuple[int, int]:
        """A free slot for `ids` and how many leading tokens of it that slot now holds.

        The longest cached prefix wins, searched over free slots (reused in place) and busy ones
        (copied over). At least one prompt token is always recomputed, for its logits. Without a
        match, an empty slot, else the least recently used one, keeps other cached prefixes alive.
        """
        free = [s for s in range(self.config.max_batch) if s not in self.running]
        fallback = min(free, key=lambda s: (bool(self.slot_tokens[s]), self.slot_used_at[s], s))
        if not self.config.prefix_reuse:
            self.slot_tokens[fallback] = []
            return fallback, 0
        self._counters["prefix_cache_lookups"] += 1
        best, best_len = fallback, 0
        for slot in range(self.config.max_batch):
            busy = self.running.get(slot)
            valid = busy.position - 1 if busy else len(self.slot_tokens[slot])
            n = _common_prefix(self.slot_tokens[slot], ids, min(valid, len(ids) - 1))
            if n > best_len:
                best, best_len = slot, n
        if best in self.running:  # a busy slot holds it: copy its keys and values into a free slot
            self.cache.copy_prefix(best, fallback, best_len)
            self.slot_tokens[fallback] = self.slot_tokens[best][:best_len]
            best = fallback
        if best_len:
            self._counters["prefix_cache_hits"] += 1
            self._counters["prefix_tokens_reused"] += best_len
        return best, best_len

    def _prefill(self, request: Request, slot: int, reused: int) -> None:
        request.slot, request.reused_tokens = slot, reused
        self._counters["requests"] += 1
        ids = request.prompt_ids
        self.running[slot] = request  # from here a failure in the forward fails this request too
        self.slot_tokens[slot] = self.slot_tokens[slot][:reused]
        request.position = reused + 1
        if self.fast is not None and len(ids) - reused <= MAX_QUERIES:  # a keystroke after a reused prefix
            logits = self.fast.forward([ids[reused:]], [list(range(reused, len(ids)))], self._layout, [[slot]],
                                       last_only=True)[:, -1]
        else:
            idx = torch.tensor([ids[reused:]], device=self.device)
            positions = torch.arange(reused, len(ids), device=self.device).unsqueeze(0)
            logits = self.model(idx, positions, self.cache.view([slot], positions), last_only=True)[:, -1]
        self.slot_tokens[slot] = list(ids)
        self.slot_used_at[slot] = time.monotonic()
        request.position = len(ids)
        self._accept(request, self._choose_tokens([request], logits)[0])

    def _decode_step(self, requests: list[Request]) -> None:
        """One forward over the last token of each of `requests`, given in slot order so that a
        full batch reads the cache as one slice."""
        slots = [r.slot for r in requests]
        if self.fast is not None and len(requests) <= self.fast.max_rows:
            logits = self.fast.forward([[r.output_ids[-1]] for r in requests], [[r.position - 1] for r in requests],
                                       self._layout, [[s] for s in slots])[:, -1]
        else:
            idx = torch.tensor([[r.output_ids[-1]] for r in requests], device=self.device)
            positions = torch.tensor([[r.position - 1] for r in requests], device=self.device)
            logits = self.model(idx, positions, self.cache.view(slots, positions))[:, -1]
        for request, token in zip(requests, self._choose_tokens(requests, logits)):
            self._accept(request, token)

    def _choose_tokens(self, requests: list[Request], logits: torch.Tensor) -> list[int]:
        # Models pad their embedding past the tokenizer (Qwen2.5: 151,936 rows, 151,665 tokens);
        # the padding rows are never chosen.
        logits = logits[:, :self.tokenizer.n_vocab]
        for row, request in enumerate(requests):
            if request.logits_processor is not None:
                logits[row] = request.logits_processor(request, logits[row])
            if request.heal:
                logits[row] = logits[row].masked_fill(~self._heal_mask(request.heal), float("-inf"))
        return choose_tokens(logits, [r.params for r in requests], [r.generator for r in requests])

    def _accept(self, request: Request, token: int) -> None:
        """Record a sampled token (its KV is written by the next forward), then stop or emit."""
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        if token in self.tokenizer.special_ids:  # end of text, a new file, the end of an infill
            return self._finish(request, "stop")
        request.output_ids.append(token)
        self.slot_tokens[request.slot].append(token)
        request.position += 1
        self._counters["tokens_generated"] += 1
        data = self._token_bytes[token]
        if request.heal:
            request.heal = request.heal[len(data):] if request.heal.startswith(data) else b""
        if request.skip_bytes:
            skipped = min(request.skip_bytes, len(data))
            data, request.skip_bytes = data[skipped:], request.skip_bytes - skipped
            request.healing_tokens += not data
        request.text += request.decoder.decode(data)
        params = request.params
        # The earliest stop string wins: one token can complete two ("):\n" for "\n" and "):").
        cuts = [c for s in params.stop if (c := request.text.find(s, max(0, request.emitted - len(s)))) != -1]
        if cuts:
            request.text = request.text[:min(cuts)]
            return self._finish(request, "stop")
        if request.generated >= params.max_tokens or request.position >= self.model.config.block_size:
            return self._finish(request, "length")
        self._emit(request)

    def _emit(self, request: Request) -> None:
        # Hold back a tail that could be the start of a stop string.
        hold = max((len(s) - 1 for s in request.params.stop), default=0)
        safe = len(request.text) - hold
        if safe > request.emitted:
            self._send(request, Chunk(request.text[request.emitted:safe], request.generated))
            request.emitted = safe

    def _release(self, request: Request) -> None:
        if request.slot >= 0 and self.running.get(request.slot) is request:
            del self.running[request.slot]
            # The slot's KV is valid for every token but the last sampled one (never forwarded).
            held = self.slot_tokens[request.slot]
            self.slot_tokens[request.slot] = held[:max(0, request.position - 1)]
            self.slot_used_at[request.slot] = time.monotonic()

    def _finish(self, request: Request, reason: str) -> None:
        # Bytes of a character the last token left incomplete are dropped, never shown half.
        self._release(request)
        self._send(request, Chunk(request.text[request.emitted:], request.generated, reason))
        request.emitted = len(request.text)

    def _fail(self, request: Request, message: str) -> None:
        self._release(request)
        request.error = message
        self._send(request, Chunk("", request.generated, "error"))

    def _send(self, request: Request, chunk: Chunk) -> None:
        """Hand a chunk to the caller; a callback that fails (its event loop already closed, say)
        cancels only its own request, never the batch or the scheduler."""
        try:
            request.on_chunk(chunk)
        except Exception:
            log.warning("dropping a request whose chunk callback failed", exc_info=True)
            request.cancel()


def context_files(items) -> tuple[ContextFile, ...]:
    """Neighbouring files as the one type the prompt and the cache model take."""
    out = []
    for item in items or ():
        if isinstance(item, ContextFile):
            out.append(item)
        elif isinstance(item, dict):
            out.append(ContextFile(str(item.get("path") or ""), str(item.get("text") or "")))
        else:
            out.append(ContextFile("", str(item)))
    return tuple(out)


def _common_prefix(held: list[int], ids: list[int], limit: int) -> int:
    n, limit = 0, min(len(held), limit)
    if limit == 0 or held[0] != ids[0]:
        return 0
    while n < limit and held[n] == ids[n]:
        n += 1
    return n
