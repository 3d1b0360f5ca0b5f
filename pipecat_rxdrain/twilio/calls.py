"""The calls one bot process holds: admission against ``max_calls``, records, health.

No Pipecat import. Everything here runs on the server's event loop, so a
check-and-reserve is atomic (no ``await`` between the check and the update).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .messages import Start


class Admission(StrEnum):
    """The answer to a media websocket asking for a call slot."""

    ADMITTED = "admitted"
    FULL = "full"  # max_calls reached: close 1013 (try again later)
    SHUTTING_DOWN = "shutting_down"  # close 1013 too: another replica can take it
    DUPLICATE = "duplicate"  # this CallSid already has a live media stream: close 1008


class CallEndReason(StrEnum):
    """Why a call ended (``/stats`` ``end_reason``; the ``reason`` label of ``rxdrain_calls_ended_total``)."""

    STOP = "stop"  # Twilio's stop message: the caller hung up
    CALLER_DISCONNECTED = "caller disconnected"  # the websocket closed without a stop
    MEDIA_IDLE = "media idle timeout"  # no media for MEDIA_IDLE_TIMEOUT_S
    SERVER_SHUTDOWN = "server shutdown"  # SIGTERM/SIGINT: still running after SHUTDOWN_GRACE_S
    FAILED = "failed"  # a fatal error (see CallOutcome.FAILED and the record's error)
    PIPELINE_ENDED = "pipeline ended"  # the pipeline finished by itself


class CallOutcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # a fatal error (e.g. STT credentials rejected) ended the call


@dataclass
class CallRecord:
    """One call's numbers for ``/stats`` and the end-of-call summary line."""

    call_sid: str
    stream_sid: str
    mode: str = "transcribe"
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    end_reason: CallEndReason | None = None
    outcome: CallOutcome = CallOutcome.OK
    error: str | None = None
    finals: list[dict[str, Any]] = field(default_factory=list)
    rx: dict[str, Any] = field(default_factory=dict)
    stt: dict[str, Any] = field(default_factory=dict)
    twilio: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "mode": self.mode,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "outcome": self.outcome.value,
            "error": self.error,
            "finals": list(self.finals),
            "rx": dict(self.rx),
            "stt": dict(self.stt),
            "twilio": dict(self.twilio),
            "input": dict(self.input),
        }


class LiveCall(Protocol):
    record: CallRecord
    start: Start
    worker: Any

    def refresh(self) -> CallRecord: ...

    async def end(self, reason: CallEndReason) -> None: ...


class CallRegistry:
    """Active calls, reserved slots and the last ``keep_completed`` finished calls.

    Guarantees: :meth:`admit` never lets ``reserved + active`` exceed ``max_calls``
    and never admits a CallSid that is already live; :attr:`degraded` is True
    while the last ``failing_window`` ended calls all failed (e.g. bad STT
    credentials), so ``/healthz`` stops sending traffic to a process that can
    only fail.
    """

    def __init__(self, max_calls: int, *, keep_completed: int = 100, failing_window: int = 3) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        self.max_calls = max_calls
        self.active: dict[str, LiveCall] = {}
        self.reserved = 0
        self.completed: deque[CallRecord] = deque(maxlen=keep_completed)
        self.shutting_down = False
        self.counters: dict[str, int] = {
            "webhooks_answered": 0,
            "admitted": 0,
            "refused_full": 0,
            "refused_shutting_down": 0,
            "refused_duplicate": 0,
            "failed": 0,
        }
        self._recent: deque[CallOutcome] = deque(maxlen=failing_window)

    # -- admission: reserve at accept time, bind the CallSid on start, release at the end --
    def reserve(self) -> Admission:
        """A slot for a websocket about to be accepted (before its ``start`` is read)."""
        if self.shutting_down:
            self.counters["refused_shutting_down"] += 1
            return Admission.SHUTTING_DOWN
        if self.reserved + len(self.active) >= self.max_calls:
            self.counters["refused_full"] += 1
            return Admission.FULL
        self.reserved += 1
        return Admission.ADMITTED

    def unreserve(self) -> None:
        self.reserved = max(0, self.reserved - 1)

    def bind(self, call_sid: str, call: LiveCall) -> Admission:
        """Turn a reserved slot into a live call for ``call_sid`` (the slot is consumed either way)."""
        self.unreserve()
        if call_sid in self.active:
            self.counters["refused_duplicate"] += 1
            return Admission.DUPLICATE
        self.active[call_sid] = call
        self.counters["admitted"] += 1
        return Admission.ADMITTED

    def finish(self, call_sid: str, record: CallRecord) -> None:
        self.active.pop(call_sid, None)
        self.completed.append(record)
        self._recent.append(record.outcome)
        if record.outcome is CallOutcome.FAILED:
            self.counters["failed"] += 1

    @property
    def degraded(self) -> bool:
        return len(self._recent) == self._recent.maxlen and all(o is CallOutcome.FAILED for o in self._recent)

    def health(self) -> dict[str, Any]:
        status = "shutting_down" if self.shutting_down else ("degraded" if self.degraded else "ok")
        return {
            "ok": status == "ok",
            "status": status,
            "active_calls": len(self.active),
            "failed_calls": self.counters["failed"],
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "active": [c.refresh().as_dict() for c in list(self.active.values())],
            "completed": [r.as_dict() for r in self.completed],
            "counters": dict(self.counters),
        }
