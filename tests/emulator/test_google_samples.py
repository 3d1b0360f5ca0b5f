"""Google's python-docs-samples streaming snippets against the emulator, only the channel swapped.

What runs:

* ``test_sample_shaped_*`` (always): our own code sending exactly what Google's
  ``speech/snippets/transcribe_streaming.py`` (v1: the whole file as ONE request,
  ~89 KB here / 57958 bytes in Google's resources/audio.raw) and
  ``transcribe_streaming_v2.py`` (v2: ``auto_decoding_config``, the WAV file cut in 5
  requests, recognizer ``projects/None/locations/global/recognizers/_`` when
  GOOGLE_CLOUD_PROJECT is unset) send, through the official clients, on
  ``tests/data/brooklyn_bridge_16k.wav`` ("how old is the Brooklyn Bridge" by espeak-ng,
  see ``tests/data/make_brooklyn_bridge.py``), with ``--recognizer pocketsphinx``.
* ``test_google_sample_unchanged`` and ``test_google_voice_activity_timeouts_sample_unchanged``
  (when ``GOOGLE_SAMPLES_DIR`` names a checkout of
  GoogleCloudPlatform/python-docs-samples): imports Google's files unmodified from
  ``$GOOGLE_SAMPLES_DIR/speech/snippets`` and runs them on Google's own
  ``resources/audio.raw`` / ``audio.wav``. Google's code and audio are not copied into this
  repository, hence the opt-in.

The one thing swapped, in both: ``speech_v1.SpeechClient.__init__`` and
``speech_v2.SpeechClient.__init__`` are wrapped to pass
``transport=SpeechGrpcTransport(channel=grpc.insecure_channel(<emulator>))`` when the
caller gives no transport (``point_official_clients_at``); the samples' own code is not
touched.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import wave
from pathlib import Path

import grpc
import pytest
from google.cloud import speech, speech_v1, speech_v2
from google.cloud.speech_v1.services.speech import transports as v1_transports
from google.cloud.speech_v2.services.speech import transports as v2_transports
from google.cloud.speech_v2.types import cloud_speech as v2_types

from pipecat_rxdrain.emulator import SpeechEmulator

pytest.importorskip("pocketsphinx")

DATA = Path(__file__).parents[1] / "data"
WAV = DATA / "brooklyn_bridge_16k.wav"
EXPECTED = re.compile(r"how old is the Brooklyn Bridge", re.I)


def raw_pcm(wav_path: Path) -> bytes:
    with wave.open(str(wav_path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return w.readframes(w.getnframes())


@pytest.fixture
def emu():
    with SpeechEmulator(recognizer="pocketsphinx") as e:
        yield e


@pytest.fixture
def point_official_clients_at(monkeypatch):
    """Make Google's sync clients default to an insecure channel to ``address``; close the channels after."""
    channels: list[grpc.Channel] = []

    def point(address: str) -> None:
        for cls, transport_cls in (
            (speech_v1.SpeechClient, v1_transports.SpeechGrpcTransport),
            (speech_v2.SpeechClient, v2_transports.SpeechGrpcTransport),
        ):
            original = cls.__init__

            def init(self, *args, _original=original, _transport_cls=transport_cls, **kwargs):
                if kwargs.get("transport") is None:
                    channel = grpc.insecure_channel(address)
                    channels.append(channel)
                    kwargs["transport"] = _transport_cls(channel=channel)
                _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, "__init__", init)

    yield point
    for channel in channels:
        channel.close()


def transcript_of(responses) -> str:
    return " ".join(r.alternatives[0].transcript for resp in responses for r in resp.results if r.is_final)


def test_sample_shaped_v1_one_big_request(emu, point_official_clients_at):
    point_official_clients_at(emu.address)
    audio = raw_pcm(WAV)
    assert len(audio) > 25 * 1024  # like Google's 57958-byte request: over the documented quota
    client = speech.SpeechClient()  # as in the sample: no arguments
    config = speech.StreamingRecognitionConfig(
        config=speech.RecognitionConfig(
            encoding=speech.RecognitionConfig.AudioEncoding.LINEAR16, sample_rate_hertz=16000, language_code="en-US"
        )
    )
    requests = (speech.StreamingRecognizeRequest(audio_content=chunk) for chunk in [audio])
    responses = list(client.streaming_recognize(config=config, requests=requests))
    assert EXPECTED.search(transcript_of(responses)), transcript_of(responses)
    assert emu.stream(-1).oversize_requests == 1


def test_sample_shaped_v2_auto_decoding_five_chunks(emu, point_official_clients_at, monkeypatch):
    point_official_clients_at(emu.address)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    content = WAV.read_bytes()
    n = len(content) // 5
    stream = [content[i : i + n] for i in range(0, len(content), n)]
    config_request = v2_types.StreamingRecognizeRequest(
        recognizer=f"projects/{os.getenv('GOOGLE_CLOUD_PROJECT')}/locations/global/recognizers/_",
        streaming_config=v2_types.StreamingRecognitionConfig(
            config=v2_types.RecognitionConfig(
                auto_decoding_config=v2_types.AutoDetectDecodingConfig(), language_codes=["en-US"], model="long"
            )
        ),
    )

    def requests():
        yield config_request
        yield from (v2_types.StreamingRecognizeRequest(audio=a) for a in stream)

    responses = list(speech_v2.SpeechClient().streaming_recognize(requests=requests()))
    assert EXPECTED.search(transcript_of(responses)), transcript_of(responses)


SAMPLES = {
    "transcribe_streaming": ("transcribe_streaming", "audio.raw"),
    "transcribe_streaming_v2": ("transcribe_streaming_v2", "audio.wav"),
}


@pytest.mark.skipif(not os.environ.get("GOOGLE_SAMPLES_DIR"), reason="set GOOGLE_SAMPLES_DIR to a python-docs-samples checkout")
@pytest.mark.parametrize("module_name", sorted(SAMPLES))
def test_google_sample_unchanged(module_name, emu, point_official_clients_at, monkeypatch, capsys):
    snippets = Path(os.environ["GOOGLE_SAMPLES_DIR"]) / "speech" / "snippets"
    func_name, audio = SAMPLES[module_name]
    spec = importlib.util.spec_from_file_location(f"google_sample_{module_name}", snippets / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    point_official_clients_at(emu.address)
    result = getattr(module, func_name)(str(snippets / "resources" / audio))
    out = capsys.readouterr().out
    if module_name.endswith("_v2"):  # Google's test: the transcripts of the returned responses
        out = "".join(r.alternatives[0].transcript for resp in result for r in resp.results)
    assert EXPECTED.search(out), out


@pytest.mark.skipif(not os.environ.get("GOOGLE_SAMPLES_DIR"), reason="set GOOGLE_SAMPLES_DIR to a python-docs-samples checkout")
def test_google_voice_activity_timeouts_sample_unchanged(emu, point_official_clients_at, monkeypatch):
    """Google's transcribe_streaming_voice_activity_timeouts.py, with its own test's expectations (~20 s: it paces)."""
    snippets = Path(os.environ["GOOGLE_SAMPLES_DIR"]) / "speech" / "snippets"
    name = "transcribe_streaming_voice_activity_timeouts"
    spec = importlib.util.spec_from_file_location(f"google_sample_{name}", snippets / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    point_official_clients_at(emu.address)
    audio = str(snippets / "resources" / "audio_silence_padding.wav")
    assert getattr(module, name)(1, 5, audio) == []  # speech_start_timeout=1 s: closed before any speech
    responses = getattr(module, name)(5, 1, audio)
    T = v2_types.StreamingRecognizeResponse.SpeechEventType
    assert responses[0].speech_event_type == T.SPEECH_ACTIVITY_BEGIN
    assert responses[1].speech_event_type == T.SPEECH_ACTIVITY_END
    assert EXPECTED.search("".join(r.alternatives[0].transcript for resp in responses for r in resp.results))
