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

# Characters that may follow the cursor on its line while an automatic completion still makes sense,
# and how many (auto-closed brackets and quotes; more is code the suggestion would have to fit into).
CLOSING = set(")]}\"'`;:,. \t")
MAX_CHARS_AFTER_CURSOR = 4


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
    max_prompt_tokens: int | None = None


class Backend(Protocol):
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
    """Automatic triggers only at the end of a line's code (a few brackets and quotes may follow),
    never in the middle of a word."""
    if not settings.enable:
        return False
    if invoked:
        return True
    rest = cursor.line_suffix.rstrip()
    return (bool(cursor.prefix.strip()) and all(c in CLOSING for c in rest)
            and len(rest) <= MAX_CHARS_AFTER_CURSOR)


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
                   path: str | None = None, neighbours: Iterable[tuple[str, str]] = (),
                   debounce_ms: float | None = None) -> Suggestion | None:
    """One completion at `cursor`, or None. Cancelling the calling task cancels the generation.
    `debounce_ms` (automatic triggers only): the server's adaptive wait; None: `settings.debounce_ms`."""
    if not should_complete(cursor, settings, invoked):
        return None
    wait_ms = settings.debounce_ms if debounce_ms is None else debounce_ms
    if not invoked and wait_ms:
        await asyncio.sleep(wait_ms / 1000)  # a newer keystroke cancels us meanwhile
    budget = min(settings.context_tokens, backend.prompt_budget(settings.max_tokens))
    files = []
    if settings.neighbours and settings.neighbour_files:
        files = select_neighbours(snippet_query(cursor.prefix), neighbours, settings.neighbour_files)
    prompt = build_prompt(cursor.prefix, cursor.suffix, budget, files, path)
    multiline = wants_multiline(settings, invoked, cursor)
    params = GenerationParams(settings.max_tokens, settings.temperature, multiline, settings.cache_weight, budget)
    generated = await backend.generate(prompt, params, generation_done(multiline, cursor.line_prefix))
    edit = postprocess(generated.text, cursor.line_prefix, cursor.line_suffix, following_lines(cursor), multiline,
                       cursor.prefix)
    return Suggestion(generated.id, edit, multiline) if edit else None


class LocalBackend:
    """The engine in this process. `engine.stream` runs the model on the engine's own thread, so the
    server's event loop stays free; closing the stream (done or cancelled) frees the engine slot."""

    def __init__(self, engine):
        self.engine = engine

    def prompt_budget(self, max_tokens: int) -> int:
        return self.engine.prompt_budget(max_tokens)

    async def generate(self, prompt: Prompt, params: GenerationParams, done: Callable[[str], bool]) -> Generated:
        from engine import CompletionInput, EngineBusy, EngineError, SamplingParams

        # One line: the engine stops at its end, so that its loop guard judges that line alone (held
        # back as the start of a repeated block, it would otherwise be cut with the block).
        sampling = SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature,
                                  cache_weight=params.cache_weight, stop=[] if params.multiline else ["\n"])
        completion_id = f"lsp-{uuid.uuid4().hex[:16]}"
        text = ""
        # The engine puts what fits of the neighbour snippets into the prompt and all of them into
        # its cache model.
        chunks = self.engine.stream(CompletionInput(prompt.prefix, prompt.suffix, prompt.files, sampling, prompt.path,
                                                    params.max_prompt_tokens))
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

