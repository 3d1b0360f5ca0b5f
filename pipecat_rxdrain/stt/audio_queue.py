"""The STT session's audio queue: bounded in audio time, drop-oldest, thread-safe, clock-stamped (no gRPC)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from ..clock import Clock, monotonic
from ..units import FRAME_UNIT_MS


class Pushed(IntEnum):
    """What :meth:`AudioQueue.push` did with a chunk."""

    QUEUED = 0  # queued; the consumer is busy or already woken
    WAKE = 1  # queued, and the consumer was idle: wake it (exactly one push gets this per idle spell)
    REJECTED = 2  # the queue is closed (session closing/closed/failed)
    MALFORMED = 3  # not a whole number of samples


@dataclass(frozen=True)
class Batch:
    """Audio taken off the queue for one request: the bytes and, per chunk, (bytes, push time)."""

    data: bytes
    stamps: tuple[tuple[int, float], ...]

    @property
    def oldest(self) -> float:
        return self.stamps[0][1]


class AudioQueue:
    """Chunks of PCM waiting for the writer, bounded by *audio time*.

    Guarantees:
      * holds at most ``max_frames`` x 20 ms of audio (``bound_bytes``), whatever the
        chunk size; a push that would exceed it drops the oldest chunks first, each
        counted in ``drops`` (and its bytes in ``dropped_bytes``); the newest chunk is
        always kept;
      * ``push`` never blocks beyond a short lock and never wakes anyone itself: it
        answers ``Pushed.WAKE`` once when the consumer said it was idle (``take``
        found the queue empty), so a busy consumer costs the producer nothing;
      * ``take(max_bytes, split_at)`` returns everything queued up to ``max_bytes`` (whole
        chunks) in push order, or None when empty (and then marks the consumer idle,
        atomically, so no wake is lost); a first chunk bigger than ``max_bytes`` goes
        whole up to ``split_at`` bytes (default ``max_bytes``) and is split beyond, at a
        sample boundary;
      * after ``close()`` pushes are rejected (counted in ``rejected``).
    Every chunk is stamped with the clock at push, so callers can bound audio age.
    """

    def __init__(
        self,
        max_frames: int,
        bytes_per_ms: float,
        frame_bytes: int = 2,
        clock: Clock = monotonic,
        lock: threading.Lock | None = None,
    ) -> None:
        if max_frames < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_frames}")
        self.frame_bytes = max(1, int(frame_bytes))
        self.frame20_bytes = max(self.frame_bytes, int(round(FRAME_UNIT_MS * bytes_per_ms)))
        self.max_frames = int(max_frames)
        self.bound_bytes = self.max_frames * self.frame20_bytes
        self._clock = clock
        self._lock = lock or threading.Lock()
        # Chunks and their push times in two parallel deques (the benchmark probe wraps ``_q``).
        self._q: deque[bytes] = deque()
        self._at: deque[float] = deque()
        self._bytes = 0
        self._idle = False
        self._closed = False
        self.pushed = 0
        self.drops = 0
        self.dropped_bytes = 0
        self.rejected = 0
        self.malformed = 0

    # ----------------------------------------------------------- producer
    def push(self, chunk: bytes) -> Pushed:
        n = len(chunk)
        with self._lock:
            if self._closed:
                self.rejected += 1
                return Pushed.REJECTED
            if n % self.frame_bytes:
                self.malformed += 1
                return Pushed.MALFORMED
            q = self._q
            if self._bytes + n > self.bound_bytes:
                while q and self._bytes + n > self.bound_bytes:
                    old = q.popleft()
                    self._at.popleft()
                    self._bytes -= len(old)
                    self.drops += 1
                    self.dropped_bytes += len(old)
            q.append(chunk)
            self._at.append(self._clock())
            self._bytes += n
            self.pushed += 1
            if self._idle:
                self._idle = False
                return Pushed.WAKE
            return Pushed.QUEUED

    def can_accept(self, nbytes: int | None = None) -> bool:
        """True while ``nbytes`` (default: 20 ms) more would fit without dropping anything."""
        return self._bytes + (self.frame20_bytes if nbytes is None else nbytes) <= self.bound_bytes

    # ----------------------------------------------------------- consumer
    def take(self, max_bytes: int, split_at: int | None = None) -> Batch | None:
        max_bytes -= max_bytes % self.frame_bytes
        # Splitting a chunk that fits one request gains nothing (its bytes are all here) and
        # delays its tail by a request: the session only splits what a request cannot carry.
        split_at = max_bytes if split_at is None else max(max_bytes, split_at - split_at % self.frame_bytes)
        with self._lock:
            q, ats = self._q, self._at
            if not q:
                self._idle = True
                return None
            parts: list[bytes] = []
            stamps: list[tuple[int, float]] = []
            size = 0
            while q and (not parts or size + len(q[0]) <= max_bytes):
                chunk, at = q.popleft(), ats.popleft()
                if len(chunk) > split_at:  # only the first chunk can get here
                    q.appendleft(chunk[split_at:])
                    ats.appendleft(at)
                    chunk = chunk[:split_at]
                self._bytes -= len(chunk)
                parts.append(chunk)
                stamps.append((len(chunk), at))
                size += len(chunk)
        return Batch(parts[0] if len(parts) == 1 else b"".join(parts), tuple(stamps))

    def idle_if_empty(self) -> bool:
        """If empty, mark the consumer idle (the next push answers WAKE) and return True; else False."""
        with self._lock:
            if self._q:
                return False
            self._idle = True
            return True

    # ----------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Refuse further pushes (what is queued stays, to be flushed or discarded)."""
        with self._lock:
            self._closed = True

    def discard(self) -> tuple[int, int]:
        """Empty the queue; returns (chunks, bytes) discarded."""
        with self._lock:
            chunks, nbytes = len(self._q), self._bytes
            self._q.clear()
            self._at.clear()
            self._bytes = 0
        return chunks, nbytes

    # ----------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def backlog_frames(self) -> float:
        """Audio queued, in 20 ms-frame equivalents."""
        return self._bytes / self.frame20_bytes

    def oldest_nbytes(self) -> int:
        """Size of the oldest queued chunk (0 when empty)."""
        try:
            return len(self._q[0])
        except IndexError:
            return 0

    def oldest_at(self) -> float | None:
        try:
            return self._at[0]
        except IndexError:
            return None
