"""The demo's numbers, from what the caller and the emulator saw (no Pipecat import, no bot internals).

Every path is timed the same way, from outside the bot:

* *end of speech*: the caller's clock. Utterance ``k``'s last speech frame is due at
  ``audio_t0 + ends_s[k] - 20 ms``, where ``audio_t0`` is when the caller's frame 0 was due and
  ``ends_s`` come from the emulator's own segmenter run over the sample (the same reference for
  every path). A network stall delays the frames, not the caller's speech.
* *audio age*: for each 20 ms frame the emulator received, its receive time minus the time the caller
  was due to send it. With drops, frame ``i`` written is caller frame ``i + drops before it`` (both
  paths drop the oldest frame, FIFO), so ``drop_times`` (when each drop happened) keep it exact.
* *end of speech -> final*: the bot's receipt of final ``k`` minus utterance ``k``'s end.
* *end of speech -> first reply audio*: the start of the bot reply (a run of media messages carrying
  sound, gaps under ``REPLY_GAP_S``) that answered utterance ``k`` at the caller (see :func:`reply_latency`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BYTES_PER_S = 16_000  # 8 kHz PCM16 mono, what both paths send to Speech-to-Text
FRAME_BYTES = 320  # one 20 ms frame
FRAME_S = 0.02
REPLY_GAP_S = 0.6  # more silence than this between bot sound messages starts a new reply


def speech_ends(pcm16: bytes, sample_rate: int = 8000) -> list[float]:
    """Audio seconds at which each utterance of ``pcm16`` ends, by the emulator's segmenter."""
    import numpy as np

    from ..emulator.segmenter import EnergySegmenter, SegmentEventKind

    seg = EnergySegmenter(sample_rate)
    samples = np.frombuffer(pcm16 + b"\x00\x00" * sample_rate, dtype=np.int16)  # 1 s of silence closes the last one
    events = seg.feed(samples) + seg.flush()
    return [e.end_s for e in events if e.kind is SegmentEventKind.END]


@dataclass(frozen=True)
class Chunk:
    """One audio request as the emulator logged it: its byte offset in the call's audio, size, receive time."""

    offset: int
    size: int
    received_at: float


def chunks_of(streams: Iterable) -> list[Chunk]:
    """The call's audio requests in order, across streams (a later stream continues where the last ended)."""
    out: list[Chunk] = []
    base = 0
    for st in sorted(streams, key=lambda s: s.id):
        end = base
        for c in st.chunks:
            out.append(Chunk(base + c.offset, c.size, c.received_at))
            end = max(end, base + c.offset + c.size)
        base = end
    return out


def audio_ages(chunks: Sequence[Chunk], audio_t0: float, drop_times: Sequence[float] = ()) -> list[tuple[float, float]]:
    """(call time s, age s) per 20 ms frame: when the emulator got it minus when the caller sent it.

    The caller sends frame ``i`` at ``audio_t0 + i * 20 ms``, once it has been spoken (as Twilio does), so
    a frame's age is 0 if it reaches Speech-to-Text the instant the caller sends it.
    """
    drops = sorted(drop_times)
    out = []
    for c in chunks:
        dropped = bisect.bisect_right(drops, c.received_at)  # every drop before it removed an older frame
        for start in range(c.offset, c.offset + c.size, FRAME_BYTES):
            frame = start // FRAME_BYTES + dropped
            sent_s = frame * FRAME_S
            out.append((sent_s, c.received_at - (audio_t0 + sent_s)))
    return out


def end_of_speech(ends_s: Sequence[float], audio_t0: float) -> list[float]:
    """The caller's send time of each utterance's last speech frame (its end of speech on the wire)."""
    return [audio_t0 + max(0.0, e - FRAME_S) for e in ends_s]


def burst_starts(times: Sequence[float], gap_s: float = REPLY_GAP_S) -> list[float]:
    """The first of each run of ``times`` with no gap longer than ``gap_s``: when each reply began."""
    out: list[float] = []
    last = -math.inf
    for t in sorted(times):
        if t - last > gap_s:
            out.append(t)
        last = t
    return out


def reply_latency(
    sound_times: Sequence[float], ends_s: Sequence[float], audio_t0: float, final_times: Sequence[float]
) -> list[float | None]:
    """Per utterance: its end of speech -> the start of the bot reply that answered it (None: unanswered).

    A reply (a burst of bot sound at the caller) answers utterance ``k`` if it starts after both the
    utterance's end and the bot's receipt of final ``k`` (a reply cannot answer words not yet
    transcribed), and before final ``k + 1`` (after that it may answer the next one). Each reply
    answers at most one utterance.
    """
    starts = burst_starts(sound_times)
    eos = end_of_speech(ends_s, audio_t0)
    finals = sorted(final_times)
    out: list[float | None] = []
    j = 0
    for k, t in enumerate(eos):
        after = max(t, finals[k]) if k < len(finals) else math.inf
        before = finals[k + 1] if k + 1 < len(finals) else math.inf
        j = bisect.bisect_right(starts, after, lo=j)
        if j < len(starts) and starts[j] < before:
            out.append(starts[j] - t)
            j += 1
        else:
            out.append(None)
    return out


def finals_latency(final_times: Sequence[float], ends_s: Sequence[float], audio_t0: float) -> list[float]:
    """Final ``k`` (in arrival order) minus utterance ``k``'s end, for as many as both have."""
    return [f - t for f, t in zip(sorted(final_times), end_of_speech(ends_s, audio_t0), strict=False)]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence; NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]
