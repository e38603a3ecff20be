"""What a front end hands the engine: one typed completion input.

HTTP, the language server, the benchmarks and training's evaluation each map their own protocol to
`CompletionInput` once; the engine decides everything after that (what fits the context, the
family's layout, which files feed the cache model and drafts).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .sampling_params import SamplingParams


@dataclass(frozen=True)
class ContextFile:
    """Another file of the project the completion may draw on (a neighbour, a workspace match)."""
    path: str
    text: str


@dataclass(frozen=True)
class CompletionInput:
    prompt: str                                   # the text before the cursor, whole
    suffix: str | None = None                     # the text after it (fill-in-the-middle), whole
    files: tuple[ContextFile, ...] = ()           # neighbouring files, most relevant first
    params: SamplingParams = field(default_factory=SamplingParams)
    path: str | None = None                       # the file being completed (left out of the workspace index)
    max_prompt_tokens: int | None = None          # lowers the engine's prompt budget for this request
    # Who is asking: one editor's document, say. A newer request of the same session supersedes
    # the older ones still waiting or running (they finish with "superseded"): an editor's next
    # keystroke makes its previous completion worthless. None: no session, nothing superseded.
    session: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not (self.suffix is None or isinstance(self.suffix, str)):
            raise TypeError("prompt must be a string and suffix a string or None")
        if not isinstance(self.params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(self.params).__name__}")
        files = tuple(self.files)
        if not all(isinstance(f, ContextFile) for f in files):
            raise TypeError("files must be ContextFile values")
        if self.session is not None and not isinstance(self.session, str):
            raise TypeError(f"session must be a string or None, got {type(self.session).__name__}")
        object.__setattr__(self, "files", files)
