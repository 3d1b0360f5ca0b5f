"""Twilio Media Streams message validation: counted drops, never an exception."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipecat_rxdrain.twilio.messages import (
    Connected,
    DropReason,
    Dtmf,
    Mark,
    Media,
    Rejected,
    Start,
    Stop,
    TwilioStreamParser,
    connected_message,
    media_message,
    start_message,
    stop_message,
)

SID = "MZ" + "0" * 32
CALL = "CA" + "1" * 32
ACCT = "AC" + "2" * 32
FRAME = bytes(range(160))


def dumps(msg) -> str:
    return json.dumps(msg)


def started_parser(**kwargs) -> TwilioStreamParser:
    p = TwilioStreamParser(**kwargs)
    assert isinstance(p.feed(dumps(connected_message())), Connected)
    assert isinstance(
        p.feed(dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT, custom_parameters={"token": "t0p"}))),
        Start,
    )
    return p


def media(seq: int, chunk: int | None = None, payload: bytes = FRAME, **over) -> str:
    msg = media_message(stream_sid=SID, sequence_number=seq, chunk=chunk or seq - 1, timestamp_ms=(seq - 2) * 20, payload=payload)
    for k, v in over.items():
        if k in ("track", "payload_b64", "chunk_raw"):
            key = {"track": "track", "payload_b64": "payload", "chunk_raw": "chunk"}[k]
            msg["media"][key] = v
        else:
            msg[k] = v
    return dumps(msg)


def test_a_well_formed_stream_is_accepted_in_full():
    p = started_parser()
    assert p.start.custom_parameters == {"token": "t0p"}
    assert p.start.call_sid == CALL and p.start.stream_sid == SID and p.start.account_sid == ACCT
    for seq in range(2, 12):
        m = p.feed(media(seq))
        assert isinstance(m, Media) and m.payload == FRAME and m.chunk == seq - 1 and m.timestamp_ms == (seq - 2) * 20
    assert isinstance(p.feed(dumps({"event": "mark", "sequenceNumber": "12", "streamSid": SID, "mark": {"name": "m1"}})), Mark)
    dtmf = p.feed(dumps({"event": "dtmf", "sequenceNumber": "13", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": "5"}}))
    assert isinstance(dtmf, Dtmf) and dtmf.digit == "5"
    assert isinstance(p.feed(dumps(stop_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT, sequence_number=14))), Stop)
    s = p.stats
    assert (s.received, s.accepted, s.dropped_total) == (15, 15, 0)
    assert s.by_event["media"] == 10 and s.media_bytes == 1600
    assert s.sequence_gaps == 0 and s.chunk_gaps == 0


def test_start_repr_hides_custom_parameter_values():
    p = started_parser()
    assert "t0p" not in repr(p.start) and "t0p" not in str(p.start)


BAD_AFTER_START = [
    (b"\x00\x01binary", DropReason.BINARY),
    ("not json at all {", DropReason.NOT_JSON),
    ("[1, 2, 3]", DropReason.NOT_OBJECT),
    ('"just a string"', DropReason.NOT_OBJECT),
    (dumps({"media": {"payload": "AAAA"}}), DropReason.MISSING_EVENT),
    (dumps({"event": "hangup"}), DropReason.UNKNOWN_EVENT),
    (dumps({"event": 7}), DropReason.UNKNOWN_EVENT),
    (dumps({"event": "media", "sequenceNumber": "2", "streamSid": SID}), DropReason.BAD_FIELD),
    (dumps({"event": "media", "sequenceNumber": "x", "streamSid": SID, "media": {"payload": "AA=="}}), DropReason.BAD_FIELD),
    (media(2, payload_b64="%%%not base64%%%"), DropReason.BAD_BASE64),
    (media(2, payload_b64=""), DropReason.EMPTY_PAYLOAD),
    (media(2, payload=bytes(80)), DropReason.BAD_PAYLOAD_SIZE),
    (media(2, payload=bytes(320)), DropReason.BAD_PAYLOAD_SIZE),
    (media(2, track="outbound"), DropReason.OTHER_TRACK),
    (media(2, streamSid="MZother"), DropReason.WRONG_STREAM),
    (media(2, chunk_raw="-3"), DropReason.BAD_FIELD),
    (dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT, sequence_number=2)), DropReason.DUPLICATE_START),
    (dumps({"event": "dtmf", "sequenceNumber": "2", "streamSid": SID, "dtmf": {"digit": "Z"}}), DropReason.BAD_FIELD),
    ("x" * 20000, DropReason.OVERSIZED),
    (dumps({"event": "media", "pad": "é" * 9000}), DropReason.OVERSIZED),  # > 16 KiB once UTF-8 encoded
    ("[" * 5000 + "]" * 5000, DropReason.NOT_JSON),  # deep nesting: RecursionError, counted
]


@pytest.mark.parametrize("raw,reason", BAD_AFTER_START, ids=[r.value + str(i) for i, (_, r) in enumerate(BAD_AFTER_START)])
def test_each_kind_of_bad_input_is_a_counted_drop_and_the_stream_goes_on(raw, reason):
    p = started_parser()
    result = p.feed(raw)
    assert isinstance(result, Rejected) and result.reason is reason
    assert p.stats.dropped[reason] == 1
    # the next good frame is still accepted
    assert isinstance(p.feed(media(2)), Media)
    assert p.stats.received == p.stats.accepted + p.stats.dropped_total == 4


def test_media_before_start_and_after_stop_are_dropped():
    p = TwilioStreamParser()
    assert p.feed(media(2)).reason is DropReason.MEDIA_BEFORE_START
    assert p.feed(dumps({"event": "mark", "mark": {"name": "x"}})).reason is DropReason.MEDIA_BEFORE_START
    p.feed(dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT)))
    assert isinstance(p.feed(media(2)), Media)
    p.feed(dumps(stop_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT, sequence_number=3)))
    assert p.feed(media(4)).reason is DropReason.AFTER_STOP
    assert p.stats.dropped == {DropReason.MEDIA_BEFORE_START: 2, DropReason.AFTER_STOP: 1}


def test_duplicate_and_out_of_order_sequence_numbers_and_chunks():
    p = started_parser()
    assert isinstance(p.feed(media(5, chunk=4)), Media)
    assert p.feed(media(5, chunk=9)).reason is DropReason.DUPLICATE_SEQUENCE
    assert p.feed(media(3, chunk=9)).reason is DropReason.OUT_OF_ORDER
    assert p.feed(media(6, chunk=4)).reason is DropReason.DUPLICATE_SEQUENCE  # replayed chunk
    assert p.feed(media(7, chunk=2)).reason is DropReason.OUT_OF_ORDER
    assert isinstance(p.feed(media(9, chunk=7)), Media)
    # gaps are counted, not dropped: seq 1 -> 5 skips 3 numbers, 5 -> 9 skips 3; chunk 4 -> 7 skips 2
    assert p.stats.sequence_gaps == 6 and p.stats.chunk_gaps == 2
    assert p.stats.accepted == 4 and p.stats.dropped_total == 4


def test_frame_size_check_can_be_relaxed():
    p = started_parser(frame_bytes=None)
    assert isinstance(p.feed(media(2, payload=bytes(80))), Media)
    assert p.feed(media(3, payload_b64="")).reason is DropReason.EMPTY_PAYLOAD


def test_unsupported_media_format_is_refused_at_start():
    p = TwilioStreamParser()
    msg = start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT)
    msg["start"]["mediaFormat"]["sampleRate"] = 16000
    assert p.feed(dumps(msg)).reason is DropReason.BAD_FIELD
    assert not p.started


def test_invalid_parser_settings_raise_clearly():
    with pytest.raises(ValueError, match="max_message_bytes"):
        TwilioStreamParser(max_message_bytes=0)
    with pytest.raises(ValueError, match="frame_bytes"):
        TwilioStreamParser(frame_bytes=0)


def test_builders_produce_twilio_shapes():
    start = start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT, custom_parameters={"a": "b"})
    assert start["sequenceNumber"] == "1" and start["streamSid"] == SID
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    m = media_message(stream_sid=SID, sequence_number=2, chunk=1, timestamp_ms=0, payload=FRAME)
    assert m["media"] == {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": base64.b64encode(FRAME).decode()}
    assert connected_message() == {"event": "connected", "protocol": "Call", "version": "1.0.0"}


# ----------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
events = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "other", ""])


@st.composite
def twilio_like(draw):
    """Messages that look like Twilio's, with any field possibly wrong."""
    event = draw(events)
    msg: dict = {"event": event}
    if draw(st.booleans()):
        msg["sequenceNumber"] = draw(st.one_of(st.integers(-5, 40).map(str), st.integers(-5, 40), json_values))
    if draw(st.booleans()):
        msg["streamSid"] = draw(st.sampled_from([SID, "MZx", None, 3]))
    if event == "start":
        msg["start"] = draw(
            st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {"streamSid": st.just(SID), "callSid": st.sampled_from([CALL, None, 5])},
                    optional={
                        "customParameters": st.one_of(json_values, st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
                        "tracks": json_values,
                        "mediaFormat": json_values,
                    },
                ),
            )
        )
    elif event == "media":
        payload = draw(st.one_of(st.binary(min_size=0, max_size=400).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=30), json_values))
        msg["media"] = draw(
            st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {"payload": st.just(payload)},
                    optional={"chunk": st.one_of(st.integers(-3, 40).map(str), json_values), "track": st.sampled_from(["inbound", "outbound", 1])},
                ),
            )
        )
    elif event in ("dtmf", "mark", "stop"):
        msg[event] = draw(json_values)
    return json.dumps(msg)


raw_inputs = st.one_of(st.text(max_size=200), st.binary(max_size=200), twilio_like(), json_values.map(json.dumps))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_inputs, max_size=40))
def test_property_never_raises_and_the_books_add_up(stream):
    p = TwilioStreamParser()
    if len(stream) % 2:  # half the examples start properly, half throw garbage at a fresh stream
        p.feed(dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT)))
    last_seq = last_chunk = None
    for raw in stream:
        result = p.feed(raw)
        assert isinstance(result, (Connected, Start, Media, Dtmf, Mark, Stop, Rejected))
        assert p.stats.received == p.stats.accepted + p.stats.dropped_total
        if isinstance(result, Media):
            # accepted media: right size, strictly increasing numbering, only between start and stop
            assert len(result.payload) == 160 and p.started and not p.stopped
            if result.sequence_number is not None:
                assert last_seq is None or result.sequence_number > last_seq
                last_seq = result.sequence_number
            if result.chunk is not None:
                assert last_chunk is None or result.chunk > last_chunk
                last_chunk = result.chunk
        elif isinstance(result, Rejected):
            assert isinstance(result.reason, DropReason) and isinstance(result.detail, str)
    assert DropReason.INTERNAL not in p.stats.dropped  # no input reaches a bug path


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=60))
def test_property_any_order_of_sequence_numbers_accepts_exactly_the_strictly_increasing_ones(seqs):
    p = started_parser()
    accepted = [s for s in seqs if isinstance(p.feed(media(s + 1, chunk=s)), Media)]
    expected, high = [], 1  # start used sequenceNumber 1
    for s in seqs:
        if s + 1 > high:
            expected.append(s)
            high = s + 1
    assert accepted == expected
    assert p.stats.dropped[DropReason.DUPLICATE_SEQUENCE] + p.stats.dropped[DropReason.OUT_OF_ORDER] == len(seqs) - len(expected)


def test_a_wild_sequence_jump_is_dropped_and_forgotten_so_the_stream_goes_on():
    """Issue 14 row 13: one 19-digit sequenceNumber used to make every later frame 'out of order'."""
    p = TwilioStreamParser()
    p.feed(dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT)))
    frame = b"\xff" * 160
    results = [p.feed(dumps(media_message(stream_sid=SID, sequence_number=s, chunk=c, timestamp_ms=0, payload=frame)))
               for s, c in [(2, 1), (10**18, 2), (3, 2), (4, 10**17), (5, 3), (5 + 3001, 4), (6, 4)]]
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["Media", "Rejected", "Media", "Rejected", "Media", "Rejected", "Media"]
    assert p.stats.dropped == {DropReason.SEQUENCE_JUMP: 3}
    assert p.stats.received == p.stats.accepted + p.stats.dropped_total


@pytest.mark.parametrize("field,value", [
    ("callSid", "CA" + "1" * 31 + "\n"), ("callSid", "CA\x1b[2J" + "1" * 28), ("callSid", "CA" + "1" * 15_000),
    ("callSid", "XX" + "1" * 32), ("streamSid", "MZ-not-hex"), ("accountSid", "AC1"),
])
def test_start_needs_twilio_shaped_sids(field, value):
    """Issue 14 row 8: a callSid with a newline, ANSI codes or 15 KB reached the log as the call's tag."""
    msg = start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT)
    msg["start"][field] = value
    if field == "streamSid":
        msg["streamSid"] = value
    p = TwilioStreamParser(max_message_bytes=64 * 1024)
    r = p.feed(dumps(msg))
    assert isinstance(r, Rejected) and r.reason is DropReason.BAD_FIELD and value not in r.detail and not p.started


def _full_parse_only(p: TwilioStreamParser) -> TwilioStreamParser:
    """The same parser with its media fast path turned off: the reference the fast path must match."""
    p._fast_media = lambda raw: None  # type: ignore[method-assign]
    return p


def _state(p: TwilioStreamParser) -> tuple:
    return (p.stats.as_dict(), p._last_seq, p._last_chunk, p.started, p.stopped)


@st.composite
def media_variants(draw):
    """Well-formed media messages with, sometimes, one field bent in a way the fast path must notice."""
    seq = draw(st.integers(0, 3100))
    msg = media_message(stream_sid=SID, sequence_number=seq, chunk=draw(st.integers(0, 3100)), timestamp_ms=20 * seq, payload=FRAME)
    bend = draw(st.sampled_from(["none", "seq", "chunk", "timestamp", "payload", "track", "sid", "ws", "drop"]))
    odd = st.sampled_from([" 7", "7 ", "-3", "", "٣", "1e3", "99999999999999999999", 7, -7, True, None, 3.5, [], {}])
    if bend == "seq":
        msg["sequenceNumber"] = draw(odd)
    elif bend in ("chunk", "timestamp"):
        msg["media"][bend] = draw(odd)
    elif bend == "payload":
        msg["media"]["payload"] = draw(
            st.sampled_from(["", "====", "AAAA", "AA=A", "\u00e9" * 8, 5, None, base64.b64encode(FRAME).decode() + "=", base64.b64encode(FRAME[:-1]).decode()])
        )
    elif bend == "track":
        msg["media"]["track"] = draw(st.sampled_from(["outbound", None, 1, "inbound"]))
    elif bend == "sid":
        msg["streamSid"] = draw(st.sampled_from(["MZ" + "9" * 32, None, 3]))
    elif bend == "drop":
        del msg[draw(st.sampled_from(["sequenceNumber", "streamSid"]))]
    raw = json.dumps(msg)
    return " " + raw + "\n" if bend == "ws" else raw


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(media_variants(), raw_inputs), max_size=30))
def test_property_the_media_fast_path_gives_exactly_what_the_full_parse_gives(stream):
    fast, full = started_parser(), _full_parse_only(started_parser())
    for raw in stream:
        a, b = fast.feed(raw), full.feed(raw)
        assert a == b
        assert _state(fast) == _state(full)


def test_the_media_fast_path_takes_the_common_case():
    """A well-formed media message never reaches the full parse (so the fast path is the one measured)."""
    p = started_parser()
    full_parses = []
    original = p._parse
    p._parse = lambda raw: full_parses.append(raw) or original(raw)  # type: ignore[method-assign]
    for seq in range(2, 52):
        assert isinstance(p.feed(media(seq)), Media)
    assert full_parses == []
    assert isinstance(p.feed(media(60, payload=FRAME[:10])), Rejected)  # a bad one takes the full parse
    assert len(full_parses) == 1


def test_a_refused_start_is_flagged_so_the_server_can_stop_waiting():
    p = TwilioStreamParser()
    p.feed(dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    p.feed(dumps({"event": "media", "media": {}}))  # a bad non-start message does not count
    assert not p.start_refused
    bad = p.feed(dumps(start_message(stream_sid=SID, call_sid="CA\x1b[2J" + "3" * 30, account_sid=ACCT)))
    assert isinstance(bad, Rejected) and bad.reason is DropReason.BAD_FIELD
    assert p.start_refused and p.start is None

    ok = TwilioStreamParser()
    assert isinstance(ok.feed(dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT))), Start)
    assert isinstance(ok.feed(dumps(start_message(stream_sid=SID, call_sid=CALL, account_sid=ACCT))), Rejected)
    assert not ok.start_refused  # a duplicate start after a valid one is only a counted drop
