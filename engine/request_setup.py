"""Request setup: from a CompletionInput to a Request the scheduler can run.

The prompt's layout and budget are engine/prompt.py's; here the prompt is healed (its last
token left for the model to choose again, engine/healing.py), laid out, and given what it decodes
with: a random generator, the context cache model (engine/cache_model.py) over the prefix, the
suffix, the neighbouring files and the workspace index, the loop guard, and the drafts of
speculative decoding (engine/draft.py), which read the same sources.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from typing import Callable

import torch

from .cache_model import CacheModel
from .config import EngineConfig
from .draft import LiveIndex, PromptLookup
from .healing import split_heal
from .inputs import CompletionInput, ContextFile
from .prompt import PromptBuilder
from .repetition import RepetitionGuard
from .request import Chunk, LogitsProcessor, Request
from .suffix_index import SuffixIndex
from .tokenizer import Tokenizer

SNIPPET_INDEXES = 64  # neighbouring files' indexes kept for the next keystrokes


class RequestSetup:
    def __init__(self, tokenizer: Tokenizer, prompts: PromptBuilder, config: EngineConfig):
        self.tokenizer, self.prompts, self.config = tokenizer, prompts, config
        # The user's repository (engine/workspace.py WorkspaceIndex), given by Engine.use_workspace:
        # the cache model matches every file in it but the one being edited.
        self.workspace = None
        self._snippet_indexes: OrderedDict[str, SuffixIndex] = OrderedDict()
        self._lock = threading.Lock()  # submit runs on the callers' threads

    def request(self, job: CompletionInput, on_chunk: Callable[[Chunk], None],
                logits_processor: LogitsProcessor | None = None) -> Request:
        params, suffix, files, path = job.params, job.suffix, job.files, job.path
        kept, heal = self.heal(job.prompt)
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
                          guard=guard, tokens=list(ids), session=job.session)
        if self.config.draft_tokens:
            if isinstance(logits_processor, CacheModel):
                sources = logits_processor.sources
            else:  # no cache model (weight 0, or the caller's processor): drafts still read the context
                t = self.tokenizer
                sources = self.shared_sources(t.encode(kept), t.encode(suffix) if suffix else [], files, path)
            request.own_index = LiveIndex(ids)
            request.drafts = [PromptLookup(request.own_index, [query for _, query in sources],
                                           self.config.draft_min_match)]
        return request

    def heal(self, prompt: str) -> tuple[str, bytes]:
        """The prompt without its last token's text, and those bytes (which the output must spell)."""
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
        sources += self.shared_sources(history, suffix_ids, files, path)
        return CacheModel(sources, history, dataclasses.replace(self.config.cache_mix, weight=weight))

    def shared_sources(self, history: list[int], suffix_ids: list[int], files: tuple[ContextFile, ...],
                       path: str | None) -> list[tuple[str, Callable]]:
        """The sources that outlive a request: the neighbouring files' indexes and the workspace
        index (without the edited file's copies)."""
        sources = [("neighbours", self.snippet_index(f.text).longest_match) for f in files]
        workspace = self.workspace
        if workspace is not None and workspace.n_tokens:
            excluded = workspace.stale_copies(history, suffix_ids, path)
            sources.append(("workspace", lambda h, previous=None: workspace.longest_match(h, excluded, previous)))
        return sources

    def snippet_index(self, text: str) -> SuffixIndex:
        """A read-only index of one snippet, kept for the next request: editors send the same
        neighbouring files keystroke after keystroke."""
        with self._lock:
            index = self._snippet_indexes.pop(text, None)
        if index is None:
            index = SuffixIndex.build([self.tokenizer.encode(text)])
        with self._lock:
            self._snippet_indexes[text] = index  # re-inserted last: least recently used goes first
            while len(self._snippet_indexes) > SNIPPET_INDEXES:
                self._snippet_indexes.popitem(last=False)
        return index
