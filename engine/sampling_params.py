"""What a request may ask of sampling: `SamplingParams`, validated on construction against one
table of bounds, `SAMPLING_BOUNDS`.

The table is the one owner of these numbers: the HTTP API's request checks, pydantic schemas and
OpenAPI document and the language server's settings read it. No torch here, so a front end that
only checks requests (the language server talking to a remote server) never loads it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_STOP_STRINGS = 4    # OpenAI's limit, which standard clients keep to
MAX_STOP_CHARS = 256
# Sampling runs in float32: a positive temperature or top_p below its smallest normal number
# (torch.finfo(torch.float32).tiny, 2**-126) rounds to 0, or to a denormal that flush-to-zero
# makes 0, and dividing by it gives inf and NaN.
SMALLEST_POSITIVE = 2.0 ** -126


@dataclass(frozen=True)
class Bound:
    """The closed range a sampling field takes; None: unbounded on that side. `optional`: the
    field may also be None (the engine's default)."""
    low: float | None
    high: float | None
    integer: bool = False
    optional: bool = False

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        text = (f"{kind} >= {_number(self.low)}" if self.high is None
                else f"{kind} in [{_number(self.low)}, {_number(self.high)}]")
        return text + " or None" if self.optional else text


def _number(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) and not value.is_integer() else str(int(value))


# Temperature: 0 is greedy; a positive value below SMALLEST_POSITIVE cannot be sampled with, and
# OpenAI's range ends at 2 (nothing useful for code lies above it). The penalties are OpenAI's.
SAMPLING_BOUNDS: dict[str, Bound] = {
    "max_tokens": Bound(1, None, integer=True),
    "temperature": Bound(SMALLEST_POSITIVE, 2.0),
    "top_k": Bound(1, None, integer=True, optional=True),
    "top_p": Bound(SMALLEST_POSITIVE, 1.0),
    "seed": Bound(0, 2**63 - 1, integer=True, optional=True),
    "cache_weight": Bound(0.0, 1.0, optional=True),
    "frequency_penalty": Bound(-2.0, 2.0),
    "presence_penalty": Bound(-2.0, 2.0),
}
GREEDY = 0.0  # the one temperature below SAMPLING_BOUNDS["temperature"].low that is allowed


def sampling_value_error(name: str, value) -> str | None:
    """Why `value` is not allowed for the sampling field `name` (one of SAMPLING_BOUNDS), or None."""
    bound = SAMPLING_BOUNDS[name]
    if name == "temperature" and value == GREEDY and not isinstance(value, bool):
        return None
    if (value is None and bound.optional) or bound.holds(value):
        return None
    allowed = f"0 (greedy) or {bound.describe()}" if name == "temperature" else bound.describe()
    return f"{name} must be {allowed}, got {value!r}"


class SamplingError(ValueError):
    """Invalid sampling parameters; the message names the field and the allowed range, `field` names it alone."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass
class SamplingParams:
    max_tokens: int = 50
    temperature: float = 0.0       # 0: greedy (deterministic)
    top_k: int | None = None
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None        # with temperature > 0: the same seed gives the same tokens
    cache_weight: float | None = None  # the context cache model's weight: None = default, 0 = off
    # OpenAI's: each generated token's logit is lowered by frequency_penalty times how often it was
    # generated so far, plus presence_penalty once it was generated at all.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop_loops: bool | None = None     # stop where the text starts repeating (engine/repetition.py); None = default

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        elif isinstance(self.stop, (list, tuple)):
            self.stop = list(self.stop)
        else:
            raise SamplingError(f"stop must be a string or a list of strings, got {type(self.stop).__name__}",
                                "stop")
        for name in SAMPLING_BOUNDS:
            if (error := sampling_value_error(name, getattr(self, name))) is not None:
                raise SamplingError(error, name)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise SamplingError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}", "stop")
        if any(not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise SamplingError(f"stop must be non-empty strings of at most {MAX_STOP_CHARS} characters", "stop")
        if self.stop_loops is not None and not isinstance(self.stop_loops, bool):
            raise SamplingError(f"stop_loops must be true, false or None, got {self.stop_loops!r}", "stop_loops")

    @property
    def greedy(self) -> bool:
        return self.temperature == GREEDY

