"""Throttled once-per-interval telemetry shared by the RX processor and the STT session.

The line formats are a contract (people grep for them in production logs):

    [RX] mode=<normal|drain> fps_in=<n> q=<n> drops=<n> write_ms=<x.xx>
    [STT] q=<n> drops=<n> write_ms=<x.xx>

Lines are emitted through loguru. To tag a call's lines (e.g. with its call
SID) bind or contextualize the logger (``logger.contextualize(call_sid=...)``)
and include ``{extra[call_sid]}`` in the sink's format; the message text
itself never changes shape.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass

from .clock import Clock, monotonic

RX_LINE_RE = re.compile(
    r"^\[RX\] mode=(?P<mode>normal|drain) fps_in=(?P<fps_in>\d+) q=(?P<q>\d+) "
    r"drops=(?P<drops>\d+) write_ms=(?P<write_ms>\d+\.\d{2})$"
)
STT_LINE_RE = re.compile(r"^\[STT\] q=(?P<q>\d+) drops=(?P<drops>\d+) write_ms=(?P<write_ms>\d+\.\d{2})$")


def format_rx_line(*, mode: str, fps_in: int, q: int, drops: int, write_ms: float) -> str:
    return f"[RX] mode={mode} fps_in={int(fps_in)} q={int(q)} drops={int(drops)} write_ms={write_ms:.2f}"


def format_stt_line(*, q: int, drops: int, write_ms: float) -> str:
    return f"[STT] q={int(q)} drops={int(drops)} write_ms={write_ms:.2f}"


@dataclass(frozen=True)
class WindowSample:
    """What happened during one telemetry window."""

    events_per_s: int  # e.g. frames offered per second over the window
    write_ms: float  # mean duration of the timed operation in the window (0.0 if none)
    write_count: int
    elapsed_s: float


class TelemetryWindow:
    """Counts events and times operations over a rolling window; says when a line is due.

    Guarantees: ``due(now)`` is true at most once per ``interval_s`` of clock
    time (clock-driven, so it also fires while no frames flow); ``roll`` returns
    the window's numbers and starts a new window. Thread-safe, so a writer
    thread may record while the event loop reports.
    """

    def __init__(self, interval_s: float = 1.0, clock: Clock = monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"telemetry interval must be > 0 s, got {interval_s}")
        self.interval_s = float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._events = 0
        self._write_total_s = 0.0
        self._write_count = 0

    def count(self, n: int = 1) -> None:
        with self._lock:
            self._events += n

    def record_write(self, seconds: float) -> None:
        with self._lock:
            self._write_total_s += seconds
            self._write_count += 1

    def due(self, now: float | None = None) -> bool:
        now = self._clock() if now is None else now
        return now - self._start >= self.interval_s

    def next_due_in(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        return max(0.0, self._start + self.interval_s - now)

    def peek(self, now: float | None = None) -> WindowSample:
        """The current window's numbers so far, without starting a new window."""
        return self._sample(self._clock() if now is None else now, reset=False)

    def roll(self, now: float | None = None) -> WindowSample:
        return self._sample(self._clock() if now is None else now, reset=True)

    def _sample(self, now: float, reset: bool) -> WindowSample:
        with self._lock:
            elapsed = max(now - self._start, 1e-9)
            # fps over a full window is the plain count; scale if the window ran long/short.
            if abs(elapsed - self.interval_s) < 1e-6 or elapsed <= 0:
                per_s = self._events / self.interval_s
            else:
                per_s = self._events / elapsed
            sample = WindowSample(
                events_per_s=int(round(per_s)),
                write_ms=(self._write_total_s / self._write_count * 1000.0) if self._write_count else 0.0,
                write_count=self._write_count,
                elapsed_s=elapsed,
            )
            if reset:
                self._start = now
                self._events = 0
                self._write_total_s = 0.0
                self._write_count = 0
            return sample


class SlidingCount:
    """How many events happened in the last ``window_s`` seconds, exactly (by timestamp).

    Used for ``fps_in``: "frames offered in the last second" stays meaningful on
    an extra line logged mid-window (e.g. at a mode change), where a per-window
    rate would be scaled from a few milliseconds. Memory is bounded by the
    events of one window. Not thread-safe.
    """

    def __init__(self, window_s: float = 1.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window must be > 0 s, got {window_s}")
        self.window_s = float(window_s)
        self._times: deque[float] = deque()

    def add(self, now: float, n: int = 1) -> None:
        self._times.extend([now] * n)
        self._expire(now)

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()
