"""The thread(s) that run STT sessions' gRPC I/O: one asyncio loop shared by every call, or one per call."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from loguru import logger

from ..busy import BusyMeter
from ..deprecation import STT_RENAMES, renamed_attributes
from ..event_loops import finish_event_loop


class IoThreadMode(StrEnum):
    """Where a session's gRPC loop runs (never on the caller's / Pipecat's event loop)."""

    SHARED = "shared"  # one thread and loop for all sessions of the process (default: cheapest per frame)
    PER_SESSION = "per_session"  # a thread and loop of its own per session


def _gil_holding_write() -> Callable[[int, bytes], Any]:
    """``write(fd, data)`` that keeps the GIL during the syscall (libc's write through ``ctypes.PyDLL``).

    Why: ``os.write`` releases the GIL, and the I/O thread it wakes grabs it, so the
    caller (Pipecat's loop) then waits for the I/O thread's whole turn (~0.3-1 ms at p99).
    Keeping the GIL, the woken thread instead runs at the caller's next release (its
    loop going idle, at the latest the interpreter's switch interval). Falls back to
    ``os.write`` where libc's symbol is not reachable.
    """
    try:
        libc_write = ctypes.PyDLL(None).write
        libc_write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        libc_write.restype = ctypes.c_ssize_t
    except (OSError, AttributeError):  # pragma: no cover - exotic platforms
        return os.write
    return lambda fd, data: libc_write(fd, data, len(data))


_write_keeping_gil = _gil_holding_write()


class _Waker:
    """Runs callbacks on a loop from other threads, one self-pipe byte per batch of requests.

    Guarantees: every callback passed to ``notify`` runs once, on the loop, in order;
    ``notify`` costs a deque append and, only when no signal is outstanding, one
    GIL-holding pipe write (no GIL hand-off to the loop's thread). Called from a
    thread running an event loop, the write is deferred to the end of that loop's
    current callback (one write for all the pushes of that turn).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._pending: deque[Callable[[], Any]] = deque()
        self._signalled = False
        loop.add_reader(self._r, self._drain)

    def notify(self, callback: Callable[[], Any]) -> None:
        self._pending.append(callback)
        if self._signalled:
            return  # a signal is outstanding: the loop will run this callback with the others
        self._signalled = True
        try:
            caller = asyncio.get_running_loop()
        except RuntimeError:
            caller = None
        if caller is None or caller is self._loop:
            self._signal()
        else:
            # Called from an event loop (Pipecat's): signal when the current callback is done,
            # once for every session of that loop that had audio meanwhile, so the push itself
            # makes no syscall and hands nothing over.
            caller.call_soon(self._signal)

    def _signal(self) -> None:
        try:
            _write_keeping_gil(self._w, b"\0")
        except OSError:  # pragma: no cover - closed during shutdown
            pass

    def _drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._signalled = False
        pending = self._pending
        while pending:
            callback = pending.popleft()
            try:
                callback()
            except Exception:  # pragma: no cover - callbacks are ours and do not raise
                logger.exception("STT I/O wake callback raised")

    def close(self) -> None:
        try:
            self._loop.remove_reader(self._r)
        except Exception:  # pragma: no cover - loop already closed
            pass
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass


class STTIoThread:
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
        self._waker: _Waker | None = None
        self._meter: BusyMeter | None = None

    @property
    def meter(self) -> BusyMeter | None:
        """The running thread's :class:`BusyMeter` (call it only from that thread); None when stopped."""
        return self._meter

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
                self._waker = box["waker"]
                self._meter = box["meter"]
            return self._loop

    def notify(self, callback: Callable[[], Any]) -> bool:
        """Run ``callback`` on the loop soon, from any thread, without handing the GIL over. False if stopped."""
        waker = self._waker
        if waker is None:
            return False
        waker.notify(callback)
        return True

    def release(self, join_timeout: float = 5.0) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._loop is None:
                return
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self._waker = None
            self._meter = None
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
        waker = box["waker"] = _Waker(loop)
        box["meter"] = BusyMeter()  # one per I/O thread; only this thread calls it
        ready.set()
        try:
            loop.run_forever()
        finally:
            waker.close()
            try:
                finish_event_loop(loop)
            except Exception:  # pragma: no cover - defensive
                pass
            loop.close()


_shared = STTIoThread("rxdrain-stt-io")


def shared_io_thread() -> STTIoThread:
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


__getattr__ = renamed_attributes(__name__, globals(), STT_RENAMES)  # 0.1.0 names (Stt...)
