"""The prompt: how many tokens a request may use, and the family's layout of prefix, suffix and
neighbouring files, decided here once for every front end: the engine builds token ids with them,
the language server's remote backends fit text to another server with the same budget and shares
(`prompt_budget`, `files_room`, `suffix_room`), and training writes the same FIM layout (`fim_ids`).
Nothing here needs torch, so the language server talking to a remote server never loads it.

Layouts follow each family's model card: fill-in-the-middle in prefix-suffix-middle order with the
tokenizer's own FIM tokens (StarCoder/SantaCoder/this project, Qwen2.5-Coder, CodeLlama,
DeepSeek-Coder); neighbouring files as repository-level context where the family was trained with
it (`<|repo_name|>`/`<|file_sep|>` for Qwen2.5-Coder, `<repo_name>`/`<file_sep>` for StarCoder2,
`<filename>` for StarCoder 1), otherwise as comments before the prefix. A tokenizer without FIM
tokens gets the prefix alone.
"""
from __future__ import annotations

from pathlib import PurePosixPath

from .inputs import ContextFile
from .tokenizer import FIM_STYLES, FimTokens, Tokenizer

# Comment markers by file extension, for neighbouring files shown as comments.
LINE_COMMENTS = {
    "#": (".py", ".pyi", ".sh", ".bash", ".rb", ".pl", ".r", ".yaml", ".yml", ".toml", ".mk", ".ps1", ".ex", ".exs",
          ".jl", ".nim", ".cfg", ".ini", ".dockerfile"),
    "--": (".lua", ".sql", ".hs", ".adb", ".elm"),
    "%": (".tex", ".erl", ".m"),
    ";": (".lisp", ".clj", ".scm", ".el"),
}
COMMENT_OF_SUFFIX = {ext: marker for marker, exts in LINE_COMMENTS.items() for ext in exts}
FILES_SHARE = 3        # neighbouring files take at most 1/FILES_SHARE of the prompt budget
SUFFIX_SHARE = 4       # the suffix takes at most 1/SUFFIX_SHARE of the rest when the prefix is long
MIN_PROMPT_TOKENS = 4  # what a request keeps whatever it asks to generate
# The suffix follows the prefix's changing end, so its tokens are prefilled again at every keystroke.
# Where the whole context prefills within FIRST_CHUNK_S (an interactive wait for the first text),
# that costs nothing worth a limit; elsewhere the suffix keeps what prefills in a quarter of it,
# and at least MIN_SUFFIX_TOKENS (the next few lines, where what closes the middle is).
FIRST_CHUNK_S = 0.4
SUFFIX_PREFILL_S = FIRST_CHUNK_S / 4
MIN_SUFFIX_TOKENS = 16
CUT_SHARE = 4          # the prefix's cut moves on ~1/CUT_SHARE of the context at a time; see PromptBuilder.cut
TOKENS_PER_LINE = 8    # of code, roughly: turns the stride into a spacing of cut lines (see PromptBuilder.cut)
ANCHOR_TOKENS = 8      # the tokens after a line break that decide whether a prefix may be cut there
# The repository's name in layouts that start with one: front ends send paths relative to the
# workspace, not its name, and the models only need the marker to know files follow.
REPO_NAME = "repository"
# The prefix-suffix-middle layout written as text, for servers that take a prompt as text and
# tokenise the FIM names themselves (vLLM, TGI): FIM_STYLES' tokens, but CodeLlama's, whose names
# carry SentencePiece's word-start mark, as its model card writes them; CodeGemma uses Qwen's names.
FIM_TEXT_TEMPLATES = {style: f"{p}{{prefix}}{s}{{suffix}}{m}" for style, (p, s, m) in FIM_STYLES.items()} | {
    "codellama": "<PRE> {prefix} <SUF>{suffix} <MID>",
    "codegemma": "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
}


def prompt_budget(context_tokens: int, max_tokens: int, max_prompt_tokens: int | None = None) -> int:
    """Prompt tokens a request that generates up to `max_tokens` may use in a `context_tokens`
    window: the context less room to generate (at least half the context stays for the prompt),
    lowered to `max_prompt_tokens` when the request asks for less."""
    budget = max(MIN_PROMPT_TOKENS, context_tokens - min(max_tokens, context_tokens // 2))
    if max_prompt_tokens is not None and max_prompt_tokens > 0:
        budget = max(MIN_PROMPT_TOKENS, min(budget, max_prompt_tokens))
    return budget


def files_room(room: int) -> int:
    """What of a prompt's `room` (tokens, or characters for a text prompt) neighbouring files may take."""
    return room // FILES_SHARE


def suffix_room(prefix_length: int, suffix_length: int, room: int) -> int:
    """How much of the suffix a FIM prompt keeps in `room` beside a `prefix_length` prefix: all the
    room the prefix leaves, but at most 1/SUFFIX_SHARE of it when the prefix would fill the rest."""
    share = room // SUFFIX_SHARE
    return min(suffix_length, share if prefix_length > room - share else room - prefix_length)


def suffix_budget(prefill_tokens_per_s: float | None, context_tokens: int) -> int:
    """Suffix tokens a FIM prompt keeps at most on a machine that prefills this many tokens a
    second, in a `context_tokens` window; 0 (no limit) where that is unknown or the whole window
    prefills within FIRST_CHUNK_S."""
    if not prefill_tokens_per_s or context_tokens <= prefill_tokens_per_s * FIRST_CHUNK_S:
        return 0
    # In steps of MIN_SUFFIX_TOKENS: a timing a little off on a busy machine keeps the same budget,
    # so the same editor's prompts stay the same from one start of the server to the next.
    steps = int(prefill_tokens_per_s * SUFFIX_PREFILL_S) // MIN_SUFFIX_TOKENS
    return max(1, steps) * MIN_SUFFIX_TOKENS


def fim_ids(fim: FimTokens, prefix: list[int], suffix: list[int], spm: bool = False) -> list[int]:
    """Prefix and suffix ids in the fill-in-the-middle layout; the middle follows. PSM (what serving
    builds): <prefix> P <suffix> S <middle>; SPM (Bavarian et al. 2022, variant 2, a training
    option): <prefix> <suffix> S <middle> P."""
    if spm:
        return [fim.prefix, fim.suffix] + suffix + [fim.middle] + prefix
    return [fim.prefix] + prefix + [fim.suffix] + suffix + [fim.middle]


def comment_marker(path: str | None) -> str:
    name = PurePosixPath((path or "").replace("\\", "/")).name.lower()
    if name in ("makefile", "dockerfile"):
        return "#"
    return COMMENT_OF_SUFFIX.get(PurePosixPath(name).suffix, "//")


class PromptBuilder:
    """Token ids of a completion prompt for one model."""

    def __init__(self, tokenizer: Tokenizer, block_size: int, context_tokens: int = 0, suffix_tokens: int = 0):
        self.tokenizer, self.block_size = tokenizer, block_size
        self.context_tokens = min(context_tokens or block_size, block_size)
        self.suffix_tokens = suffix_tokens  # the most a FIM prompt's suffix keeps (0: what suffix_room gives)
        self.stride = max(1, self.context_tokens // CUT_SHARE)
        self.cut_every = max(1, self.stride // TOKENS_PER_LINE)
        self._line_breaks: frozenset[int] | None = None  # ids of tokens that hold a line break

    def budget(self, max_tokens: int, max_prompt_tokens: int | None = None) -> int:
        return prompt_budget(self.context_tokens, max_tokens, max_prompt_tokens)

    def build(self, prompt: str, suffix: str | None, max_tokens: int, files: tuple[ContextFile, ...] = (),
              path: str | None = None, max_prompt_tokens: int | None = None,
              prompt_ids: list[int] | None = None) -> list[int]:
        """Ids for a plain or FIM prompt within the budget, trimmed from the far ends; a long
        prefix is cut where `cut` says, so that the next keystroke's prompt starts the same.
        `prompt_ids`: the tokenizer's encode(prompt), where the caller has it already."""
        t = self.tokenizer
        fim = t.fim if suffix is not None else None
        room = self.budget(max_tokens, max_prompt_tokens) - len(t.bos_ids) - (3 if fim else 0)
        before, inside = self._files(files, path, files_room(room))
        room = max(1, room - len(before) - len(inside))
        if inside:
            pre = t.encode_continuation(prompt)
        else:
            pre = prompt_ids if prompt_ids is not None else t.encode(prompt)
        suf = t.encode_continuation(suffix) if fim else []
        keep_suf = suffix_room(len(pre), len(suf), room)
        if 0 < self.suffix_tokens < keep_suf:
            # The prefix's cut reckons with the whole budget, not the lines kept of it: these vary
            # from keystroke to keystroke, and the cut would move back and forth with them.
            keep_suf, suf = self.suffix_tokens, suf[:self.suffix_end(suf, self.suffix_tokens)]
        pre = pre[self.cut(pre, room - keep_suf):]
        if fim is None:
            return t.bos_ids + before + inside + pre or [t.eot_id]
        return t.bos_ids + before + fim_ids(fim, inside + pre, suf[:keep_suf])

    def cut(self, ids: list[int], budget: int) -> int:
        """Where a prefix of `ids` longer than `budget` starts: the earliest line start from which
        the rest fits, among the line starts chosen by their own content (the ANCHOR_TOKENS tokens
        that follow, one line in `cut_every`).

        Editors send a window of characters before the cursor, and it slides with every keystroke:
        cut at a fixed distance from either end, the prompt's first tokens would change each time
        and nothing could be reused. A line chosen by its content is chosen again while the user
        types on (until the rest outgrows the budget, then the next chosen line is), whatever the
        window's start, so consecutive prompts share their first tokens and the KV pool reuses
        their blocks. Each move recomputes the whole prompt; chosen lines lie ~`stride` tokens
        apart (a quarter of the context), so that happens once in that many typed tokens.

        Where no chosen line is in reach (they are one in `cut_every` on average, so gaps of many
        more happen), one line in cut_every/2 is chosen, then one in cut_every/4, and so on: the
        first line start alone would move the cut at every line typed. Without any line start in
        reach (a minified line, a budget below one line), the cut falls on a multiple of the
        stride from the first token.
        """
        over = len(ids) - budget
        if over <= 0:
            return 0
        breaks = self.line_breaks()
        reach = range(over, min(len(ids) - ANCHOR_TOKENS, over + budget // 2))
        line_starts = [start for start in reach if ids[start - 1] in breaks]
        if not line_starts:
            return _aligned_start(len(ids), budget, self.stride)
        anchors = [hash(tuple(ids[start:start + ANCHOR_TOKENS])) for start in line_starts]
        every = self.cut_every
        while every > 1:
            for start, anchor in zip(line_starts, anchors):
                if anchor % every == 0:
                    return start
            every //= 2
        return line_starts[0]

    def suffix_end(self, ids: list[int], most: int) -> int:
        """How many of a suffix's `ids` to keep for at most `most`: through the last line break
        among them, or all `most` where the first line alone is longer."""
        breaks = self.line_breaks()
        return next((end for end in range(min(most, len(ids)), 0, -1) if ids[end - 1] in breaks), min(most, len(ids)))

    def line_breaks(self) -> frozenset[int]:
        if self._line_breaks is None:
            self._line_breaks = frozenset(i for i, b in enumerate(self.tokenizer.token_bytes()) if b"\n" in b)
        return self._line_breaks

    def _files(self, files: tuple[ContextFile, ...], path: str | None, budget: int) -> tuple[list[int], list[int]]:
        """Neighbouring files within `budget` tokens: (ids before the prompt, ids that open the
        prefix) in the family's repository layout, or as comments opening the prefix."""
        if not files or budget <= 0:
            return [], []
        t = self.tokenizer
        current = path or "untitled"
        if _starcoder2(t):      # <repo_name>name<file_sep>path\ncode ... <file_sep><fim_prefix>path\n
            head = [t.repo_name_id] + t.encode(REPO_NAME) if t.repo_name_id is not None else []
            pieces = [[t.file_sep_id] + t.encode(f"{f.path}\n{f.text}") for f in files]
            tail, inside = [t.file_sep_id], t.encode(f"{current}\n")
        elif t.file_sep_id is not None:  # Qwen2.5-Coder: <|repo_name|>name\n<|file_sep|>path\ncode\n ...
            head = [t.repo_name_id] + t.encode(REPO_NAME + "\n") if t.repo_name_id is not None else []
            pieces = [[t.file_sep_id] + t.encode(f"{f.path}\n{f.text}\n") for f in files]
            tail, inside = [t.file_sep_id] + t.encode(f"{current}\n"), []
        elif t.filename_id is not None:  # StarCoder 1: one document per file
            head, tail, inside = [], [], []
            pieces = [[t.filename_id] + t.encode(f"{f.path}\n{f.text}") + [t.eot_id] for f in files]
        else:                            # no repository tokens: comments opening the prefix
            marker = comment_marker(path)
            kept = _fit([t.encode(render_comment(f, marker)) for f in files], budget)
            return [], kept
        kept = _fit(pieces, budget - len(head) - len(tail) - len(inside))
        if not kept:
            return [], []
        return head + kept + tail, inside


def _fit(pieces: list[list[int]], budget: int) -> list[int]:
    """The leading pieces, whole, that fit in `budget` tokens together."""
    kept: list[int] = []
    for piece in pieces:
        if len(kept) + len(piece) > budget:
            break
        kept += piece
    return kept


def _starcoder2(t: Tokenizer) -> bool:
    return t.file_sep_id is not None and t.file_sep_id == t.token_id("<file_sep>")


def render_comment(file: ContextFile, marker: str = "#") -> str:
    """A neighbouring file as comments, the way Copilot and Tabby show snippets to the model."""
    body = "".join(f"{marker} {line}".rstrip() + "\n" for line in file.text.splitlines())
    return f"{marker} Compare this snippet from {file.path}:\n{body}"


def _aligned_start(n: int, budget: int, stride: int) -> int:
    """First index of the kept tail of n tokens: at most `budget` kept, cut on a multiple of `stride`."""
    over = n - budget
    if over <= 0:
        return 0
    return -(-over // stride) * stride if budget > stride else over
