"""The audio between the Twilio serializer and the pipeline, counted and bounded.

Pipecat's input transport puts every deserialized audio frame into an
unbounded ``asyncio.Queue`` and, on ``EndFrame``, cancels the task that empties
it, dropping whatever is still queued. :class:`InputBacklog` counts frames as
the serializer hands them over (:meth:`note_sent`) and as they reach the first
processor after the transport (:meth:`note_arrived`), which gives the owner:

* a bound: the serializer waits (:meth:`wait_for_room`) while ``limit`` frames
  are in flight, which stops reading the websocket (TCP pushes back on the
  sender) so a flood cannot grow memory; what still cannot fit after the wait is
  dropped and counted (``overflow``). Downstream, the RX queue keeps the
  newest audio and drops the oldest, counted.
* a drain: :meth:`drain` waits until nothing is in flight (used on Twilio's
  ``stop`` so the last words are not dropped with Pipecat's queue);
* exact books: ``sent == arrived + in_flight`` and whatever is still in flight
  when the call ends is counted by :meth:`settle` (``discarded_at_end``).

No Pipecat import (the processor that calls :meth:`note_arrived` is
:class:`~pipecat_rxdrain.twilio.serializer.InputBacklogMeter`).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

#: 8 s of 20 ms frames: twice the RX queue, so a legitimate burst after a network stall never waits.
DEFAULT_INPUT_BACKLOG = 400


@dataclass(frozen=True)
class InputBacklogStats:
    sent: int
    arrived: int
    in_flight: int
    peak_in_flight: int
    waits: int
    overflow: int
    discarded_at_end: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class InputBacklog:
    """Frames handed to the input transport but not yet seen by the pipeline, at most ``limit``.

    Guarantees: ``in_flight`` never exceeds ``limit`` while the serializer respects
    :meth:`has_room`; :meth:`wait_for_room` and :meth:`drain` return within their
    timeout; every frame is either arrived, in flight, or counted in ``overflow``
    (never handed over) or ``discarded_at_end`` (after :meth:`settle`).
    """

    def __init__(self, limit: int = DEFAULT_INPUT_BACKLOG, *, wait_s: float = 1.0) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"input backlog limit must be an integer >= 1, got {limit!r}")
        if not math.isfinite(wait_s) or wait_s < 0:
            raise ValueError(f"input backlog wait_s must be a finite number >= 0, got {wait_s!r}")
        self.limit = limit
        self.wait_s = wait_s
        self.sent = 0
        self.arrived = 0
        self.peak_in_flight = 0
        self.waits = 0
        self.overflow = 0
        self.discarded_at_end = 0
        self._settled = False
        self._changed = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return self.sent - self.arrived

    def has_room(self) -> bool:
        return self.in_flight < self.limit

    def note_sent(self) -> None:
        self.sent += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def note_arrived(self) -> None:
        if self.arrived < self.sent:
            self.arrived += 1
        self._changed.set()

    def note_overflow(self) -> None:
        self.overflow += 1

    async def wait_for_room(self, timeout: float | None = None) -> bool:
        """True once a frame may be handed over; False if there is still no room after ``timeout``."""
        if self.has_room():
            return True
        self.waits += 1
        return await self._wait(self.has_room, self.wait_s if timeout is None else timeout)

    async def drain(self, timeout: float) -> bool:
        """True once everything handed over has arrived; False after ``timeout``."""
        return await self._wait(lambda: self.in_flight == 0, timeout)

    async def _wait(self, ready, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return ready()
        return True

    def settle(self) -> int:
        """At the end of the call: count what is still in flight as discarded (once). Returns that number."""
        if not self._settled:
            self._settled = True
            self.discarded_at_end = self.in_flight
        return self.discarded_at_end

    @property
    def stats(self) -> InputBacklogStats:
        return InputBacklogStats(
            self.sent,
            self.arrived,
            self.in_flight,
            self.peak_in_flight,
            self.waits,
            self.overflow,
            self.discarded_at_end,
        )
