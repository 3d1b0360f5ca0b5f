"""GoogleSTTService: drop-in parity, credentials, frames through a real Pipecat pipeline, emulator-backed."""

from __future__ import annotations

import inspect
import json

import pytest
from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    STTUpdateSettingsFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.google.stt import GoogleSTTService as StockGoogleSTTService
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory

from pipecat_rxdrain.google_clients import EMULATOR_ENV
from pipecat_rxdrain.rx.sink import AudioSink
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.stt.backoff import Backoff
from pipecat_rxdrain.stt.service import GoogleSTTService
from tests.helpers.stt_session import CHUNK, audio_frames, stt_threads

HELLO = load_sample("hello_en")


def test_constructor_signature_is_a_superset_of_stock():
    ours = inspect.signature(GoogleSTTService.__init__).parameters
    stock = inspect.signature(StockGoogleSTTService.__init__).parameters
    for name, p in stock.items():
        assert name in ours, name
        assert ours[name].kind == p.kind and ours[name].default == p.default, name
    extras = {n: p for n, p in ours.items() if n not in stock}
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in extras.values())
    assert extras["max_queue"].default == 200 and extras["batch_ms"].default == 60
    assert extras["debounce_ms"].default == 110 and extras["final_timeout_ms"].default == 320
    assert extras["vad_hangover_ms"].default == 180 and extras["api"].default == "v2"
    assert GoogleSTTService.InputParams is StockGoogleSTTService.InputParams
    assert GoogleSTTService.Settings is StockGoogleSTTService.Settings


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"location": "us-central1", "sample_rate": 8000},
        {"settings": StockGoogleSTTService.Settings(languages=[Language.HE_IL], model="telephony")},
        {"params": StockGoogleSTTService.InputParams(languages=Language.HE_IL, model="latest_short", enable_interim_results=False)},
    ],
)
async def test_same_arguments_same_settings_as_stock(sa_json, no_adc, kwargs):
    # async: the stock constructor opens a grpc.aio channel, which needs a running event loop
    stock = StockGoogleSTTService(credentials=sa_json, **kwargs)
    ours = GoogleSTTService(credentials=sa_json, **kwargs)
    assert ours._settings == stock._settings
    assert ours._get_language_codes() == stock._get_language_codes()
    assert ours._project_id == stock._project_id == "rxdrain-proj"
    assert ours._ttfs_p99_latency == stock._ttfs_p99_latency


def test_hebrew_maps_to_googles_code():
    svc = GoogleSTTService(settings=GoogleSTTService.Settings(languages=[Language.HE_IL]), endpoint="127.0.0.1:1")
    assert svc._get_language_codes() == ["iw-IL"]


def test_missing_credentials_same_error_as_stock(no_adc):
    with pytest.raises(ValueError) as stock_err:
        StockGoogleSTTService()
    with pytest.raises(ValueError) as our_err:
        GoogleSTTService()
    assert str(our_err.value) == str(stock_err.value) == "No valid credentials provided."


def test_emulator_mode_needs_no_credentials(no_adc, monkeypatch):
    monkeypatch.setenv(EMULATOR_ENV, "127.0.0.1:50999")
    svc = GoogleSTTService()
    assert svc._target.is_emulator and svc._credentials is None
    svc2 = GoogleSTTService(endpoint="localhost:50998")
    assert svc2._target.emulator == "localhost:50998"


def test_credentials_never_logged_or_in_repr(sa_json, no_adc):
    lines = []
    sink = logger.add(lambda m: lines.append(str(m)), level="TRACE")
    try:
        svc = GoogleSTTService(credentials=sa_json, location="us-central1")
        text = "\n".join(lines) + repr(svc) + str(svc) + repr(vars(svc))
    finally:
        logger.remove(sink)
    secret = json.loads(sa_json)["private_key"]
    for fragment in (secret[40:80], "PRIVATE KEY", json.loads(sa_json)["private_key_id"]):
        assert fragment not in text


def test_is_an_audio_sink(emu):
    assert isinstance(GoogleSTTService(), AudioSink)


async def test_transcripts_reach_the_pipeline_as_frames(emu):
    svc = GoogleSTTService(max_queue=1000, debounce_ms=None, final_timeout_ms=None)
    down, up = await run_test(svc, frames_to_send=audio_frames(HELLO.pcm16, sleep_every=20))
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert [f.text for f in finals] == list(HELLO.segments)
    assert all(f.finalized and f.language == "en-US" and f.result is not None for f in finals)
    assert any(isinstance(f, InterimTranscriptionFrame) for f in down)
    # audio passthrough (a downstream VAD needs it), in order
    audio = [f for f in down if isinstance(f, InputAudioRawFrame)]
    assert b"".join(f.audio for f in audio) == HELLO.pcm16
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert stt_threads() == []


async def test_v1_path(emu):
    svc = GoogleSTTService(api="v1", max_queue=1000, settings=GoogleSTTService.Settings(model="phone_call"))
    down, _ = await run_test(svc, frames_to_send=audio_frames(HELLO.pcm16, sleep_every=20))
    assert [f.text for f in down if isinstance(f, TranscriptionFrame)] == list(HELLO.segments)
    assert emu.streams[-1].api == "v1"


async def test_vad_frames_forwarded_in_their_own_direction(emu):
    svc = GoogleSTTService(max_queue=1000)
    frames = [VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame(stop_secs=0.2)]
    down, up = await run_test(svc, frames_to_send=frames, frames_to_send_direction=FrameDirection.UPSTREAM)
    assert [type(f) for f in up if isinstance(f, (VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame))] == [
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    ]
    down, up = await run_test(GoogleSTTService(), frames_to_send=frames)
    assert sum(isinstance(f, (VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame)) for f in down) == 2


async def test_stale_interim_holds_the_early_final_for_googles_complete_final(emu):
    # Responses delayed 0.6 s and the VAD stop comes 0.2 s after the audio ends: the newest
    # interim had not heard the end of speech at the deadline, so the early final is held
    # and the one TranscriptionFrame is Google's complete final (issue 14: it used to be
    # the stale interim, with Google's full final suppressed).
    seg1_end = int(3.4 * 16000) // CHUNK * CHUNK
    svc = GoogleSTTService(max_queue=1000, debounce_ms=110, vad_hangover_ms=180, final_timeout_ms=320)
    emu.faults.latency(0.6)
    frames = audio_frames(HELLO.pcm16[:seg1_end], sleep_every=10)
    frames += [SleepFrame(sleep=0.8), VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(sleep=2.0)]
    down, _ = await run_test(svc, frames_to_send=frames)
    finals = [f.text for f in down if isinstance(f, TranscriptionFrame)]
    assert finals == [HELLO.segments[0]]
    assert svc.turn_counters.early_finals == 0 and svc.turn_counters.early_finals_held == 1


async def test_non_retriable_error_pushed_once_and_service_unusable(emu):
    emu.faults.refuse(20, code="PERMISSION_DENIED", details="denied for test")
    svc = GoogleSTTService(max_queue=1000, backoff=Backoff(initial_s=0.01, max_s=0.05))
    down, up = await run_test(svc, frames_to_send=audio_frames(HELLO.pcm16[: 16000 * 2], sleep_every=10) + [SleepFrame(sleep=0.5)])
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1
    assert "PERMISSION_DENIED" in errors[0].error and errors[0].category == ErrorCategory.AUTHORIZATION
    assert not svc.is_usable
    assert len(emu.streams) <= 8


async def test_language_change_restarts_stream_without_losing_words(emu):
    svc = GoogleSTTService(max_queue=1000, debounce_ms=None, final_timeout_ms=None)
    half = (len(HELLO.pcm16) // 2) // CHUNK * CHUNK
    frames = audio_frames(HELLO.pcm16[:half], sleep_every=20)
    frames.append(STTUpdateSettingsFrame(delta=GoogleSTTService.Settings(languages=[Language.EN_GB])))
    frames += audio_frames(HELLO.pcm16[half:], sleep_every=20)
    down, _ = await run_test(svc, frames_to_send=frames)
    assert [f.text for f in down if isinstance(f, TranscriptionFrame)] == list(HELLO.segments)
    assert len(emu.streams) >= 2 and "en-GB" in str(emu.streams[-1].config)


async def test_cancel_stops_the_thread_promptly(emu):
    from pipecat.frames.frames import CancelFrame

    svc = GoogleSTTService(max_queue=1000)
    frames = audio_frames(HELLO.pcm16[: 16000 * 2]) + [CancelFrame()]
    await run_test(svc, frames_to_send=frames, send_end_frame=False)
    assert stt_threads() == []


async def test_16khz_pipeline_with_the_twilio_serializer_transcribes(emu):
    """audio_in_sample_rate=16000: Pipecat's Twilio serializer resamples the caller's 8 kHz mu-law into
    larger, irregular chunks (~95 ms), over the session's 60 ms batch; each goes in one request, all of it reaches
    Google, at 16 kHz, once, and transcribes."""
    import base64
    import json

    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams
    from pipecat.serializers.twilio import TwilioFrameSerializer

    from pipecat_rxdrain.rx.processor import RxDrainProcessor
    from pipecat_rxdrain.twilio.audio import mulaw_frames

    ser = TwilioFrameSerializer("MZ00000000000000000000000000000000",
                                params=TwilioFrameSerializer.InputParams(auto_hang_up=False))

    class _Setup:
        audio_in_sample_rate = 16000

    await ser.setup(_Setup())
    frames = []
    media = mulaw_frames(HELLO.pcm16 + b"\0" * 16000)  # + 1 s of silence to flush the resampler
    for k, payload in enumerate(media):
        f = await ser.deserialize(json.dumps({"event": "media", "media": {"payload": base64.b64encode(payload).decode()}}))
        if f is not None:
            frames.append(f)
        if k % 20 == 19:
            frames.append(SleepFrame(sleep=0.01))
    audio = [f for f in frames if isinstance(f, InputAudioRawFrame)]
    assert len(audio) < len(media) * 0.5 and {f.sample_rate for f in audio} == {16000}  # merged chunks
    sent = sum(len(f.audio) for f in audio)

    from pipecat_rxdrain.stt.params import STTSessionParams

    # Faster than real time: without max_lead_ms=None the lead bound would pace the tail past close().
    svc = GoogleSTTService(sample_rate=16000, max_queue=1000, debounce_ms=None, final_timeout_ms=None,
                           session_params=STTSessionParams(max_lead_ms=None))
    rx = RxDrainProcessor(sink=svc)
    down, up = await run_test(Pipeline([rx, svc]), frames_to_send=frames,
                              pipeline_params=PipelineParams(audio_in_sample_rate=16000))
    assert [f.text for f in down if isinstance(f, TranscriptionFrame)] == list(HELLO.segments)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert len(emu.streams) == 1
    st = emu.stream(-1)
    assert st.audio_bytes == sent  # every byte, once
    assert len(st.chunks) <= len(audio)  # a chunk over the 60 ms batch goes whole in one request, never split
    assert "16000" in json.dumps(st.config)
    assert svc.final_stats is not None and svc.final_stats.drops == 0 and rx.stats.drops == 0
    assert stt_threads() == []
