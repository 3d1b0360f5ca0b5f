"""RX and STT numbers as Pipecat metrics: ``MetricsData`` models for a ``MetricsFrame``.

With ``PIPELINE_METRICS=true`` (``ServerConfig.pipeline_metrics``) every call queues one
``MetricsFrame`` a second carrying an :class:`RxMetricsData` and an :class:`STTMetricsData`;
it flows down the pipeline like Pipecat's own TTFB/processing metrics, so observers
(``BaseObserver.on_push_frame``) and OpenTelemetry tracing built on them see the RX queue
and the STT session. The same flag turns on Pipecat's own metrics (``enable_metrics``).
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import MetricsFrame
from pipecat.metrics.metrics import MetricsData

from .deprecation import STT_RENAMES, renamed_attributes


class RxMetricsData(MetricsData):
    """An RX back-pressure snapshot (the ``[RX]`` telemetry line's fields and the call's totals)."""

    mode: str
    q: int
    drops: int
    peak_q: int
    frames_in: int
    drain_episodes: int
    time_in_drain_s: float
    write_ms: float


class STTMetricsData(MetricsData):
    """An STT session snapshot (the ``[STT]`` telemetry line's fields and the session's totals)."""

    state: str
    q: int
    drops: int
    write_ms: float
    reconnects: int


def _value(obj: Any, name: str, default: Any = 0) -> Any:
    value = getattr(obj, name, default)
    return getattr(value, "value", value) if value is not None else default


def rx_metrics_data(processor: str, stats: Any) -> RxMetricsData:
    return RxMetricsData(
        processor=processor,
        mode=str(_value(stats, "mode", "")),
        q=int(_value(stats, "q")),
        drops=int(_value(stats, "drops")),
        peak_q=int(_value(stats, "peak_q")),
        frames_in=int(_value(stats, "frames_in")),
        drain_episodes=int(_value(stats, "drain_episodes")),
        time_in_drain_s=float(_value(stats, "time_in_drain_s", 0.0)),
        write_ms=float(_value(stats, "write_ms", 0.0)),
    )


def stt_metrics_data(processor: str, stats: Any) -> STTMetricsData:
    return STTMetricsData(
        processor=processor,
        state=str(_value(stats, "state", "")),
        q=int(_value(stats, "q")),
        drops=int(_value(stats, "drops")),
        write_ms=float(_value(stats, "write_ms", 0.0) or _value(stats, "write_ms_mean", 0.0)),
        reconnects=int(_value(stats, "reconnects")),
    )


def metrics_frame(*, rx: tuple[str, Any] | None = None, stt: tuple[str, Any] | None = None) -> MetricsFrame | None:
    """A ``MetricsFrame`` from ``(processor name, stats)`` pairs; ``None`` when there is nothing to report."""
    data: list[MetricsData] = []
    if rx is not None and rx[1] is not None:
        data.append(rx_metrics_data(*rx))
    if stt is not None and stt[1] is not None:
        data.append(stt_metrics_data(*stt))
    return MetricsFrame(data=data) if data else None


__getattr__ = renamed_attributes(__name__, globals(), STT_RENAMES)  # 0.1.0 names (Stt...)
