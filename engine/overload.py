"""Overload: telling at submit that the queue will not serve a request in time.

The scheduler measures how fast its queue moves while it has a backlog (`QueueRate`): requests
admitted into the batch per second of the steps that began with someone waiting. With a backlog
the batch (or the KV pool) is full, so that is the rate at which running requests make room: the
server's capacity at the load it has now, whatever the prompts' and completions' lengths. A
request with N live requests ahead of it then waits about N / rate. The scheduler sheds one whose
wait would pass EngineConfig.max_queue_wait_ms at once, and tells it to come back when its turn
would have come: (N + 1) / rate (`retry_after_s`).
"""
from __future__ import annotations

import math

# Seconds of backlog after which a measurement counts half: long enough to average over a few
# batches' worth of completions (a full batch of 32-token completions turned over in ~1 s on two
# cores, docs/capacity.md), short enough to follow a change of load within seconds.
HALF_LIFE_S = 5.0
MIN_OBSERVED_S = 0.5    # seconds of backlog measured before the rate is trusted
MAX_RETRY_AFTER_S = 60.0  # a queue that has not moved at all: come back in a minute


class QueueRate:
    def __init__(self, half_life_s: float = HALF_LIFE_S):
        self.half_life_s = half_life_s
        self.admitted = 0.0     # exponentially decayed sums over the steps recorded
        self.seconds = 0.0

    def record(self, admitted: int, seconds: float) -> None:
        """A step that began with a backlog: `admitted` requests joined the batch in `seconds`."""
        decay = 0.5 ** (seconds / self.half_life_s)
        self.admitted = self.admitted * decay + admitted
        self.seconds = self.seconds * decay + seconds

    @property
    def per_second(self) -> float | None:
        """Requests the queue hands the batch per second while it has a backlog; None until
        MIN_OBSERVED_S of backlog has been measured."""
        if self.seconds < MIN_OBSERVED_S:
            return None
        return self.admitted / self.seconds

    def wait_s(self, ahead: int) -> float | None:
        """Seconds a request with `ahead` requests before it will wait; None when not known yet."""
        if ahead <= 0:
            return 0.0
        rate = self.per_second
        if rate is None:
            return None
        return ahead / rate if rate > 0 else math.inf

    def retry_after_s(self, ahead: int, fallback_s: float) -> float:
        """When a request shed now, with `ahead` requests before it, should come back: when its own
        turn would have come (`fallback_s` while the rate is not known)."""
        wait = self.wait_s(ahead + 1)
        return min(MAX_RETRY_AFTER_S, fallback_s if wait is None else wait)
