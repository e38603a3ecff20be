"""The engine's configuration: one plain dataclass, its defaults in one place."""
from __future__ import annotations

from dataclasses import dataclass, field

from .cache_model import DEFAULT_WEIGHT, MixConfig


@dataclass
class EngineConfig:
    max_batch: int = 32            # sequences decoded together
    max_queue: int = 256           # waiting requests beyond which submit raises EngineBusy
    # The longest a request may wait in the queue for a batch slot (0: as long as max_queue allows).
    # One the queue would keep longer, by its depth and the rate it has been moving at
    # (engine/overload.py), is shed at submit; one still waiting after it is shed then: both with
    # EngineBusy, at once rather than late. Off for the engine's own callers (scripts, evaluations
    # want every answer); the HTTP server, which serves editors, turns it on (http_api/settings.py).
    max_queue_wait_ms: float = 0.0
    kv_cache_mb: float = 256.0     # the KV pool, whatever the model's context length
    kv_block_tokens: int = 16      # positions per pool block: the unit of allocation and prefix reuse
    # int8 keys/values with a scale per (token, head): ~3.6x less cache memory, and a decode step of
    # many rows reads a quarter of the bytes (the shipped model, 32 rows x 220 positions: 2.7 vs
    # 5.7 ms). None: int8 where the compiled decode step runs the model (int8 or int4 weights on
    # the CPU), else the weights' float type (the float path stays the families' exact oracle).
    kv_int8: bool | None = None
    prefix_reuse: bool = True
    # Speculative decoding: up to this many tokens a step are drafted from the context (prompt
    # lookup) and checked in one forward; 0 turns it off. Greedy text is the same either way.
    draft_tokens: int = 8
    draft_min_match: int = 2       # tokens of the history's tail a draft's match must cover
    # Drafts fill what the batch leaves of this many tokens a step: a wide forward costs little
    # while the weights' memory traffic dominates (9 tokens for 1.6x one at the GPT-2-small shape,
    # batch 1) but a full batch is compute-bound, where drafts would only add work.
    draft_step_tokens: int = 64
    # Prompt tokens forwarded a step at most (running sequences decode between a long prompt's
    # chunks); 0: what this machine prefills in engine/prefill_rate.py's STEP_PREFILL_S, timed when
    # the engine starts (the shipped model: the most, 512; a 0.5B model on 2 cores: 64).
    prefill_chunk: int = 0
    token_healing: bool = True     # engine/healing.py
    # Prompt tokens a request may use at most (0: the model's whole context): bounds prefill time
    # for models with long contexts.
    context_tokens: int = 0
    # Suffix tokens a fill-in-the-middle prompt keeps at most (0: what this machine prefills in
    # engine/prompt.py's SUFFIX_PREFILL_S, timed when the engine starts): the suffix follows the
    # prefix's changing end, so it is prefilled again at every keystroke.
    suffix_tokens: int = 0
    # Weight of the per-request n-gram cache model mixed into decoding (engine/cache_model.py) when
    # SamplingParams.cache_weight is None; 0 turns it off.
    cache_weight: float = DEFAULT_WEIGHT
    cache_mix: MixConfig = field(default_factory=MixConfig)
    # Stop a completion where it starts repeating lines (engine/repetition.py) when
    # SamplingParams.stop_loops is None.
    stop_loops: bool = True
    # Every compiled CPU kernel (engine/decode_kernel.c, built at first use): the int8 matmul, the
    # decode step in one call (engine/fast_decode.py) and the paged attention of the PyTorch
    # forward's few-query steps. False runs the same arithmetic in PyTorch; without a compiler that
    # happens anyway, with the reason logged and in Engine.decode_path.
    kernels: bool = True

    def check(self) -> None:
        if self.max_batch < 1 or self.max_queue < 0 or self.max_queue_wait_ms < 0:
            raise ValueError("EngineConfig needs max_batch >= 1, max_queue >= 0 and max_queue_wait_ms >= 0")
        if self.context_tokens < 0 or self.suffix_tokens < 0:
            raise ValueError("EngineConfig needs context_tokens >= 0 and suffix_tokens >= 0")
        if self.kv_block_tokens < 1 or self.kv_cache_mb <= 0 or self.draft_tokens < 0 or self.prefill_chunk < 0:
            raise ValueError("EngineConfig needs kv_block_tokens >= 1, kv_cache_mb > 0, draft_tokens >= 0 "
                             "and prefill_chunk >= 0")
