"""What the emulator observed on each stream: thread-safe records for tests and benchmarks.

Every ``StreamRecord`` is written on the emulator's event-loop thread and read
from anywhere through :meth:`StreamRecord.snapshot` (an immutable copy taken
under the emulator's lock). Receive times are ``time.monotonic()`` stamped the
moment a request is read off the wire, before any processing, so they can be
compared with ``time.monotonic()`` stamps taken by a client in the same process
(audio age = server receive time - client enqueue time).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import grpc

# Metadata keys whose values are secrets and never recorded.
_REDACTED_KEYS = frozenset({"authorization", "x-goog-api-key", "x-goog-iam-authorization-token", "cookie"})


def redact_metadata(items) -> dict[str, str]:
    """gRPC invocation metadata as a dict, with credentials replaced by ``"<redacted>"``."""
    out: dict[str, str] = {}
    for key, value in items or ():
        if isinstance(value, bytes):
            value = f"<{len(value)} bytes>"
        out[key] = "<redacted>" if key.lower() in _REDACTED_KEYS else str(value)
    return out


@dataclass(frozen=True)
class ChunkRecord:
    """One audio request: its size, server receive time and byte offset in the stream."""

    index: int  # 0-based index among the stream's audio requests
    size: int  # audio bytes in this request
    received_at: float  # server time.monotonic() on receipt
    offset: int  # byte offset of this chunk's first byte in the stream's audio


class ResultKind(StrEnum):
    """What one response to the client carried: a result or a speech event."""

    INTERIM = "interim"
    FINAL = "final"
    SPEECH_BEGIN = "speech_begin"
    SPEECH_END = "speech_end"
    END_OF_SINGLE_UTTERANCE = "end_of_single_utterance"


class EndReason(StrEnum):
    """Why a stream ended (recorded in :class:`StreamEnd`, shown by ``/streams``)."""

    HALF_CLOSE = "half_close"  # the client finished sending; all results written
    ABORT_FAULT = "abort_fault"
    CLOSE_FAULT = "close_fault"
    REFUSED = "refused"  # a refuse fault
    INVALID_ARGUMENT = "invalid_argument"  # a bad config or request, as Google rejects it
    MAX_DURATION = "max_duration"  # the 305 s stream limit
    INACTIVITY = "inactivity"  # no request for the inactivity timeout
    TOO_FAST = "too_fast"  # audio sent faster than real time beyond EmulatorLimits.max_lead_s
    SPEECH_START_TIMEOUT = "speech_start_timeout"  # voice_activity_timeout
    SPEECH_END_TIMEOUT = "speech_end_timeout"  # voice_activity_timeout
    CLIENT_CANCELLED = "client_cancelled"
    SERVER_STOPPED = "server_stopped"
    SERVER_DOWN = "server_down"  # a down fault
    ERROR = "error"  # the request stream broke


@dataclass(frozen=True)
class ResultRecord:
    """One response written to the client.

    ``kind`` is a :class:`ResultKind` (equal to its string value, ``"final"`` etc.). ``end_offset_s`` is ``result_end_time``
    (v1) / ``result_end_offset`` (v2), or the event offset for events.
    ``segment`` is the 0-based segment index within the stream.
    """

    kind: ResultKind
    sent_at: float  # server time.monotonic() when written
    produced_at: float = 0.0  # when the emulator produced it (sent_at - produced_at = latency fault)
    transcript: str = ""
    is_final: bool = False
    stability: float = 0.0
    end_offset_s: float = 0.0
    segment: int = -1
    alternatives: tuple[str, ...] = ()  # finals: the runners-up sent after the transcript (max_alternatives)
    words: tuple = ()  # finals with enable_word_time_offsets: apis.Word(word, start_s, end_s) per word


@dataclass(frozen=True)
class StreamEnd:
    """How a stream ended: the gRPC status the server returned (or CANCELLED), and why."""

    code: grpc.StatusCode
    details: str
    at: float  # server time.monotonic()
    reason: EndReason


@dataclass
class StreamRecord:
    """Everything seen on one StreamingRecognize call. Use :meth:`snapshot` for a stable copy."""

    id: int
    api: str  # "v1" | "v2"
    peer: str
    session: str  # recognition session key: x-rxdrain-session metadata, else "stream-<id>"
    metadata: dict[str, str]
    started_at: float
    recognizer: str = ""  # v2 resource name
    config: dict[str, Any] | None = None
    requests: int = 0
    oversize_requests: int = 0  # audio requests over EmulatorLimits.max_request_bytes (accepted unless strict)
    chunks: list[ChunkRecord] | tuple[ChunkRecord, ...] = field(default_factory=list)
    results: list[ResultRecord] | tuple[ResultRecord, ...] = field(default_factory=list)
    end: StreamEnd | None = None
    stalls: list[tuple[float, float]] | tuple[tuple[float, float], ...] = field(default_factory=list)  # (start, end)

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def audio_bytes(self) -> int:
        return sum(c.size for c in self.chunks)

    @property
    def finals(self) -> list[ResultRecord]:
        return [r for r in self.results if r.kind is ResultKind.FINAL]

    @property
    def interims(self) -> list[ResultRecord]:
        return [r for r in self.results if r.kind is ResultKind.INTERIM]

    @property
    def transcripts(self) -> list[str]:
        """The final transcripts, in order."""
        return [r.transcript for r in self.results if r.kind is ResultKind.FINAL]

    def snapshot(self) -> StreamRecord:
        return replace(
            self,
            metadata=dict(self.metadata),
            chunks=tuple(self.chunks),
            results=tuple(self.results),
            stalls=tuple(self.stalls),
        )


class StreamLog:
    """The emulator's list of stream records, guarded by one lock.

    Writers call :meth:`update`; readers take :meth:`snapshot`s or poll in
    :meth:`wait_for` with a bounded timeout (polling, not notification, so a
    waiting test never slows the emulator down with a wake-up per audio chunk).
    """

    POLL_S = 0.01

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._streams: list[StreamRecord] = []
        self._next_id = 1

    def new(self, **kwargs: Any) -> StreamRecord:
        with self._lock:
            rec = StreamRecord(id=self._next_id, **kwargs)
            self._next_id += 1
            self._streams.append(rec)
            return rec

    def update(self, fn) -> None:
        """Run ``fn()`` (a mutation of records) under the lock."""
        with self._lock:
            fn()

    def snapshot(self) -> list[StreamRecord]:
        with self._lock:
            return [s.snapshot() for s in self._streams]

    def one(self, index: int) -> StreamRecord:
        with self._lock:
            return self._streams[index].snapshot()

    def count(self) -> int:
        with self._lock:
            return len(self._streams)

    def clear(self) -> None:
        with self._lock:
            self._streams.clear()

    def wait_for(self, predicate, timeout: float, subject: Any):
        """Poll ``predicate(subject)`` every 10 ms until truthy; return its value.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while (value := condition_met(predicate, subject, deadline, timeout)) is None:
            time.sleep(self.POLL_S)
        return value


def condition_met(predicate, subject: Any, deadline: float, timeout: float) -> Any:
    """One poll of a wait: ``predicate(subject)`` if truthy, else ``None``; ``TimeoutError`` once
    ``time.monotonic()`` has reached ``deadline`` (``timeout`` is only for the message)."""
    import time

    value = predicate(subject)
    if value:
        return value
    if time.monotonic() >= deadline:
        raise TimeoutError(f"condition not met within {timeout} s")
    return None
