"""The Prometheus metric families of one bot process, and the registry that exposes them.

prometheus-client decides once, when it is first imported, whether the process keeps its
values in memory or in files under ``PROMETHEUS_MULTIPROC_DIR`` (one file set per process,
so several worker processes can be scraped as one). :func:`build_registry` follows that
decision: in multiprocess mode it returns a registry whose only collector reads every
worker's files; otherwise a plain registry the families are registered in.

No Pipecat import here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import values as pc_values  # public module: ValueClass is the process's storage
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "rxdrain"

#: ``rxdrain_stt_write_seconds``: a gRPC request write normally takes well under 5 ms;
#: a stalled network shows up in the 0.1-1 s buckets.
STT_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: ``rxdrain_eos_to_final_seconds``: end of speech to the final transcript; ~0.3-0.6 s is healthy.
EOS_TO_FINAL_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class MetricsConfigError(ValueError):
    """A metrics setting is wrong (the message names the setting, never a secret)."""


def multiprocess_dir(env: Mapping[str, str] | None = None) -> str | None:
    """The directory this process writes its metric files to, or ``None`` (single-process mode).

    Raises :class:`MetricsConfigError` if ``PROMETHEUS_MULTIPROC_DIR`` is set but is not a
    writable directory, or was set after prometheus-client was imported (the values would
    silently stay in memory and no other process would see them).
    """
    source: Mapping[str, str] = os.environ if env is None else env
    path = source.get(MULTIPROC_ENV) or None
    in_files = pc_values.ValueClass is not pc_values.MutexValue
    if path is None:
        if in_files:
            raise MetricsConfigError(f"{MULTIPROC_ENV} was unset after prometheus-client chose multiprocess mode")
        return None
    if not os.path.isdir(path) or not os.access(path, os.W_OK):
        raise MetricsConfigError(f"{MULTIPROC_ENV} must be an existing writable directory, got {path!r}")
    if not in_files:
        raise MetricsConfigError(
            f"{MULTIPROC_ENV} must be set before the process starts (prometheus-client was imported without it)"
        )
    return path


def build_registry(path: str | None = None) -> CollectorRegistry:
    """The registry to expose on ``/metrics``.

    With ``path`` (a ``PROMETHEUS_MULTIPROC_DIR``): a fresh registry whose collector reads
    the files of every process writing there, live or dead (see :func:`mark_process_dead`).
    Without: an empty registry for :class:`RxdrainMetrics` to register its families in.
    """
    registry = CollectorRegistry(auto_describe=True)
    if path is not None:
        MultiProcessCollector(registry, path=path)
    return registry


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Forget a dead worker's live gauges (active calls, queues); its counters are kept.

    Call it from the process manager when a worker exits (gunicorn's ``child_exit`` hook);
    without it a crashed worker's calls stay counted as active until the directory is wiped.
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path or multiprocess_dir())


@dataclass(frozen=True)
class _Families:
    active_calls: Gauge
    calls_started: Counter
    calls_ended: Counter
    rx_queue: Gauge
    rx_calls_draining: Gauge
    rx_frames_in: Counter
    rx_dropped: Counter
    rx_drain_seconds: Counter
    rx_drain_episodes: Counter
    stt_queue: Gauge
    stt_dropped: Counter
    stt_write_seconds: Histogram
    stt_reconnects: Counter
    stt_replayed_seconds: Counter
    stt_replay_overflow_seconds: Counter
    eos_to_final_seconds: Histogram
    twilio_bad_messages: Counter
    discarded: Counter


class RxdrainMetrics:
    """All ``rxdrain_*`` metric families of this process, and :attr:`registry` to expose them.

    Create one per process (in multiprocess mode two instances would overwrite each
    other's files; :func:`process_metrics` keeps one). ``start_call()`` gives the per-call
    recorder. Gauges are sums over the process's active calls (``livesum`` across workers).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, env: Mapping[str, str] | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir(env)
        if self.multiprocess_dir is not None:
            if registry is not None:
                raise MetricsConfigError(f"a registry cannot be given in multiprocess mode ({MULTIPROC_ENV} is set)")
            self.registry = build_registry(self.multiprocess_dir)
            into = None  # values go to this process's files; the registry reads all of them
        else:
            self.registry = registry if registry is not None else build_registry()
            into = self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=into)

        def live_gauge(name: str, doc: str) -> Gauge:  # summed over the live workers' calls
            return Gauge(f"{PREFIX}_{name}", doc, registry=into, multiprocess_mode="livesum")

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, registry=into, buckets=buckets)

        self.families = _Families(
            active_calls=live_gauge("active_calls", "Calls in progress."),
            calls_started=counter("calls_started", "Calls that reached the pipeline."),
            calls_ended=counter("calls_ended", "Calls ended, by end reason.", "reason"),
            rx_queue=live_gauge("rx_queue_frames", "RX frames queued, summed over active calls."),
            rx_calls_draining=live_gauge("rx_calls_draining", "Active calls whose RX queue is in drain mode."),
            rx_frames_in=counter("rx_frames_in", "Caller audio frames offered to the RX queue."),
            rx_dropped=counter("rx_dropped_frames", "RX frames dropped (queue full while draining)."),
            rx_drain_seconds=counter("rx_drain_seconds", "Time RX queues spent in drain mode."),
            rx_drain_episodes=counter("rx_drain_episodes", "Times an RX queue entered drain mode."),
            stt_queue=live_gauge("stt_queue_chunks", "STT audio chunks queued, summed over active calls."),
            stt_dropped=counter("stt_dropped_chunks", "STT audio chunks dropped (queue full, oldest first)."),
            stt_write_seconds=histogram(
                "stt_write_seconds",
                "Mean gRPC request write time of each STT telemetry window, sampled per observation.",
                STT_WRITE_BUCKETS,
            ),
            stt_reconnects=counter("stt_reconnects", "STT stream reconnects, by gRPC status code.", "code"),
            stt_replayed_seconds=counter(
                "stt_replayed_audio_seconds", "Audio replayed to a new STT stream after a reconnect."
            ),
            stt_replay_overflow_seconds=counter(
                "stt_replay_overflow_audio_seconds", "Unfinalized audio too long to replay (lost to STT)."
            ),
            eos_to_final_seconds=histogram(
                "eos_to_final_seconds", "End of speech to final transcript.", EOS_TO_FINAL_BUCKETS
            ),
            twilio_bad_messages=counter(
                "twilio_bad_messages", "Twilio websocket messages dropped, by reason.", "reason"
            ),
            discarded=counter(
                "discarded",
                "Everything discarded anywhere (frames, chunks or messages), by stage and reason.",
                "stage",
                "reason",
            ),
        )
        self._end_reasons: set[str] = set()
        self._lock = threading.Lock()

    def start_call(self):
        """A :class:`~pipecat_rxdrain.metrics.recorder.CallMetrics` for a call that just started."""
        from .recorder import CallMetrics

        return CallMetrics(self)

    #: Distinct end-reason labels per process; more are reported as ``other``.
    MAX_END_REASONS = 32

    def end_reason_label(self, reason: str | None) -> str:
        """A bounded label for a free-text end reason (``"caller disconnected"`` -> ``caller_disconnected``)."""
        raw = (getattr(reason, "value", reason) or "").strip().lower()
        slug = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(raw)).strip("_")
        while "__" in slug:
            slug = slug.replace("__", "_")
        slug = slug[:48] or "unknown"
        with self._lock:
            if slug in self._end_reasons:
                return slug
            if len(self._end_reasons) >= self.MAX_END_REASONS:
                return "other"
            self._end_reasons.add(slug)
            return slug


_process_metrics: tuple[int, RxdrainMetrics] | None = None
_process_lock = threading.Lock()


def process_metrics() -> RxdrainMetrics:
    """This process's one :class:`RxdrainMetrics` (made on first use; a forked child makes its own)."""
    global _process_metrics
    with _process_lock:
        if _process_metrics is None or _process_metrics[0] != os.getpid():
            _process_metrics = (os.getpid(), RxdrainMetrics())
        return _process_metrics[1]
