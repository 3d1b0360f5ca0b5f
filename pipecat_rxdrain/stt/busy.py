"""Is the STT I/O thread's process busy? Its CPU share over a short window, with hysteresis (no timers, no threads).

Why the process and not the I/O thread alone: every gRPC request costs the I/O thread ~0.1 ms of
GIL in gRPC's Python layer, and the GIL is shared with Pipecat's loop. Batching requests pays
when the Python threads together use most of a core (the loop is then waiting for the GIL), not
when the I/O thread alone is loaded; the process's CPU share is the cheap measure of that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..clock import Clock, monotonic

#: Busy when the process used at least this share of one core over a window (the GIL nears saturation)...
BUSY_ON_SHARE = 0.85
#: ... and idle again below this (batching itself lowers the share: the gap keeps it from flapping).
BUSY_OFF_SHARE = 0.70
#: Length of one measurement window.
BUSY_WINDOW_S = 0.5


class BusyMeter:
    """Whether the process has been busy lately (CPU share of one core over the last window).

    Guarantees:

    * ``busy()`` is cheap (one clock read) except once per ``window_s``, when it reads the
      process's CPU time (``cpu``, default ``time.process_time``) and compares the CPU used over the
      window with its wall time: the state turns busy at a share ``>= on_share`` and idle again at
      a share ``< off_share`` (hysteresis), and stays as it was in between.
    * Until the first full window has passed it answers ``False``: the process is idle until
      measured busy, so an idle process never pays anything for the meter.
    * Not thread-safe: call it from one thread (the I/O thread).
    """

    def __init__(
        self,
        *,
        on_share: float = BUSY_ON_SHARE,
        off_share: float = BUSY_OFF_SHARE,
        window_s: float = BUSY_WINDOW_S,
        clock: Clock = monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        if not (0 < off_share <= on_share):
            raise ValueError(f"need 0 < off_share <= on_share, got off_share={off_share}, on_share={on_share}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.on_share = on_share
        self.off_share = off_share
        self.window_s = window_s
        self._clock = clock
        self._cpu = cpu
        self._t0: float | None = None
        self._c0 = 0.0
        self._busy = False
        self.share = 0.0  # the last window's CPU share (0..1+)
        self.switches = 0  # how many times the state changed

    def busy(self) -> bool:
        now = self._clock()
        t0 = self._t0
        if t0 is None:
            self._t0, self._c0 = now, self._cpu()
            return False
        if now - t0 < self.window_s:
            return self._busy
        cpu = self._cpu()
        share = self.share = (cpu - self._c0) / (now - t0)
        self._t0, self._c0 = now, cpu
        busy = share >= self.off_share if self._busy else share >= self.on_share
        if busy is not self._busy:
            self._busy = busy
            self.switches += 1
        return busy
