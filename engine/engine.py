"""The Engine: the one API front ends call, a facade over the engine's rooms.

  engine/request_setup.py  a CompletionInput becomes a Request (prompt layout, healing, cache model, drafts)
  engine/scheduler.py      who runs: the queue, admission into the KV pool, preemption, the step loop
  engine/runner.py         one forward over rows and block tables: the compiled kernel or PyTorch
  engine/output.py         a chosen token becomes text and chunks (stop strings, loop guard, limits)
  engine/kv_cache.py       the KV pool's tensors and its block manager (BlockPool)

`Engine` loads a model directory, wires the parts together and bridges the callers' threads and
event loops to the scheduler thread.
"""
from __future__ import annotations

import asyncio
import atexit
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator, Callable

import torch

from .cache_model import CacheModel
from .config import EngineConfig
from .fast_decode import FastDecoder
from .inputs import CompletionInput, ContextFile
from .kv_cache import BlockPool, KVCache
from .mailbox import ChunkMailbox
from .model import Transformer
from .model_dir import default_model_dir, expected_shapes, load_model_dir, load_tokenizer_from_dir, read_model_dir
from .output import Output
from .prefill_rate import prefill_tokens_per_s, step_tokens
from .prompt import PromptBuilder, suffix_budget
from .quantize import Int4Linear, Int8Linear, is_int4
from .request import INTERNAL_ERROR, Chunk, Completion, EngineBusy, EngineError, LogitsProcessor, Request
from .request_setup import RequestSetup
from .runner import Runner
from .scheduler import Scheduler
from .tokenizer import Tokenizer

__all__ = ["Chunk", "Completion", "Engine", "EngineBusy", "EngineConfig", "EngineError", "INTERNAL_ERROR",
           "LogitsProcessor", "Request"]


# Weights from which a model runs int4 on the CPU unless told otherwise. A decode step reads every
# weight once a token, and int4 reads ~0.56 of int8's bytes: on the Qwen2.5-Coder-0.5B shape 68
# against 38 tokens/s at two threads, first token 470 against 508 ms, at +0.8% bits per byte on
# the shipped model and none on a tiny trained Llama (docs/engine.md, "4-bit"). A smaller model is
# quick in int8 already and keeps it.
INT4_FROM_WEIGHTS = 100_000_000


def default_weights(model_dir: str | Path, device: str = "cpu") -> str:
    """"int4" or "int8": what a directory stored quantized already holds; on the CPU, int4 for a
    float model of at least INT4_FROM_WEIGHTS weights; int8 otherwise (the int8 kernels' GPU path)."""
    info = read_model_dir(model_dir)
    if is_int4(info):
        return "int4"
    if info.int8 or torch.device(device).type != "cpu":
        return "int8"
    weights = sum(math.prod(shape) for shape in expected_shapes(info.config).values())
    return "int4" if weights >= INT4_FROM_WEIGHTS else "int8"


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
      requests_shed          requests refused or dropped from the queue with EngineBusy: queue full,
                             or not started within EngineConfig.max_queue_wait_ms (counter)
      requests_superseded    requests finished with "superseded" by a newer one of their session (counter)
      kv_bytes_per_token     KV-cache bytes one cached token takes (constant)
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, device: str = "cpu",
                 config: EngineConfig | None = None, model_name: str = "code-assistant"):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, torch.device(device)
        self.config = cfg = config or EngineConfig()
        cfg.check()
        self.model_name = model_name
        qkv = model.layers[0].attn.qkv
        # what the weights are, for the start log: "int4", "int8" or the float type
        self.weights = ("int4" if isinstance(qkv, Int4Linear) else "int8" if isinstance(qkv, Int8Linear)
                        else str(next(model.parameters()).dtype).removeprefix("torch."))
        c = model.config
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        kv_int8 = cfg.kv_int8 if cfg.kv_int8 is not None else (
            cfg.kernels and FastDecoder.unavailable(model, self.device) is None)
        self.cache = KVCache.sized(cfg.kv_cache_mb, c.n_layer, cfg.kv_block_tokens, c.n_kv_head, c.head_dim,
                                   dtype=dtype, device=self.device, int8=kv_int8, kernel=cfg.kernels)
        self.pool = BlockPool(self.cache.n_blocks, cfg.kv_block_tokens)
        # The longest sequence the engine runs: the model's positions, or the pool when smaller.
        self._context_length = min(c.block_size, (self.pool.n_blocks - 1) * cfg.kv_block_tokens)
        context = min(cfg.context_tokens or self._context_length, self._context_length)
        rate = prefill_tokens_per_s(self.model, self.device) if not (cfg.suffix_tokens and cfg.prefill_chunk) else None
        suffix_tokens = cfg.suffix_tokens or suffix_budget(rate, context)
        self.config = cfg = replace(cfg, prefill_chunk=cfg.prefill_chunk or step_tokens(rate))
        self.prompts = PromptBuilder(tokenizer, self._context_length, cfg.context_tokens, suffix_tokens)
        self.setup = RequestSetup(tokenizer, self.prompts, cfg)
        self.runner = Runner(self.model, self.cache, self.device, cfg.kernels)
        self.output = Output(tokenizer, c.block_size, self.device)
        self.scheduler = Scheduler(cfg, self.pool, self.runner, self.output, torch.get_num_threads())
        self.scheduler.start()
        atexit.register(self.close)  # stop the scheduler before the interpreter tears torch down

    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str = "cpu", quantize: str | None = "auto",
             config: EngineConfig | None = None) -> "Engine":
        """Load a model directory (Hugging Face or this project's, float, int8 or int4). quantize="int8"
        runs int8 weights, "int4" int4 ones (CPU; engine/quantize.py), None/"none" float ones,
        "auto" what `default_weights` chooses."""
        if quantize not in (None, "none", "int8", "int4", "auto"):
            raise ValueError(f"quantize must be 'auto', 'int8', 'int4', 'none' or None, got {quantize!r}")
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        if quantize == "auto":
            quantize = default_weights(model_dir, device)
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

    # ---- what the engine holds --------------------------------------------------------------
    @property
    def context_length(self) -> int:
        """Positions a sequence may use: prompt and generated tokens together (the model's, or
        fewer when the KV pool holds fewer)."""
        return self._context_length

    @property
    def decode_path(self) -> dict:
        """Which decode path is live: {"kernels": "c" | "pytorch", "reason": None | why not "c"}."""
        return dict(self.runner.decode_path)

    @property
    def budgets(self) -> dict:
        """The per-prompt budgets, timed at start unless configured: suffix tokens a FIM prompt keeps
        (0: no limit) and prompt tokens a scheduler step forwards."""
        return {"suffix_tokens": self.prompts.suffix_tokens, "prefill_step_tokens": self.config.prefill_chunk}

    @property
    def running(self) -> list[Request]:
        return self.scheduler.running

    def queue_depth(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def stats(self) -> dict:
        s, blocks = self.scheduler, self.pool.n_blocks - 1
        return {"queue_depth": len(s.waiting), "running_batch_size": len(s.running),
                "kv_cache_usage_ratio": self.pool.held() / blocks, "kv_cache_blocks": blocks,
                "kv_cache_blocks_cached": len(self.pool.evictable),
                "kv_bytes_per_token": self.cache.bytes_per_token(), **s.counters,
                "tokens_generated": self.output.tokens_generated,
                "draft_accepted_by_position": list(s.accepted_by_position)}

    # ---- prompts and context ----------------------------------------------------------------
    def prompt_budget(self, max_tokens: int) -> int:
        """Prompt tokens a request that generates up to `max_tokens` may use."""
        return self.prompts.budget(max_tokens)

    def build_prompt(self, prompt: str, suffix: str | None, max_tokens: int, files: tuple[ContextFile, ...] = (),
                     path: str | None = None, max_prompt_tokens: int | None = None) -> list[int]:
        """Token ids of the family's layout for a plain or FIM prompt with neighbouring files,
        trimmed from the far ends to leave room to generate (engine/prompt.py)."""
        return self.prompts.build(prompt, suffix, max_tokens, tuple(files), path, max_prompt_tokens)

    def cache_model(self, prefix: str, suffix: str | None, files: tuple[ContextFile, ...],
                    weight: float | None, path: str | None = None) -> CacheModel | None:
        """The per-request cache model (engine/request_setup.py RequestSetup.cache_model)."""
        return self.setup.cache_model(prefix, suffix, files, weight, path)

    def use_workspace(self, index) -> None:
        """Match completions against this workspace index (engine/workspace.py WorkspaceIndex), or
        none with None; requests submitted from now on read it."""
        self.setup.workspace = index

    @property
    def workspace(self):
        """The workspace index `use_workspace` gave (None without one)."""
        return self.setup.workspace

    # ---- requests ---------------------------------------------------------------------------
    def submit(self, job: CompletionInput, on_chunk: Callable[[Chunk], None],
               logits_processor: LogitsProcessor | None = None) -> Request:
        """Queue a request; `on_chunk` is called from the scheduler thread. Raises EngineBusy when the
        queue is full or would keep it past EngineConfig.max_queue_wait_ms; a request still waiting
        after that ends in EngineBusy too (raised by `complete` and `stream`). A job with a session
        supersedes that session's older request (it finishes with "superseded").

        The job's prompt and suffix are the text before and after the cursor, whole: the engine
        decides what fits. Its files go into the prompt as far as the budget allows and into the
        cache model whole; its path names the file being completed (its copy in the workspace index
        is left out).
        """
        if not isinstance(job, CompletionInput):
            raise TypeError(f"submit takes a CompletionInput, got {type(job).__name__}")
        if self.scheduler.stopped:
            raise EngineError("the engine is closed")
        request = self.setup.request(job, on_chunk, logits_processor)
        self.scheduler.enqueue(request)
        return request

    def supersede(self, session: str) -> None:
        """The session's request in the engine, if any, finishes with "superseded", as a newer
        request of the session would make it: for a newer one answered elsewhere (a response cache)."""
        self.scheduler.supersede(session)

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
            raise request.failure()
        ttft = (request.first_token_at - request.submitted) if request.first_token_at else 0.0
        return Completion("".join(p.text for p in parts), request.generated, parts[-1].finish_reason,
                          len(request.prompt_ids), ttft, request.reused_tokens)

    async def stream(self, job: CompletionInput | str, logits_processor: LogitsProcessor | None = None,
                     **fields) -> AsyncIterator[Chunk]:
        """The completion's chunks as they come (`job` as for `complete`); a reader that falls
        behind gets what came meanwhile as one chunk (engine/mailbox.py)."""
        job = as_input(job, fields)
        mailbox = ChunkMailbox(asyncio.get_running_loop())
        # Tokenizing a long prompt and building its cache model take milliseconds of CPU: in a
        # thread, so the event loop goes on serving everyone else meanwhile.
        submitting = asyncio.ensure_future(asyncio.to_thread(self.submit, job, mailbox.put, logits_processor))
        try:
            request = await asyncio.shield(submitting)
        except asyncio.CancelledError:  # the caller left while the thread was still submitting
            submitting.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().cancel())
            raise
        try:
            while True:
                chunk = await mailbox.take()
                if request.error:
                    raise request.failure()  # EngineBusy when shed from the queue, else EngineError
                yield chunk
                if chunk.finish_reason:
                    return
        finally:
            request.cancel()  # client gone (or done): frees its blocks at the next step
            self.scheduler.wake()

    def close(self) -> None:
        self.scheduler.stop()


def as_input(job: CompletionInput | str, fields: dict) -> CompletionInput:
    if isinstance(job, CompletionInput):
        if fields:
            raise TypeError("pass either a CompletionInput or a prompt with keywords, not both")
        return job
    return CompletionInput(job, **fields)
