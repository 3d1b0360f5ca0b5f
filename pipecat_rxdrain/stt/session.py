"""One logical Google STT recognition session across many gRPC streams (no Pipecat).

Threads and data flow::

    caller thread ── push_audio() ──► bounded deque (drop-oldest, counted)
                                            │
    rxdrain-stt-<name> (own asyncio loop)   ▼
      writer  : request generator, batches ≤ batch_ms / ≤ 25 KB, times each write
      reader  : response iterator → SttResult callbacks (session-relative times)
      supervisor: opens streams only when audio exists, rotates before the
                  duration limit, reconnects with backoff, replays unfinalized audio
      telemetry: "[STT] q=<n> drops=<n> write_ms=<x.xx>" once per interval

``push_audio`` only takes a lock and appends (a few µs); it never touches the
network, so a stalled server costs dropped (and counted) audio, never a
blocked event loop. ``write_ms`` is the time gRPC takes to accept one request
(it grows under HTTP/2 back-pressure while ``push_audio`` stays in µs).

Replay (Google's "endless streaming", done exactly): every byte handed to a
stream is also kept in a :class:`ReplayBuffer` until a final's end offset says
the recognizer is done with it. A new stream (rotation, error, config change)
first replays that buffer, so its offsets start at the buffer's session
position; finals whose session end is not after the last emitted final are
suppressed, so each word is delivered once.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import grpc
from loguru import logger

from ..clock import Clock, monotonic
from ..event_loops import finish_event_loop
from ..telemetry import TelemetryWindow, format_stt_line
from .backoff import Backoff
from .recognition_config import MAX_REQUEST_BYTES, StreamSpec
from .replay import ReplayBuffer

RETRIABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,  # incl. v2 "409 Stream timed out after receiving no more client requests"
        grpc.StatusCode.OUT_OF_RANGE,  # incl. "Exceeded maximum allowed stream duration of 305 seconds."
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,  # cancelled by the server side (ours are handled before classification)
    }
)
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)

_ids = itertools.count(1)
_ROTATE = b"rotate"  # sentinel from _take_batch (identity-compared)
_ENDED = b"ended"  # sentinel from _take_batch: the stream is over, take no more audio for it


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


def check_session_params(
    *,
    max_queue: int,
    batch_ms: float,
    stream_limit_s: float,
    rotate_grace_s: float = 0.0,
    max_replay_ms: float = 0.0,
    max_consecutive_failures: int = 0,
    close_timeout_s: float = 0.0,
) -> None:
    """Raise ``ValueError`` naming the first bad session parameter (used at construction, never mid-call)."""
    if not max_queue >= 1:
        raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    if not batch_ms > 0:
        raise ValueError(f"batch_ms must be > 0, got {batch_ms}")
    if not stream_limit_s > 0:
        raise ValueError(f"stream_limit_s must be > 0, got {stream_limit_s}")
    if not rotate_grace_s >= 0:
        raise ValueError(f"rotate_grace_s must be >= 0, got {rotate_grace_s}")
    if not max_replay_ms >= 0:
        raise ValueError(f"max_replay_ms must be >= 0, got {max_replay_ms}")
    if not max_consecutive_failures >= 0:
        raise ValueError(f"max_consecutive_failures must be >= 0 (0: retry forever), got {max_consecutive_failures}")
    if not close_timeout_s >= 0:
        raise ValueError(f"close_timeout_s must be >= 0, got {close_timeout_s}")


@dataclass(frozen=True)
class SttResult:
    """A recognition result with times relative to the start of the whole session."""

    text: str
    is_final: bool
    end_ms: float  # session audio time where the result ends
    stability: float
    language_code: str
    stream_index: int
    raw: Any  # the StreamingRecognitionResult proto (v1 or v2)


@dataclass(frozen=True)
class SttError:
    """A session-ending error (non-retriable, or retries exhausted)."""

    code: grpc.StatusCode | None
    message: str
    retriable: bool
    exception: BaseException | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class SttStats:
    """A snapshot of the session's counters (same numbers as the telemetry line)."""

    state: str
    q: int
    max_queue: int
    drops: int
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


@dataclass
class _Stream:
    index: int
    spec: StreamSpec
    origin: int  # session byte position of this stream's audio offset 0
    started: float
    replay: list[bytes]
    rotate: bool = False
    config_change_at: float | None = None  # when a new spec was asked for (rotate at the next final/silence)
    half_closed: bool = False
    pending_interim: bool = False
    got_response: bool = False
    call: Any = None
    # Set when _run_stream is done with the call. grpc.aio's call.cancel() is a no-op on a call
    # that already failed, and then leaves our request generator running: without this it
    # would take (and lose) audio meant for the next stream, and never finish.
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class StreamingSTTSession:
    """Streams audio to Google STT without ever blocking the caller, across reconnects.

    Guarantees:
      * ``push_audio`` never blocks on the network; when the queue (``max_queue``
        chunks) is full the oldest chunk is dropped and counted in ``drops``.
      * At most one gRPC stream at a time; a stream is opened only when there
        is audio to send; each request carries at most ``batch_ms`` of audio and
        at most 25 KB, and the writer never waits longer than ``batch_ms`` to
        fill a batch.
      * Streams rotate before ``stream_limit_s`` (right after a final or in
        silence, at the latest ``rotate_grace_s`` later; a config change
        rotates the same way within ``config_change_grace_s``). A rotation
        cancels the old stream rather than half-closing it, so Google does not
        finalize a half-heard utterance; only ``close()`` half-closes. Streams reconnect on
        retriable errors with capped exponential backoff and jitter; unfinalized
        audio is replayed (bounded by ``max_replay_ms``) and no final is
        delivered twice.
      * A non-retriable error stops the session and is reported exactly once
        through ``on_error``.
      * ``close()`` flushes the queue within its bound, half-closes, cancels
        the call if the server stalls, and joins the thread.

    ``client_factory`` is called on the session's thread and must return an
    async Speech client (``speech_v2``/``speech_v1`` ``SpeechAsyncClient``)
    matching ``spec.api``. ``probe_factory`` (optional) returns the matching
    *sync* client, used only to learn the real status when grpc.aio masks an
    early rejection as INTERNAL "Internal error from Core". ``on_result``/``on_error`` are called on the
    session's thread; when ``on_result`` is None results go to ``self.results``
    (a thread-safe queue).
    """

    def __init__(
        self,
        spec: StreamSpec,
        client_factory: Callable[[], Any],
        *,
        on_result: Callable[[SttResult], None] | None = None,
        on_error: Callable[[SttError], None] | None = None,
        max_queue: int = 200,
        batch_ms: float = 60,
        stream_limit_s: float = 240.0,
        rotate_grace_s: float = 30.0,
        config_change_grace_s: float = 3.0,
        max_replay_ms: float = 30_000,
        backoff: Backoff | None = None,
        max_consecutive_failures: int = 12,
        metadata: Sequence[tuple[str, str]] = (),
        close_timeout_s: float = 3.0,
        drain_timeout_s: float = 2.0,
        telemetry_interval_s: float | None = 1.0,
        clock: Clock = monotonic,
        name: str | None = None,
        poll_ms: float | None = 10.0,
        probe_factory: Callable[[], Any] | None = None,
    ) -> None:
        check_session_params(
            max_queue=max_queue,
            batch_ms=batch_ms,
            stream_limit_s=stream_limit_s,
            rotate_grace_s=rotate_grace_s,
            max_replay_ms=max_replay_ms,
            max_consecutive_failures=max_consecutive_failures,
            close_timeout_s=close_timeout_s,
        )
        self._spec = spec
        self._client_factory = client_factory
        self._on_result = on_result
        self._on_error = on_error
        self.results: queue.SimpleQueue[SttResult] = queue.SimpleQueue()
        self.max_queue = int(max_queue)
        self.batch_ms = float(batch_ms)
        self.stream_limit_s = float(stream_limit_s)
        self.rotate_grace_s = float(rotate_grace_s)
        self.config_change_grace_s = float(config_change_grace_s)
        self.max_replay_ms = float(max_replay_ms)
        self._backoff = backoff or Backoff()
        self._max_failures = max_consecutive_failures
        self._metadata = tuple(metadata)
        self.close_timeout_s = float(close_timeout_s)
        self.drain_timeout_s = float(drain_timeout_s)
        self._clock = clock
        self.name = name or f"stt-{next(_ids)}"
        # The writer polls the queue every poll_ms instead of being woken per push: a
        # cross-thread wake-up (self-pipe write) in push_audio hands the GIL to the I/O
        # thread and costs the caller ~1 ms at p99. None = wake on push.
        self._poll_s = poll_ms / 1000.0 if poll_ms else None
        self._probe_factory = probe_factory  # a *sync* Speech client, see _masked_by_grpc_aio
        self._probe_client: Any = None

        # Shared between the caller and the I/O thread, guarded by _lock.
        self._lock = threading.Lock()
        self._q: deque[bytes] = deque()
        self._q_bytes = 0
        self._drops = 0
        self._rejected = 0
        self._malformed = 0
        self._discarded_on_error = 0
        self._pushed = 0
        self._wake_at: int | None = None  # wake the writer once _q_bytes reaches this
        self._state = "new"  # new -> running -> closing -> closed | failed
        self._closing = False
        self._pending_spec: StreamSpec | None = None

        # I/O thread state.
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main_task: asyncio.Task | None = None
        self._stream: _Stream | None = None
        self._replay = ReplayBuffer(int(self.max_replay_ms * spec.bytes_per_ms), spec.frame_bytes)
        self._last_final_end = -1  # session byte position of the last delivered final's end
        self._ready = threading.Event()
        self._done = threading.Event()

        self._window = TelemetryWindow(telemetry_interval_s or 1.0, clock=clock)
        self._telemetry_enabled = telemetry_interval_s is not None and telemetry_interval_s > 0
        self._write_total_s = 0.0
        self._write_max_s = 0.0
        self._last_window_write_ms = 0.0
        self._requests_sent = 0
        self._sent_bytes = 0
        self._replayed_bytes = 0
        self._streams = 0
        self._reconnects = 0
        self._rotations = 0
        self._finals = 0
        self._interims = 0
        self._dup_finals = 0
        self._last_error: str | None = None
        self._fatal: SttError | None = None
        self._stream_was_healthy = False
        self._write_samples: deque[float] = deque(maxlen=8192)

    # ------------------------------------------------------------ public API
    def start(self) -> "StreamingSTTSession":
        """Start the I/O thread (no network until the first audio). Idempotent."""
        with self._lock:
            if self._state != "new":
                return self
            self._state = "running"
        ctx = contextvars.copy_context()  # so logger.contextualize(call_sid=...) tags our lines
        self._thread = threading.Thread(
            target=ctx.run, args=(self._thread_main,), name=f"rxdrain-stt-{self.name}", daemon=True
        )
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def push_audio(self, pcm16: bytes) -> bool:
        """Queue audio for the recognizer; never blocks.

        False if the session is closed or failed (counted in ``rejected``) or the
        chunk is not whole samples (counted in ``malformed``); empty audio is a no-op.
        """
        if not pcm16:
            return True
        loop = None
        with self._lock:
            if self._state not in ("new", "running"):
                self._rejected += 1
                return False
            if len(pcm16) % self._spec.frame_bytes:
                # Not whole samples: sending it would shift every later sample by a byte
                # (loud noise to the recognizer). Refuse it, counted, and say so once.
                self._malformed += 1
                if self._malformed == 1:
                    logger.warning(
                        f"{self!r}: refused a {len(pcm16)}-byte audio chunk: not a whole number of "
                        f"{self._spec.frame_bytes}-byte samples (counted in stats.malformed; not logged again)"
                    )
                return False
            if len(self._q) >= self.max_queue:
                self._q_bytes -= len(self._q.popleft())
                self._drops += 1
            self._q.append(pcm16)
            self._q_bytes += len(pcm16)
            self._pushed += 1
            if self._wake_at is not None and self._q_bytes >= self._wake_at:
                self._wake_at = None
                loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_writer)
            except RuntimeError:  # loop already closed
                pass
        self._window.count(1)
        return True

    def can_accept(self) -> bool:
        """True when a pushed chunk would be taken without dropping anything (or the session is not taking audio)."""
        return len(self._q) < self.max_queue

    @property
    def queued(self) -> int:
        """Chunks waiting in the queue right now (cheap; for back-pressure decisions)."""
        return len(self._q)

    @property
    def accepting(self) -> bool:
        return self._state in ("new", "running")

    @property
    def failed(self) -> SttError | None:
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
        """Flush queued audio within ``timeout`` (default ``close_timeout_s``), half-close, join.

        Never hangs: after the bound the call is cancelled and the thread
        stopped. With ``wait=False`` it only starts closing (poll ``closed``).
        Returns True when the thread has ended.
        """
        timeout = self.close_timeout_s if timeout is None else timeout
        with self._lock:
            if self._state == "new":
                self._state = "closed"
                self._done.set()
                return True
            if self._state == "running":
                self._state = "closing"
            self._closing = True
            loop = self._loop
        if loop is not None and not loop.is_closed():
            deadline = time.monotonic() + max(0.0, timeout)
            try:
                loop.call_soon_threadsafe(self._begin_close, deadline)
            except RuntimeError:
                pass
        if not wait:
            return self._done.is_set()
        if not self._done.wait(timeout + 2.0):
            self._hard_stop_threadsafe()
            self._done.wait(2.0)
        if self._thread is not None:
            self._thread.join(1.0)
            return not self._thread.is_alive()
        return True

    @property
    def closed(self) -> bool:
        return self._done.is_set() and (self._thread is None or not self._thread.is_alive())

    @property
    def stats(self) -> SttStats:
        bpm = self._spec.bytes_per_ms
        with self._lock:
            q, drops, rejected, pushed, state = len(self._q), self._drops, self._rejected, self._pushed, self._state
        return SttStats(
            state=state,
            q=q,
            max_queue=self.max_queue,
            drops=drops,
            rejected=rejected,
            pushed_chunks=pushed,
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
            malformed=self._malformed,
            discarded_on_error=self._discarded_on_error,
        )

    def write_samples(self) -> list[float]:
        """Durations (s) of the most recent gRPC writes (up to 8192), oldest first."""
        return list(self._write_samples)

    def telemetry_line(self) -> str:
        """Roll the telemetry window and return the ``[STT]`` line (also what the thread logs)."""
        sample = self._window.roll()
        self._last_window_write_ms = sample.write_ms
        with self._lock:
            q, drops = len(self._q), self._drops
        return format_stt_line(q=q, drops=drops, write_ms=sample.write_ms)

    def __repr__(self) -> str:
        return f"StreamingSTTSession(name={self.name!r}, api={self._spec.api!r}, state={self._state!r})"

    # ------------------------------------------------------------ I/O thread
    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # pragma: no cover - last resort, never crash the process
            logger.exception(f"{self!r}: I/O thread crashed: {exc!r}")
        finally:
            try:
                finish_event_loop(loop)
            except Exception:
                pass
            with self._lock:
                self._loop = None
                if self._state != "failed":
                    self._state = "closed"
            loop.close()
            self._ready.set()
            self._done.set()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._main_task = asyncio.current_task()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            if self._q:
                self._wake.set()
        self._ready.set()
        telemetry = asyncio.create_task(self._telemetry()) if self._telemetry_enabled else None
        client = None
        try:
            client = self._client_factory()
            await self._supervise(client)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self._fail(SttError(status_of(exc), f"Google STT session error: {_describe(exc)}", False, exc))
        finally:
            st = self._stream
            if st is not None and st.call is not None:
                st.call.cancel()
            if telemetry is not None:
                telemetry.cancel()
                await asyncio.gather(telemetry, return_exceptions=True)
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

    async def _supervise(self, client: Any) -> None:
        failures = 0
        while True:
            if not await self._wait_for_audio():
                return  # closing with nothing left to send
            self._apply_pending_spec()
            outcome, exc = await self._run_stream(client)
            if outcome == "closed":
                return
            if outcome in ("rotate", "ended"):
                if outcome == "rotate":
                    self._rotations += 1
                else:
                    self._reconnects += 1
                failures = 0
                continue
            # outcome == "error"
            assert exc is not None
            if self._masked_by_grpc_aio(exc):
                exc = self._probe_status(exc)
            code = status_of(exc)
            desc = _describe(exc)
            self._last_error = desc
            if code in FATAL_CODES or code is None:
                self._fail(SttError(code, f"Google STT stopped: {desc}", False, exc))
                return
            failures = 1 if self._stream_was_healthy else failures + 1
            if self._max_failures and failures >= self._max_failures:
                self._fail(SttError(code, f"Google STT gave up after {failures} failed attempts: {desc}", True, exc))
                return
            self._reconnects += 1
            if self._stream_was_healthy:  # a working stream that later failed: start over
                self._backoff.reset()
            delay = self._backoff.next_delay()
            level = "DEBUG" if code == grpc.StatusCode.ABORTED else "WARNING"
            logger.log(level, f"{self!r}: stream ended with {desc}; reconnecting in {delay:.2f}s")
            if self._closing:
                return
            await self._sleep_unless_closing(delay)

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

    def _probe_status(self, exc: BaseException) -> BaseException:
        """Open a config-only stream with the sync client (blocking, bounded) and return its error, or ``exc``."""
        try:
            if self._probe_client is None:
                self._probe_client = self._probe_factory()  # type: ignore[misc]
            responses = self._probe_client.streaming_recognize(
                requests=iter([self._spec.config_request()]), metadata=self._metadata, timeout=self.drain_timeout_s
            )
            for _ in responses:
                pass
        except Exception as real:
            if status_of(real) not in (None, grpc.StatusCode.DEADLINE_EXCEEDED):
                logger.debug(f"{self!r}: INTERNAL from grpc.aio was really {_describe(real)}")
                return real
        return exc

    async def _wait_for_audio(self) -> bool:
        """Wait until there is queued audio; False when closing and nothing is left."""
        assert self._wake is not None
        while True:
            with self._lock:
                if self._q:
                    return True
                if self._closing:
                    return False
                self._wake.clear()
                self._wake_at = 1
            try:
                await asyncio.wait_for(self._wake.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    async def _sleep_unless_closing(self, delay: float) -> None:
        end = time.monotonic() + delay
        while not self._closing and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))

    async def _run_stream(self, client: Any) -> tuple[str, BaseException | None]:
        spec = self._spec
        self._replay.trim_to(self._last_final_end)
        st = _Stream(
            index=self._streams,
            spec=spec,
            origin=self._replay.start if len(self._replay) else self._replay.end,
            started=self._clock(),
            replay=self._replay.pieces(MAX_REQUEST_BYTES),
        )
        self._streams += 1
        self._stream = st
        self._stream_was_healthy = False
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
            # The call was cancelled by us (drain/close bound): not an error.
        except Exception as exc:
            if not (self._closing and st.half_closed):
                return "error", exc
        finally:
            self._stream = None
            st.ended.set()
            self._wake_writer()  # a request generator still waiting for audio sees the end at once
            if st.call is not None:
                st.call.cancel()
            if self._clock() - st.started >= 2.0:
                self._stream_was_healthy = True
        if self._closing:
            with self._lock:
                left = bool(self._q)
            return ("ended" if left else "closed"), None
        if st.rotate:
            return "rotate", None
        return "ended", None  # the server ended the stream on its own: reopen on the next audio

    async def _requests(self, st: _Stream):
        """The request stream: config, replayed audio, then live batches. Runs on gRPC's consumer task."""
        yield st.spec.config_request()
        for piece in st.replay:
            t0 = time.perf_counter()
            yield st.spec.audio_request(piece)
            self._record_write(time.perf_counter() - t0)
            self._replayed_bytes += len(piece)
        while True:
            batch = await self._take_batch(st)
            if batch is None:
                break
            if batch is _ENDED:
                return
            if batch is _ROTATE:
                # Rotation: cancel instead of half-closing, so the server does not finalize a
                # half-heard utterance; the new stream re-hears it from the replay buffer.
                asyncio.get_running_loop().call_soon(self._cancel_stream, st)
                await st.ended.wait()  # the cancel ends the call (and usually this task)
                return
            self._replay.append(batch)
            self._sent_bytes += len(batch)
            t0 = time.perf_counter()
            yield st.spec.audio_request(batch)
            self._record_write(time.perf_counter() - t0)
        # Half-close; bound the wait for the server's last results.
        st.half_closed = True
        loop = asyncio.get_running_loop()
        loop.call_later(self.drain_timeout_s, self._cancel_if_running, st)

    def _cancel_stream(self, st: _Stream) -> None:
        if st.call is not None:
            st.call.cancel()

    def _cancel_if_running(self, st: _Stream) -> None:
        if st.call is not None and not st.call.done():
            logger.debug(f"{self!r}: stream {st.index} did not finish within {self.drain_timeout_s}s of half-close; cancelling")
            st.call.cancel()

    def _batch_target(self) -> int:
        spec = self._spec
        n = int(self.batch_ms * spec.bytes_per_ms)
        n -= n % spec.frame_bytes
        return max(spec.frame_bytes, min(n, MAX_REQUEST_BYTES))

    def _should_rotate(self, st: _Stream) -> bool:
        if st.rotate:
            return True
        now = self._clock()
        age = now - st.started
        if age >= self.stream_limit_s and (not st.pending_interim or age >= self.stream_limit_s + self.rotate_grace_s):
            st.rotate = True
        elif st.config_change_at is not None and (
            not st.pending_interim or now - st.config_change_at >= self.config_change_grace_s
        ):
            st.rotate = True
        return st.rotate

    async def _take_batch(self, st: _Stream) -> bytes | None:
        """Up to one batch of queued audio; None to half-close (closing, flushed); _ROTATE to rotate."""
        assert self._wake is not None
        target = self._batch_target()
        # Wait for the first chunk.
        while True:
            with self._lock:
                has = bool(self._q)
                closing = self._closing
                if not has and not closing:
                    self._wake.clear()
                    self._wake_at = None if self._poll_s else 1
            if st.ended.is_set():
                return _ENDED
            if closing and not has:
                return None  # flushed: half-close
            if not closing and self._should_rotate(st):
                return _ROTATE
            if has:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_s or 0.25)
            except asyncio.TimeoutError:
                pass
        # Let the batch fill for at most batch_ms.
        deadline = time.perf_counter() + self.batch_ms / 1000.0
        while True:
            with self._lock:
                if self._q_bytes >= target or self._closing:
                    break
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wake.clear()
                self._wake_at = None if self._poll_s else target
            try:
                await asyncio.wait_for(self._wake.wait(), min(left, self._poll_s) if self._poll_s else left)
            except asyncio.TimeoutError:
                pass
        if st.ended.is_set():
            return _ENDED  # the call died while the batch was filling: the audio stays queued
        with self._lock:
            self._wake_at = None
            parts: list[bytes] = []
            size = 0
            while self._q and (not parts or size + len(self._q[0]) <= target):
                chunk = self._q.popleft()
                self._q_bytes -= len(chunk)
                if len(chunk) > MAX_REQUEST_BYTES:
                    cut = MAX_REQUEST_BYTES - MAX_REQUEST_BYTES % st.spec.frame_bytes
                    self._q.appendleft(chunk[cut:])
                    self._q_bytes += len(chunk) - cut
                    chunk = chunk[:cut]
                parts.append(chunk)
                size += len(chunk)
        return b"".join(parts)

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
                SttResult(
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

    def _deliver(self, result: SttResult) -> None:
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
        self._write_samples.append(seconds)

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
            self._replay = ReplayBuffer(int(self.max_replay_ms * spec.bytes_per_ms), spec.frame_bytes)
            self._last_final_end = -1
        self._spec = spec
        if self._stream is not None and self._stream.config_change_at is None:
            # Rotate at the next final or silence so an utterance is not split in two.
            self._stream.config_change_at = self._clock()
        self._wake_writer()

    def _begin_close(self, deadline: float) -> None:
        self._wake_writer()
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._hard_stop)

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

    def _fail(self, error: SttError) -> None:
        if self._fatal is not None:
            return
        self._fatal = error
        self._last_error = error.message
        with self._lock:
            self._state = "failed"
            self._discarded_on_error += len(self._q)
            self._q.clear()
            self._q_bytes = 0
        logger.error(f"{self!r}: {error.message}")
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception(f"{self!r}: on_error callback raised")

    async def _telemetry(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self._window.due():
                logger.info(self.telemetry_line())
