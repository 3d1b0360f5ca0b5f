"""How busy is this process? Its CPU share over a short window, as a level with hysteresis (no timers, no threads).

Both halves of the package read it to batch only while it pays: RX merges consecutive frames (every
processor downstream then handles fewer frames) and the STT writer sends fewer, fuller requests.
Why the process and not one thread: Pipecat's loop and the STT I/O thread share the GIL, and every
frame costs the loop ~1 ms of it in Pipecat's plumbing and every gRPC request ~0.2 ms more. Batching
pays when the Python threads together use most of a core (each then waits for the GIL), and the
process's CPU share is the cheap measure of that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .clock import Clock, monotonic
from .units import FRAME_UNIT_MS

#: Busy when the process used at least this share of one core over a window (the GIL nears saturation)...
BUSY_ON_SHARE = 0.85
#: ... and idle again below this (batching itself lowers the share: the gap keeps it from flapping).
BUSY_OFF_SHARE = 0.70
#: ... and saturated at this: the process is past what one core of GIL gives it, so already behind.
BUSY_SATURATED_SHARE = 0.95
#: Length of one measurement window.
BUSY_WINDOW_S = 0.5
#: Highest level (RX and the writer hold audio up to one 20 ms frame per level).
BUSY_MAX_LEVEL = 2
#: Grace on top of a busy hold: the frame the hold waits for is due exactly at its end, and without
#: it a frame that arrives a moment late leaves the merge one frame short for nothing.
BUSY_HOLD_GRACE_S = 0.005


def busy_hold_s(level: int, queued_ms: float, batch_ms: float) -> float | None:
    """How long after it arrived the oldest queued audio may wait for more, at busy ``level``.

    The one batching rule RX and the STT writer share: at level L > 0, audio waits until
    (L + 1) x 20 ms of it is queued (never more than ``batch_ms``), or until L x 20 ms (never
    more than ``batch_ms`` less one frame) plus :data:`BUSY_HOLD_GRACE_S` have passed since the
    oldest of it arrived, whichever comes first. So each merge carries about L + 1 frames and
    adds at most L frames' wait. None means: do not wait (level 0, or enough is queued already).
    """
    if level <= 0 or queued_ms >= min(batch_ms, (level + 1) * FRAME_UNIT_MS):
        return None
    return min(level * FRAME_UNIT_MS, max(0.0, batch_ms - FRAME_UNIT_MS)) / 1000.0 + BUSY_HOLD_GRACE_S


class BusyMeter:
    """How busy the process has been lately, as a level: 0 (idle) up to ``max_level``.

    Guarantees:

    * ``level()`` is cheap (one clock read) except once per ``window_s``, when it reads the
      process's CPU time (``cpu``, default ``time.process_time``) and compares the CPU used over the
      window with its wall time: a share ``>= on_share`` raises the level by one (up to
      ``max_level``), a share ``< off_share`` lowers it by one (down to 0), and in between it stays
      (hysteresis). One step per window, so the level climbs only as far as the load needs: each
      level makes RX pass fewer frames and the writer send fewer requests, which itself lowers
      the share. A share ``>= saturated_share`` goes to ``max_level`` at once: the process is
      already falling behind, and every window spent climbing adds to a backlog that the spare
      CPU then has to work off. An idle measure over a spell of k windows (no calls meanwhile)
      lowers it by k steps.
    * Until the first full window has passed it answers 0: the process is idle until measured
      busy, so an idle process never pays anything for the meter.
    * ``busy()`` is ``level() > 0``.
    * Not thread-safe: call it from one thread (an event loop's, or the STT I/O thread's).
    """

    def __init__(
        self,
        *,
        on_share: float = BUSY_ON_SHARE,
        off_share: float = BUSY_OFF_SHARE,
        saturated_share: float = BUSY_SATURATED_SHARE,
        window_s: float = BUSY_WINDOW_S,
        max_level: int = BUSY_MAX_LEVEL,
        clock: Clock = monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        if not (0 < off_share <= on_share <= saturated_share):
            raise ValueError(
                "need 0 < off_share <= on_share <= saturated_share, got "
                f"off_share={off_share}, on_share={on_share}, saturated_share={saturated_share}"
            )
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if not (isinstance(max_level, int) and max_level >= 1):
            raise ValueError(f"max_level must be an int >= 1, got {max_level!r}")
        self.on_share = on_share
        self.off_share = off_share
        self.saturated_share = saturated_share
        self.window_s = window_s
        self.max_level = max_level
        self._clock = clock
        self._cpu = cpu
        self._t0: float | None = None
        self._c0 = 0.0
        self._level = 0
        self.share = 0.0  # the last window's CPU share (0..1+)
        self.switches = 0  # how many times the level changed

    def level(self) -> int:
        now = self._clock()
        t0 = self._t0
        if t0 is None:
            self._t0, self._c0 = now, self._cpu()
            return 0
        if now - t0 < self.window_s:
            return self._level
        cpu = self._cpu()
        share = self.share = (cpu - self._c0) / (now - t0)
        self._t0, self._c0 = now, cpu
        level = self._level
        if share >= self.saturated_share:
            level = self.max_level
        elif share >= self.on_share:
            level = min(self.max_level, level + 1)
        elif share < self.off_share:
            # One step per window that passed: a long quiet spell (no audio, so no calls) is idle
            # all along, and the next call starts at level 0.
            level = max(0, level - max(1, int((now - t0) / self.window_s)))
        if level != self._level:
            self._level = level
            self.switches += 1
        return level

    def busy(self) -> bool:
        return self.level() > 0
