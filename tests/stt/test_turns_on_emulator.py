"""Turn timing never loses words: the real emulator answers late, the early final must not cost text.

Each run feeds a scripted sample through ``GoogleSTTService`` at real time
with the VAD frames a Silero VAD would send (``stop_secs`` after each
segment's last speech frame), against the emulator with its latency fault
armed. Every scripted word must reach the TranscriptionFrames, in order,
exactly once.

Run as a script to print words lost and end-of-speech -> complete-transcript
latency per latency fault (the numbers in the README's "Turn timing")::

    .venv/bin/python -m tests.stt.test_turns_on_emulator [sample] [latency ...]
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.tests.utils import SleepFrame, run_test

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.emulator.segmenter import EnergySegmenter
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.stt.service import GoogleSTTService
from tests.helpers.stt_session import CHUNK, stt_threads

STOP_SECS = 0.2  # Pipecat's VAD_STOP_SECS: the VAD reports the stop this long after speech ends
START_SECS = 0.2
PACE_FRAMES = 5  # sleep after every 5 frames (100 ms) to feed at real time


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[\w']+", text)]


@dataclass
class CallResult:
    expected: list[list[str]]  # words per scripted segment
    delivered: list[str]  # the TranscriptionFrame texts, in order
    # per segment: seconds from the end of speech until the TranscriptionFrames held all its words (None: never)
    complete_after_s: list[float | None] = field(default_factory=list)
    # per segment: seconds from the end of speech until its first TranscriptionFrame (complete or not)
    first_final_after_s: list[float | None] = field(default_factory=list)
    early_finals: int = 0
    catch_ups: int = 0
    held: int = 0

    @property
    def expected_words(self) -> int:
        return sum(len(s) for s in self.expected)

    @property
    def delivered_words(self) -> list[str]:
        return [w for t in self.delivered for w in _words(t)]

    @property
    def words_lost(self) -> int:
        """Expected words missing from the delivered word stream (longest common subsequence)."""
        a = [w for s in self.expected for w in s]
        b = self.delivered_words
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0] * (len(b) + 1)
            for j, y in enumerate(b):
                cur[j + 1] = prev[j] + 1 if x == y else max(prev[j + 1], cur[j])
            prev = cur
        return len(a) - prev[-1]


class _Recorder(BaseObserver):
    """Wall time of every TranscriptionFrame and VAD stop the STT service pushes."""

    def __init__(self, svc):
        super().__init__()
        self._svc = svc
        self.finals: list[tuple[float, str]] = []
        self.stops: list[float] = []

    async def on_push_frame(self, data: FramePushed):
        if data.source is not self._svc:
            return
        if isinstance(data.frame, TranscriptionFrame):
            self.finals.append((time.monotonic(), data.frame.text))
        elif isinstance(data.frame, VADUserStoppedSpeakingFrame):
            self.stops.append(time.monotonic() - data.frame.stop_secs)


def _segments(pcm: bytes) -> list[tuple[float, float]]:
    seg = EnergySegmenter(8000)
    events = seg.feed(np.frombuffer(pcm, dtype="<i2")) + seg.flush()
    return [(e.start_s, e.end_s) for e in events if e.kind == "end"]


def _frames(pcm: bytes, segments, tail_s: float) -> list[Frame]:
    """Audio in 20 ms frames at real time, with VAD start/stop frames where a VAD would send them."""
    marks: dict[int, list[Frame]] = {}
    for start, end in segments:
        marks.setdefault(int((start + START_SECS) / 0.02), []).append(VADUserStartedSpeakingFrame(start_secs=START_SECS))
        marks.setdefault(int((end + STOP_SECS) / 0.02), []).append(VADUserStoppedSpeakingFrame(stop_secs=STOP_SECS))
    frames: list[Frame] = []
    for n, i in enumerate(range(0, len(pcm), CHUNK)):
        frames.append(InputAudioRawFrame(audio=pcm[i : i + CHUNK], sample_rate=8000, num_channels=1))
        frames += marks.get(n, [])
        if n % PACE_FRAMES == PACE_FRAMES - 1:
            frames.append(SleepFrame(sleep=0.02 * PACE_FRAMES))
    frames.append(SleepFrame(sleep=tail_s))
    return frames


async def run_call(sample: str, latency_s: float, **svc_kw) -> CallResult:
    s = load_sample(sample)
    segments = _segments(s.pcm16)
    assert len(segments) == len(s.segments)
    with SpeechEmulator(script=list(s.segments)) as emu:
        emu.faults.latency(latency_s)
        svc_kw.setdefault("max_queue", 1000)
        svc = GoogleSTTService(endpoint=emu.address, **svc_kw)
        rec = _Recorder(svc)
        await run_test(svc, frames_to_send=_frames(s.pcm16, segments, latency_s + 1.5), observers=[rec])
    expected = [_words(t) for t in s.segments]
    result = CallResult(expected=expected, delivered=[t for _, t in rec.finals])
    result.early_finals = svc._turns.counters.early_finals
    result.catch_ups = getattr(svc._turns.counters, "catch_up_finals", 0)
    result.held = getattr(svc._turns.counters, "early_finals_held", 0)
    # When did the delivered words first contain each segment (as a subsequence, in order)?
    for k, stop_at in enumerate(rec.stops[: len(expected)]):
        want = [w for seg in expected[: k + 1] for w in seg]
        got: list[str] = []
        done = None
        for t, text in rec.finals:
            got += _words(text)
            if _is_subsequence(want, got):
                done = t - stop_at
                break
        result.complete_after_s.append(done)
        nxt = rec.stops[k + 1] if k + 1 < len(rec.stops) else float("inf")
        first = [t for t, _ in rec.finals if stop_at < t < nxt]
        result.first_final_after_s.append(first[0] - stop_at if first else None)
    return result


def _is_subsequence(want: list[str], got: list[str]) -> bool:
    it = iter(got)
    return all(w in it for w in want)


@pytest.mark.parametrize("latency_s", [0.3, 0.6, 1.0])
async def test_every_scripted_word_reaches_the_transcription_frames(latency_s):
    # Bot defaults: debounce 110, final timeout 320 after a 180 ms hangover.
    r = await run_call("hello_en", latency_s)
    assert r.early_finals + r.held >= 1, "the latency fault did not reach the early-final path"
    assert r.words_lost == 0, (r.delivered, r.expected)
    # Exactly once: no word delivered twice either.
    assert len(r.delivered_words) == r.expected_words, r.delivered
    assert stt_threads() == []


def _report(sample: str, latencies: list[float]) -> None:
    print(f"sample={sample}  (bot defaults: debounce_ms=110 final_timeout_ms=320 vad_hangover_ms=180)")
    for lat in latencies:
        for label, kw in (("defaults", {}), ("final_timeout_ms=0", {"final_timeout_ms": 0})):
            r = asyncio.run(run_call(sample, lat, **kw))
            times = [f"{t:.2f}" if t is not None else "never" for t in r.complete_after_s]
            firsts = [f"{t:.2f}" if t is not None else "-" for t in r.first_final_after_s]
            print(
                f"latency={lat:.1f}s {label:20s} lost={r.words_lost}/{r.expected_words} "
                f"delivered={len(r.delivered_words)} early_finals={r.early_finals} catch_ups={r.catch_ups} held={r.held} "
                f"end-of-speech->first final s: {' '.join(firsts)} | ->complete s: {' '.join(times)}"
            )


if __name__ == "__main__":
    args = sys.argv[1:]
    sample = args[0] if args and not args[0][0].isdigit() else "call_en"
    lats = [float(a) for a in args if a[0].isdigit()] or [0.0, 0.3, 0.6, 1.0]
    _report(sample, lats)
