"""Request setup: from a CompletionInput to a Request the scheduler can run.

The prompt's layout and budget are engine/prompt.py's; here the prompt is healed (its last
token left for the model to choose again, engine/healing.py), laid out, and given what it decodes
with: a random generator, the context cache model (engine/cache_model.py) over the prefix, the
suffix, the neighbouring files and the workspace index, the loop guard, and the drafts of
speculative decoding (engine/draft.py), which read the same matches.

Indexes outlive a request: an editor sends the same neighbouring files keystroke after keystroke,
the same text after the cursor while the user types, and the same text again when a request is
retried, so each text's token ids and suffix index are kept, the least recently used going first.
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

SNIPPET_INDEXES = 64         # neighbouring files' indexes kept for the next keystrokes
# Indexes of the texts before and after the cursor kept: at most this many, holding at most this
# many tokens (~12 bytes a token: the text, its tokens, their sorted positions; ~12 MB).
CURSOR_TEXTS, CURSOR_TOKENS = 1024, 1_000_000


class RecentIndexes:
    """Suffix indexes of recently seen texts, by text; the least recently used goes first once
    there are more than `max_entries`, or their documents hold more than `max_tokens` tokens."""

    def __init__(self, tokenizer: Tokenizer, max_entries: int, max_tokens: int | None = None):
        self.tokenizer, self.max_entries, self.max_tokens = tokenizer, max_entries, max_tokens
        self._entries: OrderedDict[str, SuffixIndex] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()  # submit runs on the callers' threads

    def get(self, text: str, ids: list[int] | None = None) -> SuffixIndex:
        """The index of `text`; `ids`: its tokens, where the caller has them already."""
        with self._lock:
            index = self._entries.pop(text, None)
            if index is not None:
                self._tokens -= index.n_tokens
        if index is None:
            index = SuffixIndex.build([ids if ids is not None else self.tokenizer.encode(text)])
        with self._lock:
            if text not in self._entries:  # another thread may have put it back meanwhile
                self._entries[text] = index  # (re-)inserted last: least recently used goes first
                self._tokens += index.n_tokens
            while len(self._entries) > self.max_entries or (
                    self.max_tokens is not None and self._tokens > self.max_tokens and len(self._entries) > 1):
                _, gone = self._entries.popitem(last=False)
                self._tokens -= gone.n_tokens
        return index


class RequestSetup:
    def __init__(self, tokenizer: Tokenizer, prompts: PromptBuilder, config: EngineConfig):
        self.tokenizer, self.prompts, self.config = tokenizer, prompts, config
        # The user's repository (engine/workspace.py WorkspaceIndex), given by Engine.use_workspace:
        # the cache model matches every file in it but the one being edited.
        self.workspace = None
        self._snippets = RecentIndexes(tokenizer, SNIPPET_INDEXES)
        self._cursor_texts = RecentIndexes(tokenizer, CURSOR_TEXTS, CURSOR_TOKENS)

    def request(self, job: CompletionInput, on_chunk: Callable[[Chunk], None],
                logits_processor: LogitsProcessor | None = None) -> Request:
        params, suffix, files, path = job.params, job.suffix, job.files, job.path
        kept, heal = self.heal(job.prompt)
        kept_ids = self.tokenizer.encode(kept)  # once, for the prompt and the cache model
        ids = self.prompts.build(kept, suffix, params.max_tokens, files, path, job.max_prompt_tokens, kept_ids)
        generator = None
        if not params.greedy:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(params.seed if params.seed is not None else time.time_ns() % 2**63)
        weight = self.config.cache_weight if params.cache_weight is None else params.cache_weight
        mixed = logits_processor is None and weight > 0
        # Drafts read the cache model's matches, so they get one even where it is not mixed in
        # (weight 0, or the caller's own processor).
        context = (self.context_model(kept, suffix, files, weight, path, kept_ids)
                   if mixed or self.config.draft_tokens else None)
        if mixed:
            logits_processor = context
        stop_loops = self.config.stop_loops if params.stop_loops is None else params.stop_loops
        guard = RepetitionGuard.for_prompt(job.prompt, suffix) if stop_loops else None
        request = Request(ids, params, on_chunk, generator, logits_processor, heal=heal, skip_bytes=len(heal),
                          guard=guard, tokens=list(ids), session=job.session)
        if self.config.draft_tokens:
            request.own_index = LiveIndex(ids)
            request.drafts = [PromptLookup(request.own_index, context, self.config.draft_min_match)]
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
        return self.context_model(prefix, suffix, files, weight, path)

    def context_model(self, prefix: str, suffix: str | None, files: tuple[ContextFile, ...], weight: float,
                      path: str | None, prefix_ids: list[int] | None = None) -> CacheModel:
        """The cache model over these texts at this weight, built whatever the weight: the drafts
        read its matches even where it is not mixed in. `prefix_ids`: encode(prefix), if at hand."""
        prefix_index = self._cursor_texts.get(prefix, prefix_ids)
        suffix_index = self._cursor_texts.get(suffix) if suffix else None
        history = prefix_index.document(0)
        suffix_ids = suffix_index.document(0) if suffix_index is not None else []
        sources = [("prefix", prefix_index.longest_match)]
        if suffix_ids:
            sources.append(("suffix", suffix_index.longest_match))
        sources += self.shared_sources(history, suffix_ids, files, path)
        return CacheModel(sources, history, dataclasses.replace(self.config.cache_mix, weight=max(weight, 0.0)))

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
        return self._snippets.get(text)
