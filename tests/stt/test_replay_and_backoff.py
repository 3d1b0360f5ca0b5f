"""Pure pieces of the session: the replay buffer and the backoff policy."""

import pytest

from pipecat_rxdrain.stt.backoff import Backoff
from pipecat_rxdrain.stt.recognition_config import MAX_REQUEST_BYTES
from pipecat_rxdrain.stt.replay import ReplayBuffer
from pipecat_rxdrain.stt.session import StreamingSTTSession
from tests.helpers.stt_session import spec_for


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
