"""The RX back-pressure mechanism: a bounded inbound audio queue that costs nothing until something is behind.

Pure Python, no Pipecat import, and it never sleeps: it is a step-driven state
machine. The caller (``RxDrainProcessor`` in production, a ``FakeClock`` in the
tests) offers audio chunks, asks :meth:`RxBackpressure.next_action` what to do
now, does it, and reports back. Every decision reads the time from the ``now``
argument (or the injected clock), so the rules below are exactly testable.

The rules:

* **Audio time.** Every chunk is offered with its duration. The queue length
  ``q``, ``max_queue``, the watermarks and ``drops`` are audio durations,
  expressed in 20 ms-frame equivalents (``FRAME_UNIT_MS``) so that 200 / 100 /
  20 mean 4 s / 2 s / 0.4 s whatever the transport's chunk size (Pipecat's
  16 kHz pipelines deliver Twilio audio in ~95 ms chunks: each counts 4.75).
* **Bounded queue** (``max_queue``, default 200 = 4 s). When an offer would take
  q above it, the **oldest** chunks are dropped and ``drops`` counts their
  audio; offering never blocks. The chunk being pushed and the new chunk are
  never the ones dropped.
* **Work-conserving.** In ``normal`` the head chunk is released as soon as the
  sink accepts it and the rate bound allows it; nothing else delays it. A chunk
  offered to an empty queue (no passengers, no refusal pending, nothing in
  flight) is released in the same step, so the caller can hand it downstream
  inline.
* **Rate bound, not a grid.** In ``normal`` a chunk may start only while the
  audio released so far is at most the wall-clock time since the call's first
  chunk plus ``lead_ms`` (default 2 s: a start-up backlog that arrives with the
  first chunk, when a pipeline was slow to start, passes at once up to that).
  Its deadline advances by the accepted
  chunk's duration, only on acceptance; it is anchored at the first chunk's
  arrival and never follows later arrivals (no ratchet), and idle time is not
  forgiven or reset (there is nothing to reset: the bound only caps how far the
  released audio may run ahead of the clock). A caller delivering audio at
  real time never meets it; a sender faster than real time is paced to real
  time once it is ``lead_ms`` ahead. The bound holds audio only while the input
  is running ahead of real time (more than 550 ms of audio, besides the newest
  chunk, offered in the last 500 ms): once it is back at real time, what the
  bound still holds is a one-time offset (a late first frame, a start-up
  backlog) and is released at once, so the bound never leaves a standing queue
  behind.
* **Hysteresis.** Enter ``drain`` when q >= ``high_watermark`` (default 100),
  go back to ``normal`` only when q <= ``low_watermark`` (default 20), or when
  the queue is empty. In ``drain`` (and during the end-of-stream flush) chunks
  are released back-to-back, the rate bound lifted: that audio is already
  late, so it is not charged to the bound. Leaving ``drain`` restarts the
  bound at the present: the tail the drain leaves (<= ``low_watermark``) goes
  at once, with the full lead still ahead of it, so the last frames of a flood
  never wait for the wall clock to catch up with it. This is the only time the
  bound is ever eased.
* **Refusals.** A chunk the sink refused stays at the head and is retried first
  after ``retry_interval_ms``; it is never dropped for being refused, never
  reordered, and the bound's deadline does not move for it.
* **Merging (optional, ``merge_backlog``).** When more than one chunk is queued
  (a backlog is being released), consecutive chunks with the same merge key are
  handed out together, up to ``batch_ms`` of audio, never across a passenger,
  so everything downstream handles fewer frames. A chunk that arrives to an
  empty queue is never held back to wait for a partner, except while busy:
* **Busy merge (optional, ``busy_level``).** While the injected level is above
  0 (the process measured itself busy, see ``pipecat_rxdrain.busy``), the head
  chunk in ``normal`` waits until the queue holds (level + 1) x 20 ms of audio
  (at most ``batch_ms``) or it has waited level x 20 ms (+ 5 ms of grace: the
  next frame is due exactly then), and consecutive chunks then leave together
  (up to ``batch_ms``, as when merging). So a loaded process hands every
  processor downstream fewer, longer frames, and the level climbs only as far
  as the load needs. Nothing is held in ``drain`` or the flush (a busy backlog
  still leaves merged), with a passenger queued or a refusal pending, or when
  the head chunk is already that long (Pipecat's ~95 ms chunks at 16 kHz); at
  level 0, nothing waits.
* **Passengers.** Non-audio items (a Pipecat ``EndFrame``, data frames) can ride
  in the queue to keep their order relative to the audio offered before them.
  They are never dropped, not counted in q, and not paced: one is handed out
  as soon as all audio offered before it has left the queue.

Telemetry: once per ``telemetry_interval_s`` of clock time (also while idle,
the caller must call :meth:`report_if_due`, and ``next_action`` never waits
past the next report) plus one extra line at each mode change, exactly
``[RX] mode=<normal|drain> fps_in=<n> q=<n> drops=<n> write_ms=<x.xx>``
(``fps_in`` counts chunks offered in the last second; q and drops are rounded
20 ms-frame equivalents).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from ..busy import busy_hold_s
from ..clock import Clock, monotonic
from ..telemetry import SlidingCount, TelemetryWindow, WindowSample, format_rx_line
from ..units import FRAME_UNIT_MS  # q, max_queue, watermarks and drops are counted in this unit

_UNIT_US = int(FRAME_UNIT_MS * 1000)

DEFAULT_MAX_QUEUE = 200
DEFAULT_HIGH_WATERMARK = 100
DEFAULT_LOW_WATERMARK = 20
DEFAULT_FRAME_INTERVAL_MS = 20.0
DEFAULT_LEAD_MS = 2000.0
DEFAULT_BATCH_MS = 60.0
DEFAULT_RETRY_INTERVAL_MS = 5.0
DEFAULT_TELEMETRY_INTERVAL_S = 1.0
DEFAULT_FLUSH_TIMEOUT_S = 5.0

# The rate bound holds audio only while the input runs ahead of real time: more than 110 % of
# _RATE_WINDOW_S of audio offered within the last _RATE_WINDOW_S, not counting the newest chunk
# (so that a stream of long chunks, 95 or 137.5 ms, is not "ahead" by where the window cuts it).
_RATE_WINDOW_S = 0.5
_RATE_LIMIT_US = 550_000

# Deadlines within a nanosecond count as reached (float sums such as 0.025 + 0.005 overshoot).
_EPS = 1e-9


class RxMode(enum.StrEnum):
    NORMAL = "normal"
    DRAIN = "drain"


class ActionKind(enum.Enum):
    RELEASE = "release"  # try to hand the chunk(s) downstream, then call on_release_result
    PASS = "pass"  # hand this passenger downstream now (already removed from the queue)
    WAIT = "wait"  # nothing to do for wait_s seconds, or until something is offered / a release is reported


@dataclass(frozen=True)
class RxAction:
    kind: ActionKind
    item: Any = None  # RELEASE: the head chunk; PASS: the passenger
    wait_s: float = 0.0
    items: tuple = ()  # RELEASE: every chunk to hand out together (the head first; more only when merging)


@dataclass(frozen=True)
class RxStats:
    """A snapshot of the RX queue.

    ``mode``, ``q``, ``drops`` and ``fps_in`` (chunks offered in the last
    second) are current; ``write_ms`` is the mean push time of the last full
    telemetry window (the one in the last periodic ``[RX]`` line). The rest are
    cumulative over the life of the queue. Audio amounts (``q``, ``drops``,
    ``peak_q``, ``audio_in``, ``audio_out``, ``discarded_*``) are in 20 ms-frame
    equivalents, so ``audio_in == audio_out + q + drops + discarded_on_cancel +
    discarded_on_end``; ``frames_in`` / ``frames_out`` count chunks.
    """

    mode: RxMode
    q: float
    drops: float
    fps_in: int
    write_ms: float
    frames_in: int
    frames_out: int  # chunks accepted downstream (a merged release counts each chunk it carried)
    releases: int  # pushes downstream (fewer than frames_out when merging)
    inline_releases: int  # chunks released in the same step they were offered (no wait, no task hop)
    refusals: int  # times the sink said "not now" (each retried, never dropped for it)
    busy_holds: int  # head chunks held back to merge with the next because the process was busy
    drain_episodes: int
    time_in_drain_s: float
    peak_q: float
    audio_in: float
    audio_out: float
    chunks_dropped: int
    discarded_on_cancel: float
    discarded_on_end: float  # audio still refused by the sink when the end-of-stream flush timed out
    passengers_in: int
    passengers_out: int
    passengers_dropped: int  # interruptible passengers discarded on an interruption


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"RX setting {name} must be a finite number, got {name}={value!r}")


def check_params(
    *,
    max_queue: float,
    high_watermark: float,
    low_watermark: float,
    frame_interval_ms: float,
    lead_ms: float,
    batch_ms: float,
    retry_interval_ms: float,
    telemetry_interval_s: float,
    flush_timeout_s: float,
) -> None:
    """Validate RX settings; a bad one raises ``ValueError`` naming it."""
    for name, value in (
        ("max_queue", max_queue),
        ("high_watermark", high_watermark),
        ("low_watermark", low_watermark),
        ("frame_interval_ms", frame_interval_ms),
        ("lead_ms", lead_ms),
        ("batch_ms", batch_ms),
        ("retry_interval_ms", retry_interval_ms),
        ("telemetry_interval_s", telemetry_interval_s),
        ("flush_timeout_s", flush_timeout_s),
    ):
        _finite(name, value)
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got max_queue={max_queue}")
    if not (0 <= low_watermark < high_watermark <= max_queue):
        raise ValueError(
            "RX watermarks need 0 <= low_watermark < high_watermark <= max_queue, got "
            f"low_watermark={low_watermark}, high_watermark={high_watermark}, max_queue={max_queue}"
        )
    if not frame_interval_ms > 0:
        raise ValueError(f"frame_interval_ms must be > 0, got frame_interval_ms={frame_interval_ms}")
    if not lead_ms >= 0:
        raise ValueError(f"lead_ms must be >= 0, got lead_ms={lead_ms}")
    if not batch_ms > 0:
        raise ValueError(f"batch_ms must be > 0, got batch_ms={batch_ms}")
    if not retry_interval_ms > 0:
        raise ValueError(f"retry_interval_ms must be > 0, got retry_interval_ms={retry_interval_ms}")
    if not telemetry_interval_s > 0:
        raise ValueError(f"telemetry_interval_s must be > 0, got telemetry_interval_s={telemetry_interval_s}")
    if not flush_timeout_s >= 0:
        raise ValueError(f"flush_timeout_s must be >= 0, got flush_timeout_s={flush_timeout_s}")


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def _units(us: int) -> float:
    return us / _UNIT_US


@dataclass(slots=True)
class _Chunk:
    seq: int
    item: Any
    us: int  # duration in microseconds (integers keep the audio accounting exact)
    key: Hashable
    at: float  # when it was offered


class RxBackpressure:
    """A bounded, work-conserving inbound audio queue with watermark hysteresis, in audio time.

    Guarantees: offering never blocks and never raises for a full queue (the
    oldest audio is dropped and counted, exactly); chunks leave in the order
    they were offered; a chunk offered to an empty queue is released in the
    same step if the rate bound allows; in ``normal`` the audio released before
    a chunk starts never exceeds the time since the first chunk plus
    ``lead_ms``; a refused chunk is retried first and the bound's deadline only
    advances on acceptance; the queue never waits on a sleep of its own (the
    caller sleeps for the ``wait_s`` it is given). Not thread-safe: drive it
    from one thread / event loop.
    """

    def __init__(
        self,
        *,
        max_queue: float = DEFAULT_MAX_QUEUE,
        high_watermark: float = DEFAULT_HIGH_WATERMARK,
        low_watermark: float = DEFAULT_LOW_WATERMARK,
        frame_interval_ms: float = DEFAULT_FRAME_INTERVAL_MS,
        lead_ms: float = DEFAULT_LEAD_MS,
        merge_backlog: bool = False,
        busy_level: Callable[[], int] | None = None,
        batch_ms: float = DEFAULT_BATCH_MS,
        retry_interval_ms: float = DEFAULT_RETRY_INTERVAL_MS,
        telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S,
        flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
        clock: Clock = monotonic,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        check_params(
            max_queue=max_queue,
            high_watermark=high_watermark,
            low_watermark=low_watermark,
            frame_interval_ms=frame_interval_ms,
            lead_ms=lead_ms,
            batch_ms=batch_ms,
            retry_interval_ms=retry_interval_ms,
            telemetry_interval_s=telemetry_interval_s,
            flush_timeout_s=flush_timeout_s,
        )
        self.max_queue = max_queue
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self._max_us = int(round(max_queue * _UNIT_US))
        self._high_us = int(round(high_watermark * _UNIT_US))
        self._low_us = int(round(low_watermark * _UNIT_US))
        self.default_duration_s = frame_interval_ms / 1000.0
        self._default_us = _us(self.default_duration_s)
        self.lead_s = lead_ms / 1000.0
        self._lead_us = _us(self.lead_s)
        self.merge_backlog = bool(merge_backlog)
        self._busy_level = busy_level
        self._holding = False  # the last next_action held the head chunk for a busy merge
        self._busy_holds = 0
        self._batch_us = _us(batch_ms / 1000.0)
        self.retry_interval_s = retry_interval_ms / 1000.0
        self.flush_timeout_s = float(flush_timeout_s)
        self._clock = clock
        self._emit = emit if emit is not None else logger.info

        self._audio: deque[_Chunk] = deque()
        self._q_us = 0
        # (number of chunks offered before it, item)
        self._passengers: deque[tuple[int, Any]] = deque()
        self._seq = 0

        self._mode = RxMode.NORMAL
        self._anchor: float | None = None  # arrival of the call's first chunk: the rate bound's origin
        self._paced_us = 0  # audio released under the rate bound (normal mode), the bound's deadline
        self._retry_at: float | None = None
        self._in_flight = 0  # number of head chunks a RELEASE handed out, not reported yet
        self._in_flight_paced = False  # whether that release is charged to the rate bound
        self._flush_deadline: float | None = None

        self._window = TelemetryWindow(telemetry_interval_s, clock=clock)
        self._arrivals = SlidingCount(1.0)  # fps_in: chunks offered in the last second
        self._recent: deque[tuple[float, int]] = deque()  # (offered at, us) over the last _RATE_WINDOW_S
        self._recent_us = 0
        self._last_sample = WindowSample(events_per_s=0, write_ms=0.0, write_count=0, elapsed_s=0.0)

        self._drops_us = 0
        self._chunks_dropped = 0
        self._frames_in = 0
        self._frames_out = 0
        self._releases = 0
        self._inline = 0
        self._audio_in_us = 0
        self._audio_out_us = 0
        self._refusals = 0
        self._drain_episodes = 0
        self._drain_total_s = 0.0
        self._drain_started: float | None = None
        self._peak_us = 0
        self._discarded_on_cancel_us = 0
        self._discarded_on_end_us = 0
        self._passengers_in = 0
        self._passengers_out = 0
        self._passengers_dropped = 0

    # -- state ------------------------------------------------------------

    @property
    def mode(self) -> RxMode:
        return self._mode

    @property
    def q(self) -> float:
        """Queued audio, in 20 ms-frame equivalents."""
        return self._q_us / _UNIT_US

    @property
    def queued_chunks(self) -> int:
        return len(self._audio)

    @property
    def drops(self) -> float:
        return self._drops_us / _UNIT_US

    @property
    def flushing(self) -> bool:
        return self._flush_deadline is not None

    @property
    def pending(self) -> bool:
        """True while anything (audio or passenger) is still queued."""
        return bool(self._audio or self._passengers)

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing in flight, no refusal pending: a new chunk may be released at once."""
        return not self._audio and not self._passengers and not self._in_flight

    @property
    def holding(self) -> bool:
        """Only a busy hold keeps the queued audio back (no passenger, refusal or release pending).

        A chunk offered now may complete the merge: the caller can ask :meth:`next_action` in the
        same step, as for a chunk offered to an idle queue.
        """
        return (
            self._holding
            and not self._in_flight
            and not self._passengers
            and self._retry_at is None
            and self._mode is RxMode.NORMAL
            and self._flush_deadline is None
        )

    @property
    def in_flight(self) -> bool:
        return self._in_flight > 0

    @property
    def paced_audio_s(self) -> float:
        """Audio released under the rate bound so far (its deadline, relative to the anchor)."""
        return self._paced_us / 1_000_000

    @property
    def anchor(self) -> float | None:
        """Arrival time of the call's first chunk (the rate bound's origin), once there was one."""
        return self._anchor

    def stats(self, now: float | None = None) -> RxStats:
        now = self._clock() if now is None else now
        in_drain = self._drain_total_s
        if self._drain_started is not None:
            in_drain += max(0.0, now - self._drain_started)
        return RxStats(
            mode=self._mode,
            q=self.q,
            drops=self.drops,
            fps_in=self._arrivals.count(now),
            write_ms=self._last_sample.write_ms,
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            releases=self._releases,
            inline_releases=self._inline,
            refusals=self._refusals,
            busy_holds=self._busy_holds,
            drain_episodes=self._drain_episodes,
            time_in_drain_s=in_drain,
            peak_q=_units(self._peak_us),
            audio_in=_units(self._audio_in_us),
            audio_out=_units(self._audio_out_us),
            chunks_dropped=self._chunks_dropped,
            discarded_on_cancel=_units(self._discarded_on_cancel_us),
            discarded_on_end=_units(self._discarded_on_end_us),
            passengers_in=self._passengers_in,
            passengers_out=self._passengers_out,
            passengers_dropped=self._passengers_dropped,
        )

    # -- input ------------------------------------------------------------

    def offer(
        self, frame: Any, now: float | None = None, *, duration_s: float | None = None, key: Hashable = None
    ) -> bool:
        """Queue one audio chunk of ``duration_s`` (default ``frame_interval_ms``).

        ``key``: chunks are merged only with neighbours of the same key (e.g. the sample rate).
        Returns True if older audio was dropped to make room.
        """
        now = self._clock() if now is None else now
        us = self._default_us if duration_s is None else _us(duration_s)
        if us <= 0:
            us = 1  # a zero-length chunk still occupies its place in the order
        if self._anchor is None:
            self._anchor = now
        self._audio.append(_Chunk(self._seq, frame, us, key, now))
        self._q_us += us
        dropped = self._trim()
        self._seq += 1
        self._frames_in += 1
        self._audio_in_us += us
        self._window.count(1)
        self._arrivals.add(now)
        recent = self._recent
        recent.append((now, us))
        self._recent_us += us
        horizon = now - _RATE_WINDOW_S
        while recent[0][0] <= horizon:  # bounded: one second of chunks
            self._recent_us -= recent.popleft()[1]
        if self._q_us > self._peak_us:
            self._peak_us = self._q_us
        if self._mode is RxMode.NORMAL and self._q_us >= self._high_us:
            self._set_mode(RxMode.DRAIN, now)
        elif self._mode is RxMode.DRAIN and self._q_us <= self._low_us:
            self._set_mode(RxMode.NORMAL, now)  # a long chunk pushed out more than it brought
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

    def discard_backlog(self, now: float | None = None) -> float:
        """Cancel: discard all queued audio, counted as ``discarded_on_cancel`` (not ``drops``).

        Returns the discarded audio in 20 ms-frame equivalents.
        """
        now = self._clock() if now is None else now
        n = self._q_us
        self._audio.clear()
        self._q_us = 0
        self._in_flight = 0
        self._holding = False
        self._discarded_on_cancel_us += n
        self._retry_at = None
        if self._mode is RxMode.DRAIN:
            self._set_mode(RxMode.NORMAL, now)
        return _units(n)

    # -- output -----------------------------------------------------------

    def next_action(self, now: float | None = None, *, urgent: bool = False) -> RxAction:
        """What the caller should do now. Never sleeps.

        ``urgent``: hand out the head chunk now whatever the rate bound or a pending retry says
        (the caller's downstream holds so much audio that holding more here would only age it;
        see ``RxDrainProcessor`` and ``AudioSink.audio_backlog``).
        """
        now = self._clock() if now is None else now
        if self._in_flight:
            return self._wait(None, now)  # the caller reports the release first, then asks again
        if self._passengers and (not self._audio or self._audio[0].seq >= self._passengers[0][0]):
            _, item = self._passengers.popleft()
            self._passengers_out += 1
            return RxAction(ActionKind.PASS, item)
        if not self._audio:
            if self._mode is RxMode.DRAIN:
                self._set_mode(RxMode.NORMAL, now)
            return self._wait(None, now)
        if urgent:
            return self._release(now, paced=False)
        if self._retry_at is not None and now + _EPS < self._retry_at:
            return self._wait(self._retry_at, now)
        if self._flush_deadline is not None and self._retry_at is not None and now >= self._flush_deadline:
            # The sink has refused past the flush timeout: give up on the rest, counted.
            n = self._q_us
            self._audio.clear()
            self._q_us = 0
            self._discarded_on_end_us += n
            self._retry_at = None
            if self._mode is RxMode.DRAIN:  # empty now: leave drain here, a passenger may be handed out first
                self._set_mode(RxMode.NORMAL, now)
            logger.warning(
                f"RX flush timed out after {self.flush_timeout_s:.1f}s; discarded {_units(n):.0f} queued frames"
            )
            return self.next_action(now)
        level = self._busy_level() if self._busy_level is not None else 0
        if self._mode is RxMode.DRAIN or self._flush_deadline is not None:
            return self._release(now, paced=False, merge=level > 0)
        if level > 0:
            hold_until = self._hold_until(level)
            if hold_until is not None and now + _EPS < hold_until:
                if not self._holding:
                    self._holding = True
                    self._busy_holds += 1
                return self._wait(hold_until, now)
        start_at = self._bound_start(self._paced_us)
        if now + _EPS >= start_at:
            return self._release(now, paced=True, merge=level > 0)
        ahead_until = self._input_ahead_until(now)
        if ahead_until is None:
            # The input is back at real time: what the bound still holds is a one-time offset (a late
            # first frame, a start-up backlog), not a fast sender. Holding it would only age it.
            assert self._anchor is not None  # set by the first chunk, before anything is queued
            self._paced_us = min(self._paced_us, _us(now - self._anchor) + self._lead_us - self._q_us)
            return self._release(now, paced=True, merge=level > 0)
        return self._wait(min(start_at, ahead_until), now)

    def on_release_result(self, accepted: bool, now: float | None = None, write_s: float = 0.0) -> None:
        """Report what happened to the chunk(s) handed out by a RELEASE action.

        ``write_s`` is how long pushing downstream took (for ``write_ms``).
        """
        now = self._clock() if now is None else now
        n, self._in_flight = self._in_flight, 0
        if not n:
            return  # discarded (cancel) while the release was in flight, or no release pending
        if not accepted:
            self._refusals += 1
            self._retry_at = now + self.retry_interval_s
            # Chunks spared while in flight may have left q above the cap: now they are the oldest.
            if self._trim() and self._mode is RxMode.DRAIN and self._q_us <= self._low_us:
                self._set_mode(RxMode.NORMAL, now)
            return
        us = 0
        for _ in range(n):
            us += self._audio.popleft().us
        self._q_us -= us
        self._retry_at = None
        self._frames_out += n
        self._releases += 1
        self._audio_out_us += us
        if self._in_flight_paced:
            self._paced_us += us  # the bound's deadline advances by the accepted audio, nothing else
        self._window.record_write(write_s)
        if self._mode is RxMode.DRAIN and self._q_us <= self._low_us:
            self._set_mode(RxMode.NORMAL, now)

    def note_inline(self) -> None:
        """The caller released the chunk just offered in the same step (for ``stats.inline_releases``)."""
        self._inline += 1

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
            q=round(self.q),
            drops=round(self.drops),
            write_ms=sample.write_ms,
        )
        self._emit(line)
        return line

    # -- internals --------------------------------------------------------

    def _trim(self) -> bool:
        """Drop the oldest audio while q is above the cap; the chunks in flight and the newest are spared."""
        dropped = False
        while self._q_us > self._max_us and len(self._audio) > self._in_flight + 1:
            victim = self._audio[self._in_flight]
            del self._audio[self._in_flight]
            self._q_us -= victim.us
            self._drops_us += victim.us
            self._chunks_dropped += 1
            dropped = True
        return dropped

    def _input_ahead_until(self, now: float) -> float | None:
        """None if the input of the last half second is within real time (+10 %); else when it will be."""
        recent = self._recent
        horizon = now - _RATE_WINDOW_S
        while recent and recent[0][0] <= horizon:
            self._recent_us -= recent.popleft()[1]
        if not recent:
            return None
        limit = _RATE_LIMIT_US + recent[-1][1]
        if self._recent_us <= limit:
            return None
        total = self._recent_us
        for t, us in recent:  # without new arrivals, the window sheds its oldest audio first
            total -= us
            if total <= limit:
                return t + _RATE_WINDOW_S
        return now + _RATE_WINDOW_S  # not reached (total ends at 0)

    def _hold_until(self, level: int) -> float | None:
        """Until when a busy merge at ``level`` holds the head chunk; None if it does not hold it."""
        if self._passengers or self._retry_at is not None:
            return None  # a passenger must not wait for the next frame; a refused chunk is retried
        hold_s = busy_hold_s(level, self._q_us / 1000, self._batch_us / 1000)
        return None if hold_s is None else self._audio[0].at + hold_s

    def _bound_start(self, paced_us: int) -> float:
        """Earliest time a chunk may start once ``paced_us`` of audio went under the bound."""
        assert self._anchor is not None
        return self._anchor + (paced_us - self._lead_us) / 1_000_000

    def _release(self, now: float, *, paced: bool, merge: bool = False) -> RxAction:
        audio = self._audio
        n = 1
        self._holding = False
        if (merge or self.merge_backlog) and len(audio) > 1:
            head = audio[0]
            total = head.us
            limit = self._passengers[0][0] if self._passengers else None
            paced_us = self._paced_us + head.us
            while n < len(audio):
                nxt = audio[n]
                if nxt.key != head.key or total + nxt.us > self._batch_us:
                    break
                if limit is not None and nxt.seq >= limit:
                    break  # a passenger rides between them
                if paced and now + _EPS < self._bound_start(paced_us):
                    break  # this one may not start yet
                total += nxt.us
                paced_us += nxt.us
                n += 1
        self._in_flight = n
        self._in_flight_paced = paced
        items = tuple(audio[i].item for i in range(n))
        return RxAction(ActionKind.RELEASE, items[0], items=items)

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
            if self._anchor is not None:
                # The bound restarts at the present: the tail a drain leaves (<= low watermark) is the
                # end of the same backlog and goes now, with the full lead still ahead of it, rather
                # than waiting for the wall clock to catch up with a flood that ran past the lead.
                self._paced_us = min(self._paced_us, _us(now - self._anchor) - self._q_us)
        self._report(now, periodic=False)
