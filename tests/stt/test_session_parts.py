"""The session's pure pieces, clock-driven: AudioQueue, ReplayBuffer (and its aging), Backoff, ReconnectPolicy,
StreamLead, STTSessionParams."""

from __future__ import annotations

import grpc
import pytest

from pipecat_rxdrain.stt.audio_queue import AudioQueue, Pushed
from pipecat_rxdrain.stt.backoff import Backoff
from pipecat_rxdrain.stt.lead import StreamLead
from pipecat_rxdrain.stt.params import STTSessionParams
from pipecat_rxdrain.stt.recognition_config import MAX_REQUEST_BYTES
from pipecat_rxdrain.stt.reconnect import ReconnectPolicy, Verdict
from pipecat_rxdrain.stt.replay import ReplayBuffer
from pipecat_rxdrain.stt.session import StreamingSTTSession
from pipecat_rxdrain.testing import FakeClock
from tests.helpers.stt_session import spec_for

BPM = 16.0  # 8 kHz PCM16: bytes per ms
F20 = 320  # 20 ms
F95 = 1520  # a Pipecat-sized 95 ms chunk


def test_queue_bound_is_audio_time_whatever_the_chunk_size():
    q = AudioQueue(200, BPM)  # 200 frames = 4 s
    assert q.bound_bytes == 200 * F20
    for _ in range(60):  # 60 x 95 ms = 5.7 s: must be cut to <= 4 s
        q.push(b"\0" * F95)
    assert q.nbytes <= 200 * F20 and q.nbytes > 200 * F20 - F95
    assert len(q) == (200 * F20) // F95  # 42 chunks of 95 ms, not 200 of them (19 s)
    assert q.drops == 60 - len(q) and q.dropped_bytes == q.drops * F95
    assert q.backlog_frames() == pytest.approx(len(q) * F95 / F20)
    assert q.can_accept() == (q.nbytes + F20 <= q.bound_bytes)


def test_queue_drops_oldest_and_keeps_push_order():
    q = AudioQueue(3, BPM)
    for i in range(5):
        q.push(bytes([i]) * F20)
    assert not q.can_accept() and q.drops == 2
    batch = q.take(10 * F20)
    assert batch.data == bytes([2]) * F20 + bytes([3]) * F20 + bytes([4]) * F20


def test_writer_protocol_wakes_once_per_idle_spell_and_coalesces_while_busy():
    """The wake rule in isolation: an idle writer is woken by the first push only; pushes while it
    is busy cost no wake and go out together in the next take (up to the batch size)."""
    clock = FakeClock(0.0)
    q = AudioQueue(200, BPM, clock=clock)
    assert q.take(960) is None  # writer finds nothing: idle
    assert q.push(b"\1" * F20) is Pushed.WAKE  # the first push wakes it ...
    assert q.push(b"\2" * F20) is Pushed.QUEUED  # ... the next ones do not
    one = q.take(960)
    assert one.data == b"\1" * F20 + b"\2" * F20  # whatever piled up, at once (no fill wait)
    # The writer is busy writing now; five chunks arrive meanwhile: no wake.
    for i in range(5):
        clock.advance(0.02)
        assert q.push(bytes([10 + i]) * F20) is Pushed.QUEUED
    a = q.take(960)
    b = q.take(960)
    assert [len(a.data), len(b.data)] == [960, 640]  # batch_ms=60 caps a request; the rest follows
    assert [s[1] for s in a.stamps] == pytest.approx([0.02, 0.04, 0.06])  # push times ride along
    assert q.take(960) is None
    assert q.push(b"\3" * F20) is Pushed.WAKE  # idle again: exactly one wake


def test_queue_splits_an_oversized_chunk_at_a_sample_boundary_in_order():
    q = AudioQueue(10_000, BPM)
    q.push(bytes(range(256)) * 120)  # 30 720 B > one 25 KB request
    parts = []
    while (b := q.take(25 * 1024)) is not None:
        parts.append(b.data)
    assert [len(p) for p in parts] == [25 * 1024, 30720 - 25 * 1024]
    assert b"".join(parts) == bytes(range(256)) * 120


def test_queue_rejects_after_close_and_refuses_half_samples():
    q = AudioQueue(10, BPM)
    assert q.push(b"\0" * 3) is Pushed.MALFORMED and q.malformed == 1
    q.push(b"\0" * F20)
    q.close()
    assert q.push(b"\0" * F20) is Pushed.REJECTED and q.rejected == 1
    assert q.discard() == (1, F20) and len(q) == 0


def test_replay_ages_out_only_audio_pushed_before_the_cutoff():
    clock = FakeClock(100.0)
    q = AudioQueue(1000, BPM, clock=clock)
    rb = ReplayBuffer(10**6)
    for _ in range(10):  # one chunk per 0.5 s
        q.push(b"\7" * F20)
        clock.advance(0.5)
    batch = q.take(10**6)
    rb.append(batch.data, batch.stamps)
    assert rb.drop_older_than(102.0) == 4 * F20  # chunks pushed at 100, 100.5, 101, 101.5
    assert rb.start == 4 * F20 and len(rb) == 6 * F20 and rb.stale_bytes == 4 * F20
    rb.trim_to(7 * F20)  # a final
    assert rb.drop_older_than(102.0) == 0
    assert rb.drop_older_than(1000.0) == 3 * F20 and len(rb) == 0


def test_reconnect_policy_classifies_counts_and_resets_on_a_healthy_stream():
    p = ReconnectPolicy(Backoff(initial_s=0.1, max_s=0.4, jitter=0.0), max_consecutive_failures=4)
    assert p.on_error(grpc.StatusCode.PERMISSION_DENIED, stream_was_healthy=False).verdict is Verdict.FATAL
    assert p.on_error(None, stream_was_healthy=False).verdict is Verdict.FATAL  # not a gRPC error
    delays = [p.on_error(grpc.StatusCode.UNAVAILABLE, stream_was_healthy=False) for _ in range(3)]
    assert [d.verdict for d in delays] == [Verdict.RETRY] * 3
    assert [d.delay_s for d in delays] == pytest.approx([0.1, 0.2, 0.4])
    assert p.on_error(grpc.StatusCode.UNAVAILABLE, stream_was_healthy=False).verdict is Verdict.GIVE_UP
    # A stream that worked resets the count and the backoff.
    d = p.on_error(grpc.StatusCode.ABORTED, stream_was_healthy=True)
    assert d.verdict is Verdict.RETRY and d.failures == 1 and d.delay_s == pytest.approx(0.1)
    forever = ReconnectPolicy(Backoff(initial_s=0.0, max_s=0.0), max_consecutive_failures=0)
    assert all(forever.on_error(grpc.StatusCode.UNAVAILABLE, stream_was_healthy=False).verdict is Verdict.RETRY
               for _ in range(100))


def test_lead_bound_paces_a_replay_and_never_exceeds_it():
    clock = FakeClock(0.0)
    lead = StreamLead(1000.0, clock)
    waited = 0.0
    for _ in range(30):  # a 3 s replay in 100 ms pieces
        d = lead.delay_for(100.0)
        clock.advance(d)
        waited += d
        lead.sent(100.0)
        assert lead.lead_ms() <= 1000.0 + 1e-6
    assert lead.max_seen_ms == pytest.approx(1000.0)
    assert waited == pytest.approx(2.0)  # the first second of it at once, the rest at real time
    # Live audio at real time adds no lead and no wait.
    for _ in range(10):
        clock.advance(0.02)
        assert lead.delay_for(20.0) == 0.0
        lead.sent(20.0)
    unbounded = StreamLead(None, clock)
    assert unbounded.delay_for(10_000.0) == 0.0


def test_lead_is_measured_against_compressed_wall_time():
    clock = FakeClock(0.0)
    lead = StreamLead(1000.0, clock, rate=10.0)  # audio pushed at 10x real time
    clock.advance(0.1)
    assert lead.delay_for(1000.0) == 0.0  # 1 s of audio in 0.1 s at 10x: no lead
    assert lead.delay_for(3000.0) == pytest.approx(0.1)  # 1 s over the bound = 0.1 s of wall time at 10x


@pytest.mark.parametrize(
    "bad, name",
    [
        (dict(max_queue=0), "max_queue"),
        (dict(batch_ms=0), "batch_ms"),
        (dict(write_stall_s=0), "write_stall_s"),
        (dict(max_lead_ms=-1), "max_lead_ms"),
        (dict(max_consecutive_failures=-1), "max_consecutive_failures"),
        (dict(realtime_factor=0), "realtime_factor"),
    ],
)
def test_params_validate_and_name_the_setting(bad, name):
    with pytest.raises(ValueError, match=name):
        STTSessionParams(**bad)


def test_params_defaults_and_derived_bounds():
    p = STTSessionParams()
    assert (p.max_queue, p.batch_ms, p.max_lead_ms) == (200, 60.0, 5000.0)
    assert p.stall_bound_s == pytest.approx(4.0)  # the queue's audio time
    assert STTSessionParams.build(p, write_stall_s=1.5).stall_bound_s == 1.5
    with pytest.raises(TypeError, match="bogus"):
        STTSessionParams.build(bogus=1)


def test_queue_sends_a_chunk_bigger_than_the_batch_whole_when_it_fits_a_request():
    # Pipecat's Twilio serializer at 16 kHz hands out ~95 ms chunks (3032 B), over the 60 ms batch (1920 B).
    q = AudioQueue(1000, 32.0)
    for k in range(3):
        q.push(bytes([k]) * 3032)
    q.push(bytes([9]) * 640)
    sizes = []
    while (b := q.take(1920, 25 * 1024)) is not None:
        sizes.append(len(b.data))
    assert sizes == [3032, 3032, 3032, 640]  # one request per chunk, never split; small ones still coalesce
    q.push(b"\1" * 30720)
    assert [len(q.take(1920, 25 * 1024).data), len(q.take(1920, 25 * 1024).data)] == [25 * 1024, 30720 - 25 * 1024]


def test_replay_keeps_exactly_unfinalized_audio():
    rb = ReplayBuffer(max_bytes=10_000)
    rb.append(b"a" * 100)
    rb.append(b"b" * 100)
    assert (rb.start, rb.end, len(rb)) == (0, 200, 200)
    assert rb.trim_to(151) == 150  # aligned down to a whole sample
    assert b"".join(rb.pieces(1000)) == b"b" * 50
    assert rb.trim_to(10) == 0  # never moves backwards
    rb.append(b"c" * 30)
    assert b"".join(rb.pieces(1000)) == b"b" * 50 + b"c" * 30 and rb.start == 150


def test_replay_is_bounded_and_counts_overflow():
    rb = ReplayBuffer(max_bytes=100)
    for _ in range(5):
        rb.append(b"x" * 40)
    assert len(rb) <= 100 and rb.end == 200 and rb.start == 200 - len(rb)
    assert rb.overflow_bytes == rb.start


def test_replay_pieces_respect_request_cap():
    rb = ReplayBuffer(max_bytes=10**6)
    rb.append(b"\1\2" * 40_000)
    pieces = rb.pieces(MAX_REQUEST_BYTES)
    assert all(len(p) <= MAX_REQUEST_BYTES and len(p) % 2 == 0 for p in pieces)
    assert b"".join(pieces) == b"\1\2" * 40_000


def test_backoff_capped_exponential_with_jitter():
    b = Backoff(initial_s=0.1, max_s=1.0, multiplier=2, jitter=0.5, rng=lambda: 1.0)
    assert [round(b.next_delay(), 3) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next_delay() == pytest.approx(0.05)
    with pytest.raises(ValueError):
        Backoff(jitter=2)


def test_queue_drops_oldest_and_can_accept_reflects_room():
    s = StreamingSTTSession(spec_for(), lambda: None, max_queue=3, telemetry_interval_s=None)  # never started
    for i in range(5):
        assert s.push_audio(bytes([i]) * 320)
    assert not s.can_accept()
    st = s.stats
    assert st.q == 3 and st.drops == 2 and st.pushed_chunks == 5
    assert [s._queue.take(320).data[0] for _ in range(3)] == [2, 3, 4]  # the oldest went first
    assert s.push_audio(b"") is True and s.stats.pushed_chunks == 5  # empty audio is a no-op
    assert s.close(0)
    assert s.push_audio(b"\0" * 320) is False and s.stats.rejected == 1


def test_invalid_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="max_queue"):
        StreamingSTTSession(spec_for(), lambda: None, max_queue=0)
    with pytest.raises(ValueError, match="batch_ms"):
        StreamingSTTSession(spec_for(), lambda: None, batch_ms=0)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_audio_requests_are_the_official_message_on_the_wire(api):
    """The fast builder (a wrapped raw protobuf) must put the same bytes on the wire as the proto-plus constructor,
    and be the type the official client's serializer expects."""
    from google.cloud.speech_v1.types import cloud_speech as v1
    from google.cloud.speech_v2.types import cloud_speech as v2

    audio = bytes(range(256)) * 2
    request = spec_for(api).audio_request(audio)
    cls, expected = (
        (v2.StreamingRecognizeRequest, v2.StreamingRecognizeRequest(audio=audio))
        if api == "v2"
        else (v1.StreamingRecognizeRequest, v1.StreamingRecognizeRequest(audio_content=audio))
    )
    assert type(request) is cls
    assert cls.serialize(request) == cls.serialize(expected)
    assert spec_for(api).audio_request(audio) is not request  # a new message per call, never shared
