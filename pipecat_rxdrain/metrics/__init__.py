"""Prometheus metrics for the bot: ``rxdrain_*`` families, a per-call recorder, a ``/metrics`` endpoint.

    metrics = process_metrics()                      # one per process (multiprocess-mode aware)
    app.add_route("/metrics", MetricsEndpoint(metrics.registry, token), methods=["GET", "HEAD"])
    call = metrics.start_call()                      # per call
    call.observe(rx=rx.stats, stt=session.stats, twilio=serializer.stats, finals=record.finals)
    call.end(record.end_reason)

No Pipecat import in this package.
"""

from .endpoint import TOKEN_ENV, MetricsEndpoint
from .families import (
    MULTIPROC_ENV,
    MetricsConfigError,
    RxdrainMetrics,
    build_registry,
    mark_process_dead,
    multiprocess_dir,
    process_metrics,
)
from .recorder import CallMetrics

__all__ = [
    "MULTIPROC_ENV",
    "TOKEN_ENV",
    "CallMetrics",
    "MetricsConfigError",
    "MetricsEndpoint",
    "RxdrainMetrics",
    "build_registry",
    "mark_process_dead",
    "multiprocess_dir",
    "process_metrics",
]
