"""One logical Google STT recognition session across many gRPC streams (no Pipecat).

Threads and data flow::

    caller thread ── push_audio() ──► AudioQueue (audio-time bound, drop-oldest, counted)
                                            │  wake only when the writer is idle
    gRPC I/O loop (shared "rxdrain-stt-io"  ▼  thread, or one per session)
      writer    : request generator; sends at once when idle, and while a write is
                  in flight lets audio pile up, then sends it together (<= batch_ms, <= 25 KB;
                  a backlog over half the queue: <= 25 KB, as far as the stream is behind);
                  while the process measures itself busy, lets each stream's audio pile up
                  one 20 ms frame more per busy level (two levels, below batch_ms) before sending
      watchdog  : a write blocked past the stall bound cancels the stream
      reader    : response iterator → STTResult callbacks (session-relative times)
      supervisor: opens streams only when audio exists, rotates before the duration
                  limit, reconnects per ReconnectPolicy, replays unfinalized audio
                  (paced so a stream never leads its wall clock by more than max_lead_ms)
      ticker    : "[STT] q=<n> drops=<n> write_ms=<x.xx>" once per interval, drop-storm WARNINGs

``push_audio`` takes one short lock and appends; it never touches the network
and wakes the I/O loop only when the writer is idle (one cross-thread wake per
idle spell, none while it is busy). ``write_ms`` is the time gRPC takes to accept
one request (it grows under HTTP/2 back-pressure while ``push_audio`` stays in µs).

Replay (Google's "endless streaming", done exactly): every byte handed to a
stream is also kept in a :class:`ReplayBuffer` until a final's end offset says
the recognizer is done with it. A new stream (rotation, error, config change)
first replays that buffer, so its offsets start at the buffer's session
position; finals whose session end is not after the last emitted final are
suppressed, so each word is delivered once.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import grpc
from loguru import logger

from ..busy import busy_hold_s
from ..clock import Clock, monotonic
from ..deprecation import STT_RENAMES, renamed_attributes
from ..telemetry import TelemetryWindow, format_stt_line
from .audio_queue import AudioQueue, Pushed
from .backoff import Backoff
from .io_thread import IoThreadMode, STTIoThread, run_blocking, shared_io_thread
from .lead import StreamLead
from .params import STTSessionParams, check_session_params
from .recognition_config import MAX_REQUEST_BYTES, StreamSpec
from .reconnect import FATAL_CODES, ReconnectPolicy, Verdict
from .replay import ReplayBuffer

__all__ = [
    "FATAL_CODES",
    "SessionState",
    "StreamingSTTSession",
    "STTError",
    "STTResult",
    "STTStats",
    "STTSessionParams",
    "check_session_params",
    "status_of",
]

_ids = itertools.count(1)
_HEALTHY_AFTER_S = 2.0  # a stream that lived this long counts as healthy even without a response


def _channel_of(client: Any) -> Any:
    """The grpc.aio channel under an official async Speech client, if any."""
    return getattr(getattr(client, "transport", None), "grpc_channel", None)


class SessionState(StrEnum):
    """``new -> running -> closing -> closed``, or ``failed`` after a non-retriable error."""

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class StreamOutcome(Enum):
    """How one gRPC stream ended, as the supervisor sees it."""

    CLOSED = "closed"  # half-closed at close() with nothing left: the session is done
    ENDED = "ended"  # the server ended it cleanly, or close() with audio still queued
    ROTATE = "rotate"  # we cancelled it to rotate (limit, config change)
    STALLED = "stalled"  # the write-stall watchdog cancelled it
    ERROR = "error"


class _Take(Enum):
    """What the writer does instead of sending a batch."""

    HALF_CLOSE = "half_close"  # closing and flushed
    ROTATE = "rotate"
    ENDED = "ended"  # the call is over; take no more audio for it


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of an exception from the Speech client (api_core or raw grpc), else None."""
    code = getattr(exc, "grpc_status_code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        try:
            c = exc.code()
            return c if isinstance(c, grpc.StatusCode) else None
        except Exception:  # pragma: no cover - defensive
            return None
    return None


def _describe(exc: BaseException) -> str:
    code = status_of(exc)
    msg = getattr(exc, "message", None)
    if msg is None and isinstance(exc, grpc.RpcError) and callable(getattr(exc, "details", None)):
        msg = exc.details()
    if msg is None:
        msg = str(exc)
    return f"{code.name if code else type(exc).__name__}: {msg}"


@dataclass(frozen=True)
class STTResult:
    """A recognition result with times relative to the start of the whole session."""

    text: str
    is_final: bool
    end_ms: float  # session audio time where the result ends
    stability: float
    language_code: str
    stream_index: int
    raw: Any  # the StreamingRecognitionResult proto (v1 or v2)


@dataclass(frozen=True)
class STTError:
    """A session-ending error (non-retriable, or retries exhausted)."""

    code: grpc.StatusCode | None
    message: str
    retriable: bool
    exception: BaseException | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class STTStats:
    """A snapshot of the session's counters (same numbers as the telemetry line)."""

    state: str  # a SessionState (compares equal to its string value)
    q: int
    max_queue: int
    drops: int  # chunks dropped: oldest-first by the full queue, plus any still queued when close() gave up
    rejected: int  # chunks pushed after close() or a fatal error
    pushed_chunks: int
    write_ms: float  # mean over the last telemetry window
    write_ms_mean: float  # since start
    write_ms_max: float
    requests_sent: int
    audio_sent_ms: float  # unique audio handed to gRPC (replays not counted)
    streams_opened: int
    reconnects: int
    rotations: int
    replayed_ms: float
    replay_overflow_ms: float
    finals: int
    interims: int
    duplicate_finals_suppressed: int
    last_error: str | None
    malformed: int = 0  # chunks refused because they were not whole samples (odd-length PCM16)
    discarded_on_error: int = 0  # chunks still queued when a non-retriable error stopped the session
    dropped_ms: float = 0.0  # audio in ``drops``
    discarded_on_close: int = 0  # chunks still queued when close() hit its bound (also in ``drops``)
    backlog_frames: float = 0.0  # audio queued now, in 20 ms-frame equivalents
    write_stalls: int = 0  # streams cancelled by the write-stall watchdog
    stale_dropped_ms: float = 0.0  # sent, unfinalized audio older than the stall bound, not replayed after a stall
    max_lead_ms: float = 0.0  # the furthest any stream got ahead of its own wall clock
    spaced_requests: int = 0  # requests held for a fuller batch because the process measured itself busy


@dataclass
class _Stream:
    index: int
    spec: StreamSpec
    origin: int  # session byte position of this stream's audio offset 0
    started: float
    replay: list[bytes]
    lead: StreamLead
    rotate: bool = False
    config_change_at: float | None = None  # when a new spec was asked for (rotate at the next final/silence)
    half_closed: bool = False
    pending_interim: bool = False
    got_response: bool = False
    stalled: bool = False
    write_started: float | None = None  # clock time the write in flight began
    watchdog: asyncio.TimerHandle | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    call: Any = None
    # Set when _run_stream is done with the call. grpc.aio's call.cancel() is a no-op on a call
    # that already failed, and then leaves our request generator running: without this it
    # would take (and lose) audio meant for the next stream, and never finish.
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # An exception our request generator raised. grpc.aio only logs it at DEBUG and cancels the
    # call, which would look like our own cancel: _run_stream reports it as the stream's error.
    writer_error: Exception | None = None


class StreamingSTTSession:
    """Streams audio to Google STT without ever blocking the caller, across reconnects.

    Guarantees:
      * ``push_audio`` never blocks on the network; the queue holds at most
        ``max_queue`` x 20 ms of audio, and beyond it the oldest chunks are
        dropped and counted in ``drops``.
      * At most one gRPC stream at a time; a stream is opened only when there
        is audio to send. The writer sends a chunk as soon as the previous write
        finished (no fill wait); what piled up meanwhile goes in one request of
        at most ``batch_ms`` of audio and 25 KB (a backlog of more than half the
        queue: up to 25 KB, as far as the stream is behind its wall clock, so a
        burst drains in few writes). Only while the process
        measured itself busy (:class:`~pipecat_rxdrain.busy.BusyMeter`, its CPU
        share, a proxy for GIL contention) does a stream's oldest queued chunk wait for a
        fuller request: 20 ms per busy level (two levels at most, never more than ``batch_ms``
        less 20 ms) plus 5 ms of grace for the next frame, so a loaded
        process sends fewer requests (``stats.spaced_requests``) and a lightly loaded one
        waits less than a heavily loaded one. A chunk longer than one 20 ms frame does
        not wait (RxDrainProcessor merged it for the same reason, or the transport
        delivers long chunks).
      * A write blocked longer than the stall bound (``write_stall_s``, default
        the queue's audio time) cancels the stream; the next one replays only
        unfinalized audio younger than the bound (the rest is counted in
        ``stale_dropped_ms``).
      * No stream leads its own wall clock by more than ``max_lead_ms`` of audio
        (replay is paced); the largest lead is in ``stats.max_lead_ms``.
      * Streams rotate before ``stream_limit_s`` (right after a final or in
        silence, at the latest ``rotate_grace_s`` later; a config change
        rotates the same way within ``config_change_grace_s``). A rotation
        cancels the old stream rather than half-closing it, so Google does not
        finalize a half-heard utterance; only ``close()`` half-closes. Streams
        reconnect on retriable errors per :class:`ReconnectPolicy`; unfinalized
        audio is replayed (bounded by ``max_replay_ms``) and no final is
        delivered twice.
      * A non-retriable error stops the session and is reported exactly once
        through ``on_error``.
      * ``close()`` flushes the queue within its bound, half-closes, cancels
        the call if the server stalls, counts what it could not send in
        ``drops``, and releases the I/O thread.

    Settings come as ``params`` (:class:`STTSessionParams`) and/or as keyword
    overrides of its fields (``max_queue=...``, ``batch_ms=...``).

    ``client_factory`` is called on the I/O loop and must return an async
    Speech client (``speech_v2``/``speech_v1`` ``SpeechAsyncClient``) matching
    ``spec.api``. ``probe_factory`` (optional) returns the matching *sync*
    client, used only to learn the real status when grpc.aio masks an early
    rejection as INTERNAL "Internal error from Core". ``on_result``/``on_error``
    are called on the I/O thread; when ``on_result`` is None results go to
    ``self.results`` (a thread-safe queue). ``io_thread`` picks the shared I/O
    thread (default) or one of the session's own.
    """

    def __init__(
        self,
        spec: StreamSpec,
        client_factory: Callable[[], Any],
        *,
        params: STTSessionParams | None = None,
        on_result: Callable[[STTResult], None] | None = None,
        on_error: Callable[[STTError], None] | None = None,
        backoff: Backoff | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        clock: Clock = monotonic,
        name: str | None = None,
        probe_factory: Callable[[], Any] | None = None,
        io_thread: IoThreadMode | str = IoThreadMode.SHARED,
        **settings: Any,
    ) -> None:
        p = self.params = STTSessionParams.build(params, **settings)
        self._spec = spec
        self._client_factory = client_factory
        self._on_result = on_result
        self._on_error = on_error
        self.results: queue.SimpleQueue[STTResult] = queue.SimpleQueue()
        self._policy = ReconnectPolicy(backoff, p.max_consecutive_failures)
        self._metadata = tuple(metadata)
        self._clock = clock
        self.name = name or f"stt-{next(_ids)}"
        self._probe_factory = probe_factory  # a *sync* Speech client, see _masked_by_grpc_aio
        self._probe_client: Any = None
        mode = IoThreadMode(io_thread)
        self.io_mode = mode
        self._io: STTIoThread = (
            shared_io_thread() if mode is IoThreadMode.SHARED else STTIoThread(f"rxdrain-stt-{self.name}")
        )

        # One lock for the queue and the session state (never held while calling the queue).
        self._lock = threading.Lock()  # guards _state, _closing, _pending_spec, _loop
        self._queue = AudioQueue(p.max_queue, spec.bytes_per_ms, spec.frame_bytes, clock=clock, lock=self._lock)
        self._state = SessionState.NEW
        self._closing = False
        self._pending_spec: StreamSpec | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: Future | None = None
        self._io_held = False
        self._done = threading.Event()

        # I/O loop state.
        self._wake: asyncio.Event | None = None
        self._main_task: asyncio.Task | None = None
        self._stream: _Stream | None = None
        self._replay = ReplayBuffer(int(p.max_replay_ms * spec.bytes_per_ms), spec.frame_bytes)
        self._last_final_end = -1  # session byte position of the last delivered final's end
        self._tick_handle: asyncio.TimerHandle | None = None
        self._close_handle: asyncio.TimerHandle | None = None

        self._window = TelemetryWindow(p.telemetry_interval_s or 1.0, clock=clock)
        self._write_total_s = 0.0
        self._write_max_s = 0.0
        self._last_window_write_ms = 0.0
        self._requests_sent = 0
        self._sent_bytes = 0
        self._replayed_bytes = 0
        self._streams = 0
        self._reconnects = 0
        self._rotations = 0
        self._write_stalls = 0
        self._spaced = 0  # requests held for a fuller batch because the process measured itself busy
        self._max_lead_ms = 0.0
        self._finals = 0
        self._interims = 0
        self._dup_finals = 0
        self._discarded_on_error = 0
        self._discarded_on_close = 0
        self._discarded_on_close_bytes = 0
        self._warned_drops = 0
        self._warned_at: float | None = None
        self._last_error: str | None = None
        self._fatal: STTError | None = None
        self._stream_was_healthy = False
        self._write_samples: list[float] = []
        self._write_sample_i = 0

    # ------------------------------------------------------------ settings (read-only views)
    @property
    def max_queue(self) -> int:
        return self.params.max_queue

    @property
    def batch_ms(self) -> float:
        return self.params.batch_ms

    @property
    def stream_limit_s(self) -> float:
        return self.params.stream_limit_s

    @property
    def close_timeout_s(self) -> float:
        return self.params.close_timeout_s

    # ------------------------------------------------------------ public API
    def start(self) -> StreamingSTTSession:
        """Start the session on its I/O loop (no network until the first audio). Idempotent."""
        with self._lock:
            if self._state is not SessionState.NEW:
                return self
            self._state = SessionState.RUNNING
        loop = self._io.acquire()
        self._io_held = True
        with self._lock:
            self._loop = loop
        # run_coroutine_threadsafe runs in a copy of this context, so
        # logger.contextualize(call_sid=...) tags the session's lines.
        self._future = asyncio.run_coroutine_threadsafe(self._main(), loop)
        return self

    def push_audio(self, pcm16: bytes) -> bool:
        """Queue audio for the recognizer; never blocks.

        False if the session is closed or failed (counted in ``rejected``) or the
        chunk is not whole samples (counted in ``malformed``); empty audio is a no-op.
        """
        if not pcm16:
            return True
        pushed = self._queue.push(pcm16)
        if pushed is Pushed.QUEUED:
            return True
        if pushed is Pushed.WAKE:  # the writer is idle: one wake, without handing the GIL over
            self._io.notify(self._wake_writer)
            return True
        if pushed is Pushed.MALFORMED and self._queue.malformed == 1:
            # Not whole samples: sending it would shift every later sample by a byte
            # (loud noise to the recognizer). Refused, counted, and said once.
            logger.warning(
                f"{self!r}: refused a {len(pcm16)}-byte audio chunk: not a whole number of "
                f"{self._spec.frame_bytes}-byte samples (counted in stats.malformed; not logged again)"
            )
        return False

    def can_accept(self, nbytes: int | None = None) -> bool:
        """True while the next 20 ms of audio (or ``nbytes``) would be queued without dropping anything."""
        return self._queue.can_accept(nbytes)

    @property
    def queued(self) -> int:
        """Chunks waiting in the queue right now."""
        return len(self._queue)

    def backlog_frames(self) -> float:
        """Audio queued and not yet handed to gRPC, in 20 ms-frame equivalents (cheap)."""
        return self._queue.backlog_frames()

    @property
    def accepting(self) -> bool:
        return self._state in (SessionState.NEW, SessionState.RUNNING)

    @property
    def failed(self) -> STTError | None:
        return self._fatal

    def update_spec(self, spec: StreamSpec) -> None:
        """Use ``spec`` from the next stream on; the current stream is rotated (unfinalized audio is replayed)."""
        with self._lock:
            self._pending_spec = spec
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._apply_pending_spec)
            except RuntimeError:
                pass

    def close(self, timeout: float | None = None, *, wait: bool = True) -> bool:
        """Flush queued audio within ``timeout`` (default ``close_timeout_s``), half-close, release the I/O thread.

        Never hangs: after the bound the call is cancelled and the session
        stopped. With ``wait=False`` it only starts closing (poll ``closed``).
        Returns True when the session has ended.
        """
        timeout = self.params.close_timeout_s if timeout is None else timeout
        with self._lock:
            new = self._state is SessionState.NEW
            if new:
                self._state = SessionState.CLOSED
                self._done.set()
            elif self._state is SessionState.RUNNING:
                self._state = SessionState.CLOSING
            first = not self._closing
            self._closing = True
            loop = self._loop
        self._queue.close()
        if new:
            return True
        if first and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._begin_close, max(0.0, timeout))
            except RuntimeError:
                pass
        if not wait:
            if self._done.is_set():
                self._release_io()
            return self._done.is_set()
        if not self._done.wait(timeout + 2.0):
            self._hard_stop_threadsafe()
            self._done.wait(2.0)
        self._release_io()
        return self._done.is_set()

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    @property
    def stats(self) -> STTStats:
        bpm = self._spec.bytes_per_ms
        q = self._queue
        return STTStats(
            state=self._state,
            q=len(q),
            max_queue=self.params.max_queue,
            drops=q.drops + self._discarded_on_close,
            rejected=q.rejected,
            pushed_chunks=q.pushed,
            write_ms=self._last_window_write_ms,
            write_ms_mean=(self._write_total_s / self._requests_sent * 1000.0) if self._requests_sent else 0.0,
            write_ms_max=self._write_max_s * 1000.0,
            requests_sent=self._requests_sent,
            audio_sent_ms=self._sent_bytes / bpm,
            streams_opened=self._streams,
            reconnects=self._reconnects,
            rotations=self._rotations,
            replayed_ms=self._replayed_bytes / bpm,
            replay_overflow_ms=self._replay.overflow_bytes / bpm,
            finals=self._finals,
            interims=self._interims,
            duplicate_finals_suppressed=self._dup_finals,
            last_error=self._last_error,
            malformed=q.malformed,
            discarded_on_error=self._discarded_on_error,
            dropped_ms=(q.dropped_bytes + self._discarded_on_close_bytes) / bpm,
            discarded_on_close=self._discarded_on_close,
            backlog_frames=q.backlog_frames(),
            write_stalls=self._write_stalls,
            stale_dropped_ms=self._replay.stale_bytes / bpm,
            max_lead_ms=self._max_lead_ms,
            spaced_requests=self._spaced,
        )

    def write_samples(self) -> list[float]:
        """Durations (s) of the most recent gRPC writes (up to 8192), oldest first."""
        s, i = self._write_samples, self._write_sample_i
        return s[i:] + s[:i] if len(s) == _MAX_SAMPLES else list(s)

    def telemetry_line(self) -> str:
        """Roll the telemetry window and return the ``[STT]`` line (also what the I/O loop logs)."""
        sample = self._window.roll()
        self._last_window_write_ms = sample.write_ms
        return format_stt_line(
            q=len(self._queue), drops=self._queue.drops + self._discarded_on_close, write_ms=sample.write_ms
        )

    def __repr__(self) -> str:
        return f"StreamingSTTSession(name={self.name!r}, api={self._spec.api!r}, state={str(self._state)!r})"

    # The benchmark probe (benchmarks/pipelines.py) wraps the chunk deque under ``_lock``.
    @property
    def _q(self):
        return self._queue._q

    @_q.setter
    def _q(self, value) -> None:
        self._queue._q = value

    # ------------------------------------------------------------ I/O loop
    def _release_io(self) -> None:
        if self._io_held and self._done.is_set():
            self._io_held = False
            self._io.release()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._main_task = asyncio.current_task()
        if self._queue:
            self._wake.set()
        self._schedule_tick()
        client = None
        try:
            client = self._client_factory()
            await self._supervise(client)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self._fail(STTError(status_of(exc), f"Google STT session error: {_describe(exc)}", False, exc))
        finally:
            st = self._stream
            if st is not None and st.call is not None:
                st.call.cancel()
            for h in (self._tick_handle, self._close_handle):
                if h is not None:
                    h.cancel()
            if client is not None:
                try:
                    await asyncio.wait_for(client.transport.close(), 1.0)
                except BaseException:
                    pass
            if self._probe_client is not None:
                try:
                    self._probe_client.transport.close()
                except Exception:
                    pass
            self._finish()

    def _finish(self) -> None:
        chunks, nbytes = self._queue.discard()
        if chunks and self._fatal is None:
            # close() gave up with audio still queued (a stalled or dead server): that is a drop.
            self._discarded_on_close += chunks
            self._discarded_on_close_bytes += nbytes
            logger.warning(
                f"{self!r}: {chunks} queued chunk(s) ({nbytes / self._spec.bytes_per_ms / 1000:.1f} s of audio) "
                "not sent before close() gave up (counted in stats.drops)"
            )
        elif chunks:
            self._discarded_on_error += chunks
        with self._lock:
            if self._state is not SessionState.FAILED:
                self._state = SessionState.CLOSED
            self._loop = None
        self._done.set()

    async def _supervise(self, client: Any) -> None:
        p = self.params
        while True:
            if not await self._wait_for_audio():
                return  # closing with nothing left to send
            self._apply_pending_spec()
            outcome, exc = await self._run_stream(client)
            if outcome is StreamOutcome.CLOSED:
                return
            if outcome in (StreamOutcome.ROTATE, StreamOutcome.ENDED):
                if outcome is StreamOutcome.ROTATE:
                    self._rotations += 1
                else:
                    self._reconnects += 1
                self._policy.healthy()
                continue
            if outcome is StreamOutcome.STALLED:
                code: grpc.StatusCode | None = grpc.StatusCode.DEADLINE_EXCEEDED
                desc = (
                    f"DEADLINE_EXCEEDED: a write was blocked for more than {p.stall_bound_s:g} s (write-stall watchdog)"
                )
                # What the recognizer has not finalized and is older than the bound is not worth
                # sending any more: the caller has moved on. Count it and replay the rest.
                cutoff = self._clock() - p.stall_bound_s
                self._replay.drop_older_than(cutoff)
            else:
                assert exc is not None
                if self._masked_by_grpc_aio(exc):
                    exc = await self._probe_status(exc)
                code = status_of(exc)
                desc = _describe(exc)
            self._last_error = desc
            decision = self._policy.on_error(code, stream_was_healthy=self._stream_was_healthy)
            if decision.verdict is Verdict.FATAL:
                self._fail(STTError(code, f"Google STT stopped: {desc}", False, exc))
                return
            if decision.verdict is Verdict.GIVE_UP:
                self._fail(
                    STTError(code, f"Google STT gave up after {decision.failures} failed attempts: {desc}", True, exc)
                )
                return
            self._reconnects += 1
            level = "DEBUG" if code == grpc.StatusCode.ABORTED else "WARNING"
            logger.log(level, f"{self!r}: stream ended with {desc}; reconnecting in {decision.delay_s:.2f}s")
            # Also while closing: close() flushes within its own bound (then _hard_stop).
            await self._backoff_sleep(decision.delay_s, _channel_of(client))

    def _masked_by_grpc_aio(self, exc: BaseException) -> bool:
        # grpc.aio (1.85) reports a server's early rejection that races with a client write
        # as INTERNAL "Internal error from Core", hiding e.g. PERMISSION_DENIED. The sync
        # client reports the real status, so a config-only probe can recover it.
        return (
            self._probe_factory is not None
            and not self._stream_was_healthy
            and status_of(exc) == grpc.StatusCode.INTERNAL
            and "Internal error from Core" in _describe(exc)
        )

    async def _probe_status(self, exc: BaseException) -> BaseException:
        """Open a config-only stream with the sync client (on a short-lived thread, bounded); its error, or ``exc``."""

        def probe() -> BaseException | None:
            try:
                if self._probe_client is None:
                    self._probe_client = self._probe_factory()  # type: ignore[misc]
                responses = self._probe_client.streaming_recognize(
                    requests=iter([self._spec.config_request()]),
                    metadata=self._metadata,
                    timeout=self.params.drain_timeout_s,
                )
                for _ in responses:
                    pass
            except Exception as real:
                return real
            return None

        real = await run_blocking(probe, name=f"rxdrain-stt-probe-{self.name}")
        if real is not None and status_of(real) not in (None, grpc.StatusCode.DEADLINE_EXCEEDED):
            logger.debug(f"{self!r}: INTERNAL from grpc.aio was really {_describe(real)}")
            return real
        return exc

    async def _wait_for_audio(self) -> bool:
        """Wait until there is queued audio; False when closing and nothing is left."""
        assert self._wake is not None
        while True:
            self._wake.clear()
            if self._closing and not self._queue:
                return False
            if not self._queue.idle_if_empty():
                return True
            await self._wake.wait()

    async def _backoff_sleep(self, delay: float, channel: Any = None) -> None:
        """Sleep ``delay`` (the backoff), cut short by the channel reconnecting.

        Our backoff must not stack on gRPC's own channel reconnect backoff: when the
        connection is down, the channel keeps trying (see ``google_clients.CHANNEL_OPTIONS``)
        and the next stream opens the moment it is READY again, so a 2 s outage costs about
        2 s. A server that answers errors over a healthy connection still gets the full delay.
        """
        if delay <= 0:
            return
        ready = None
        if channel is not None:
            try:
                if channel.get_state(try_to_connect=True) is not grpc.ChannelConnectivity.READY:
                    ready = asyncio.ensure_future(channel.channel_ready())
            except Exception:  # pragma: no cover - not a grpc.aio channel
                ready = None
        if ready is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait({ready}, timeout=delay)
        finally:
            if not ready.done():
                ready.cancel()
                await asyncio.gather(ready, return_exceptions=True)

    async def _run_stream(self, client: Any) -> tuple[StreamOutcome, BaseException | None]:
        spec, p = self._spec, self.params
        self._replay.trim_to(self._last_final_end)
        now = self._clock()
        st = _Stream(
            index=self._streams,
            spec=spec,
            origin=self._replay.start if len(self._replay) else self._replay.end,
            started=now,
            replay=self._replay.pieces(MAX_REQUEST_BYTES),
            lead=StreamLead(p.max_lead_ms, self._clock, started=now, rate=p.realtime_factor),
        )
        self._streams += 1
        self._stream = st
        self._stream_was_healthy = False
        loop = asyncio.get_running_loop()
        # Wake the writer when a rotation may become due (it otherwise sleeps until audio comes).
        for after in (p.stream_limit_s, p.stream_limit_s + p.rotate_grace_s):
            st.timers.append(loop.call_later(after, self._wake_writer))
        try:
            call = await client.streaming_recognize(requests=self._requests(st), metadata=self._metadata)
            st.call = call
            async for response in call:
                st.got_response = True
                self._stream_was_healthy = True
                self._handle_response(st, response)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            if st.writer_error is not None:
                return StreamOutcome.ERROR, st.writer_error
            # The call was cancelled by us (rotation, watchdog, drain/close bound): not an error.
        except Exception as exc:
            if st.writer_error is not None:
                return StreamOutcome.ERROR, st.writer_error
            if not (self._closing and st.half_closed) and not st.stalled:
                return StreamOutcome.ERROR, exc
        finally:
            self._stream = None
            st.ended.set()
            for h in st.timers:
                h.cancel()
            if st.watchdog is not None:
                st.watchdog.cancel()
            self._wake_writer()  # a request generator still waiting for audio sees the end at once
            if st.call is not None:
                st.call.cancel()
            if self._clock() - st.started >= _HEALTHY_AFTER_S:
                self._stream_was_healthy = True
            if st.lead.max_seen_ms > self._max_lead_ms:
                self._max_lead_ms = st.lead.max_seen_ms
        if st.stalled and not self._closing:
            return StreamOutcome.STALLED, None
        if self._closing:
            return (StreamOutcome.ENDED if self._queue else StreamOutcome.CLOSED), None
        if st.rotate:
            return StreamOutcome.ROTATE, None
        return StreamOutcome.ENDED, None  # the server ended the stream on its own: reopen on the next audio

    async def _requests(self, st: _Stream):
        """:meth:`_request_stream`, noting an exception it raises on ``st`` (see ``_Stream.writer_error``)."""
        gen = self._request_stream(st)
        try:
            async for request in gen:
                yield request
        except Exception as exc:
            st.writer_error = exc
            raise
        finally:
            await gen.aclose()

    async def _request_stream(self, st: _Stream):
        """The request stream: config, replayed audio (paced to the lead bound), then live audio.

        Runs on gRPC's consumer task: a ``yield`` returns once gRPC has accepted the
        request, so whatever was queued meanwhile is sent together in the next one.
        """
        bpm = st.spec.bytes_per_ms
        # write_ms is a measurement, not timing logic: it reads perf_counter, not the injected clock.
        yield st.spec.config_request()
        for piece in st.replay:
            if not await self._pace(st, len(piece) / bpm):
                return
            self._replayed_bytes += len(piece)
            st.lead.sent(len(piece) / bpm)
            self._begin_write(st)
            t0 = time.perf_counter()
            yield st.spec.audio_request(piece)
            self._end_write(st, time.perf_counter() - t0)
        target = self._batch_target()
        q = self._queue
        wake = self._wake
        assert wake is not None
        meter = self._io.meter
        # While busy, the oldest queued chunk waits for more as busy_hold_s says (the rule RX merges
        # by), so each request carries about level + 1 frames. A chunk longer than one frame goes at
        # once: RxDrainProcessor merged it for the same busy signal (its meter and this one are not
        # in step, and holding it again would add a second wait), or the transport delivers long chunks.
        batch_ms = min(self.params.batch_ms, target / bpm)
        catch_up_bytes = q.bound_bytes // 2
        while True:
            take = self._next_action(st)
            if take is _Take.ENDED:
                return
            if take is _Take.ROTATE:
                # Rotation: cancel instead of half-closing, so the server does not finalize a
                # half-heard utterance; the new stream re-hears it from the replay buffer.
                asyncio.get_running_loop().call_soon(self._cancel_stream, st)
                await st.ended.wait()  # the cancel ends the call (and usually this task)
                return
            level = meter.level() if take is None and meter is not None and 0 < q.nbytes < target else 0
            hold_s = (
                busy_hold_s(level, q.nbytes / bpm, batch_ms) if level and q.oldest_nbytes() <= q.frame20_bytes else None
            )
            if hold_s is not None:
                # The process measured itself busy (every request costs the I/O thread ~0.2 ms of
                # GIL in gRPC's Python layer, GIL that Pipecat's loop is then waiting for): let this
                # stream's audio pile up a little before sending, so a loaded process sends fewer,
                # fuller requests; the level only climbs as far as the load needs. Idle, nothing waits.
                oldest = q.oldest_at()
                delay = 0.0 if oldest is None else oldest + hold_s - self._clock()
                if delay > 0:
                    self._spaced += 1
                    await asyncio.sleep(delay)
                    continue
            # A backlog over half the queue (a network burst, the end of a stall) goes in requests up
            # to Google's 25 KB, as Google's own streaming sample sends whatever is buffered: the writer
            # may get few turns at the GIL while Pipecat's loop takes the burst in, and at batch_ms per
            # turn the bounded queue would drop audio that is still fresh. Only as far as the stream
            # is behind its own wall clock: catching up never puts it ahead (a replay already may be).
            take_bytes = target
            if q.nbytes > catch_up_bytes:
                behind = int(-st.lead.lead_ms() * bpm)
                take_bytes = max(target, min(MAX_REQUEST_BYTES, behind))
            batch = q.take(take_bytes, MAX_REQUEST_BYTES)
            if batch is None:
                if take is _Take.HALF_CLOSE:
                    break
                wake.clear()  # a push that sees the writer idle schedules wake.set() after this
                await wake.wait()
                continue
            n = len(batch.data)
            self._replay.append(batch.data, batch.stamps)
            self._sent_bytes += n
            if not await self._pace(st, n / bpm):
                return
            st.lead.sent(n / bpm)
            self._begin_write(st)
            t0 = time.perf_counter()
            yield st.spec.audio_request(batch.data)
            self._end_write(st, time.perf_counter() - t0)
        # Half-close; bound the wait for the server's last results.
        st.half_closed = True
        st.timers.append(
            asyncio.get_running_loop().call_later(self.params.drain_timeout_s, self._cancel_if_running, st)
        )

    def _next_action(self, st: _Stream) -> _Take | None:
        if st.ended.is_set():
            return _Take.ENDED
        if self._closing:
            return _Take.HALF_CLOSE  # once the queue is flushed
        if self._should_rotate(st):
            return _Take.ROTATE
        return None

    async def _pace(self, st: _Stream, audio_ms: float) -> bool:
        """Wait so the stream's lead stays within max_lead_ms; False if the stream ended meanwhile."""
        delay = st.lead.delay_for(audio_ms)
        if delay > 0:
            try:
                await asyncio.wait_for(st.ended.wait(), delay)
            except TimeoutError:
                pass
        return not st.ended.is_set()

    def _begin_write(self, st: _Stream) -> None:
        st.write_started = self._clock()
        if st.watchdog is None:
            st.watchdog = asyncio.get_running_loop().call_later(self.params.stall_bound_s, self._check_stall, st)

    def _end_write(self, st: _Stream, seconds: float) -> None:
        st.write_started = None
        self._record_write(seconds)

    def _check_stall(self, st: _Stream) -> None:
        """The write-stall watchdog: one timer per stream, re-armed only while writes are in flight."""
        st.watchdog = None
        started = st.write_started
        if started is None or st.ended.is_set():
            return
        bound = self.params.stall_bound_s
        left = bound - (self._clock() - started)
        if left > 0:
            st.watchdog = asyncio.get_running_loop().call_later(left, self._check_stall, st)
            return
        if self._closing:
            return  # close() has its own bound
        st.stalled = True
        st.write_started = None
        self._write_stalls += 1
        self._record_write(self._clock() - started)  # the blocked write never completes: count its time
        logger.warning(
            f"{self!r}: a write to stream {st.index} has been blocked for {bound:g}s; cancelling it and "
            "reconnecting (unfinalized audio younger than that is replayed)"
        )
        self._cancel_stream(st)

    def _cancel_stream(self, st: _Stream) -> None:
        if st.call is not None:
            st.call.cancel()

    def _cancel_if_running(self, st: _Stream) -> None:
        if st.call is not None and not st.call.done():
            logger.debug(
                f"{self!r}: stream {st.index} did not finish within {self.params.drain_timeout_s}s of half-close; cancelling"
            )
            st.call.cancel()

    def _batch_target(self) -> int:
        spec = self._spec
        n = int(self.params.batch_ms * spec.bytes_per_ms)
        n -= n % spec.frame_bytes
        return max(spec.frame_bytes, min(n, MAX_REQUEST_BYTES))

    def _should_rotate(self, st: _Stream) -> bool:
        if st.rotate:
            return True
        p = self.params
        now = self._clock()
        age = now - st.started
        stream_too_old = age >= p.stream_limit_s and (
            not st.pending_interim or age >= p.stream_limit_s + p.rotate_grace_s
        )
        config_changed = st.config_change_at is not None and (
            not st.pending_interim or now - st.config_change_at >= p.config_change_grace_s
        )
        if stream_too_old or config_changed:
            st.rotate = True
        return st.rotate

    def _handle_response(self, st: _Stream, response: Any) -> None:
        bpm = st.spec.bytes_per_ms
        for result in response.results:
            if not result.alternatives:
                continue
            text = result.alternatives[0].transcript
            end = result.result_end_offset if st.spec.api == "v2" else result.result_end_time
            end_ms_stream = end.total_seconds() * 1000.0 if end is not None else 0.0
            end_pos = st.origin + int(round(end_ms_stream * bpm))
            end_pos -= end_pos % st.spec.frame_bytes
            if result.is_final:
                st.pending_interim = False
                if end_pos <= self._last_final_end:
                    self._dup_finals += 1
                    logger.debug(f"{self!r}: suppressed a repeated final ending at {end_pos / bpm:.0f} ms")
                    continue
                self._last_final_end = end_pos
                self._replay.trim_to(end_pos)
                if not text:
                    continue
                self._finals += 1
            else:
                if not text:
                    continue
                st.pending_interim = True
                self._interims += 1
            self._deliver(
                STTResult(
                    text=text,
                    is_final=bool(result.is_final),
                    end_ms=end_pos / bpm,
                    stability=float(getattr(result, "stability", 0.0) or 0.0),
                    language_code=getattr(result, "language_code", "") or "",
                    stream_index=st.index,
                    raw=result,
                )
            )
            if result.is_final and self._should_rotate(st):
                self._wake_writer()

    def _deliver(self, result: STTResult) -> None:
        if self._on_result is None:
            self.results.put(result)
            return
        try:
            self._on_result(result)
        except Exception:
            logger.exception(f"{self!r}: on_result callback raised")

    def _record_write(self, seconds: float) -> None:
        self._requests_sent += 1
        self._write_total_s += seconds
        if seconds > self._write_max_s:
            self._write_max_s = seconds
        self._window.record_write(seconds)
        s = self._write_samples
        if len(s) < _MAX_SAMPLES:
            s.append(seconds)
        else:
            s[self._write_sample_i] = seconds
            self._write_sample_i = (self._write_sample_i + 1) % _MAX_SAMPLES

    def _wake_writer(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _apply_pending_spec(self) -> None:
        with self._lock:
            spec, self._pending_spec = self._pending_spec, None
        if spec is None:
            return
        if spec.bytes_per_ms != self._spec.bytes_per_ms:
            # A different audio format invalidates offsets: start a fresh audio clock.
            self._replay = ReplayBuffer(int(self.params.max_replay_ms * spec.bytes_per_ms), spec.frame_bytes)
            self._last_final_end = -1
        self._spec = spec
        st = self._stream
        if st is not None and st.config_change_at is None:
            # Rotate at the next final or silence so an utterance is not split in two.
            st.config_change_at = self._clock()
            st.timers.append(
                asyncio.get_running_loop().call_later(self.params.config_change_grace_s, self._wake_writer)
            )
        self._wake_writer()

    def _begin_close(self, timeout: float) -> None:
        self._wake_writer()
        self._close_handle = asyncio.get_running_loop().call_later(timeout, self._hard_stop)

    def _hard_stop(self) -> None:
        st = self._stream
        if st is not None and st.call is not None:
            st.call.cancel()
        if self._main_task is not None and not self._main_task.done():
            self._main_task.cancel()

    def _hard_stop_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._hard_stop)
            except RuntimeError:
                pass

    def _fail(self, error: STTError) -> None:
        if self._fatal is not None:
            return
        self._fatal = error
        self._last_error = error.message
        with self._lock:
            self._state = SessionState.FAILED
        self._queue.close()
        self._discarded_on_error += self._queue.discard()[0]
        logger.error(f"{self!r}: {error.message}")
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception(f"{self!r}: on_error callback raised")

    # ------------------------------------------------------------ telemetry and drop warnings
    def _schedule_tick(self) -> None:
        p = self.params
        # telemetry_enabled is bool(telemetry_interval_s): with telemetry off, tick for drop warnings only.
        interval = p.telemetry_interval_s or p.drop_warning_interval_s
        self._tick_handle = asyncio.get_running_loop().call_later(interval, self._tick)

    def _tick(self) -> None:
        """Once per interval (one timer per session, no polling): the [STT] line and drop-storm warnings."""
        if self.params.telemetry_enabled:
            logger.info(self.telemetry_line())
        self._warn_drops()
        if not self._done.is_set():
            self._schedule_tick()

    def _warn_drops(self) -> None:
        drops = self._queue.drops
        if drops <= self._warned_drops:
            return
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < self.params.drop_warning_interval_s:
            return
        new = drops - self._warned_drops
        self._warned_drops, self._warned_at = drops, now
        logger.warning(
            f"{self!r}: dropped {new} queued audio chunk(s), oldest first (total {drops}): Google STT is not "
            f"keeping up (write_ms max {self._write_max_s * 1000:.0f})"
        )


_MAX_SAMPLES = 8192


__getattr__ = renamed_attributes(__name__, globals(), STT_RENAMES)  # 0.1.0 names (Stt...)
