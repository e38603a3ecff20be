"""The Engine: one scheduler thread steps every running sequence together (continuous batching).

Requests wait in a bounded queue, join between steps when the KV pool has blocks for them
(`_admit`), and leave when finished or cancelled. A prompt that starts with full blocks the pool
holds reuses them (prefix reuse, engine/kv_cache.py). A decode step forwards each sequence's last
token plus a draft of tokens that may follow it (speculative decoding, engine/draft.py) and keeps
what the model agrees with. The hot path reads as a ladder: `_prefill` -> `_decode_step` ->
`_verify` -> `_choose` -> `_accept` -> `_emit`.
"""
from __future__ import annotations

import asyncio
import atexit
import dataclasses
import codecs
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

import torch

from . import kernels
from .cache_model import DEFAULT_WEIGHT, CacheModel, MixConfig
from .draft import DraftSource, LiveIndex, PromptLookup, propose
from .fast_decode import MAX_QUERIES, FastDecoder, block_pool_layout
from .healing import HealingMasks, split_heal
from .kv_cache import BlockPool, BlockTable, KVCache
from .model import Transformer
from .model_dir import default_model_dir, load_model_dir, load_tokenizer_from_dir
from .inputs import CompletionInput, ContextFile
from .prompt import PromptBuilder
from .repetition import RepetitionGuard
from .sampling import SamplingParams, apply_penalties, sample_token
from .suffix_index import SuffixIndex
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
    prompt_tokens: int = 0         # tokens of the prompt the engine really ran (after fitting it to the context)


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
    max_batch: int = 32            # sequences decoded together
    max_queue: int = 256           # waiting requests beyond which submit raises EngineBusy
    kv_cache_mb: float = 256.0     # the KV pool, whatever the model's context length
    kv_block_tokens: int = 16      # positions per pool block: the unit of allocation and prefix reuse
    kv_int8: bool = False          # int8 keys/values with a scale per (token, head): ~3.6x less cache memory
    prefix_reuse: bool = True
    # Speculative decoding: up to this many tokens a step are drafted from the context (prompt
    # lookup) and checked in one forward; 0 turns it off. Greedy text is the same either way.
    draft_tokens: int = 8
    draft_min_match: int = 2       # tokens of the history's tail a draft's match must cover
    # Drafts fill what the batch leaves of this many tokens a step: a wide forward costs little
    # while the weights' memory traffic dominates (9 tokens for 1.6x one at the GPT-2-small shape,
    # batch 1) but a full batch is compute-bound, where drafts would only add work.
    draft_step_tokens: int = 64
    prefill_chunk: int = 512       # a long prompt is prefilled this many tokens a forward
    token_healing: bool = True     # engine/healing.py
    # Prompt tokens a request may use at most (0: the model's whole context): bounds prefill time
    # for models with long contexts.
    context_tokens: int = 0
    # Weight of the per-request n-gram cache model mixed into decoding (engine/cache_model.py) when
    # SamplingParams.cache_weight is None; 0 turns it off.
    cache_weight: float = DEFAULT_WEIGHT
    cache_mix: MixConfig = field(default_factory=MixConfig)
    # Stop a completion where it starts repeating lines (engine/repetition.py) when
    # SamplingParams.stop_loops is None.
    stop_loops: bool = True
    # The compiled CPU kernels (engine/decode_kernel.c, built at first use): the int8 matmul and a
    # decode step in one call (engine/fast_decode.py). False runs the same int8 arithmetic in
    # PyTorch; without a compiler that happens anyway, with the reason logged.
    kernels: bool = True


# Maps (request, one row of next-token logits) -> logits row; called for every step of that request
# before the token is chosen (a per-sequence model mixed into decoding plugs in here).
LogitsProcessor = Callable[["Request", torch.Tensor], torch.Tensor]


@dataclass(eq=False)  # compared and hashed by identity
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_chunk: Callable[[Chunk], None]
    generator: torch.Generator | None = None
    logits_processor: LogitsProcessor | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    drafts: list[DraftSource] = field(default_factory=list)
    own_index: LiveIndex | None = None   # the prompt and the output so far, for drafts
    tokens: list[int] = field(default_factory=list)  # prompt then output: the sequence
    cached: int = 0                # leading tokens whose keys and values are in the pool
    table: BlockTable = field(default_factory=BlockTable)
    admitted: bool = False
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
    guard: RepetitionGuard | None = None  # stops a completion that loops (engine/repetition.py)
    safe: int = 0                  # characters of `text` the guard lets out now

    @property
    def generated(self) -> int:
        """Tokens that produced new text: what max_tokens limits and usage reports."""
        return len(self.output_ids) - self.healing_tokens

    def cancel(self) -> None:
        """Finish the request with "cancelled"; its blocks are freed before the next decode step."""
        self.cancelled.set()


class Engine:
    """Continuous-batching inference over one model.

    `stats` (a fresh dict on each read) holds what the HTTP metrics export:
      queue_depth            requests waiting to be admitted (gauge)
      running_batch_size     sequences in the current decode batch (gauge)
      kv_cache_usage_ratio   pool blocks held by running sequences / pool blocks (gauge, 0..1)
      kv_cache_blocks        blocks in the pool (constant)
      kv_cache_blocks_cached blocks held by nobody that still hold a reusable prefix (gauge)
      prefix_cache_lookups   admissions that looked for a cached prefix (counter)
      prefix_cache_hits      of those, how many reused at least one cached block (counter)
      prefix_tokens_reused   prompt tokens not recomputed thanks to reuse (counter)
      preemptions            running sequences sent back to the queue for lack of blocks (counter)
      draft_tokens_proposed  draft tokens checked by speculative decoding (counter)
      draft_tokens_accepted  of those, how many the model agreed with (counter)
      draft_accepted_by_position  accepted draft tokens by their index in the draft (counters, a list)
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
        c, cfg = model.config, self.config
        if cfg.kv_block_tokens < 1 or cfg.kv_cache_mb <= 0 or cfg.draft_tokens < 0 or cfg.prefill_chunk < 1:
            raise ValueError("EngineConfig needs kv_block_tokens >= 1, kv_cache_mb > 0, draft_tokens >= 0 "
                             "and prefill_chunk >= 1")
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.cache = KVCache.sized(cfg.kv_cache_mb, c.n_layer, cfg.kv_block_tokens, c.n_kv_head, c.head_dim,
                                   dtype=dtype, device=self.device, int8=cfg.kv_int8)
        self.pool = BlockPool(self.cache.n_blocks, cfg.kv_block_tokens)
        self.fast = FastDecoder.build(model, self.device) if cfg.kernels else None
        if self.fast is not None:  # the kernel reads and writes the pool where it lies
            self._layout = block_pool_layout(self.cache.k, self.cache.v, self.cache.k_scale, self.cache.v_scale)
        self.window = c.sliding_window or None
        # The longest sequence the engine runs: the model's positions, or the pool when smaller.
        self._context_length = min(c.block_size, (self.pool.n_blocks - 1) * cfg.kv_block_tokens)
        self.prompts = PromptBuilder(tokenizer, self._context_length, cfg.context_tokens)
        self.running: list[Request] = []   # admission order: the newest is preempted first
        self._waiting: deque[Request] = deque()
        self._lock = threading.Lock()
        self._counters = {"requests": 0, "prefix_cache_lookups": 0, "prefix_cache_hits": 0,
                          "prefix_tokens_reused": 0, "tokens_generated": 0, "preemptions": 0,
                          "draft_tokens_proposed": 0, "draft_tokens_accepted": 0}
        self._accepted_by_position = [0] * cfg.draft_tokens
        self._token_bytes = tokenizer.token_bytes()
        self._heal_mask = HealingMasks(self._token_bytes, tokenizer.n_vocab, self.device)
        self._snippet_indexes: dict[str, SuffixIndex] = {}
        # The user's repository (engine/workspace.py WorkspaceIndex), set by a front end: the cache
        # model matches every file in it but the one being edited.
        self.workspace = None
        self._wake = threading.Event()
        self._stop = False
        self.threads = torch.get_num_threads()  # the creator's count: the C kernels' pool uses it
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # stop the scheduler before the interpreter tears torch down

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str = "cpu", quantize: str | None = "int8",
             config: EngineConfig | None = None) -> "Engine":
        """Load a model directory (Hugging Face or this project's, float, int8 or int4). quantize="int8"
        runs int8 weights, "int4" int4 ones (CPU; engine/quantize.py), None/"none" float ones."""
        if quantize not in (None, "none", "int8", "int4"):
            raise ValueError(f"quantize must be 'int8', 'int4', 'none' or None, got {quantize!r}")
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        dtype = torch.float32
        if torch.device(device).type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if quantize in ("int8", "int4"):
            from .quantize import load_int4_model, load_int8_model

            load = load_int4_model if quantize == "int4" else load_int8_model
            model, info = load(model_dir, device, dtype, use_kernels=(config or EngineConfig()).kernels)
            tokenizer = load_tokenizer_from_dir(info)
        else:
            model, tokenizer, info = load_model_dir(model_dir, dtype)
            model = model.to(device=device)
        return cls(model, tokenizer, device, config, model_name=info.name)

    # ---- public API -------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        """Positions a sequence may use: prompt and generated tokens together (the model's, or
        fewer when the KV pool holds fewer)."""
        return self._context_length

    def prompt_budget(self, max_tokens: int) -> int:
        """Prompt tokens a request that generates up to `max_tokens` may use."""
        return self.prompts.budget(max_tokens)

    def build_prompt(self, prompt: str, suffix: str | None, max_tokens: int, files: tuple[ContextFile, ...] = (),
                     path: str | None = None, max_prompt_tokens: int | None = None) -> list[int]:
        """Token ids of the family's layout for a plain or FIM prompt with neighbouring files,
        trimmed from the far ends to leave room to generate (engine/prompt.py)."""
        return self.prompts.build(prompt, suffix, max_tokens, tuple(files), path, max_prompt_tokens)

    def _heal_prompt(self, prompt: str) -> tuple[str, bytes]:
        if not self.config.token_healing:
            return prompt, b""
        return split_heal(prompt, self.tokenizer.split)

    def cache_model(self, prefix: str, suffix: str | None, files: tuple[ContextFile, ...],
                    weight: float | None, path: str | None = None) -> CacheModel | None:
        """The per-request cache model over the whole prefix, suffix, neighbouring files (not only
        the part of them that fits the network's context) and the workspace index, which leaves
        out the file at `path` (being edited, its live text is the prefix and suffix)."""
        weight = self.config.cache_weight if weight is None else weight
        if weight <= 0:
            return None
        t = self.tokenizer
        history = t.encode(prefix)
        suffix_ids = t.encode(suffix) if suffix else []
        sources = [("prefix", SuffixIndex.build([history]).longest_match)]
        if suffix_ids:
            sources.append(("suffix", SuffixIndex.build([suffix_ids]).longest_match))
        sources += self._shared_sources(history, suffix_ids, files, path)
        return CacheModel(sources, history, dataclasses.replace(self.config.cache_mix, weight=weight))

    def _shared_sources(self, history: list[int], suffix_ids: list[int], files: tuple[ContextFile, ...],
                        path: str | None) -> list[tuple[str, Callable]]:
        """The sources that outlive a request: the neighbouring files' indexes and the workspace
        index (without the edited file's copies)."""
        sources = [("neighbours", self._snippet_index(f.text).longest_match) for f in files]
        workspace = self.workspace
        if workspace is not None and workspace.n_tokens:
            excluded = workspace.stale_copies(history, suffix_ids, path)
            sources.append(("workspace", lambda h, previous=None: workspace.longest_match(h, excluded, previous)))
        return sources

    def _snippet_index(self, text: str) -> SuffixIndex:
        """A read-only index of one snippet, kept for the next request: editors send the same
        neighbouring files keystroke after keystroke."""
        with self._lock:
            index = self._snippet_indexes.pop(text, None)
        if index is None:
            index = SuffixIndex.build([self.tokenizer.encode(text)])
        with self._lock:
            self._snippet_indexes[text] = index  # re-inserted last: least recently used goes first
            while len(self._snippet_indexes) > 64:
                self._snippet_indexes.pop(next(iter(self._snippet_indexes)))
        return index

    def submit(self, job: CompletionInput, on_chunk: Callable[[Chunk], None],
               logits_processor: LogitsProcessor | None = None) -> Request:
        """Queue a request; `on_chunk` is called from the scheduler thread. Raises EngineBusy when full.

        The job's prompt and suffix are the text before and after the cursor, whole: the engine
        decides what fits. Its files go into the prompt as far as the budget allows and into the
        cache model whole; its path names the file being completed (its copy in the workspace index
        is left out).
        """
        if not isinstance(job, CompletionInput):
            raise TypeError(f"submit takes a CompletionInput, got {type(job).__name__}")
        if self._stop:
            raise EngineError("the engine is closed")
        params, suffix, files, path = job.params, job.suffix, job.files, job.path
        kept, heal = self._heal_prompt(job.prompt)
        ids = self.prompts.build(kept, suffix, params.max_tokens, files, path, job.max_prompt_tokens)
        generator = None
        if not params.greedy:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(params.seed if params.seed is not None else time.time_ns() % 2**63)
        if logits_processor is None:
            logits_processor = self.cache_model(kept, suffix, files, params.cache_weight, path)
        stop_loops = self.config.stop_loops if params.stop_loops is None else params.stop_loops
        guard = RepetitionGuard.for_prompt(job.prompt, suffix) if stop_loops else None
        request = Request(ids, params, on_chunk, generator, logits_processor, heal=heal, skip_bytes=len(heal),
                          guard=guard, tokens=list(ids))
        if self.config.draft_tokens:
            if isinstance(logits_processor, CacheModel):
                sources = logits_processor.sources
            else:  # no cache model (weight 0, or the caller's processor): drafts still read the context
                t = self.tokenizer
                sources = self._shared_sources(t.encode(kept), t.encode(suffix) if suffix else [], files, path)
            request.own_index = LiveIndex(ids)
            request.drafts = [PromptLookup(request.own_index, [query for _, query in sources],
                                           self.config.draft_min_match)]
        with self._lock:
            if len(self._waiting) >= self.config.max_queue:
                raise EngineBusy(f"queue full ({self.config.max_queue} waiting)")
            self._waiting.append(request)
        self._wake.set()
        return request

    def complete(self, job: CompletionInput | str, logits_processor: LogitsProcessor | None = None,
                 **fields) -> Completion:
        """Run one completion to its end. `job` is a CompletionInput, or a prompt string with the
        CompletionInput fields as keywords (a convenience for scripts and tests)."""
        job = as_input(job, fields)
        done = threading.Event()
        parts: list[Chunk] = []

        def on_chunk(chunk: Chunk) -> None:
            parts.append(chunk)
            if chunk.finish_reason:
                done.set()

        request = self.submit(job, on_chunk, logits_processor)
        done.wait()
        if request.error:
            raise EngineError(request.error)
        return self._completion(request, parts)

    async def stream(self, job: CompletionInput | str, logits_processor: LogitsProcessor | None = None,
                     **fields) -> AsyncIterator[Chunk]:
        """The completion's chunks as they come (`job` as for `complete`)."""
        job = as_input(job, fields)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Chunk] = asyncio.Queue()
        # Tokenizing a long prompt and building its cache model take milliseconds of CPU: in a
        # thread, so the event loop goes on serving everyone else meanwhile.
        submitting = asyncio.ensure_future(asyncio.to_thread(
            self.submit, job, lambda c: loop.call_soon_threadsafe(chunks.put_nowait, c), logits_processor))
        try:
            request = await asyncio.shield(submitting)
        except asyncio.CancelledError:  # the caller left while the thread was still submitting
            submitting.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().cancel())
            raise
        try:
            while True:
                chunk = await chunks.get()
                if request.error:
                    raise EngineError(request.error)
                yield chunk
                if chunk.finish_reason:
                    return
        finally:
            request.cancel()  # client gone (or done): frees its blocks at the next step
            self._wake.set()

    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def stats(self) -> dict:
        blocks = self.pool.n_blocks - 1
        return {"queue_depth": len(self._waiting), "running_batch_size": len(self.running),
                "kv_cache_usage_ratio": self.pool.held() / blocks, "kv_cache_blocks": blocks,
                "kv_cache_blocks_cached": len(self.pool.evictable),
                "kv_bytes_per_token": self.cache.bytes_per_token(), **self._counters,
                "draft_accepted_by_position": list(self._accepted_by_position)}

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            left, self._waiting = list(self._waiting), deque()
        for request in left + list(self.running):
            self._fail(request, "the engine was closed")

    # ---- scheduler --------------------------------------------------------------------------
    def _completion(self, request: Request, parts: list[Chunk]) -> Completion:
        ttft = (request.first_token_at - request.submitted) if request.first_token_at else 0.0
        return Completion("".join(p.text for p in parts), request.generated, parts[-1].finish_reason,
                          len(request.prompt_ids), ttft, request.reused_tokens)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        kernels.use_threads(self.threads)
        threads = self.threads
        try:
            threads = self._measure_pytorch_threads()
        except Exception:  # a model that cannot run a plain forward fails its requests, not here
            log.exception("measuring the scheduler's torch threads failed; keeping %d", self.threads)
        torch.set_num_threads(threads)
        while not self._stop:
            if not self.running and not self._waiting:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                self._drop_cancelled()
                self._admit()
                if self.running:
                    self._isolating(list(self.running), self._decode_step)
            except Exception:  # a bug outside any request's step must not hang every client
                log.exception("engine scheduler failed")
                for request in list(self.running):
                    self._fail(request, INTERNAL_ERROR)

    def _measure_pytorch_threads(self) -> int:
        """The torch thread count for this thread's PyTorch forwards (prefills, big steps).

        Outside the main thread each OpenMP region of two threads cost ~200 us more than at one
        here (torch 2.13, libgomp): the shipped model's 178-token prefill took 20 ms at two threads
        and 6 ms at one, while a 0.5B model's matmuls gain from the second. So time a 32-token
        forward at one thread and at all of them, alternately, and keep the faster.
        """
        if self.threads <= 1 or self.device.type != "cpu":
            return self.threads
        idx = torch.zeros(1, min(32, self.model.config.block_size), dtype=torch.long, device=self.device)
        best: dict[int, float] = {}
        for n in (1, self.threads) * 3:
            torch.set_num_threads(n)
            start = time.perf_counter()
            self.model(idx, last_only=True)
            best[n] = min(best.get(n, float("inf")), time.perf_counter() - start)
        chosen = min(best, key=best.get)
        log.info("scheduler thread: torch runs %d thread(s) (32-token forward: %s)", chosen,
                 ", ".join(f"{n} thread(s) {t * 1e3:.1f} ms" for n, t in best.items()))
        return chosen

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
                if request in self.running and len(request.output_ids) == before:
                    self._isolating([request], step)

    def _drop_cancelled(self) -> None:
        for request in [r for r in self.running if r.cancelled.is_set()]:
            self._finish(request, "cancelled")
        if any(r.cancelled.is_set() for r in self._waiting):
            with self._lock:
                gone = [r for r in self._waiting if r.cancelled.is_set()]
                self._waiting = deque(r for r in self._waiting if not r.cancelled.is_set())
            for request in gone:
                self._finish(request, "cancelled")

    def _admit(self) -> None:
        """Admit waiting requests, oldest first, while the batch and the pool have room."""
        while self._waiting and len(self.running) < self.config.max_batch:
            request = self._waiting[0]
            table = self._place(request)
            if table is None:
                if self.running:
                    return  # it waits for running sequences to give blocks back
                with self._lock:
                    self._waiting.popleft()
                self._fail(request, f"the sequence needs {self.pool.blocks_for(len(request.tokens))} KV blocks "
                           f"and the pool has {self.pool.n_blocks - 1} (EngineConfig.kv_cache_mb)")
                continue
            with self._lock:
                self._waiting.popleft()
            self._isolating([request], lambda alone: self._prefill(alone[0], table))

    def _place(self, request: Request) -> BlockTable | None:
        """Blocks for the request's tokens, the longest cached prefix reused; None when the pool
        cannot give them and still keep a block for each running sequence's next step."""
        tokens = request.tokens
        table = self.pool.claim_prefix(tokens) if self.config.prefix_reuse else BlockTable()
        need = self.pool.blocks_for(len(tokens)) - len(table.blocks)
        if need + len(self.running) > self.pool.available() or not self.pool.grow(table, len(tokens)):
            self.pool.release(table)
            return None
        if self.config.prefix_reuse:
            reused = len(table.hashes) * self.pool.block_tokens
            self._counters["prefix_cache_lookups"] += 1
            self._counters["prefix_cache_hits"] += reused > 0
            self._counters["prefix_tokens_reused"] += reused
        return table

    def _prefill(self, request: Request, table: BlockTable) -> None:
        """Forward the tokens the pool does not hold yet (the whole prompt but its reused blocks,
        or, after a preemption, the output so far too) and choose the next token."""
        reused = len(table.hashes) * self.pool.block_tokens
        if not request.admitted:
            request.admitted, request.reused_tokens = True, reused
            self._counters["requests"] += 1
        request.table, request.cached = table, reused
        self.running.append(request)  # from here a failure in the forward fails this request too
        tokens, chunk = request.tokens, self.config.prefill_chunk
        for start in range(reused, len(tokens), chunk):
            end = min(start + chunk, len(tokens))
            if self.fast is not None and end - start <= MAX_QUERIES:  # a keystroke after a reused prefix
                logits = self.fast.forward([tokens[start:end]], [list(range(start, end))], self._layout,
                                           [table.blocks], last_only=True)[0, -1]
                continue
            idx = torch.tensor([tokens[start:end]], device=self.device)
            positions = torch.arange(start, end, device=self.device).unsqueeze(0)
            batch = self.cache.batch([table.blocks], positions, window=self.window)
            logits = self.model(idx, positions, batch, last_only=True)[0, -1]
        request.cached = len(tokens)
        self.pool.seal(table, tokens, request.cached)
        self._accept(request, self._choose(request, logits))

    def _decode_step(self, requests: list[Request]) -> None:
        """One forward over the last token and the draft of each of `requests`; rows without a
        draft, or with a shorter one, are padded (the padding writes to the null block)."""
        rows = self._reserve(requests)
        if not rows:
            return
        width = 1 + max(len(draft) for _, draft in rows)
        idx, positions, n_real = [], [], []
        for request, draft in rows:
            row = [request.tokens[-1]] + draft
            first = request.cached
            idx.append(row + [row[-1]] * (width - len(row)))
            positions.append([first + min(t, len(row) - 1) for t in range(width)])
            n_real.append(len(row))
        tables = [r.table.blocks for r, _ in rows]
        if self.fast is not None and len(rows) * width <= self.fast.max_rows:
            logits = self.fast.forward(idx, positions, self._layout, tables, n_real)
        else:
            positions_t = torch.tensor(positions, device=self.device)
            batch = self.cache.batch(tables, positions_t, n_real, self.window)
            logits = self.model(torch.tensor(idx, device=self.device), positions_t, batch)
        for (request, draft), row_logits in zip(rows, logits):
            self._verify(request, draft, row_logits)

    def _reserve(self, requests: list[Request]) -> list[tuple[Request, list[int]]]:
        """Each of `requests` with its draft and the blocks its step writes to. Short of
        blocks, a draft is dropped first, then the newest sequence goes back to the queue
        (its full blocks stay cached for when it returns); a sequence alone that cannot grow
        finishes with "length"."""
        rows = []
        room = min(self.config.draft_tokens, (self.config.draft_step_tokens - len(requests)) // len(requests))
        for request in requests:
            if request not in self.running:
                continue  # preempted for an older sequence's step
            draft = self._draft(request, room)
            while not self.pool.grow(request.table, request.cached + 1 + len(draft)):
                if draft:
                    draft = []
                elif len(self.running) == 1:
                    self._finish(request, "length")
                    break
                else:
                    victim = self.running[-1]
                    self._preempt(victim)
                    rows = [(r, d) for r, d in rows if r is not victim]
                    if victim is request:
                        break
            else:
                rows.append((request, draft))
        return rows

    def _draft(self, request: Request, room: int) -> list[int]:
        room = min(room, request.params.max_tokens - request.generated - 1,
                   self.model.config.block_size - len(request.tokens))
        if room <= 0 or not request.drafts:
            return []
        return propose(request.drafts, request.tokens, room)

    def _preempt(self, request: Request) -> None:
        self._release(request)
        request.cached = 0
        self._counters["preemptions"] += 1
        with self._lock:
            self._waiting.appendleft(request)

    def _verify(self, request: Request, draft: list[int], logits: torch.Tensor) -> None:
        """Choose tokens along the draft while the model agrees with it: logits[j] follows the
        draft's first j tokens, which the request holds by then, so every logits processor sees
        exactly the history it would see without a draft."""
        self._counters["draft_tokens_proposed"] += len(draft)
        try:
            for j in range(len(draft) + 1):
                proposed = draft[j] if j < len(draft) else None
                token = self._choose(request, logits[j], proposed)
                if token == proposed:
                    self._counters["draft_tokens_accepted"] += 1
                    self._accepted_by_position[j] += 1
                if not self._accept(request, token) or token != proposed:
                    break
        finally:  # also when a logits processor raised part way: the tokens taken so far stand
            if request in self.running:
                # Keys and values are final for every token but the last; blocks past it held a
                # rejected draft and go back.
                request.cached = len(request.tokens) - 1
                self.pool.truncate(request.table, len(request.tokens))
                self.pool.seal(request.table, request.tokens, request.cached)

    def _choose(self, request: Request, logits: torch.Tensor, draft: int | None = None) -> int:
        """The next token from one row of logits, after the request's logits processor and the
        token-healing mask; `draft` is the token a draft proposes here (see sample_token)."""
        # Models pad their embedding past the tokenizer (Qwen2.5: 151,936 rows, 151,665 tokens);
        # the padding rows are never chosen.
        logits = logits[:self.tokenizer.n_vocab]
        if request.logits_processor is not None:
            logits = request.logits_processor(request, logits)
        if request.heal:
            logits = logits.masked_fill(~self._heal_mask(request.heal), float("-inf"))
        apply_penalties(logits, request.params, request.output_ids)
        return sample_token(logits, request.params, request.generator, draft)

    def _accept(self, request: Request, token: int) -> bool:
        """Record a chosen token (its KV is written by the next forward), then stop or emit;
        False when the request finished."""
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        if token in self.tokenizer.special_ids:  # end of text, a new file, the end of an infill
            self._finish(request, "stop")
            return False
        request.output_ids.append(token)
        request.tokens.append(token)
        if request.own_index is not None:
            request.own_index.append(token)
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
        # Cut at the earliest stop string, whichever of them it is ("\n" listed before "):" must
        # not leave a "):" that came first).
        cuts = [cut for cut in (request.text.find(stop, max(0, request.emitted - len(stop))) for stop in params.stop)
                if cut != -1]
        if cuts:
            request.text = request.text[:min(cuts)]
            self._finish(request, "stop")
            return False
        if request.guard is not None:
            cut, request.safe = request.guard.check(request.text)
            if cut is not None:
                request.text = request.text[:cut]
                self._finish(request, "stop")
                return False
        if request.generated >= params.max_tokens or len(request.tokens) >= self.model.config.block_size:
            self._finish(request, "length")
            return False
        self._emit(request)
        return True

    def _emit(self, request: Request) -> None:
        # Hold back a tail that could be the start of a stop string, or the start of a repeat.
        hold = max((len(s) - 1 for s in request.params.stop), default=0)
        safe = len(request.text) - hold
        if request.guard is not None:
            safe = min(safe, request.safe)
        if safe > request.emitted:
            self._send(request, Chunk(request.text[request.emitted:safe], request.generated))
            request.emitted = safe

    def _release(self, request: Request) -> None:
        """Give the request's blocks back; its full ones stay cached for the next keystroke."""
        if request in self.running:
            self.running.remove(request)
            self.pool.seal(request.table, request.tokens, request.cached)
            self.pool.release(request.table)

    def _finish(self, request: Request, reason: str) -> None:
        # Bytes of a character the last token left incomplete are dropped, never shown half.
        self._release(request)
        if request.guard is not None and reason != "cancelled":
            cut, _ = request.guard.check(request.text, finished=True)
            if cut is not None and cut >= request.emitted:
                request.text = request.text[:cut]
        self._send(request, Chunk(request.text[request.emitted:], request.generated, reason))
        request.emitted = len(request.text)

    def _fail(self, request: Request, message: str) -> None:
        self._release(request)
        request.error = message
        self._send(request, Chunk("", request.generated, "error"))

    def _send(self, request: Request, chunk: Chunk) -> None:
        """Hand a chunk to the caller; a callback that fails (its event loop already closed, say)
        cancels only its own request, never the batch or the scheduler."""
        chunk.prompt_tokens = len(request.prompt_ids)
        try:
            request.on_chunk(chunk)
        except Exception:
            log.warning("dropping a request whose chunk callback failed", exc_info=True)
            request.cancel()


def as_input(job: CompletionInput | str, fields: dict) -> CompletionInput:
    if isinstance(job, CompletionInput):
        if fields:
            raise TypeError("pass either a CompletionInput or a prompt with keywords, not both")
        return job
    return CompletionInput(job, **fields)
