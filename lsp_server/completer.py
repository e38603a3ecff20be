"""The completion path as a pipeline of plain functions: should_complete -> build_prompt -> generate ->
postprocess. The server wires them to LSP requests; a backend (local engine or remote HTTP) generates."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from .context import Prompt, build_prompt, select_neighbours, snippet_query
from .documents import Cursor
from .postprocess import BLOCK_OPENERS, Edit, block_end, indent_of, postprocess
from .settings import Settings

log = logging.getLogger(__name__)

# Characters that may follow the cursor on its line while an automatic completion still makes sense.
CLOSING = set(")]}\"'`;:,. \t")


@dataclass(frozen=True)
class Generated:
    id: str
    text: str


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float
    multiline: bool
    cache_weight: float | None = None


class Backend(Protocol):
    def count_tokens(self, text: str) -> int: ...
    def prompt_budget(self, max_tokens: int) -> int: ...
    async def generate(self, prompt: Prompt, params: GenerationParams,
                       done: Callable[[str], bool]) -> Generated: ...
    async def send_event(self, completion_id: str, event: str, language: str) -> None: ...


@dataclass(frozen=True)
class Suggestion:
    id: str
    edit: Edit
    multiline: bool


def should_complete(cursor: Cursor, settings: Settings, invoked: bool) -> bool:
    """Automatic triggers only at the end of a line's code (brackets and quotes may follow)."""
    if not settings.enable:
        return False
    if invoked:
        return True
    return bool(cursor.prefix.strip()) and all(c in CLOSING for c in cursor.line_suffix)


def wants_multiline(settings: Settings, invoked: bool, cursor: Cursor) -> bool:
    """A block for multi-line mode or when the user asked explicitly, and only where the block is
    still empty; one line otherwise (a block written into existing code repeats what is there)."""
    return (settings.multiline or invoked) and block_is_empty(cursor)


def block_is_empty(cursor: Cursor) -> bool:
    """The cursor ends a block opener's line (`def f(x):|`, `if (a) {|`), or sits on a blank line
    right after one, and no body follows (the next code line is not indented deeper)."""
    line = cursor.line_prefix
    if cursor.line_suffix.strip() and not all(c in CLOSING for c in cursor.line_suffix):
        return False
    if line.strip():
        opener, indent = line, indent_of(line)
    else:
        above = [l for l in cursor.prefix[:len(cursor.prefix) - len(line)].split("\n")[-50:] if l.strip()]
        if not above:
            return False
        opener, indent = above[-1], indent_of(above[-1])
    if not opener.rstrip().endswith(BLOCK_OPENERS):
        return False
    below = next((l for l in following_lines(cursor).split("\n") if l.strip()), None)
    return below is None or indent_of(below) <= indent


def generation_done(multiline: bool, line_prefix: str) -> Callable[[str], bool]:
    """When to stop the model early: post-processing would cut everything after this point anyway."""
    if multiline:
        return lambda text: block_end(text, line_prefix) is not None
    return lambda text: "\n" in text


def following_lines(cursor: Cursor) -> str:
    end = cursor.suffix.find("\n")
    return "" if end == -1 else cursor.suffix[end + 1:]


async def complete(cursor: Cursor, settings: Settings, backend: Backend, invoked: bool,
                   language_id: str = "python", neighbours: Iterable[tuple[str, str]] = (),
                   document_path: str | None = None) -> Suggestion | None:
    """One completion at `cursor`, or None. Cancelling the calling task cancels the generation."""
    if not should_complete(cursor, settings, invoked):
        return None
    if not invoked and settings.debounce_ms:
        await asyncio.sleep(settings.debounce_ms / 1000)  # a newer keystroke cancels us meanwhile
    count = backend.count_tokens
    budget = settings.context_tokens or backend.prompt_budget(settings.max_tokens)
    snippets = []
    if settings.neighbours and settings.neighbour_files:
        snippets = select_neighbours(snippet_query(cursor.prefix), neighbours, count,
                                     min(settings.neighbour_budget_tokens, budget // 3), settings.neighbour_files)
    prompt = build_prompt(cursor.prefix, cursor.suffix, count, budget, settings.suffix_fraction, snippets,
                          language_id, document_path)
    multiline = wants_multiline(settings, invoked, cursor)
    params = GenerationParams(settings.max_tokens, settings.temperature, multiline, settings.cache_weight)
    generated = await backend.generate(prompt, params, generation_done(multiline, cursor.line_prefix))
    edit = postprocess(generated.text, cursor.line_prefix, cursor.line_suffix, following_lines(cursor), multiline,
                       cursor.prefix)
    return Suggestion(generated.id, edit, multiline) if edit else None


def extra_context(prompt: Prompt) -> list[dict]:
    """What the engine's cache model gets besides the prompt: neighbour snippets (the prompt holds
    them too, as comments) and the parts of this file the prompt budget left out."""
    items = [{"path": s.path, "text": s.text} for s in prompt.snippets]
    if prompt.far_before:
        items.append({"path": "(this file, before the prompt)", "text": prompt.far_before})
    if prompt.far_after:
        items.append({"path": "(this file, after the cursor's line)", "text": prompt.far_after})
    return items


class LocalBackend:
    """The engine in this process. `engine.stream` runs the model on the engine's own thread, so the
    server's event loop stays free; closing the stream (done or cancelled) frees the engine slot."""

    # Per-line token counts differ a little from the whole prompt's; keep a margin so the engine's
    # own trimming (which would move the prompt's start and defeat prefix reuse) never kicks in.
    MARGIN = 0.95

    def __init__(self, engine):
        self.engine = engine

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer.encode(text))

    def prompt_budget(self, max_tokens: int) -> int:
        block = self.engine.model.config.block_size
        return int((block - min(max_tokens, block // 2) - 3) * self.MARGIN)

    async def generate(self, prompt: Prompt, params: GenerationParams, done: Callable[[str], bool]) -> Generated:
        from engine import EngineBusy, EngineError, SamplingParams

        sampling = SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature,
                                  cache_weight=params.cache_weight)
        completion_id = f"lsp-{uuid.uuid4().hex[:16]}"
        text = ""
        chunks = self.engine.stream(prompt.prefix, prompt.suffix, sampling, extra_context=extra_context(prompt),
                                    document_path=prompt.document_path)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    text += chunk.text
                    if done(text):
                        break
        except (EngineBusy, EngineError) as error:
            log.warning("engine: %s", error)
            return Generated(completion_id, "")
        return Generated(completion_id, text)

    async def send_event(self, completion_id: str, event: str, language: str) -> None:
        return None

