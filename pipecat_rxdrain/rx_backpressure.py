"""The RX back-pressure mechanism: a bounded inbound audio queue that drains itself.

Pure Python, no Pipecat import, and it never sleeps: it is a step-driven state
machine. The caller (``RxDrainProcessor`` in production, a ``FakeClock`` in the
tests) offers frames, asks :meth:`RxBackpressure.next_action` what to do now,
does it, and reports back. Every decision reads the time from the ``now``
argument (or the injected clock), so the rules below are exactly testable.

The rules:

* Bounded queue (``max_queue``, default 200 frames). When it is full the
  **oldest** frame is dropped and ``drops`` counts it; offering never blocks.
* Two modes with hysteresis: enter ``drain`` when q >= ``high_watermark``
  (default 100), go back to ``normal`` only when q <= ``low_watermark``
  (default 20), or when the queue is empty.
* ``normal``: one frame per ``frame_interval_ms`` (default 20). The deadline
  advances by one interval only when a frame was *accepted* downstream, and it
  is deadline based (``deadline += interval``), so it does not drift. A frame
  the sink refused stays at the head and is retried first after
  ``retry_interval_ms``; it is never dropped for being refused, never
  reordered. After the queue has been idle the deadline restarts at the
  arrival of the next frame (no burst credit is saved up while idle).
* ``drain``: frames are released back-to-back (the caller only yields to its
  event loop between them) until the low watermark.
* Catch-up (beyond the original design): a bunch that arrives *below* the high
  watermark (25 frames after a 500 ms network hiccup) would otherwise stay in
  the queue for the rest of the call, because ``normal`` releases exactly as
  fast as frames arrive. A standing queue adds its age to every later frame:
  25 frames = 500 ms of extra latency on every word the caller says. So while
  q > ``catchup_target`` (default 2, counting the frame being released) in
  ``normal``, the interval is
  ``frame_interval / catchup_speed`` (default 1.5x real time): the backlog
  shrinks by a third of a frame per interval, a 25-frame bunch is gone within
  about 1.5 s of audio, and the STT still sees a smooth, near real-time feed.
* Passengers: non-audio items (a Pipecat ``EndFrame``, data frames) can ride in
  the queue to keep their order relative to the audio offered before them.
  They are never dropped, not counted in q, and not paced: one is handed out
  as soon as all audio offered before it has left the queue.

Telemetry: once per ``telemetry_interval_s`` of clock time (also while idle,
the caller must call :meth:`report_if_due`, and ``next_action`` never waits
past the next report) plus one extra line at each mode change, exactly
``[RX] mode=<normal|drain> fps_in=<n> q=<n> drops=<n> write_ms=<x.xx>``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from loguru import logger

from .clock import Clock, monotonic
from .telemetry import SlidingCount, TelemetryWindow, WindowSample, format_rx_line

DEFAULT_MAX_QUEUE = 200
DEFAULT_HIGH_WATERMARK = 100
DEFAULT_LOW_WATERMARK = 20
DEFAULT_FRAME_INTERVAL_MS = 20.0
DEFAULT_CATCHUP_TARGET = 2
DEFAULT_CATCHUP_SPEED = 1.5
DEFAULT_RETRY_INTERVAL_MS = 5.0
DEFAULT_TELEMETRY_INTERVAL_S = 1.0
DEFAULT_FLUSH_TIMEOUT_S = 5.0

# Deadlines within a nanosecond count as reached (float sums such as 0.025 + 0.005 overshoot).
_EPS = 1e-9


class RxMode(str, enum.Enum):
    NORMAL = "normal"
    DRAIN = "drain"


class ActionKind(enum.Enum):
    RELEASE = "release"  # try to hand the head audio frame downstream, then call on_release_result
    PASS = "pass"  # hand this passenger downstream now (already removed from the queue)
    WAIT = "wait"  # nothing to do for wait_s seconds, or until something is offered


@dataclass(frozen=True)
class RxAction:
    kind: ActionKind
    item: Any = None
    wait_s: float = 0.0


@dataclass(frozen=True)
class RxStats:
    """A snapshot of the RX queue.

    ``mode``, ``q``, ``drops`` and ``fps_in`` (frames offered in the last
    second) are current; ``write_ms`` is the mean push time of the last full
    telemetry window (the one in the last periodic ``[RX]`` line). The rest are
    cumulative over the life of the queue.
    """

    mode: str
    q: int
    drops: int
    fps_in: int
    write_ms: float
    frames_in: int
    frames_out: int
    refusals: int  # times the sink said "not now" (each retried, never dropped for it)
    drain_episodes: int
    time_in_drain_s: float
    peak_q: int
    discarded_on_cancel: int
    discarded_on_end: int  # audio still refused by the sink when the end-of-stream flush timed out
    passengers_in: int
    passengers_out: int
    passengers_dropped: int  # interruptible passengers discarded on an interruption


def _check_params(
    max_queue: int,
    high_watermark: int,
    low_watermark: int,
    frame_interval_ms: float,
    catchup_target: int,
    catchup_speed: float,
    retry_interval_ms: float,
    telemetry_interval_s: float,
    flush_timeout_s: float,
) -> None:
    if not (0 <= low_watermark < high_watermark <= max_queue):
        raise ValueError(
            "RX watermarks need 0 <= low_watermark < high_watermark <= max_queue, got "
            f"low_watermark={low_watermark}, high_watermark={high_watermark}, max_queue={max_queue}"
        )
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got max_queue={max_queue}")
    if not frame_interval_ms > 0:
        raise ValueError(f"frame_interval_ms must be > 0, got frame_interval_ms={frame_interval_ms}")
    if catchup_target < 0:
        raise ValueError(f"catchup_target must be >= 0, got catchup_target={catchup_target}")
    if not catchup_speed >= 1.0:
        raise ValueError(f"catchup_speed must be >= 1.0 (1.0 disables catch-up), got catchup_speed={catchup_speed}")
    if not retry_interval_ms > 0:
        raise ValueError(f"retry_interval_ms must be > 0, got retry_interval_ms={retry_interval_ms}")
    if not telemetry_interval_s > 0:
        raise ValueError(f"telemetry_interval_s must be > 0, got telemetry_interval_s={telemetry_interval_s}")
    if not flush_timeout_s >= 0:
        raise ValueError(f"flush_timeout_s must be >= 0, got flush_timeout_s={flush_timeout_s}")


class RxBackpressure:
    """A bounded, self-draining inbound audio queue with watermark hysteresis.

    Guarantees: offering never blocks and never raises for a full queue (the
    oldest frame is dropped and counted, exactly); frames leave in the order
    they were offered; a frame the sink refused is retried first and the pacing
    deadline only advances on acceptance; the queue never waits on a sleep of
    its own (the caller sleeps for the ``wait_s`` it is given). Not
    thread-safe: drive it from one thread / event loop.
    """

    def __init__(
        self,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        high_watermark: int = DEFAULT_HIGH_WATERMARK,
        low_watermark: int = DEFAULT_LOW_WATERMARK,
        frame_interval_ms: float = DEFAULT_FRAME_INTERVAL_MS,
        catchup_target: int = DEFAULT_CATCHUP_TARGET,
        catchup_speed: float = DEFAULT_CATCHUP_SPEED,
        retry_interval_ms: float = DEFAULT_RETRY_INTERVAL_MS,
        telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S,
        flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
        clock: Clock = monotonic,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        _check_params(
            max_queue,
            high_watermark,
            low_watermark,
            frame_interval_ms,
            catchup_target,
            catchup_speed,
            retry_interval_ms,
            telemetry_interval_s,
            flush_timeout_s,
        )
        self.max_queue = int(max_queue)
        self.high_watermark = int(high_watermark)
        self.low_watermark = int(low_watermark)
        self.frame_interval_s = frame_interval_ms / 1000.0
        self.catchup_target = int(catchup_target)
        self.catchup_speed = float(catchup_speed)
        self.retry_interval_s = retry_interval_ms / 1000.0
        self.flush_timeout_s = float(flush_timeout_s)
        self._clock = clock
        self._emit = emit if emit is not None else logger.info

        # (sequence number, frame). offer() drops the oldest itself (to count exactly and to spare
        # a frame being pushed); maxlen is the backstop that keeps the bound structural.
        self._audio: deque[tuple[int, Any]] = deque(maxlen=self.max_queue)
        # (number of audio frames offered before it, item)
        self._passengers: deque[tuple[int, Any]] = deque()
        self._seq = 0

        self._mode = RxMode.NORMAL
        self._deadline: float | None = None
        self._retry_at: float | None = None
        self._in_flight: int | None = None  # sequence number of the frame a RELEASE handed out
        self._flush_deadline: float | None = None

        self._window = TelemetryWindow(telemetry_interval_s, clock=clock)
        self._arrivals = SlidingCount(1.0)  # fps_in: frames offered in the last second
        self._last_sample = WindowSample(events_per_s=0, write_ms=0.0, write_count=0, elapsed_s=0.0)

        self._drops = 0
        self._frames_in = 0
        self._frames_out = 0
        self._refusals = 0
        self._drain_episodes = 0
        self._drain_total_s = 0.0
        self._drain_started: float | None = None
        self._peak_q = 0
        self._discarded_on_cancel = 0
        self._discarded_on_end = 0
        self._passengers_in = 0
        self._passengers_out = 0
        self._passengers_dropped = 0

    # -- state ------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode.value

    @property
    def q(self) -> int:
        return len(self._audio)

    @property
    def drops(self) -> int:
        return self._drops

    @property
    def flushing(self) -> bool:
        return self._flush_deadline is not None

    @property
    def pending(self) -> bool:
        """True while anything (audio or passenger) is still queued."""
        return bool(self._audio or self._passengers)

    def stats(self, now: float | None = None) -> RxStats:
        now = self._clock() if now is None else now
        in_drain = self._drain_total_s
        if self._drain_started is not None:
            in_drain += max(0.0, now - self._drain_started)
        return RxStats(
            mode=self._mode.value,
            q=len(self._audio),
            drops=self._drops,
            fps_in=self._arrivals.count(now),
            write_ms=self._last_sample.write_ms,
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            refusals=self._refusals,
            drain_episodes=self._drain_episodes,
            time_in_drain_s=in_drain,
            peak_q=self._peak_q,
            discarded_on_cancel=self._discarded_on_cancel,
            discarded_on_end=self._discarded_on_end,
            passengers_in=self._passengers_in,
            passengers_out=self._passengers_out,
            passengers_dropped=self._passengers_dropped,
        )

    # -- input ------------------------------------------------------------

    def offer(self, frame: Any, now: float | None = None) -> bool:
        """Queue one audio frame. Returns True if the oldest frame was dropped to make room."""
        now = self._clock() if now is None else now
        dropped = len(self._audio) == self.max_queue
        if dropped:
            self._drops += 1
            if self._in_flight is not None and self._audio[0][0] == self._in_flight and len(self._audio) > 1:
                # The head is being pushed right now; the oldest frame still waiting goes instead.
                del self._audio[1]
            else:
                self._audio.popleft()
        if not self._audio and (self._deadline is None or self._deadline < now):
            # Idle until now: start the cadence here, with no credit saved up while idle.
            self._deadline = now
        self._audio.append((self._seq, frame))
        self._seq += 1
        self._frames_in += 1
        self._window.count(1)
        self._arrivals.add(now)
        q = len(self._audio)
        if q > self._peak_q:
            self._peak_q = q
        if self._mode is RxMode.NORMAL and q >= self.high_watermark:
            self._set_mode(RxMode.DRAIN, now)
        return dropped

    def add_passenger(self, item: Any) -> None:
        """Queue a non-audio item behind the audio offered so far (never dropped, not in q)."""
        self._passengers.append((self._seq, item))
        self._passengers_in += 1

    def drop_passengers(self, predicate: Callable[[Any], bool]) -> int:
        """Discard the queued passengers for which ``predicate`` is true (e.g. on an interruption)."""
        kept = deque(p for p in self._passengers if not predicate(p[1]))
        dropped = len(self._passengers) - len(kept)
        self._passengers = kept
        self._passengers_dropped += dropped
        return dropped

    def start_flush(self, now: float | None = None) -> None:
        """End of stream: release everything back-to-back from now on.

        The sink is still honoured; if it keeps refusing for ``flush_timeout_s``
        the remaining audio is discarded and counted as ``discarded_on_end``.
        """
        now = self._clock() if now is None else now
        if self._flush_deadline is None:
            self._flush_deadline = now + self.flush_timeout_s

    def discard_backlog(self, now: float | None = None) -> int:
        """Cancel: discard all queued audio, counted as ``discarded_on_cancel`` (not ``drops``)."""
        now = self._clock() if now is None else now
        n = len(self._audio)
        self._audio.clear()
        self._discarded_on_cancel += n
        self._retry_at = None
        if self._mode is RxMode.DRAIN:
            self._set_mode(RxMode.NORMAL, now)
        return n

    # -- output -----------------------------------------------------------

    def next_action(self, now: float | None = None, *, urgent: bool = False) -> RxAction:
        """What the caller should do now. Never sleeps.

        ``urgent``: hand out the head frame now whatever the cadence or a pending retry says
        (the caller's downstream holds so much audio that holding more here would only age it;
        see ``RxDrainProcessor`` and ``AudioSink.audio_backlog``).
        """
        now = self._clock() if now is None else now
        if self._passengers and (not self._audio or self._audio[0][0] >= self._passengers[0][0]):
            _, item = self._passengers.popleft()
            self._passengers_out += 1
            return RxAction(ActionKind.PASS, item)
        if not self._audio:
            if self._mode is RxMode.DRAIN:
                self._set_mode(RxMode.NORMAL, now)
            return self._wait(None, now)
        if urgent:
            self._in_flight = self._audio[0][0]
            return RxAction(ActionKind.RELEASE, self._audio[0][1])
        if self._retry_at is not None and now + _EPS < self._retry_at:
            return self._wait(self._retry_at, now)
        if (
            self._flush_deadline is not None
            and self._retry_at is not None
            and now >= self._flush_deadline
        ):
            # The sink has refused past the flush timeout: give up on the rest, counted.
            n = len(self._audio)
            self._audio.clear()
            self._discarded_on_end += n
            self._retry_at = None
            if self._mode is RxMode.DRAIN:  # empty now: leave drain here, a passenger may be handed out first
                self._set_mode(RxMode.NORMAL, now)
            logger.warning(f"RX flush timed out after {self.flush_timeout_s:.1f}s; discarded {n} queued frames")
            return self.next_action(now)
        assert self._deadline is not None
        if self._mode is RxMode.DRAIN or self._flush_deadline is not None or now + _EPS >= self._deadline:
            self._in_flight = self._audio[0][0]
            return RxAction(ActionKind.RELEASE, self._audio[0][1])
        return self._wait(self._deadline, now)

    def on_release_result(self, accepted: bool, now: float | None = None, write_s: float = 0.0) -> None:
        """Report what happened to the head frame handed out by a RELEASE action.

        ``write_s`` is how long pushing it downstream took (for ``write_ms``).
        """
        now = self._clock() if now is None else now
        seq, self._in_flight = self._in_flight, None
        if seq is None or not self._audio or self._audio[0][0] != seq:
            return  # discarded (cancel) while the release was in flight, or no release pending
        if not accepted:
            self._refusals += 1
            self._retry_at = now + self.retry_interval_s
            return
        backlog = len(self._audio)  # including the frame just accepted
        self._audio.popleft()
        self._retry_at = None
        self._frames_out += 1
        self._window.record_write(write_s)
        q = len(self._audio)
        if self._mode is RxMode.DRAIN:
            if q <= self.low_watermark:
                self._set_mode(RxMode.NORMAL, now)
        else:
            interval = self.frame_interval_s
            if backlog > self.catchup_target:
                interval /= self.catchup_speed
            assert self._deadline is not None
            self._deadline += interval
            if self._deadline < now - self.frame_interval_s:
                # Far behind (e.g. the loop stalled): do not burst to make up for it.
                self._deadline = now

    # -- telemetry --------------------------------------------------------

    def report_if_due(self, now: float | None = None) -> str | None:
        """Emit the periodic ``[RX]`` line if one is due; returns it (or None)."""
        now = self._clock() if now is None else now
        if not self._window.due(now):
            return None
        return self._report(now, periodic=True)

    def next_report_in(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        return self._window.next_due_in(now)

    def reset_telemetry(self, now: float | None = None) -> None:
        """Start a fresh telemetry window (e.g. when the pipeline starts)."""
        now = self._clock() if now is None else now
        self._window.roll(now)

    def _report(self, now: float, *, periodic: bool) -> str:
        # A mode-change line is extra: it must not cut the periodic window short.
        if periodic:
            self._last_sample = sample = self._window.roll(now)
        else:
            sample = self._window.peek(now)
        line = format_rx_line(
            mode=self._mode.value,
            fps_in=self._arrivals.count(now),
            q=len(self._audio),
            drops=self._drops,
            write_ms=sample.write_ms,
        )
        self._emit(line)
        return line

    # -- internals --------------------------------------------------------

    def _wait(self, until: float | None, now: float) -> RxAction:
        wait = self._window.next_due_in(now)
        if until is not None:
            wait = min(wait, max(0.0, until - now))
        return RxAction(ActionKind.WAIT, wait_s=wait)

    def _set_mode(self, mode: RxMode, now: float) -> None:
        if mode is self._mode:
            return
        self._mode = mode
        if mode is RxMode.DRAIN:
            self._drain_episodes += 1
            self._drain_started = now
        else:
            if self._drain_started is not None:
                self._drain_total_s += max(0.0, now - self._drain_started)
            self._drain_started = None
            self._deadline = now  # back to real-time cadence from here, no credit from the drain
        self._report(now, periodic=False)
