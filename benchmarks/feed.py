"""What the benchmark's callers send: the looped sample audio and one ``CallerOptions`` per call.

Shared by the harness (which needs each caller's send schedule) and :mod:`benchmarks.caller_proc`
(which sends); neither imports the other.
"""

from __future__ import annotations

FRAME_S = 0.02
TAIL_SILENCE_S = 1.0


def loop_frames(audio_s: float) -> list[bytes]:
    """``audio_s`` seconds of the bundled ``call_en`` sample, looped, as 160-byte Twilio mu-law frames."""
    from pipecat_rxdrain.samples import sample_path
    from pipecat_rxdrain.twilio.audio import wav_to_twilio_frames

    base = wav_to_twilio_frames(sample_path("call_en"))
    n = int(round(audio_s / FRAME_S))
    return [base[i % len(base)] for i in range(n)]


def caller_options(spec: dict, frames: list[bytes]) -> list:
    """One :class:`~pipecat_rxdrain.twilio.caller.CallerOptions` per call id of ``spec`` (a JSON-able dict)."""
    from pipecat_rxdrain.twilio.caller import CallerOptions

    out = []
    for i, call_id in enumerate(spec["call_ids"]):
        out.append(
            CallerOptions(
                url=spec["url"],
                frames=frames,
                custom_parameters={"call": call_id, "pipeline": spec["pipeline"]},
                stall_at_s=spec["stall_at_s"],
                stall_s=spec["stall_s"],
                bunch=spec["bunch"],
                jitter_ms=spec.get("jitter_ms", 0.0),
                tail_silence_s=TAIL_SILENCE_S,
                linger_s=spec.get("linger_s", 0.2),
                connect_timeout_s=30.0,
                seed=i,
            )
        )
    return out
