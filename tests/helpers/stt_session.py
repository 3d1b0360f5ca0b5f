"""Shared helpers for the STT tests: an emulator-backed session, an audio feeder, audio as Pipecat frames."""

from __future__ import annotations

import threading
import time
import uuid

from pipecat.frames.frames import InputAudioRawFrame
from pipecat.tests.utils import SleepFrame

from pipecat_rxdrain.google_clients import SESSION_METADATA_KEY, emulator_client
from pipecat_rxdrain.stt.backoff import Backoff
from pipecat_rxdrain.stt.recognition_config import build_v1_spec, build_v2_spec, recognizer_path
from pipecat_rxdrain.stt.session import StreamingSTTSession

CHUNK = 320  # 20 ms of 8 kHz PCM16


def spec_for(api: str = "v2", sample_rate: int = 8000, languages=("en-US",)):
    if api == "v2":
        return build_v2_spec(
            sample_rate=sample_rate,
            recognizer=recognizer_path("rxdrain-test", "global"),
            language_codes=list(languages),
            model="latest_long",
        )
    return build_v1_spec(sample_rate=sample_rate, language_codes=list(languages), model="phone_call")


def make_session(emu, *, api="v2", **kw) -> StreamingSTTSession:
    # These tests push audio faster than real time: without this the lead bound would pace them.
    kw.setdefault("max_lead_ms", None)
    kw.setdefault("backoff", Backoff(initial_s=0.05, max_s=0.2, rng=lambda: 0.5))
    kw.setdefault("metadata", [(SESSION_METADATA_KEY, str(uuid.uuid4()))])
    spec = kw.pop("spec", None) or spec_for(api)
    kw.setdefault("probe_factory", lambda: emulator_client(emu.address, api=api, asynchronous=False))
    return StreamingSTTSession(spec, lambda: emulator_client(emu.address, api=api, asynchronous=True), **kw).start()


def feed(session, pcm: bytes, *, speed: float = 4.0, chunk: int = CHUNK, on_push=None) -> list[float]:
    """Push ``pcm`` in 20 ms chunks at ``speed`` x real time; returns each push's duration (s)."""
    period = chunk / 16000.0 / speed
    durations = []
    next_t = time.perf_counter()
    for i in range(0, len(pcm), chunk):
        t0 = time.perf_counter()
        session.push_audio(pcm[i : i + chunk])
        durations.append(time.perf_counter() - t0)
        if on_push:
            on_push(session)
        next_t += period
        delay = next_t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return durations


def drain_results(session):
    out = []
    while not session.results.empty():
        out.append(session.results.get())
    return out


def final_texts(results):
    return [r.text for r in results if r.is_final]


def stt_threads():
    return [t for t in threading.enumerate() if t.name.startswith("rxdrain-stt")]


def audio_frames(pcm: bytes, *, rate: int = 8000, channels: int = 1, ms: int = 20, sleep_every: int = 0) -> list:
    """``pcm`` as ``ms`` ms InputAudioRawFrames; a 10 ms SleepFrame after every ``sleep_every`` of them (0: none)."""
    size = rate * 2 * channels * ms // 1000
    frames = []
    for n, i in enumerate(range(0, len(pcm), size)):
        frames.append(InputAudioRawFrame(audio=pcm[i : i + size], sample_rate=rate, num_channels=channels))
        if sleep_every and n % sleep_every == sleep_every - 1:
            frames.append(SleepFrame(sleep=0.01))
    return frames
