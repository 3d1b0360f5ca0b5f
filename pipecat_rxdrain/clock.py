"""Clocks for timing logic.

Every timing decision in this package reads time through a ``Clock``: a
zero-argument callable returning monotonic seconds. Production code uses
``time.monotonic``; tests inject a :class:`FakeClock` so pacing, hysteresis,
debounce and telemetry throttling are deterministic.
"""

from __future__ import annotations

import time
from typing import Callable

Clock = Callable[[], float]

monotonic: Clock = time.monotonic


class FakeClock:
    """A manually advanced clock for deterministic tests.

    Guarantees: time never goes backwards; it only moves when ``advance`` or
    ``set`` is called.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by a negative amount ({seconds})")
        self._now += seconds
        return self._now

    def set(self, when: float) -> float:
        if when < self._now:
            raise ValueError(f"cannot move a clock backwards ({when} < {self._now})")
        self._now = float(when)
        return self._now
