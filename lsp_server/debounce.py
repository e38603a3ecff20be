"""How long an automatic request waits before it generates, from how the user types and how fast the
backend answers (Tabby's adaptive debounce, clamped to 100-1000 ms as Tabby does).

The expected pause after a keystroke is a multiple of the user's usual gap between keystrokes; the
multiple is smaller where a suggestion is likely wanted (after punctuation, at the end of the line).
The backend's measured latency is taken off that pause: a slow server starts sooner, so the
suggestion still arrives when the user pauses. A request that is answered from the completion cache
never waits.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from .documents import Cursor


@dataclass(frozen=True)
class DebounceLimits:
    min_ms: float = 100.0
    max_ms: float = 1000.0
    # The user's typing gap is averaged over this many keystrokes; a gap longer than `gap_max_ms`
    # is a pause (thinking, reading), not typing speed, and is left out.
    window: int = 50
    min_samples: int = 10
    gap_min_ms: float = 50.0
    gap_max_ms: float = 400.0
    default_gap_ms: float = 200.0
    rate_likely: float = 1.5      # the multiple of the gap where a suggestion is likely wanted...
    rate_unlikely: float = 3.0    # ...and where it is not
    latency_weight: float = 0.2   # exponential average of the measured generation time


class AdaptiveDebounce:
    def __init__(self, limits: DebounceLimits = DebounceLimits(), clock=time.monotonic):
        self.limits = limits
        self._clock = clock
        self._gaps: deque[float] = deque(maxlen=limits.window)
        self._last_keystroke: float | None = None
        self.latency_ms = 0.0

    def keystroke(self) -> None:
        """A document change (the server sees keystrokes as didChange notifications)."""
        now = self._clock()
        if self._last_keystroke is not None:
            gap = (now - self._last_keystroke) * 1000
            if gap <= self.limits.gap_max_ms:
                self._gaps.append(gap)
        self._last_keystroke = now

    def measured(self, generation_ms: float) -> None:
        w = self.limits.latency_weight
        self.latency_ms = generation_ms if self.latency_ms == 0 else (1 - w) * self.latency_ms + w * generation_ms

    def typing_gap_ms(self) -> float:
        lim = self.limits
        if len(self._gaps) < lim.min_samples:
            return lim.default_gap_ms
        return min(lim.gap_max_ms, max(lim.gap_min_ms, sum(self._gaps) / len(self._gaps)))

    def delay_ms(self, cursor: Cursor) -> float:
        lim = self.limits
        score = likelihood(cursor)
        rate = lim.rate_unlikely - (lim.rate_unlikely - lim.rate_likely) * score
        return min(lim.max_ms, max(lim.min_ms, rate * self.typing_gap_ms() - self.latency_ms))


def likelihood(cursor: Cursor) -> float:
    """0..1: how likely a suggestion is wanted here (Tabby's context score)."""
    before = cursor.line_prefix[-1:]
    score = 0.5 if before and not (before.isalnum() or before == "_") else 0.0
    if not cursor.line_suffix.strip() or not any(c.isalnum() for c in cursor.line_suffix):
        score += 0.4
    if not cursor.suffix.strip():
        score += 0.1
    return min(1.0, score)
