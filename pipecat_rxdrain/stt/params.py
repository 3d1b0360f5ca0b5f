"""The STT session's settings in one frozen, validated object (service -> session -> bot config)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..deprecation import STT_RENAMES, renamed_attributes
from ..units import FRAME_UNIT_MS  # the unit of ``max_queue``


@dataclass(frozen=True)
class STTSessionParams:
    """How a :class:`~pipecat_rxdrain.stt.session.StreamingSTTSession` queues, batches, rotates and recovers.

    Guarantees: every instance is valid (``__post_init__`` raises ``ValueError``
    naming the first bad setting), so bad configuration fails at construction,
    never mid-call. Defaults are the field-tuned production values and are
    written only here.

    Units: ``max_queue`` is audio time in 20 ms-frame equivalents (200 = 4 s),
    whatever the chunk size the pipeline hands over.
    """

    max_queue: int = 200  # audio held while gRPC is slow, in 20 ms frames; drop-oldest beyond
    batch_ms: float = 60.0  # most audio per request while the writer is busy (idle: sent at once; a backlog
    # over half of max_queue goes in requests up to Google's 25 KB while the stream is behind its wall clock)
    stream_limit_s: float = 240.0  # rotate after this (Google cuts at 305 s)
    rotate_grace_s: float = 30.0  # ... at the latest this much later if an utterance is open
    config_change_grace_s: float = 3.0  # a config change rotates within this
    max_replay_ms: float = 30_000.0  # unfinalized audio kept for replay into a new stream
    max_consecutive_failures: int = 12  # 0: retry forever
    close_timeout_s: float = 3.0  # bound on flushing queued audio at close
    drain_timeout_s: float = 2.0  # bound on waiting for the last results after a half-close
    # A single gRPC write blocked this long cancels the stream; the new one replays only
    # unfinalized audio younger than this. None: the queue's audio time (max_queue x 20 ms).
    write_stall_s: float | None = None
    # Most audio a stream may be ahead of its own wall clock (replay is paced beyond it);
    # Google: audio "must be sent at a rate that approximates real time". None: unbounded.
    max_lead_ms: float | None = 5_000.0
    # How fast the caller produces audio relative to the wall clock: 1.0 on a call. Only tests
    # and benchmarks that push audio faster than real time set it (the lead is then measured
    # against wall time x this factor).
    realtime_factor: float = 1.0
    telemetry_interval_s: float | None = 1.0  # the "[STT] q= drops= write_ms=" line; None: off
    drop_warning_interval_s: float = 10.0  # at most one drop-storm WARNING per this

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        need(isinstance(self.max_queue, int) and self.max_queue >= 1, "max_queue", ">= 1 (20 ms frames of audio)")
        need(self.batch_ms > 0, "batch_ms", "> 0")
        need(self.stream_limit_s > 0, "stream_limit_s", "> 0")
        need(self.rotate_grace_s >= 0, "rotate_grace_s", ">= 0")
        need(self.config_change_grace_s >= 0, "config_change_grace_s", ">= 0")
        need(self.max_replay_ms >= 0, "max_replay_ms", ">= 0")
        need(
            isinstance(self.max_consecutive_failures, int) and self.max_consecutive_failures >= 0,
            "max_consecutive_failures",
            ">= 0 (0: retry forever)",
        )
        need(self.close_timeout_s >= 0, "close_timeout_s", ">= 0")
        need(self.drain_timeout_s >= 0, "drain_timeout_s", ">= 0")
        need(self.write_stall_s is None or self.write_stall_s > 0, "write_stall_s", "> 0 or None")
        need(self.max_lead_ms is None or self.max_lead_ms > 0, "max_lead_ms", "> 0 or None")
        need(
            self.telemetry_interval_s is None or self.telemetry_interval_s >= 0,
            "telemetry_interval_s",
            ">= 0 or None",
        )
        need(self.realtime_factor > 0, "realtime_factor", "> 0")
        need(self.drop_warning_interval_s > 0, "drop_warning_interval_s", "> 0")

    @property
    def queue_audio_ms(self) -> float:
        return self.max_queue * FRAME_UNIT_MS

    @property
    def stall_bound_s(self) -> float:
        """The write-stall watchdog's bound (also the age bound of audio replayed after it fires)."""
        return self.write_stall_s if self.write_stall_s is not None else self.queue_audio_ms / 1000.0

    @property
    def telemetry_enabled(self) -> bool:
        return bool(self.telemetry_interval_s)

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def build(cls, base: STTSessionParams | None = None, **overrides: Any) -> STTSessionParams:
        """``base`` (default: the defaults) with ``overrides`` applied (validated); unknown names are a ``TypeError``."""
        unknown = set(overrides) - cls.names()
        if unknown:
            raise TypeError(f"unknown STT session setting(s): {', '.join(sorted(unknown))}")
        base = base or cls()
        return replace(base, **overrides)


def check_session_params(**settings: Any) -> None:
    """Raise ``ValueError`` naming the first bad session setting (kept for callers of the old helper)."""
    STTSessionParams.build(**settings)


__getattr__ = renamed_attributes(__name__, globals(), STT_RENAMES)  # 0.1.0 names (Stt...)
