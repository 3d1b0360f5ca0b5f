"""HardenedTwilioFrameSerializer: Pipecat's Twilio serializer that never raises into the transport."""

from __future__ import annotations

import base64
import json

import pytest
from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame, InputDTMFFrame, InterruptionFrame, OutputAudioRawFrame
from pipecat.serializers.twilio import TwilioFrameSerializer

from pipecat_rxdrain.testing import FakeClock
from pipecat_rxdrain.twilio.audio import mulaw_decode
from pipecat_rxdrain.twilio.messages import DropReason, TwilioStreamParser, media_message, start_message, stop_message
from pipecat_rxdrain.twilio.serializer import HardenedTwilioFrameSerializer

SID, CALL, ACCT = "MZ" + "a" * 32, "CA" + "b" * 32, "AC" + "c" * 32
FRAME = bytes((i * 7) % 256 for i in range(160))
AUTH = "auth-token-never-logged-0123456789"


class _Setup:
    audio_in_sample_rate = 8000


def make(clock=None, **kw) -> HardenedTwilioFrameSerializer:
    parser = TwilioStreamParser()
    parser.feed(json.dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT)))
    return HardenedTwilioFrameSerializer(
        SID, CALL, ACCT, AUTH, params=TwilioFrameSerializer.InputParams(auto_hang_up=False), parser=parser, clock=clock, **kw
    )


@pytest.fixture
def logs():
    lines: list[str] = []
    hid = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {message}")
    yield lines
    logger.remove(hid)


def media(seq, payload=FRAME):
    return json.dumps(media_message(stream_sid=SID, sequence_number=seq, chunk=seq - 1, timestamp_ms=0, payload=payload))


async def test_media_becomes_8k_pcm_audio():
    s = make()
    await s.setup(_Setup())
    frame = await s.deserialize(media(2))
    assert isinstance(frame, InputAudioRawFrame)
    assert frame.sample_rate == 8000 and frame.num_channels == 1 and frame.audio == mulaw_decode(FRAME)


async def test_media_is_resampled_for_a_16k_pipeline():
    s = make()

    class S16:
        audio_in_sample_rate = 16000

    await s.setup(S16())
    # Pipecat's soxr stream resampler releases output in blocks, so some calls return None.
    frames = [f for f in [await s.deserialize(media(i)) for i in range(2, 102)] if f is not None]
    assert frames and all(f.sample_rate == 16000 and f.num_channels == 1 for f in frames)
    assert 0.8 * 100 * 640 <= sum(len(f.audio) for f in frames) <= 100 * 640


async def test_dtmf_and_stop(logs):
    s = make()
    stops = []

    async def on_stop():
        stops.append(True)

    s.on_stop = on_stop
    f = await s.deserialize(json.dumps({"event": "dtmf", "sequenceNumber": "2", "streamSid": SID, "dtmf": {"digit": "#"}}))
    assert isinstance(f, InputDTMFFrame)
    assert await s.deserialize(json.dumps(stop_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT, sequence_number=3))) is None
    assert stops == [True] and s.stop_received


async def test_bad_input_is_counted_logged_once_then_summarised_and_never_raises(logs):
    clock = FakeClock()
    s = make(clock=clock, log_interval_s=5.0)
    await s.setup(_Setup())
    bad_b64 = json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": SID, "media": {"payload": "@@@@"}})
    secret_payload = base64.b64encode(b"\x01" * 100).decode()
    short = json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": SID, "media": {"payload": secret_payload}})
    inputs = ["{nope", bad_b64, bad_b64, b"\x00\xff", short, "{nope", "x" * 50000]
    for raw in inputs:
        assert await s.deserialize(raw) is None
    assert s.stats.dropped == {
        DropReason.NOT_JSON: 2,
        DropReason.BAD_BASE64: 2,
        DropReason.BINARY: 1,
        DropReason.BAD_PAYLOAD_SIZE: 1,
        DropReason.OVERSIZED: 1,
    }
    warnings = [l for l in logs if l.startswith("WARNING")]
    assert len(warnings) == 5  # one per reason, the repeats wait for the summary
    clock.advance(5.0)
    assert await s.deserialize("{nope") is None
    summaries = [l for l in logs if "more bad inbound messages" in l]
    assert len(summaries) == 1 and "not_json=2" in summaries[0] and "bad_base64=1" in summaries[0]
    # the call goes on
    assert isinstance(await s.deserialize(media(4)), InputAudioRawFrame)
    text = "\n".join(logs)
    assert secret_payload not in text and base64.b64encode(FRAME).decode() not in text and AUTH not in text
    assert s.stats.received == s.stats.accepted + s.stats.dropped_total


async def test_outbound_side_is_the_stock_serializer():
    s = make()
    await s.setup(_Setup())
    out = json.loads(await s.serialize(OutputAudioRawFrame(audio=b"\x00\x10" * 160, sample_rate=8000, num_channels=1)))
    assert out["event"] == "media" and out["streamSid"] == SID and len(base64.b64decode(out["media"]["payload"])) == 160
    assert json.loads(await s.serialize(InterruptionFrame())) == {"event": "clear", "streamSid": SID}


def test_repr_never_shows_the_twilio_auth_token():
    s = make()
    assert AUTH not in repr(s) and AUTH not in str(s)


async def test_a_failure_after_parsing_is_counted_as_internal_not_raised(logs):
    s = make()

    async def broken_on_stop():
        raise RuntimeError("boom")

    s.on_stop = broken_on_stop
    assert await s.deserialize(json.dumps(stop_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT, sequence_number=2))) is None
    assert s.stats.dropped == {DropReason.INTERNAL: 1}
    assert s.stats.received == s.stats.accepted + s.stats.dropped_total
    assert any("reason=internal" in line and "RuntimeError while handling Stop" in line for line in logs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1])
def test_the_log_interval_must_be_finite(bad):
    """Issue 14 row 11: the library accepted NaN/inf timeouts."""
    with pytest.raises(ValueError, match="log_interval_s"):
        HardenedTwilioFrameSerializer("MZ" + "1" * 32, params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
                                      log_interval_s=bad)
