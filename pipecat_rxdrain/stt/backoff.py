"""Capped exponential backoff with jitter for reconnecting a streaming call."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays ``initial_s * multiplier**n`` capped at ``max_s``, each scaled by a random factor in ``[1-jitter, 1]``.

    Guarantees: every delay is in ``[0, max_s]``; the sequence restarts from
    ``initial_s`` after ``reset()``. ``rng`` (returns floats in [0, 1)) is
    injectable so tests are deterministic.
    """

    def __init__(
        self,
        *,
        initial_s: float = 0.25,
        max_s: float = 5.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial_s < 0 or max_s < 0 or multiplier < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs initial_s >= 0, max_s >= 0, multiplier >= 1 and 0 <= jitter <= 1")
        self.initial_s, self.max_s, self.multiplier, self.jitter = initial_s, max_s, multiplier, jitter
        self._rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier**self.attempt)
        self.attempt += 1
        return max(0.0, min(self.max_s, base * (1.0 - self.jitter * self._rng())))

    def reset(self) -> None:
        self.attempt = 0
