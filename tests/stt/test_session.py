"""StreamingSTTSession against the emulator over real loopback sockets."""

from __future__ import annotations

import time
from collections import deque

import grpc
import pytest
from loguru import logger

from pipecat_rxdrain.emulator import EmulatorLimits, SpeechEmulator
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.stt.backoff import Backoff
from pipecat_rxdrain.telemetry import STT_LINE_RE
from tests.helpers.stt_session import CHUNK, drain_results, feed, final_texts, make_session, spec_for, stt_threads
from tests.helpers.waiting import wait_until_blocking

HELLO = load_sample("hello_en")
CALL = load_sample("call_en")


@pytest.fixture
def hello_emu():
    with SpeechEmulator(script=list(HELLO.segments)) as emu:
        yield emu


@pytest.fixture
def call_emu():
    with SpeechEmulator(script=list(CALL.segments)) as emu:
        yield emu


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_finals_and_interims_with_session_times(hello_emu, api):
    s = make_session(hello_emu, api=api, max_queue=1000)
    feed(s, HELLO.pcm16, speed=8)
    assert s.close(5)
    results = drain_results(s)
    assert final_texts(results) == list(HELLO.segments)
    assert any(not r.is_final for r in results), "expected interims"
    finals = [r for r in results if r.is_final]
    assert 0 < finals[0].end_ms < finals[1].end_ms <= HELLO.duration_s * 1000 + 1
    stream = hello_emu.streams[-1]
    assert stream.api == api and len(hello_emu.streams) == 1
    # Every request respected the batch size (60 ms = 960 B at 8 kHz) and all audio arrived once.
    assert max(c.size for c in stream.chunks) <= 960
    assert stream.audio_bytes == len(HELLO.pcm16) == s.stats.audio_sent_ms * 16
    assert s.stats.duplicate_finals_suppressed == 0


def test_no_stream_before_audio(hello_emu):
    s = make_session(hello_emu)
    time.sleep(0.4)
    assert hello_emu.streams == []
    s.push_audio(b"\0" * CHUNK)
    assert wait_until_blocking(lambda: len(hello_emu.streams) == 1, 5)
    assert s.close(3)


def test_abort_mid_utterance_reconnects_and_replays_each_word_once(call_emu):
    # ~1.7 s into the call, inside the first sentence.
    call_emu.faults.abort(after_chunks=30, code="UNAVAILABLE")
    call_emu.faults.abort(after_chunks=80, code="ABORTED")  # and again on the reconnected stream
    s = make_session(call_emu, max_queue=2000)
    feed(s, CALL.pcm16, speed=10)
    assert s.close(8)
    results = drain_results(s)
    assert final_texts(results) == list(CALL.segments)
    st = s.stats
    assert st.reconnects >= 2 and st.replayed_ms > 0
    assert len(call_emu.streams) >= 3
    ends = [r.end_ms for r in results if r.is_final]
    assert ends == sorted(ends)


def test_proactive_rotation_over_a_long_call(call_emu):
    s = make_session(call_emu, max_queue=2000, stream_limit_s=1.0, rotate_grace_s=0.5)
    feed(s, CALL.pcm16 + CALL.pcm16[: 8000 * 2], speed=6)  # 24.9 s of audio in ~4 s
    assert s.close(8)
    results = drain_results(s)
    texts = final_texts(results)
    assert texts[: len(CALL.segments)] == list(CALL.segments)
    assert s.stats.rotations >= 2
    assert len(call_emu.streams) >= 3
    # No stream outlived the limit by more than the grace (+ scheduling slack).
    for rec in call_emu.streams:
        if rec.end:
            assert rec.end.at - rec.started_at < 1.0 + 0.5 + 1.5
            assert rec.end.reason in ("half_close", "client_cancelled")


def test_server_stall_never_blocks_push_and_drops_oldest_counted():
    with SpeechEmulator(script=list(CALL.segments), small_window=True) as emu:
        emu.faults.stall(3.0, after_chunks=5)
        cap = 50
        s = make_session(emu, max_queue=cap)
        seen_q = []
        durations = feed(s, CALL.pcm16[: 8000 * 2 * 8], speed=2, on_push=lambda ss: seen_q.append(ss.stats.q))
        assert s.close(8)
        st = s.stats
        assert max(seen_q) <= cap
        assert st.drops > 0
        pushed = len(durations)
        sent_chunks = st.audio_sent_ms * 16 / CHUNK
        assert st.pushed_chunks == pushed
        assert sent_chunks + st.drops == pushed  # every chunk was either sent or counted as dropped
        # The 3 s stall outlasts the 1 s queue (50 frames), so the write-stall watchdog cancels the
        # stream: what HTTP/2 had accepted for it is lost in flight, and was all older than the
        # bound (not replayed, counted in stale_dropped_ms); everything else reached the server.
        assert st.write_stalls == 1 and len(emu.streams) == 2
        received = sum(r.audio_bytes for r in emu.streams)
        handed = st.audio_sent_ms * 16 + st.replayed_ms * 16
        assert 0 <= handed - received <= st.stale_dropped_ms * 16
        print(f"push_audio worst case during a 3 s stall: {max(durations) * 1e6:.0f} us; write_ms max {st.write_ms_max:.0f}")
        assert st.write_ms_max > 100  # the stall was felt by the writer, not by push_audio


def test_non_retriable_error_surfaces_once_without_retry_storm(hello_emu):
    errors = []
    # Persistent refusal, as Google would answer every attempt. grpc.aio sometimes reports a
    # server's immediate refusal as INTERNAL "Internal error from Core" (a client-side race
    # with the writes); INTERNAL is retried, so the real code surfaces within a few attempts.
    hello_emu.faults.refuse(20, code="PERMISSION_DENIED", details="caller lacks speech.recognizers.recognize")
    s = make_session(hello_emu, on_error=errors.append)
    feed(s, HELLO.pcm16[: 8000 * 2], speed=10)
    assert wait_until_blocking(lambda: errors, 5)
    n_streams = len(hello_emu.streams)
    time.sleep(0.3)
    assert len(errors) == 1
    assert errors[0].code == grpc.StatusCode.PERMISSION_DENIED and not errors[0].retriable
    assert "PERMISSION_DENIED" in str(errors[0]) and "speech.recognizers.recognize" in str(errors[0])
    assert n_streams <= 8 and len(hello_emu.streams) == n_streams  # stopped retrying at once
    assert s.push_audio(b"\0" * CHUNK) is False
    assert s.stats.state == "failed"
    assert s.close(2)


def test_retriable_refusals_back_off_then_recover(hello_emu):
    hello_emu.faults.refuse(3, code="UNAVAILABLE")
    delays = []

    class Recording(Backoff):
        def next_delay(self):
            d = super().next_delay()
            delays.append(d)
            return d

    s = make_session(hello_emu, max_queue=1000, backoff=Recording(initial_s=0.05, max_s=0.12, jitter=0.5, rng=lambda: 0.0))
    feed(s, HELLO.pcm16, speed=8)
    assert s.close(5)
    assert final_texts(drain_results(s)) == list(HELLO.segments)
    # Capped exponential. (A refusal that grpc.aio masks as INTERNAL is re-asked with a
    # sync probe, which consumes a refusal itself, so there may be fewer than 3 delays.)
    assert 1 <= len(delays) <= 3 and delays == [0.05, 0.1, 0.12][: len(delays)]
    assert s.stats.reconnects == len(delays)
    assert sum(r.end.reason == "refused" for r in hello_emu.streams) == 3
    assert hello_emu.streams[-1].end.reason == "half_close"


def test_retries_are_capped(hello_emu):
    errors = []
    hello_emu.faults.refuse(50, code="UNAVAILABLE")
    s = make_session(hello_emu, on_error=errors.append, max_consecutive_failures=4,
                     backoff=Backoff(initial_s=0.01, max_s=0.02))
    feed(s, HELLO.pcm16[: 8000 * 2 * 2], speed=2)  # audio keeps flowing, as on a call
    assert wait_until_blocking(lambda: errors, 5)
    n = len(hello_emu.streams)
    time.sleep(0.3)
    # 4 attempts, each possibly followed by one sync probe (see _masked_by_grpc_aio); then nothing more.
    assert 4 <= n <= 8 and len(hello_emu.streams) == n
    assert len(errors) == 1 and errors[0].retriable
    assert s.close(2)


def test_close_never_hangs_on_a_stalled_server():
    with SpeechEmulator(script=list(HELLO.segments), small_window=True) as emu:
        emu.faults.stall(30.0, after_chunks=2)
        s = make_session(emu, max_queue=500, close_timeout_s=0.5, drain_timeout_s=0.3)
        feed(s, HELLO.pcm16[: 8000 * 2 * 4], speed=20)
        t0 = time.monotonic()
        assert s.close()
        print(f"close() on a stalled server took {time.monotonic() - t0:.2f}s (bound 0.5s)")
        assert stt_threads() == []


def test_update_spec_restarts_stream_without_losing_audio(call_emu):
    s = make_session(call_emu, max_queue=2000)
    half = (len(CALL.pcm16) // 2) // CHUNK * CHUNK
    feed(s, CALL.pcm16[:half], speed=10)
    s.update_spec(spec_for("v2", languages=("en-GB",)))
    feed(s, CALL.pcm16[half:], speed=10)
    assert s.close(8)
    assert final_texts(drain_results(s)) == list(CALL.segments)
    langs = [r.config for r in call_emu.streams]
    assert len(call_emu.streams) >= 2
    assert "en-GB" in str(langs[-1]) and "en-GB" not in str(langs[0])


def test_inactivity_abort_reopens_on_next_audio():
    with SpeechEmulator(script=list(HELLO.segments), limits=EmulatorLimits(inactivity_timeout_s=0.4)) as emu:
        s = make_session(emu, max_queue=1000)
        feed(s, HELLO.pcm16[: 8000 * 2 * 3], speed=10)
        assert wait_until_blocking(lambda: emu.streams and emu.streams[0].ended, 5)
        time.sleep(0.3)
        assert len(emu.streams) == 1  # no reconnect storm while idle
        feed(s, HELLO.pcm16[8000 * 2 * 3 :], speed=10)
        assert s.close(5)
        assert final_texts(drain_results(s)) == list(HELLO.segments)
        assert s.stats.last_error and "ABORTED" in s.stats.last_error


def test_telemetry_lines_tagged_with_callers_context(hello_emu):
    lines = []
    sink = logger.add(lambda m: lines.append(m.record), level="INFO", filter=lambda r: r["message"].startswith("[STT]"))
    try:
        with logger.contextualize(call_sid="CA-test-123"):
            s = make_session(hello_emu, telemetry_interval_s=0.2, max_queue=1000)
        feed(s, HELLO.pcm16[: 8000 * 2 * 2], speed=2)
        assert s.close(3)
    finally:
        logger.remove(sink)
    assert len(lines) >= 3
    for rec in lines:
        assert STT_LINE_RE.match(rec["message"]), rec["message"]
        assert rec["extra"].get("call_sid") == "CA-test-123"
        assert rec["thread"].name.startswith("rxdrain-stt")


def test_push_audio_api_contract(hello_emu):
    s = make_session(hello_emu, max_queue=3)
    assert s.can_accept()
    for _ in range(3):
        assert s.push_audio(b"\1\0" * 160)
    assert s.close(3)
    assert s.push_audio(b"\0" * CHUNK) is False
    assert s.stats.rejected == 1
    assert stt_threads() == []


class _BrokenDeque(deque):
    """The session's chunk deque with a bug in it: taking audio raises (a stand-in for any writer-side bug)."""

    def popleft(self):
        raise RuntimeError("writer bug (test)")


def test_an_exception_in_the_request_writer_fails_the_session_loudly(hello_emu):
    # grpc.aio swallows a request iterator's exception (DEBUG log) and cancels the call; that must not
    # pass for our own cancel, or the session reopens a stream per chunk forever, each losing its audio.
    errors = []
    s = make_session(hello_emu, on_error=errors.append)
    with s._lock:
        s._q = _BrokenDeque(s._q)
    s.push_audio(b"\0" * CHUNK)
    assert wait_until_blocking(lambda: errors, 5)
    time.sleep(0.3)
    assert len(errors) == 1 and not errors[0].retriable
    assert "RuntimeError" in str(errors[0]) and "writer bug (test)" in str(errors[0])
    assert len(hello_emu.streams) == 1  # no silent reopen loop
    assert s.stats.state == "failed" and s.stats.discarded_on_error == 1  # the chunk is counted, not lost
    assert s.close(2)
