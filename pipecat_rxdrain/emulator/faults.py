"""Faults on demand: what the emulator does wrong, when you ask it to.

All methods are thread-safe and may be called while streams are running (from
tests, from the CLI at startup, or through the control endpoint at runtime).

Kinds:

* ``latency(seconds)`` — **persistent** until ``latency(0)``/``clear()``: every
  response is written ``seconds`` after it was produced (reading audio goes on).
* ``stall(seconds, ...)`` — the stream stops *reading* requests for ``seconds``;
  the client then meets real HTTP/2 flow-control back-pressure once the
  transport windows fill (see ``SpeechEmulator(small_window=True)``).
* ``abort(code=..., ...)`` — the stream ends with ``code`` (UNAVAILABLE,
  ABORTED, OUT_OF_RANGE, INTERNAL, RESOURCE_EXHAUSTED, ...) and ``details``.
* ``close(...)`` — the stream ends cleanly mid-call (status OK, no more results).
* ``refuse(count, code=UNAVAILABLE)`` — the next ``count`` streams are rejected
  at once (the RPC fails before any result; TCP still connects).
* ``down(seconds)`` — handled by ``SpeechEmulator.go_down``: the server stops
  listening (connection refused) and comes back on the same port.

Triggers for stall/abort/close: ``after_s`` (seconds) and/or ``after_chunks``
(audio requests), both counted from when the fault was armed or the stream
started, whichever is later; with neither, the fault fires at once. Whichever
trigger is met first fires. ``times`` says how many streams the fault fires on:
``1`` (the default) is **one-shot** — the first stream to meet the trigger
consumes it; ``None`` is **persistent** — it fires once on every stream until
``clear()``. ``session`` restricts a fault to one recognition session key.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import grpc

FAULT_CODES = {
    c.name: c
    for c in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
}


def status_code(code: grpc.StatusCode | str) -> grpc.StatusCode:
    """``grpc.StatusCode`` from a code or its name (``"UNAVAILABLE"``, case-insensitive)."""
    if isinstance(code, grpc.StatusCode):
        return code
    try:
        return FAULT_CODES[str(code).upper()]
    except KeyError:
        raise ValueError(f"unknown or unsupported status code {code!r}; use one of {sorted(FAULT_CODES)}") from None


class FaultKind(StrEnum):
    """The kinds of fault (see the module docstring); ``CLEAR`` disarms them all."""

    LATENCY = "latency"
    STALL = "stall"
    ABORT = "abort"
    CLOSE = "close"
    REFUSE = "refuse"
    DOWN = "down"
    CLEAR = "clear"


def check_seconds(name: str, value: float, *, positive: bool = False) -> float:
    """``value`` as a float; ``ValueError`` naming ``name`` if it is NaN, infinite, negative (or zero with
    ``positive``)."""
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return value


@dataclass
class FaultRule:
    id: int
    kind: FaultKind  # STALL | ABORT | CLOSE (the triggered kinds)
    after_s: float | None
    after_chunks: int | None
    times: int | None  # remaining firings; None = persistent
    session: str | None
    armed_at: float
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    seconds: float = 0.0  # stall duration

    def describe(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "after_s": self.after_s,
            "after_chunks": self.after_chunks,
            "times": self.times,
            "session": self.session,
            "code": self.code.name,
            "details": self.details,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class FaultAction:
    kind: FaultKind  # STALL | ABORT | CLOSE
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    seconds: float = 0.0
    rule_id: int = 0


@dataclass
class StreamFaultState:
    """Per-stream bookkeeping: when each rule was first seen (its baseline) and which ones fired."""

    session: str
    started_at: float
    chunks: int = 0
    baselines: dict[int, tuple[int, float]] = field(default_factory=dict)
    fired: set[int] = field(default_factory=set)


class Faults:
    """The emulator's armed faults. See the module docstring for semantics."""

    def __init__(self, clock=time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._ids = itertools.count(1)
        self._rules: list[FaultRule] = []
        self._latency_s = 0.0
        self._refuse: list[tuple[grpc.StatusCode, str]] = []
        self._down_handler: Callable[..., None] | None = None  # SpeechEmulator.go_down, set by the emulator

    # --- arming -------------------------------------------------------
    def latency(self, seconds: float) -> None:
        """Delay every response by ``seconds`` (persistent; 0 turns it off)."""
        seconds = check_seconds("latency seconds", seconds)
        with self._lock:
            self._latency_s = seconds

    def stall(self, seconds: float, *, after_s=None, after_chunks=None, times: int | None = 1, session=None) -> int:
        """Stop reading requests for ``seconds`` when triggered. Returns the fault id."""
        seconds = check_seconds("stall seconds", seconds, positive=True)
        return self._arm(FaultKind.STALL, after_s, after_chunks, times, session, seconds=seconds)

    def abort(
        self,
        *,
        after_s=None,
        after_chunks=None,
        code: grpc.StatusCode | str = grpc.StatusCode.UNAVAILABLE,
        details: str | None = None,
        times: int | None = 1,
        session=None,
    ) -> int:
        """End the stream with ``code`` when triggered. Returns the fault id."""
        code = status_code(code)
        if code == grpc.StatusCode.OK:
            raise ValueError("abort needs a non-OK code; use close() for a clean end")
        details = details or f"emulator fault: stream aborted with {code.name}"
        return self._arm(FaultKind.ABORT, after_s, after_chunks, times, session, code=code, details=details)

    def close(self, *, after_s=None, after_chunks=None, times: int | None = 1, session=None) -> int:
        """End the stream cleanly (status OK) when triggered. Returns the fault id."""
        return self._arm(FaultKind.CLOSE, after_s, after_chunks, times, session)

    def refuse(
        self, count: int = 1, *, code: grpc.StatusCode | str = grpc.StatusCode.UNAVAILABLE, details=None
    ) -> None:
        """Reject the next ``count`` streams immediately with ``code``."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"refuse count must be an integer >= 0, got {count!r}")
        code = status_code(code)
        details = details or "emulator fault: connection refused by the service (try again)"
        with self._lock:
            self._refuse.extend([(code, details)] * count)

    def down(self, seconds: float, *, wait: bool = True) -> None:
        """Stop listening for ``seconds`` (connection refused), then listen again on the same port."""
        handler = self._down_handler
        if handler is None:
            raise RuntimeError("down() needs a running SpeechEmulator")
        handler(seconds, wait=wait)

    def clear(self) -> None:
        """Disarm everything (latency, stall/abort/close rules, pending refusals)."""
        with self._lock:
            self._rules.clear()
            self._refuse.clear()
            self._latency_s = 0.0

    def cancel(self, fault_id: int) -> bool:
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.id != fault_id]
            return len(self._rules) != before

    def describe(self) -> dict:
        with self._lock:
            return {
                "latency_s": self._latency_s,
                "refuse_pending": len(self._refuse),
                "rules": [r.describe() for r in self._rules],
            }

    # --- used by streams ----------------------------------------------
    @property
    def latency_s(self) -> float:
        return self._latency_s

    @property
    def has_timed_rules(self) -> bool:
        return any(r.after_s is not None or r.after_chunks is None for r in self._rules)

    def take_refusal(self) -> tuple[grpc.StatusCode, str] | None:
        with self._lock:
            return self._refuse.pop(0) if self._refuse else None

    def check(self, state: StreamFaultState, now: float | None = None) -> list[FaultAction]:
        """Rules this stream meets now (each fires at most once per stream)."""
        now = self._clock() if now is None else now
        actions: list[FaultAction] = []
        with self._lock:
            for rule in list(self._rules):
                if rule.id in state.fired or (rule.session is not None and rule.session != state.session):
                    continue
                base_chunks, base_t = state.baselines.setdefault(rule.id, (state.chunks, max(now, rule.armed_at)))
                base_t = max(base_t, rule.armed_at, state.started_at)
                hit = rule.after_s is None and rule.after_chunks is None
                if rule.after_s is not None and now - base_t >= rule.after_s:
                    hit = True
                if rule.after_chunks is not None and state.chunks - base_chunks >= rule.after_chunks:
                    hit = True
                if not hit:
                    continue
                state.fired.add(rule.id)
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                actions.append(FaultAction(rule.kind, rule.code, rule.details, rule.seconds, rule.id))
        return actions

    def _arm(self, kind: FaultKind, after_s, after_chunks, times, session, **extra) -> int:
        if after_s is not None:
            after_s = check_seconds("after_s", after_s)
        if after_chunks is not None and after_chunks < 0:
            raise ValueError("after_chunks must be >= 0")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None (persistent)")
        with self._lock:
            rule = FaultRule(
                id=next(self._ids),
                kind=kind,
                after_s=after_s,
                after_chunks=None if after_chunks is None else int(after_chunks),
                times=times,
                session=session,
                armed_at=self._clock(),
                **extra,
            )
            self._rules.append(rule)
            return rule.id
