"""pipecat_rxdrain.twilio.input_backlog and the serializer's use of it."""

from __future__ import annotations

import asyncio
import json

import pytest
from pipecat.serializers.twilio import TwilioFrameSerializer

from pipecat_rxdrain.twilio.input_backlog import InputBacklog
from pipecat_rxdrain.twilio.messages import TwilioStreamParser, media_message, start_message
from pipecat_rxdrain.twilio.serializer import HardenedTwilioFrameSerializer

SID, CALL, ACCT = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32


async def test_waits_for_room_then_gives_up_within_its_timeout_and_drains():
    b = InputBacklog(2)
    b.note_sent(), b.note_sent()
    assert not b.has_room() and await b.wait_for_room(0.05) is False
    waiter = asyncio.create_task(b.wait_for_room(2.0))
    await asyncio.sleep(0.01)
    b.note_arrived()
    assert await waiter is True and b.waits == 2
    assert await b.drain(0.05) is False
    b.note_arrived()
    assert await b.drain(0.05) is True and b.in_flight == 0
    b.note_arrived()  # more arrivals than sent never go negative
    assert b.in_flight == 0 and b.peak_in_flight == 2


def test_settle_counts_what_is_left_once_and_bad_parameters_are_refused():
    b = InputBacklog(10)
    for _ in range(5):
        b.note_sent()
    b.note_arrived()
    assert b.settle() == 4 and b.settle() == 4 and b.stats.discarded_at_end == 4
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError):
            InputBacklog(bad)
    for bad in (float("nan"), float("inf"), -1):
        with pytest.raises(ValueError):
            InputBacklog(5, wait_s=bad)


async def test_the_serializer_never_puts_more_than_the_limit_in_flight_and_counts_the_rest():
    parser = TwilioStreamParser()
    parser.feed(json.dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT)))
    backlog = InputBacklog(3, wait_s=0.01)
    ser = HardenedTwilioFrameSerializer(SID, CALL, ACCT, None, params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
                                        parser=parser, backlog=backlog)
    frames = []
    for i in range(10):
        frames.append(await ser.deserialize(json.dumps(media_message(stream_sid=SID, sequence_number=i + 2, chunk=i + 1,
                                                                     timestamp_ms=20 * i, payload=b"\xff" * 160))))
    assert sum(f is not None for f in frames) == 3 and backlog.in_flight == 3 and backlog.overflow == 7
    s = parser.stats
    assert s.dropped["input_overflow"] == 7 and s.received == s.accepted + s.dropped_total
