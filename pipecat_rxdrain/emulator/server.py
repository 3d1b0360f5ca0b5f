"""``SpeechEmulator``: a real gRPC server speaking Google Speech v1 and v2 StreamingRecognize on loopback.

The server is a ``grpc.aio`` server running on its own event loop in one
dedicated thread owned by the emulator, so it is driven the same way from sync
code and from async tests (it never shares the test's loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from ..event_loops import finish_event_loop
from ..google_clients import SESSION_METADATA_KEY, is_loopback_host
from .apis import APIS
from .faults import Faults, check_seconds
from .recognizers import make_recognizer
from .records import EndReason, StreamLog, StreamRecord, condition_met, redact_metadata
from .segmenter import SegmenterSettings
from .stream import EmulatorLimits, StreamRun, StreamShared
from .timing import TimingModel, TimingProfile

if TYPE_CHECKING:
    from .control import ControlServer

# HTTP/2 settings for ``small_window=True``. Measured (grpcio 1.85, loopback, sync v1
# client pushing 6 MB while the server stalls 2 s): with gRPC's defaults the client
# keeps writing through the stall — BDP probing grows the window and 4.6-6 MB (minutes
# of telephone audio) are absorbed; with ``bdp_probe=0`` alone ~64-100 KB; adding
# ``lookahead_bytes=1024`` blocks the client after 0-16 KB (one or two requests).
SMALL_WINDOW_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024),
)


class SpeechEmulator:
    """A local Google Speech-to-Text StreamingRecognize server (v1 and v2) for tests, demos and benchmarks.

    Guarantees: listens only on loopback unless ``allow_remote=True``; ``start()``
    returns once the port accepts connections; ``stop()`` ends every stream
    (clients see UNAVAILABLE), stops the server and joins its thread; records of
    every stream stay readable after ``stop()``. ``timing`` picks the answer timing
    (:class:`TimingProfile`: ``FAST``, the default, or ``GOOGLE``); every draw it makes is
    determined by ``seed``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        script: str | Path | Sequence[str] | None = None,
        recognizer: str = "scripted",
        limits: EmulatorLimits | None = None,
        segmenter: SegmenterSettings | None = None,
        interim_every_s: float = 0.3,
        small_window: bool = False,
        server_options: Sequence[tuple[str, Any]] = (),
        allow_remote: bool = False,
        timing: TimingProfile | str = TimingProfile.FAST,
        seed: int = 0,
    ) -> None:
        if not allow_remote and not is_loopback_host(host):
            raise ValueError(f"refusing to listen on non-loopback host {host!r} (pass allow_remote=True to insist)")
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.faults = Faults()
        self.faults._down_handler = self.go_down
        self._log = StreamLog()
        self.timing = TimingProfile.parse(timing)
        self._shared = StreamShared(
            log=self._log,
            faults=self.faults,
            recognizer=make_recognizer(recognizer, script),
            limits=limits or EmulatorLimits(),
            segmenter_settings=segmenter or SegmenterSettings(),
            interim_every_s=interim_every_s,
            timing=TimingModel(self.timing, int(seed)),
        )
        options = [("grpc.so_reuseport", 0)]
        if small_window:
            options += list(SMALL_WINDOW_OPTIONS)
        options += list(server_options)
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._down_task: asyncio.Task | None = None
        self._up = threading.Event()
        self._control: ControlServer | None = None
        self.last_error: BaseException | None = None  # why a ``down`` fault could not come back up

    # --- lifecycle ----------------------------------------------------
    @property
    def address(self) -> str:
        """``host:port`` for ``SPEECH_EMULATOR_HOST`` / ``emulator_client``."""
        if self.port is None:
            raise RuntimeError("emulator not started")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def listening(self) -> bool:
        """False while a ``down`` fault has the port closed."""
        return self._up.is_set()

    def start(self, timeout: float = 10.0) -> SpeechEmulator:
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        loop = self._loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(loop, ready), name="speech-emulator", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self._join(timeout)
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End all streams (UNAVAILABLE to clients), stop the server and join the thread. Idempotent."""
        if self._thread is None:
            return
        if self._loop is not None and self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            try:
                fut.result(timeout)
            except concurrent.futures.TimeoutError:
                pass
        self._join(timeout)

    async def stop_async(self, timeout: float = 10.0) -> None:
        """``stop()`` for async code: awaits the shutdown without blocking the caller's loop."""
        if self._thread is None:
            return
        if self._loop is not None and self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            try:
                await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
            except TimeoutError:
                pass
        self._join(timeout)

    def __enter__(self) -> SpeechEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> SpeechEmulator:
        return self.start()  # binds a port and starts a thread: a few ms of blocking

    async def __aexit__(self, *exc) -> None:
        await self.stop_async()

    def go_down(self, seconds: float, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Fault: stop listening (connection refused) for ``seconds``, then listen on the same port again.

        Streams in flight end with UNAVAILABLE. With ``wait`` this returns once the port is closed.
        """
        seconds = check_seconds("down seconds", seconds)
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("emulator not running")
        fut = asyncio.run_coroutine_threadsafe(self._go_down(seconds), self._loop)
        if wait:
            fut.result(timeout)

    def start_control(self, port: int = 0, timeout: float = 10.0) -> int:
        """Serve the runtime control endpoint (see :mod:`.control`) on ``host:port``; returns the port."""
        from .control import ControlServer

        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("emulator not running")
        self._control = ControlServer(self)
        return asyncio.run_coroutine_threadsafe(self._control.start(self.host, port), self._loop).result(timeout)

    def wait_until_listening(self, timeout: float = 10.0) -> None:
        if not self._up.wait(timeout):
            raise TimeoutError(f"emulator not listening within {timeout} s")

    # --- observation --------------------------------------------------
    @property
    def streams(self) -> list[StreamRecord]:
        """Snapshots of every stream seen so far (oldest first)."""
        return self._log.snapshot()

    def stream(self, index: int = -1) -> StreamRecord:
        """Snapshot of one stream (``-1``: the latest); cheaper than ``streams`` when there are many."""
        return self._log.one(index)

    @property
    def stream_count(self) -> int:
        return self._log.count()

    def wait_for(self, predicate: Callable[[SpeechEmulator], Any], timeout: float = 5.0) -> Any:
        """Block until ``predicate(emulator)`` is truthy; return its value. ``TimeoutError`` after ``timeout`` s."""
        return self._log.wait_for(predicate, timeout, self)

    async def wait_for_async(self, predicate: Callable[[SpeechEmulator], Any], timeout: float = 5.0) -> Any:
        """``wait_for`` for async code (polls every 20 ms without blocking the loop)."""
        deadline = time.monotonic() + timeout
        while (value := condition_met(predicate, self, deadline, timeout)) is None:
            await asyncio.sleep(0.02)
        return value

    def reset(self) -> None:
        """Forget stream records, recognition sessions and faults."""
        self._log.clear()
        self._shared.recognizer.sessions.reset()
        self.faults.clear()

    # --- internals ----------------------------------------------------
    def _join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("speech emulator thread did not stop")
            self._thread = None

    def _run(self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                ready.set_exception(exc)
                return
            ready.set_result(None)
            loop.run_forever()
        finally:
            try:
                finish_event_loop(loop)
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                self._shared.shutdown_executor()

    async def _listen(self) -> None:
        server = grpc.aio.server(options=self._options)
        server.add_generic_rpc_handlers([self._handler(api) for api in APIS.values()])
        port = self.port if self.port is not None else self._requested_port
        try:
            bound = server.add_insecure_port(f"{self.host}:{port}")
        except RuntimeError:
            bound = 0
        if not bound:
            await server.stop(None)
            del server  # gRPC's aio poller thread lives as long as any aio server object does
            raise OSError(f"could not listen on {self.host}:{port} (address in use?)")
        await server.start()
        self.port = bound
        self._server = server
        self._up.set()

    async def _close_server(self, reason: EndReason, grace: float = 1.0) -> None:
        self._up.clear()
        server, self._server = self._server, None
        for run in list(self._shared.runs):
            run.kill(grpc.StatusCode.UNAVAILABLE, f"The service is currently unavailable ({reason.value}).", reason)
        if server is not None:
            await server.stop(grace)

    async def _shutdown(self) -> None:
        self._shared.stopping = True
        if self._down_task is not None:
            self._down_task.cancel()
        if self._control is not None:
            await self._control.close()
        await self._close_server(EndReason.SERVER_STOPPED)
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    async def _go_down(self, seconds: float) -> None:
        if self._down_task is not None:  # already down: just move the comeback time
            self._down_task.cancel()
        await self._close_server(EndReason.SERVER_DOWN)

        async def come_back() -> None:
            await asyncio.sleep(seconds)
            if not self._shared.stopping:
                try:
                    await self._listen()
                except Exception as exc:  # e.g. someone else took the port meanwhile
                    self.last_error = exc

        self._down_task = asyncio.get_running_loop().create_task(come_back())

    def _handler(self, api) -> grpc.GenericRpcHandler:
        shared = self._shared

        async def streaming_recognize(request_iterator, context) -> None:
            metadata = redact_metadata(context.invocation_metadata())
            record = shared.log.new(
                api=api.name,
                peer=context.peer(),
                session=metadata.get(SESSION_METADATA_KEY, ""),
                metadata=metadata,
                started_at=time.monotonic(),
            )
            if not record.session:  # no key: a session of its own (see recognizers' docstring)
                shared.log.update(lambda: setattr(record, "session", f"stream-{record.id}"))
            run = StreamRun(shared, api, context, record)
            shared.runs.add(run)
            try:
                await run.run()
            finally:
                shared.runs.discard(run)

        return grpc.method_handlers_generic_handler(
            api.service,
            {
                "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
                    streaming_recognize,
                    request_deserializer=api.request_cls.deserialize,
                    response_serializer=api.response_cls.serialize,
                )
            },
        )
