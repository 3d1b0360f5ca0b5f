"""Bad input into the STT session and service: bad audio, bad configuration, bad credentials.

Every bad input gets a counted drop, a conversion, or a clear error at
construction; the call goes on and nothing malformed reaches Google (the
emulator, over real loopback sockets, records every byte it receives).
(Bad audio into RxDrainProcessor: tests/rx/test_processor.py.)
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame, TranscriptionFrame
from pipecat.tests.utils import run_test

from pipecat_rxdrain.google_clients import EMULATOR_ENV
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.stt import service as service_module
from pipecat_rxdrain.stt.recognition_config import StreamSpec
from pipecat_rxdrain.stt.service import GoogleSTTService
from pipecat_rxdrain.stt.session import StreamingSTTSession
from tests.helpers.stt_session import CHUNK, audio_frames, drain_results, make_session, spec_for, stt_threads

HELLO = load_sample("hello_en")


# -- StreamingSTTSession: odd-length and empty chunks --------------------------------------------


def test_odd_length_chunks_are_refused_counted_and_never_reach_google(emu):
    s = make_session(emu, max_queue=2000, telemetry_interval_s=None)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        good = 0
        for n, i in enumerate(range(0, len(HELLO.pcm16), CHUNK)):
            if n % 7 == 3:
                assert s.push_audio(b"\x01" * 161) is False  # half a sample too many
                assert s.push_audio(b"\x02") is False
            assert s.push_audio(b"") is True  # empty: a no-op, nothing counted
            assert s.push_audio(HELLO.pcm16[i : i + CHUNK]) is True
            good += 1
            if n % 40 == 0:
                time.sleep(0.005)
        assert s.close(5)
    finally:
        logger.remove(sink)
    st = s.stats
    bad = 2 * sum(1 for n in range(good) if n % 7 == 3)
    assert st.malformed == bad and st.pushed_chunks == good and st.drops == 0
    # Only whole, in-order samples went out: the emulator got exactly the good audio, and recognized it.
    assert [r.text for r in drain_results(s) if r.is_final] == list(HELLO.segments)
    assert sum(r.audio_bytes for r in emu.streams) == len(HELLO.pcm16)
    assert all(c.size % 2 == 0 for r in emu.streams for c in r.chunks)
    # Said once, clearly, not once per chunk.
    refused = [ln for ln in lines if "not a whole number" in ln]
    assert len(refused) == 1 and "stats.malformed" in refused[0]
    assert stt_threads() == []


def test_only_empty_audio_never_opens_a_stream(emu):
    s = make_session(emu, telemetry_interval_s=None)
    for _ in range(50):
        assert s.push_audio(b"")
    time.sleep(0.3)
    assert emu.stream_count == 0 and s.stats.pushed_chunks == 0
    assert s.close(2)


def test_audio_after_close_is_rejected_and_counted(emu):
    s = make_session(emu, telemetry_interval_s=None)
    assert s.push_audio(HELLO.pcm16[:CHUNK])
    assert s.close(3)
    assert [s.push_audio(HELLO.pcm16[:CHUNK]) for _ in range(3)] == [False] * 3
    assert s.stats.rejected == 3
    assert stt_threads() == []


# -- GoogleSTTService: formats through a real pipeline ----------------------------------------------


def upsample_16k(pcm: bytes) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    t = np.arange(len(x) * 2) / 2.0
    return np.interp(t, np.arange(len(x)), x).round().astype("<i2").tobytes()


def stereo(pcm: bytes) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2")
    return np.stack([x, x // 2], axis=1).astype("<i2").tobytes()


async def run_service(svc: GoogleSTTService, frames) -> list[str]:
    down, up = await run_test(svc, frames_to_send=frames)
    return [f.text for f in down if isinstance(f, TranscriptionFrame)]


@pytest.mark.parametrize(
    "make_frames, kind",
    [
        (lambda: audio_frames(upsample_16k(HELLO.pcm16), rate=16000, sleep_every=20), "16 kHz into an 8 kHz service"),
        (lambda: audio_frames(stereo(HELLO.pcm16), channels=2, sleep_every=20), "stereo into a mono service"),
    ],
)
async def test_other_rates_and_channel_counts_are_converted_not_sent_raw(emu, make_frames, kind):
    svc = GoogleSTTService(sample_rate=8000, max_queue=1000, debounce_ms=None, final_timeout_ms=None)
    texts = await run_service(svc, make_frames())
    assert texts == list(HELLO.segments), kind
    assert svc.audio_converted > 0 and svc.audio_malformed == 0
    # Google got 8 kHz mono: about the sample's own size (the resampler's filter holds back a few ms).
    received = sum(r.audio_bytes for r in emu.streams)
    assert abs(received - len(HELLO.pcm16)) <= 8000 * 2 * 0.1, (received, len(HELLO.pcm16))
    assert stt_threads() == []


async def test_empty_and_malformed_frames_are_counted_and_the_call_goes_on(emu):
    svc = GoogleSTTService(sample_rate=8000, max_queue=1000, debounce_ms=None, final_timeout_ms=None)
    frames = []
    bad = empty = 0
    for n, f in enumerate(audio_frames(HELLO.pcm16, sleep_every=20)):
        if isinstance(f, InputAudioRawFrame) and n % 9 == 4:
            frames.append(InputAudioRawFrame(audio=b"", sample_rate=8000, num_channels=1))
            frames.append(InputAudioRawFrame(audio=b"\x07" * 159, sample_rate=8000, num_channels=1))
            frames.append(InputAudioRawFrame(audio=b"\x07" * 318, sample_rate=8000, num_channels=4))
            empty += 1
            bad += 2
        frames.append(f)
    texts = await run_service(svc, frames)
    assert texts == list(HELLO.segments)
    assert svc.audio_empty == empty and svc.audio_malformed == bad and svc.audio_converted == 0
    assert sum(r.audio_bytes for r in emu.streams) == len(HELLO.pcm16)
    assert all(c.size % 2 == 0 for r in emu.streams for c in r.chunks)


async def test_audio_after_end_frame_is_counted_not_sent(emu):
    svc = GoogleSTTService(max_queue=1000)
    await run_service(svc, audio_frames(HELLO.pcm16[: 8000 * 2], sleep_every=20))
    before = sum(r.audio_bytes for r in emu.streams)
    # The pipeline is over; a late frame reaching the service is counted, never sent.
    async for _ in svc.run_stt(HELLO.pcm16[:CHUNK]):
        pass
    assert svc.audio_rejected == 1
    assert sum(r.audio_bytes for r in emu.streams) == before
    assert stt_threads() == []


# -- configuration: clear errors at construction ---------------------------------------------------


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(max_queue=0), "max_queue"),
        (dict(max_queue=-5), "max_queue"),
        (dict(batch_ms=0), "batch_ms"),
        (dict(stream_limit_s=0), "stream_limit_s"),
        (dict(rotate_grace_s=-1), "rotate_grace_s"),
        (dict(max_replay_ms=-1), "max_replay_ms"),
        (dict(close_timeout_s=-0.5), "close_timeout_s"),
        (dict(max_consecutive_failures=-1), "max_consecutive_failures"),
        (dict(sample_rate=4000), "sample_rate"),
        (dict(sample_rate=96000), "sample_rate"),
        (dict(debounce_ms=-1), "turn timing"),
        (dict(api="v3"), "api"),
        (dict(settings=GoogleSTTService.Settings(languages=["klingon"])), "language"),
        (dict(settings=GoogleSTTService.Settings(languages=None, language_codes=["en_US!"])), "language"),
    ],
)
def test_service_config_errors_at_construction(monkeypatch, kw, needle):
    monkeypatch.setenv(EMULATOR_ENV, "127.0.0.1:50999")  # nothing listens: construction must not connect
    with pytest.raises(ValueError, match=needle):
        GoogleSTTService(**kw)


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(max_queue=0), "max_queue"),
        (dict(batch_ms=-1), "batch_ms"),
        (dict(stream_limit_s=0), "stream_limit_s"),
        (dict(max_replay_ms=-1), "max_replay_ms"),
        (dict(rotate_grace_s=-1), "rotate_grace_s"),
    ],
)
def test_session_config_errors_at_construction(kw, needle):
    with pytest.raises(ValueError, match=needle):
        StreamingSTTSession(spec_for(), lambda: None, **kw)
    with pytest.raises(ValueError, match="channels"):
        StreamSpec(api="v1", sample_rate=8000, streaming_config=None, channels=0)


def _real_default(*a, **kw):
    from google.auth import _default

    return _default.default(*a, **kw)


SECRET = "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n"


def test_bad_credentials_are_clear_errors_that_never_quote_the_secret(no_adc, tmp_path):
    cases = {}
    missing = tmp_path / "missing.json"
    cases["missing file"] = dict(credentials_path=str(missing))
    notjson = tmp_path / "notjson.json"
    notjson.write_text("{ private_key: " + SECRET)
    cases["not JSON"] = dict(credentials_path=str(notjson))
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"type": "service_account", "project_id": "p", "private_key": SECRET}))
    cases["incomplete key"] = dict(credentials_path=str(incomplete))
    cases["inline not JSON"] = dict(credentials="{" + SECRET)
    cases["inline JSON list"] = dict(credentials=json.dumps([SECRET]))
    messages = {}
    for name, kw in cases.items():
        # The stock service's types (issue 15): FileNotFoundError for a missing file, ValueError subclasses
        # (JSONDecodeError, MalformedError) for bad content.
        with pytest.raises(OSError if name == "missing file" else ValueError) as err:
            GoogleSTTService(**kw)
        messages[name] = str(err.value)
        assert "TOPSECRETMATERIAL" not in str(err.value) and "PRIVATE KEY" not in str(err.value), name
        assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__), name
    assert "cannot be read" in messages["missing file"] and str(missing) in messages["missing file"]
    assert "not valid JSON" in messages["not JSON"]
    assert "missing fields" in messages["incomplete key"]


def test_missing_or_broken_env_vars_fail_at_construction(no_adc, monkeypatch, tmp_path):
    # No credentials at all: exactly the stock message.
    with pytest.raises(ValueError, match=r"^No valid credentials provided\.$"):
        GoogleSTTService()
    # GOOGLE_APPLICATION_CREDENTIALS pointing nowhere: the reason is in the error.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "nope.json"))
    monkeypatch.setattr(service_module, "default", _real_default)
    with pytest.raises(ValueError, match="GOOGLE_APPLICATION_CREDENTIALS.*nope.json"):
        GoogleSTTService()
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    # A malformed or non-loopback emulator address is refused before anything connects.
    for bad in ("localhost", "10.0.0.8:8080", "speech.googleapis.com:443"):
        monkeypatch.setenv(EMULATOR_ENV, bad)
        with pytest.raises(ValueError, match="emulator address|loopback"):
            GoogleSTTService()


async def test_a_final_that_arrives_during_end_frame_close_is_delivered(emu):
    """Audio ends mid-utterance: Google's final only comes after the half-close, while the service
    is stopping. It must still reach the pipeline, before the EndFrame (every time)."""
    cut = int(3.30 * 16000) // CHUNK * CHUNK  # sentence 1 speech ends ~3.24 s: its segment is still open
    for k in range(5):
        svc = GoogleSTTService(sample_rate=8000, max_queue=1000, debounce_ms=None, final_timeout_ms=None)
        texts = await run_service(svc, audio_frames(HELLO.pcm16[:cut]))
        assert len(texts) == 1, (k, texts)
    assert stt_threads() == []
