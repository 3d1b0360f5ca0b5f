"""Test helpers that ship with the package (for its own tests and for users' tests).

``FakeClock`` is a :data:`pipecat_rxdrain.clock.Clock` that only moves when told to.
"""

from __future__ import annotations

__all__ = ["FakeClock"]


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
