"""The bounded buffer of audio sent since the last final, replayed into a new stream after a restart."""

from __future__ import annotations

from collections import deque


class ReplayBuffer:
    """Audio the recognizer has not finalized yet, addressed by session byte position.

    Guarantees: holds exactly the bytes in ``[start, end)`` of the session's
    audio (``end`` is everything sent so far); ``trim_to(pos)`` forgets audio
    before ``pos`` (a final's end); at most ``max_bytes`` are kept, the oldest
    going first and being counted in ``overflow_bytes``. Positions stay aligned
    to ``frame_bytes`` (one sample of all channels). Audio appended with push
    times (``stamps``) can be aged out: ``drop_older_than(t)`` forgets every
    chunk pushed before ``t`` (counted in ``stale_bytes``). Not thread-safe: it
    is owned by the session's I/O thread.
    """

    def __init__(self, max_bytes: int, frame_bytes: int = 2) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.frame_bytes = max(1, frame_bytes)
        self._chunks: deque[bytes] = deque()
        self.start = 0  # session byte position of the first buffered byte
        self.end = 0  # session byte position just after the last sent byte
        self.overflow_bytes = 0
        self.stale_bytes = 0
        self._marks: deque[tuple[int, float]] = deque()  # (session position where a chunk starts, its push time)

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, data: bytes, stamps: tuple[tuple[int, float], ...] = ()) -> None:
        """Add sent audio; ``stamps`` are (bytes, push time) per chunk of ``data``, in order."""
        if not data:
            return
        pos = self.end
        for nbytes, at in stamps:
            self._marks.append((pos, at))
            pos += nbytes
        self._chunks.append(data)
        self.end += len(data)
        excess = len(self) - self.max_bytes
        if excess > 0:
            excess += (-excess) % self.frame_bytes
            self.overflow_bytes += min(excess, len(self))
            self._drop_front(excess)

    def trim_to(self, pos: int) -> int:
        """Forget audio before session position ``pos``; returns bytes dropped."""
        pos = min(pos, self.end)
        pos -= pos % self.frame_bytes
        if pos <= self.start:
            return 0
        n = pos - self.start
        self._drop_front(n)
        return n

    def drop_older_than(self, cutoff: float) -> int:
        """Forget the audio of chunks pushed before ``cutoff`` (clock time); returns bytes dropped."""
        marks = self._marks
        while marks and marks[0][1] < cutoff:
            marks.popleft()
        pos = marks[0][0] if marks else self.end
        pos -= pos % self.frame_bytes
        if pos <= self.start:
            return 0
        n = pos - self.start
        self.stale_bytes += n
        self._drop_front(n)
        return n

    def pieces(self, max_piece: int) -> list[bytes]:
        """The buffered audio as pieces of at most ``max_piece`` bytes (frame aligned)."""
        max_piece -= max_piece % self.frame_bytes
        data = b"".join(self._chunks)
        return [data[i : i + max_piece] for i in range(0, len(data), max_piece)]

    def _drop_front(self, n: int) -> None:
        n = min(n, len(self))
        self.start += n
        while n > 0 and self._chunks:
            head = self._chunks[0]
            if len(head) <= n:
                self._chunks.popleft()
                n -= len(head)
            else:
                self._chunks[0] = head[n:]
                n = 0
        marks = self._marks
        while len(marks) >= 2 and marks[1][0] <= self.start:
            marks.popleft()
        if len(self) == 0:
            marks.clear()
