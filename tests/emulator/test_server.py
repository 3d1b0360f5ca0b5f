"""The local Speech emulator against the official google-cloud-speech clients, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings

import grpc
import numpy as np
import pytest
from google.api_core import exceptions as gexc
from google.cloud import speech_v1, speech_v2

from pipecat_rxdrain.emulator import SESSION_METADATA_KEY, EmulatorLimits, SpeechEmulator, emulator_client
from pipecat_rxdrain.emulator.control import parse_fault_spec
from pipecat_rxdrain.emulator.segmenter import ALAW_TO_PCM16, ULAW_TO_PCM16
from pipecat_rxdrain.samples import load_sample

with warnings.catch_warnings():  # audioop (stdlib G.711 reference) is deprecated in 3.11, still present
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

HELLO = load_sample("hello_en")
RECOGNIZER = "projects/test/locations/global/recognizers/_"
CHUNK_MS = 100


def chunks_of(pcm: bytes, rate: int = 8000, width: int = 2, ms: int = CHUNK_MS) -> list[bytes]:
    step = rate * width * ms // 1000
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def encode(pcm8k: bytes, encoding: str, rate: int) -> bytes:
    if rate != 8000:
        pcm8k, _ = audioop.ratecv(pcm8k, 2, 1, 8000, rate, None)
    return audioop.lin2ulaw(pcm8k, 2) if encoding == "MULAW" else pcm8k


def v1_config(encoding="LINEAR16", rate=8000, language="en-US", interim=True, **extra):
    return speech_v1.StreamingRecognitionConfig(
        config=speech_v1.RecognitionConfig(encoding=encoding, sample_rate_hertz=rate, language_code=language),
        interim_results=interim,
        **extra,
    )


def v2_config_request(encoding="LINEAR16", rate=8000, language="en-US", interim=True, vad=False, recognizer=RECOGNIZER):
    return speech_v2.StreamingRecognizeRequest(
        recognizer=recognizer,
        streaming_config=speech_v2.StreamingRecognitionConfig(
            config=speech_v2.RecognitionConfig(
                explicit_decoding_config=speech_v2.ExplicitDecodingConfig(
                    encoding=encoding, sample_rate_hertz=rate, audio_channel_count=1
                ),
                language_codes=[language],
                model="long",
            ),
            streaming_features=speech_v2.StreamingRecognitionFeatures(
                interim_results=interim, enable_voice_activity_events=vad
            ),
        ),
    )


def run_v1(emu, audio_chunks, config=None, *, metadata=(), pace_s=0.0, hold: threading.Event | None = None):
    """Stream with the sync v1 client; return (responses, error)."""
    client = emulator_client(emu.address, api="v1")

    def requests():
        for c in audio_chunks:
            if pace_s:
                time.sleep(pace_s)
            yield speech_v1.StreamingRecognizeRequest(audio_content=c)
        if hold is not None:
            hold.wait(10)

    config = config or v1_config()
    if metadata:
        # speech_v1.SpeechClient.streaming_recognize(config, requests) (helpers.py) silently drops
        # `metadata`; the generated method underneath sends it.
        from google.cloud.speech_v1.services.speech import SpeechClient as GeneratedClient

        def with_config():
            yield speech_v1.StreamingRecognizeRequest(streaming_config=config)
            yield from requests()

        def open_stream():
            return GeneratedClient.streaming_recognize(client, requests=with_config(), metadata=metadata, timeout=30, retry=None)
    else:
        def open_stream():
            return client.streaming_recognize(config, requests(), timeout=30, retry=None)
    responses, error = [], None
    try:
        for r in open_stream():
            responses.append(r)
    except gexc.GoogleAPICallError as exc:
        error = exc
    finally:
        if hold is not None:
            hold.set()
    return responses, error


def run_v2(emu, requests, *, metadata=()):
    client = emulator_client(emu.address, api="v2")
    responses, error = [], None
    try:
        for r in client.streaming_recognize(requests=iter(requests), metadata=metadata, timeout=30, retry=None):
            responses.append(r)
    except gexc.GoogleAPICallError as exc:
        error = exc
    return responses, error


def finals(responses) -> list[str]:
    return [res.alternatives[0].transcript for r in responses for res in r.results if res.is_final]


def grpc_code(error) -> grpc.StatusCode:
    assert error is not None, "expected the stream to fail"
    return error.grpc_status_code


# --- results ---------------------------------------------------------------


def test_v1_sync_scripted_results_and_records(emu):
    responses, error = run_v1(emu, chunks_of(HELLO.pcm16))
    assert error is None
    assert finals(responses) == list(HELLO.segments)
    results = [res for r in responses for res in r.results]
    interims = [res for res in results if not res.is_final]
    assert interims, "interim results expected while speech arrives"
    assert all(0 < res.stability <= 1 for res in interims)
    # interims grow as a prefix of the upcoming final
    first_final = next(i for i, res in enumerate(results) if res.is_final)
    texts = [res.alternatives[0].transcript for res in results[:first_final]]
    assert all(HELLO.segments[0].startswith(t) for t in texts)
    assert [len(t) for t in texts] == sorted(len(t) for t in texts)
    ends = [res.result_end_time.total_seconds() for res in results if res.is_final]
    assert 0 < ends[0] < ends[1] <= HELLO.duration_s
    assert {res.language_code for res in results} == {"en-us"}

    (stream,) = emu.wait_for(lambda e: [s for s in e.streams if s.ended])
    assert stream.api == "v1" and stream.end.code == grpc.StatusCode.OK and stream.end.reason == "half_close"
    assert stream.config["config"]["language_code"] == "en-US"
    assert stream.audio_bytes == len(HELLO.pcm16)
    offsets = [c.offset for c in stream.chunks]
    assert offsets == [sum(c.size for c in stream.chunks[:i]) for i in range(len(stream.chunks))]
    times = [c.received_at for c in stream.chunks]
    assert times == sorted(times) and times[0] >= stream.started_at
    assert stream.transcripts == list(HELLO.segments)


@pytest.mark.parametrize("encoding,rate", [("LINEAR16", 8000), ("MULAW", 8000), ("LINEAR16", 16000), ("MULAW", 16000)])
def test_v2_encodings_and_rates(emu, encoding, rate):
    audio = encode(HELLO.pcm16, encoding, rate)
    width = 2 if encoding == "LINEAR16" else 1
    reqs = [v2_config_request(encoding, rate, interim=False)]
    reqs += [speech_v2.StreamingRecognizeRequest(audio=c) for c in chunks_of(audio, rate, width)]
    responses, error = run_v2(emu, reqs)
    assert error is None
    assert finals(responses) == list(HELLO.segments)
    ends = [res.result_end_offset.total_seconds() for r in responses for res in r.results]
    assert abs(ends[-1] - 5.9) < 0.1  # end of the last speech frame in the sample


async def test_v2_async_client_voice_activity_events():
    async with SpeechEmulator(script=["one two", "three four"]) as emu:
        client = emulator_client(emu.address, api="v2", asynchronous=True)

        async def requests():
            yield v2_config_request("MULAW", 8000, interim=True, vad=True)
            for c in chunks_of(audioop.lin2ulaw(HELLO.pcm16, 2), 8000, 1):
                yield speech_v2.StreamingRecognizeRequest(audio=c)

        events, texts = [], []
        stream = await client.streaming_recognize(requests=requests(), timeout=30, retry=None)
        async for r in stream:
            if r.speech_event_type:
                events.append((r.speech_event_type.name, r.speech_event_offset.total_seconds()))
            texts += [(res.is_final, res.alternatives[0].transcript) for res in r.results]
        await client.transport.close()
        await emu.wait_for_async(lambda e: e.streams and e.streams[-1].ended, timeout=5)
    assert [name for name, _ in events] == ["SPEECH_ACTIVITY_BEGIN", "SPEECH_ACTIVITY_END"] * 2
    assert events[0][1] < events[1][1] < events[2][1] < events[3][1]
    assert [t for f, t in texts if f] == ["one two", "three four"]
    assert any(not f for f, _ in texts)


def test_sessions_survive_reconnects_and_expose_duplicates_and_losses(emu):
    seg = chunks_of(HELLO.pcm16)
    first, second = seg[:36], seg[36:]  # sentence 1 ends at 2.78 s, sentence 2 starts at 4.0 s
    # reconnect after sentence 1, then send only the new audio: each scripted text exactly once
    r1, _ = run_v1(emu, first, metadata=[(SESSION_METADATA_KEY, "call-A")])
    r2, _ = run_v1(emu, second, metadata=[(SESSION_METADATA_KEY, "call-A")])
    assert finals(r1) + finals(r2) == list(HELLO.segments)
    # another session starts from the top of the script
    r3, _ = run_v1(emu, first, metadata=[(SESSION_METADATA_KEY, "call-B")])
    assert finals(r3) == [HELLO.segments[0]]
    # replaying already-finalized audio produces an extra segment: the duplication is visible
    r4, _ = run_v1(emu, first, metadata=[(SESSION_METADATA_KEY, "call-B")])
    assert finals(r4) == [HELLO.segments[1]]
    r5, _ = run_v1(emu, second, metadata=[(SESSION_METADATA_KEY, "call-B")])
    assert finals(r5) == ["utterance 3"]
    sessions = [s.session for s in emu.streams]
    assert sessions == ["call-A", "call-A", "call-B", "call-B", "call-B"]


def test_codec_tables_match_g711():
    all_bytes = bytes(range(256))
    assert ULAW_TO_PCM16.tobytes() == audioop.ulaw2lin(all_bytes, 2)
    assert ALAW_TO_PCM16.tobytes() == audioop.alaw2lin(all_bytes, 2)


@pytest.mark.parametrize("split", [1, 7, 161, 3201])
def test_segmentation_does_not_depend_on_request_boundaries(split):
    from pipecat_rxdrain.emulator.segmenter import AudioDecoder, EnergySegmenter

    def events(pcm: bytes, step: int, channels: int = 1):
        dec, seg = AudioDecoder("LINEAR16", channels), EnergySegmenter(8000)
        out = []
        for i in range(0, len(pcm), step):
            out += seg.feed(dec.decode(pcm[i : i + step]))
        return [(e.kind, round(e.start_s, 3), round(e.end_s, 3)) for e in out + seg.flush() if e.kind != "speech"]

    whole = events(HELLO.pcm16, len(HELLO.pcm16))
    assert [k for k, _, _ in whole] == ["begin", "end", "begin", "end"]
    assert events(HELLO.pcm16, split) == whole  # odd byte splits are carried over
    mono = np.frombuffer(HELLO.pcm16, dtype="<i2")
    stereo = np.stack([mono, np.zeros_like(mono)], axis=1).tobytes()  # channel 1 is decoded
    assert events(stereo, split * 2, channels=2) == whole


def test_v1_single_utterance(emu):
    responses, error = run_v1(emu, chunks_of(HELLO.pcm16), v1_config(interim=False, single_utterance=True))
    assert error is None
    kinds = [r.speech_event_type.name if r.speech_event_type else "result" for r in responses]
    assert kinds == ["END_OF_SINGLE_UTTERANCE", "result"]
    assert finals(responses) == [HELLO.segments[0]]


def test_busy_port_is_a_clear_error(emu):
    with pytest.raises(OSError, match="could not listen"):
        SpeechEmulator(port=emu.port).start()  # and leaves no thread behind (the no_leaks check)


def test_pocketsphinx_recognizes_hello_en():
    with SpeechEmulator(recognizer="pocketsphinx") as emu:
        responses, error = run_v1(emu, chunks_of(HELLO.pcm16), v1_config(interim=False))
    assert error is None
    words = " ".join(finals(responses)).lower().split()
    assert len(finals(responses)) == 2
    assert sum(w in words for w in ("would", "like", "tomorrow", "morning", "nine", "please", "hello")) >= 2, words
    # the recognizer's worker threads are gone too: the no_leaks check (tests/emulator/conftest.py)


# --- Google-like checks and limits ------------------------------------------


def _v1_raw(emu, requests, metadata=()):
    """Bypass the v1 helper (which always sends the config first) to send malformed streams."""
    client = emulator_client(emu.address, api="v1")
    try:
        list(client._transport.streaming_recognize(iter(requests), metadata=metadata))
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_bad_v1_streams_are_rejected(emu):
    audio = speech_v1.StreamingRecognizeRequest(audio_content=b"\0" * 320)
    cfg = speech_v1.StreamingRecognizeRequest(streaming_config=v1_config())
    cases = {
        "audio first": [audio, cfg],
        "config twice": [cfg, cfg, audio],
        "bad encoding": [speech_v1.StreamingRecognizeRequest(streaming_config=v1_config(encoding="FLAC"))],
        "bad rate": [speech_v1.StreamingRecognizeRequest(streaming_config=v1_config(rate=4000))],
        "no language": [speech_v1.StreamingRecognizeRequest(streaming_config=v1_config(language=""))],
        "empty stream": [],
    }
    for name, reqs in cases.items():
        code, details = _v1_raw(emu, reqs)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
    assert "Malordered Data Received" in _v1_raw(emu, cases["audio first"])[1]


def test_request_size_is_counted_by_default_and_rejected_when_strict(emu):
    # Google's own v1 sample sends 57958 bytes in one request and Google transcribes it,
    # so the 25 KB quota is only enforced on request (EmulatorLimits(strict_request_size=True)).
    cfg = speech_v1.StreamingRecognizeRequest(streaming_config=v1_config())
    over = [cfg, speech_v1.StreamingRecognizeRequest(audio_content=b"\0" * (25 * 1024 + 2))]
    at_limit = [cfg, speech_v1.StreamingRecognizeRequest(audio_content=b"\0" * 25 * 1024)]
    assert _v1_raw(emu, over)[0] == grpc.StatusCode.OK
    assert emu.stream(-1).oversize_requests == 1
    assert _v1_raw(emu, at_limit)[0] == grpc.StatusCode.OK
    assert emu.stream(-1).oversize_requests == 0
    with SpeechEmulator(limits=EmulatorLimits(strict_request_size=True)) as strict:
        code, details = _v1_raw(strict, over)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "25 KB" in details
        assert _v1_raw(strict, at_limit)[0] == grpc.StatusCode.OK


def test_bad_v2_configs_are_rejected(emu):
    audio = speech_v2.StreamingRecognizeRequest(audio=b"\0" * 320)
    no_decoding = speech_v2.StreamingRecognizeRequest(
        recognizer=RECOGNIZER,
        streaming_config=speech_v2.StreamingRecognitionConfig(config=speech_v2.RecognitionConfig(language_codes=["en-US"])),
    )
    cases = [
        [audio],
        [v2_config_request(recognizer="recognizers/_"), audio],
        [no_decoding, audio],
        [v2_config_request(rate=100000), audio],
        [v2_config_request(encoding="FLAC"), audio],
        [v2_config_request(language=""), audio],
        [v2_config_request(), v2_config_request(), audio],
    ]
    for reqs in cases:
        _, error = run_v2(emu, reqs)
        assert grpc_code(error) == grpc.StatusCode.INVALID_ARGUMENT, reqs[0]


def test_v2_auto_decoding_reads_a_wav_header(emu):
    wav = HELLO.path.read_bytes()
    auto = speech_v2.StreamingRecognizeRequest(
        recognizer=RECOGNIZER,
        streaming_config=speech_v2.StreamingRecognitionConfig(
            config=speech_v2.RecognitionConfig(auto_decoding_config={}, language_codes=["en-US"])
        ),
    )
    reqs = [auto] + [speech_v2.StreamingRecognizeRequest(audio=c) for c in chunks_of(wav)]
    responses, error = run_v2(emu, reqs)
    assert error is None and finals(responses) == list(HELLO.segments)
    _, error = run_v2(emu, [auto, speech_v2.StreamingRecognizeRequest(audio=HELLO.pcm16[:3200])])
    assert grpc_code(error) == grpc.StatusCode.INVALID_ARGUMENT


def test_max_stream_duration_ends_the_stream_like_google():
    with SpeechEmulator(limits=EmulatorLimits(max_stream_s=1)) as emu:
        responses, error = run_v1(emu, chunks_of(HELLO.pcm16), pace_s=0.05)  # 3.9 s of sending
        assert grpc_code(error) == grpc.StatusCode.OUT_OF_RANGE
        assert error.message == "Exceeded maximum allowed stream duration of 1 seconds."
        stream = emu.streams[0]
        assert stream.end.reason == "max_duration"
        assert 1.0 <= stream.end.at - stream.started_at


@pytest.mark.parametrize(
    "api,code,text",
    [
        ("v1", grpc.StatusCode.OUT_OF_RANGE, "Audio Timeout Error: Long duration elapsed without audio."),
        ("v2", grpc.StatusCode.ABORTED, "Stream timed out after receiving no more client requests."),
    ],
)
def test_inactivity_timeout(api, code, text):
    hold = threading.Event()
    with SpeechEmulator(limits=EmulatorLimits(inactivity_timeout_s=0.5)) as emu:
        if api == "v1":
            _, error = run_v1(emu, chunks_of(HELLO.pcm16)[:3], hold=hold)
        else:
            client = emulator_client(emu.address, api="v2")

            def reqs():
                yield v2_config_request()
                yield speech_v2.StreamingRecognizeRequest(audio=HELLO.pcm16[:1600])
                hold.wait(10)

            try:
                list(client.streaming_recognize(requests=reqs(), timeout=30, retry=None))
                error = None
            except gexc.GoogleAPICallError as exc:
                error = exc
            finally:
                hold.set()
        assert grpc_code(error) == code
        assert text in error.message
        stream = emu.streams[0]
        assert stream.end.reason == "inactivity"
        assert stream.end.at - stream.chunks[-1].received_at >= 0.5


def test_faster_than_real_time_is_accepted(emu):
    t0 = time.monotonic()
    responses, error = run_v1(emu, chunks_of(load_sample("call_en").pcm16))
    assert error is None and len(finals(responses)) == 5
    assert time.monotonic() - t0 < load_sample("call_en").duration_s  # sent well above real time


# --- faults ----------------------------------------------------------------

ABORT_CODES = [
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
]


@pytest.mark.parametrize("code", ABORT_CODES, ids=lambda c: c.name)
def test_abort_after_chunks_with_each_code(emu, code):
    emu.faults.abort(after_chunks=10, code=code, details="boom")
    responses, error = run_v1(emu, chunks_of(HELLO.pcm16))
    assert grpc_code(error) == code and error.message == "boom"
    stream = emu.wait_for(lambda e: e.streams[0].ended and e.streams[0])
    assert len(stream.chunks) == 10 and stream.end.reason == "abort_fault"
    assert finals(responses) == []  # the open segment was not finalized


async def test_abort_after_seconds_async_v1():
    async with SpeechEmulator() as emu:
        emu.faults.abort(after_s=0.3, code="ABORTED")
        client = emulator_client(emu.address, api="v1", asynchronous=True)

        async def requests():
            yield speech_v1.StreamingRecognizeRequest(streaming_config=v1_config())
            for c in chunks_of(HELLO.pcm16):
                await asyncio.sleep(0.03)
                yield speech_v1.StreamingRecognizeRequest(audio_content=c)

        with pytest.raises(gexc.Aborted):
            async for _ in await client.streaming_recognize(requests=requests(), timeout=30, retry=None):
                pass
        await client.transport.close()
        stream = await emu.wait_for_async(lambda e: e.streams[0].ended and e.streams[0])
        assert stream.end.at - stream.started_at >= 0.3
        assert len(stream.chunks) < len(chunks_of(HELLO.pcm16))


def test_one_shot_versus_persistent_faults(emu):
    audio = chunks_of(HELLO.pcm16)[:12]
    emu.faults.abort(after_chunks=2, code="INTERNAL")  # one-shot (default times=1)
    assert grpc_code(run_v1(emu, audio)[1]) == grpc.StatusCode.INTERNAL
    assert run_v1(emu, audio)[1] is None
    emu.faults.abort(after_chunks=2, code="INTERNAL", times=None)  # persistent
    assert grpc_code(run_v1(emu, audio)[1]) == grpc.StatusCode.INTERNAL
    assert grpc_code(run_v1(emu, audio)[1]) == grpc.StatusCode.INTERNAL
    emu.faults.clear()
    assert run_v1(emu, audio)[1] is None


def test_default_client_retry_replays_a_half_consumed_iterator(emu):
    """Worth knowing: the official v1 client retries UNAVAILABLE at stream open by default, re-using the
    request iterator it already started, so the retried stream begins with audio and is rejected."""
    emu.faults.refuse(1)
    client = emulator_client(emu.address, api="v1")
    requests = (speech_v1.StreamingRecognizeRequest(audio_content=c) for c in chunks_of(HELLO.pcm16)[:5])
    with pytest.raises(gexc.InvalidArgument, match="Malordered"):
        list(client.streaming_recognize(v1_config(), requests, timeout=30))
    assert [s.end.reason for s in emu.streams] == ["refused", "invalid_argument"]


def test_refuse_next_k_streams(emu):
    emu.faults.refuse(2)
    audio = chunks_of(HELLO.pcm16)[:5]
    errors = [run_v1(emu, audio)[1] for _ in range(3)]
    assert [grpc_code(e) for e in errors[:2]] == [grpc.StatusCode.UNAVAILABLE] * 2
    assert errors[2] is None
    assert [s.end.reason for s in emu.streams] == ["refused", "refused", "half_close"]


def test_close_cleanly_mid_call(emu):
    emu.faults.close(after_chunks=20)  # mid first sentence
    responses, error = run_v1(emu, chunks_of(HELLO.pcm16))
    assert error is None and finals(responses) == []
    stream = emu.streams[0]
    assert stream.end.code == grpc.StatusCode.OK and stream.end.reason == "close_fault"
    assert len(stream.chunks) == 20


def test_latency_delays_every_response(emu):
    emu.faults.latency(0.3)
    responses, error = run_v1(emu, chunks_of(HELLO.pcm16))
    assert error is None and finals(responses) == list(HELLO.segments)
    results = emu.streams[0].results
    assert results and all(r.sent_at - r.produced_at >= 0.3 for r in results)
    emu.faults.latency(0)
    run_v1(emu, chunks_of(HELLO.pcm16))
    assert all(r.sent_at - r.produced_at < 0.3 for r in emu.streams[1].results)


def test_stall_back_pressures_the_client_with_a_small_window():
    chunk, count = 16000, 400  # 6.4 MB offered as fast as the client can send
    with SpeechEmulator(small_window=True, limits=EmulatorLimits(inactivity_timeout_s=5)) as emu:
        emu.faults.stall(1.5, after_chunks=1)
        pulled: list[float] = []

        def requests():
            for _ in range(count):
                pulled.append(time.monotonic())
                yield speech_v1.StreamingRecognizeRequest(audio_content=b"\0" * chunk)

        client = emulator_client(emu.address, api="v1")
        list(client.streaming_recognize(v1_config(), requests(), timeout=30, retry=None))
        stream = emu.streams[0]
    (start, end), = stream.stalls
    pulled_during = sum(1 for t in pulled if start <= t < end)
    read_during = sum(1 for c in stream.chunks if start < c.received_at < end)
    # the client's request iterator stopped being pulled: at most a few windows' worth buffered
    assert pulled_during * chunk < 256 * 1024, pulled_during
    assert read_during <= 1
    assert len(stream.chunks) == count and stream.end.code == grpc.StatusCode.OK


async def test_stall_blocks_an_async_client_writer():
    chunk, count = 3200, 1000  # 100 ms of 16 kHz PCM16 per request, 3.2 MB offered at once
    async with SpeechEmulator(small_window=True) as emu:
        emu.faults.stall(1.0, after_chunks=1)
        client = emulator_client(emu.address, api="v2", asynchronous=True)
        pulled: list[float] = []

        async def requests():
            yield v2_config_request(rate=16000, interim=False)
            for _ in range(count):
                pulled.append(time.monotonic())
                yield speech_v2.StreamingRecognizeRequest(audio=b"\0" * chunk)

        async for _ in await client.streaming_recognize(requests=requests(), timeout=30, retry=None):
            pass
        await client.transport.close()
        stream = await emu.wait_for_async(lambda e: e.streams and e.streams[0].ended and e.streams[0])
    (start, end), = stream.stalls
    assert sum(1 for t in pulled if start <= t < end) * chunk < 64 * 1024
    assert len(stream.chunks) == count and stream.end.code == grpc.StatusCode.OK


def test_down_refuses_connections_then_comes_back(emu):
    hold = threading.Event()
    result = {}
    inflight = threading.Thread(target=lambda: result.update(r=run_v1(emu, chunks_of(HELLO.pcm16)[:5], hold=hold)))
    inflight.start()
    emu.wait_for(lambda e: e.streams and len(e.streams[0].chunks) == 5)
    emu.faults.down(1.0)
    assert not emu.listening
    inflight.join(10)
    assert grpc_code(result["r"][1]) == grpc.StatusCode.UNAVAILABLE
    # a fresh client cannot connect at all while down
    _, error = run_v1(emu, chunks_of(HELLO.pcm16)[:2])
    assert grpc_code(error) == grpc.StatusCode.UNAVAILABLE
    assert len(emu.streams) == 1  # never reached the server
    emu.wait_until_listening(timeout=10)
    deadline = time.monotonic() + 15  # the client's reconnect backoff decides when it notices
    while True:
        responses, error = run_v1(emu, chunks_of(HELLO.pcm16))
        if error is None or time.monotonic() > deadline:
            break
        assert grpc_code(error) == grpc.StatusCode.UNAVAILABLE
        time.sleep(0.2)
    assert error is None and len(finals(responses)) == 2
    assert emu.address.endswith(f":{emu.port}")  # same port as before


def test_stop_ends_streams_and_leaves_no_threads():
    emu = SpeechEmulator().start()
    hold = threading.Event()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=run_v1(emu, chunks_of(HELLO.pcm16)[:5], hold=hold)))
    t.start()
    emu.wait_for(lambda e: e.streams and len(e.streams[0].chunks) == 5)
    emu.stop()
    t.join(10)
    assert grpc_code(result["r"][1]) == grpc.StatusCode.UNAVAILABLE
    assert emu.streams[0].end.reason == "server_stopped"
    assert not emu.running
    emu.stop()  # idempotent; no thread left: the no_leaks check


def test_client_cancel_is_recorded(emu):
    hold = threading.Event()

    def requests():
        yield speech_v1.StreamingRecognizeRequest(streaming_config=v1_config())
        yield speech_v1.StreamingRecognizeRequest(audio_content=HELLO.pcm16[:1600])
        hold.wait(10)

    client = emulator_client(emu.address, api="v1")
    # the raw gRPC call under the official client (the wrapper blocks for the first response)
    stream = client.transport.streaming_recognize(requests(), timeout=30)
    emu.wait_for(lambda e: e.streams and e.streams[0].chunks)
    stream.cancel()
    hold.set()
    record = emu.wait_for(lambda e: e.streams[0].ended and e.streams[0])
    assert record.end.code == grpc.StatusCode.CANCELLED and record.end.reason == "client_cancelled"


def test_wait_for_is_bounded(emu):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        emu.wait_for(lambda e: False, timeout=0.2)
    assert time.monotonic() - t0 < 5


def test_non_loopback_bind_is_refused():
    with pytest.raises(ValueError, match="non-loopback"):
        SpeechEmulator(host="0.0.0.0")


def test_parse_fault_spec():
    assert parse_fault_spec("abort:after_chunks=50,code=UNAVAILABLE") == (
        "abort",
        {"after_chunks": 50, "code": "UNAVAILABLE"},
    )
    assert parse_fault_spec("latency:1.5") == ("latency", {"seconds": 1.5})
    assert parse_fault_spec("refuse:2") == ("refuse", {"count": 2})
    assert parse_fault_spec("stall:seconds=3,times=none") == ("stall", {"seconds": 3, "times": None})
    with pytest.raises(ValueError):
        parse_fault_spec("explode:1")


# --- CLI and runtime control -----------------------------------------------


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_cli_runs_with_faults_and_runtime_control():
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipecat_rxdrain.cli", "emulator", "--port", "0", "--control-port", "0",
         "--fault", "refuse:1", "--inactivity-timeout-s", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = {}
        deadline = time.monotonic() + 20
        while "SPEECH_EMULATOR_HOST" not in lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            key, eq, value = line.strip().partition("=")
            if eq:
                lines[key] = value
        address, control = lines["SPEECH_EMULATOR_HOST"], lines["EMULATOR_CONTROL"]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address)

        class Addr:  # run_v1 only needs .address
            pass

        target = Addr()
        target.address = address
        audio = chunks_of(HELLO.pcm16)[:12]
        assert grpc_code(run_v1(target, audio)[1]) == grpc.StatusCode.UNAVAILABLE  # --fault refuse:1
        assert run_v1(target, audio)[1] is None
        assert _post(f"{control}/faults/abort", {"after_chunks": 3, "code": "RESOURCE_EXHAUSTED"})["ok"]
        assert grpc_code(run_v1(target, audio)[1]) == grpc.StatusCode.RESOURCE_EXHAUSTED
        with urllib.request.urlopen(f"{control}/streams", timeout=5) as resp:
            streams = json.loads(resp.read())
        assert [s["ended"]["code"] for s in streams] == ["UNAVAILABLE", "OK", "RESOURCE_EXHAUSTED"]
        with pytest.raises(urllib.error.HTTPError):
            _post(f"{control}/faults/abort", {"bogus": 1})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


def test_cli_refuses_non_loopback():
    out = subprocess.run(
        [sys.executable, "-m", "pipecat_rxdrain.cli", "emulator", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2 and "non-loopback" in out.stderr
