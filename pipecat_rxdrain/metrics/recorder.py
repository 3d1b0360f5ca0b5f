"""One call's contribution to the process metrics, fed from snapshots of our stats objects.

The stats objects (``RxStats``, ``STTStats``, the Twilio parser's ``ParserStats``) hold
cumulative counters and current levels. :class:`CallMetrics` remembers the previous
snapshot, so each ``observe()`` adds only what changed to the counters and moves the gauges
by the difference; ``end()`` takes the call's levels back out of the gauges. Fields are read
by name and a missing or non-numeric one is skipped, so the stats classes can grow.

Mapping (stats field -> metric):

=========================================  ==================================================
``RxStats.q``                              ``rxdrain_rx_queue_frames`` (gauge, summed)
``RxStats.mode == "drain"``                ``rxdrain_rx_calls_draining`` (gauge)
``RxStats.frames_in``                      ``rxdrain_rx_frames_in_total``
``RxStats.drops``                          ``rxdrain_rx_dropped_frames_total``, discarded{rx,overflow}
``RxStats.time_in_drain_s``                ``rxdrain_rx_drain_seconds_total``
``RxStats.drain_episodes``                 ``rxdrain_rx_drain_episodes_total``
``RxStats.discarded_on_cancel/_on_end``    ``rxdrain_discarded_total{stage="rx",reason="cancel"/"end"}``
``RxStats.passengers_dropped``             ``rxdrain_discarded_total{stage="rx",reason="interruption"}``
``STTStats.q``                             ``rxdrain_stt_queue_chunks`` (gauge, summed)
``STTStats.drops``                         ``rxdrain_stt_dropped_chunks_total``, discarded{stt,overflow}
``STTStats.write_ms``                      ``rxdrain_stt_write_seconds`` (one sample per observe
                                           in which ``requests_sent`` advanced)
``STTStats.reconnects_by_code`` (mapping)  ``rxdrain_stt_reconnects_total{code}`` exactly, if present;
``STTStats.reconnects`` + ``last_error``   else each new reconnect labelled with the status code that
                                           starts ``last_error`` (``NONE`` if there is none)
``STTStats.replayed_ms``                   ``rxdrain_stt_replayed_audio_seconds_total``
``STTStats.replay_overflow_ms``            ``rxdrain_stt_replay_overflow_audio_seconds_total``
``STTStats.rejected/malformed``            ``rxdrain_discarded_total{stage="stt",reason="rejected"/"malformed"}``
``STTStats.discarded_on_error``            ``rxdrain_discarded_total{stage="stt",reason="error"}``
any other int ``discarded_on_<x>`` field   ``rxdrain_discarded_total{stage,reason="<x>"}``
``ParserStats.dropped[reason]``            ``rxdrain_twilio_bad_messages_total{reason}``, discarded{twilio,reason}
``finals[i]["eos_to_final_ms"]``           ``rxdrain_eos_to_final_seconds``
=========================================  ==================================================

A counter that goes backwards (a new session object replaced the old one) is taken as a
restart from zero, as Prometheus does. Call ``observe``/``end`` from one thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .families import RxdrainMetrics

GRPC_CODE_NAMES = frozenset(
    [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ]
)

# (stats field, discard reason) read explicitly; other ``discarded_on_*`` / ``discarded_*`` fields are found by name.
_RX_DISCARDS = (
    ("drops", "overflow"),
    ("discarded_on_cancel", "cancel"),
    ("discarded_on_end", "end"),
    ("passengers_dropped", "interruption"),
)
_STT_DISCARDS = (
    ("drops", "overflow"),
    ("rejected", "rejected"),
    ("malformed", "malformed"),
    ("discarded_on_error", "error"),
)


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _number(obj: Any, name: str) -> float | None:
    value = _get(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _names(obj: Any) -> Iterable[str]:
    if isinstance(obj, Mapping):
        return [k for k in obj if isinstance(k, str)]
    if is_dataclass(obj):
        return [f.name for f in fields(obj)]
    return [n for n in vars(obj) if not n.startswith("_")] if hasattr(obj, "__dict__") else []


def _discard_fields(obj: Any, known: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    taken = {f for f, _ in known}
    extra = []
    for name in _names(obj):
        if name in taken or not name.startswith("discarded_"):
            continue
        reason = name.removeprefix("discarded_").removeprefix("on_")
        extra.append((name, reason or "other"))
    return list(known) + extra


def _label(value: Any) -> str:
    return str(getattr(value, "value", value))


class CallMetrics:
    """Feeds one call's stats snapshots into the process metrics.

    Guarantees: counters only ever grow by what the snapshots grew by (never counted twice,
    whatever the ``observe`` cadence); the gauges hold this call's last levels until
    ``end()``, which removes them and counts the call once (later calls are no-ops).
    """

    def __init__(self, metrics: RxdrainMetrics) -> None:
        self._m = metrics
        self._f = metrics.families
        self._last: dict[tuple[str, str], float] = {}  # (source, key) -> last cumulative value
        self._rx_q = 0.0
        self._rx_draining = False
        self._stt_q = 0.0
        self._finals_seen = 0
        self._ended = False
        self._f.active_calls.inc()
        self._f.calls_started.inc()

    @property
    def ended(self) -> bool:
        return self._ended

    # ------------------------------------------------------------------ helpers

    def _delta(self, source: str, key: str, value: float | None) -> float:
        """How much a cumulative counter grew since the last snapshot (a drop means a restart)."""
        if value is None:
            return 0.0
        previous = self._last.get((source, key), 0.0)
        self._last[(source, key)] = value
        return value - previous if value >= previous else value

    def _count(self, counter: Any, source: str, key: str, value: float | None, scale: float = 1.0) -> float:
        d = self._delta(source, key, value)
        if d > 0:
            counter.inc(d * scale)
        return d

    # ------------------------------------------------------------------ sources

    def _count_discards(self, s: Any, stage: str, fields: tuple[tuple[str, str], ...], dropped: Any) -> None:
        """Every discard counter of ``s`` into ``rxdrain_discarded{stage,reason}``; ``drops`` also into ``dropped``."""
        for name, reason in _discard_fields(s, fields):
            value = _number(s, name)
            if value is None:
                continue
            d = self._count(self._f.discarded.labels(stage, reason), stage, name, value)
            if name == "drops" and d > 0:
                dropped.inc(d)

    def observe(
        self,
        *,
        rx: Any = None,
        stt: Any = None,
        twilio: Any = None,
        finals: Iterable[Any] | None = None,
    ) -> None:
        """Take snapshots in: any of ``RxStats``, ``STTStats``, ``ParserStats`` (objects or their dicts),
        and the call's list of finals (dicts with ``eos_to_final_ms``, or numbers in ms)."""
        if self._ended:
            return
        if rx is not None:
            self._observe_rx(rx)
        if stt is not None:
            self._observe_stt(stt)
        if twilio is not None:
            self._observe_twilio(twilio)
        if finals is not None:
            self._observe_finals(finals)

    def _observe_rx(self, s: Any) -> None:
        f = self._f
        q = _number(s, "q")
        if q is not None:
            f.rx_queue.inc(q - self._rx_q)
            self._rx_q = q
        mode = _get(s, "mode")
        if mode is not None:
            draining = _label(mode) == "drain"
            if draining != self._rx_draining:
                f.rx_calls_draining.inc(1 if draining else -1)
                self._rx_draining = draining
        self._count(f.rx_frames_in, "rx", "frames_in", _number(s, "frames_in"))
        self._count(f.rx_drain_seconds, "rx", "time_in_drain_s", _number(s, "time_in_drain_s"))
        self._count(f.rx_drain_episodes, "rx", "drain_episodes", _number(s, "drain_episodes"))
        self._count_discards(s, "rx", _RX_DISCARDS, f.rx_dropped)

    def _observe_stt(self, s: Any) -> None:
        f = self._f
        q = _number(s, "q")
        if q is not None:
            f.stt_queue.inc(q - self._stt_q)
            self._stt_q = q
        self._count_discards(s, "stt", _STT_DISCARDS, f.stt_dropped)
        write_ms = _number(s, "write_ms")
        if self._delta("stt", "requests_sent", _number(s, "requests_sent")) > 0 and write_ms is not None:
            f.stt_write_seconds.observe(max(write_ms, 0.0) / 1000.0)
        self._count(f.stt_replayed_seconds, "stt", "replayed_ms", _number(s, "replayed_ms"), 0.001)
        self._count(f.stt_replay_overflow_seconds, "stt", "replay_overflow_ms", _number(s, "replay_overflow_ms"), 0.001)
        by_code = _get(s, "reconnects_by_code")
        if isinstance(by_code, Mapping):
            for code, n in by_code.items():
                name = getattr(code, "name", None) or str(code)
                if isinstance(n, (int, float)):
                    self._count(f.stt_reconnects.labels(name), "stt.reconnects", name, float(n))
        else:
            d = self._delta("stt", "reconnects", _number(s, "reconnects"))
            if d > 0:
                f.stt_reconnects.labels(self._code_of(_get(s, "last_error"))).inc(d)

    @staticmethod
    def _code_of(last_error: Any) -> str:
        if not last_error:
            return "NONE"
        head = str(last_error).split(":", 1)[0].strip()
        return head if head in GRPC_CODE_NAMES else "OTHER"

    def _observe_twilio(self, s: Any) -> None:
        dropped = _get(s, "dropped")
        if not isinstance(dropped, Mapping):
            return
        for reason, n in dropped.items():
            if not isinstance(n, (int, float)):
                continue
            label = _label(reason)
            d = self._count(self._f.twilio_bad_messages.labels(label), "twilio", label, float(n))
            if d > 0:
                self._f.discarded.labels("twilio", label).inc(d)

    def _observe_finals(self, finals: Iterable[Any]) -> None:
        items = list(finals)
        if len(items) < self._finals_seen:  # a new list: start over
            self._finals_seen = 0
        for item in items[self._finals_seen :]:
            ms = item.get("eos_to_final_ms") if isinstance(item, Mapping) else item
            if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms >= 0:
                self._f.eos_to_final_seconds.observe(ms / 1000.0)
        self._finals_seen = len(items)

    def observe_eos_to_final(self, seconds: float) -> None:
        """One final transcript's end-of-speech -> final latency (when not fed via ``finals``)."""
        if not self._ended and seconds >= 0:
            self._f.eos_to_final_seconds.observe(seconds)

    # ------------------------------------------------------------------ end

    def end(self, reason: str | None) -> None:
        """The call is over: count it by ``reason`` and take its levels out of the gauges."""
        if self._ended:
            return
        self._ended = True
        f = self._f
        f.rx_queue.dec(self._rx_q)
        f.stt_queue.dec(self._stt_q)
        if self._rx_draining:
            f.rx_calls_draining.dec()
        self._rx_q = self._stt_q = 0.0
        self._rx_draining = False
        f.active_calls.dec()
        f.calls_ended.labels(self._m.end_reason_label(reason)).inc()
