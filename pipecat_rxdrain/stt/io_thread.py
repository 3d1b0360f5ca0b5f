"""The thread(s) that run STT sessions' gRPC I/O: one asyncio loop shared by every call, or one per call."""

from __future__ import annotations

import asyncio
import threading
from enum import Enum
from typing import Any, Callable

from loguru import logger

from ..event_loops import finish_event_loop


class IoThreadMode(str, Enum):
    """Where a session's gRPC loop runs (never on the caller's / Pipecat's event loop)."""

    SHARED = "shared"  # one thread and loop for all sessions of the process (default: cheapest per frame)
    PER_SESSION = "per_session"  # a thread and loop of its own per session

    def __str__(self) -> str:
        return self.value


class SttIoThread:
    """One daemon thread running one asyncio loop, started by the first user and stopped by the last.

    Guarantees: ``acquire()`` returns a running loop (starting the thread if
    needed); after as many ``release()`` calls as ``acquire()`` calls the loop's
    pending tasks are wound down, the loop closed and the thread joined (bounded).
    Thread-safe.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._users = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def users(self) -> int:
        return self._users

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def acquire(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            self._users += 1
            if self._loop is None:
                ready = threading.Event()
                box: dict[str, Any] = {}
                self._thread = threading.Thread(target=self._main, args=(ready, box), name=self.name, daemon=True)
                self._thread.start()
                if not ready.wait(5.0):  # pragma: no cover - a starved machine
                    self._users -= 1
                    raise RuntimeError(f"{self.name}: I/O thread did not start")
                self._loop = box["loop"]
            return self._loop

    def release(self, join_timeout: float = 5.0) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._loop is None:
                return
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
            if thread is not None and thread is not threading.current_thread():
                thread.join(join_timeout)
                if thread.is_alive():  # pragma: no cover - defensive
                    logger.warning(f"{self.name}: I/O thread did not stop within {join_timeout}s")

    @staticmethod
    def _main(ready: threading.Event, box: dict) -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        asyncio.set_event_loop(loop)
        ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                finish_event_loop(loop)
            except Exception:  # pragma: no cover - defensive
                pass
            loop.close()


_shared = SttIoThread("rxdrain-stt-io")


def shared_io_thread() -> SttIoThread:
    """The process-wide I/O thread every ``IoThreadMode.SHARED`` session runs on."""
    return _shared


async def run_blocking(fn: Callable[[], Any], *, name: str) -> Any:
    """Run a blocking call on a short-lived thread of its own and await its result.

    Used for the rare blocking step (the sync status probe) so it never stalls the
    shared loop; unlike the loop's default executor it leaves no thread behind.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            (fut.set_result if ok else fut.set_exception)(value)

    def target() -> None:
        try:
            result, ok = fn(), True
        except BaseException as exc:  # handed to the awaiting task
            result, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:
            pass

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return await fut
