"""The writer, the write-stall watchdog, the lead bound and the I/O thread model, against the emulator."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from pipecat_rxdrain.emulator import EmulatorLimits, SpeechEmulator
from pipecat_rxdrain.emulator.stream import TOO_FAST
from pipecat_rxdrain.google_clients import emulator_client
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.stt.io_thread import IoThreadMode
from tests.helpers.stt_session import CHUNK, drain_results, feed, final_texts, make_session, spec_for, stt_threads
from tests.helpers.waiting import wait_until_blocking

HELLO = load_sample("hello_en")  # speech 0.52-2.78 s and 4.00-5.90 s


def busy_session(emu, max_level: int = 2):
    """A session on its own I/O thread whose meter calls any CPU share busy (it climbs a level per 50 ms)."""
    s = make_session(emu, max_queue=1000, io_thread=IoThreadMode.PER_SESSION)
    meter = s._io.meter
    meter.on_share = meter.off_share = 1e-9
    meter.window_s = 0.05
    meter.max_level = max_level
    return s, meter


def test_idle_writer_sends_each_chunk_at_once_and_coalesces_only_while_busy():
    with SpeechEmulator(script=list(HELLO.segments), small_window=True) as emu:
        # 0.3 s into the stream the server stops reading for 0.3 s: the writer blocks on HTTP/2.
        emu.faults.stall(0.3, after_s=0.3)
        s = make_session(emu, max_queue=1000)
        feed(s, HELLO.pcm16[: 8000 * 2 * 3], speed=2)  # a chunk every 10 ms for 1.5 s
        assert s.close(5)
        sizes = [c.size for c in emu.streams[0].chunks]
    assert max(sizes) <= 960  # never more than batch_ms (60 ms) per request
    # Idle: no fill wait, each 20 ms chunk goes in its own request as soon as it is pushed.
    assert sizes[1:21] == [CHUNK] * 20  # (the first may carry what arrived while the stream opened)
    # Busy (blocked by the stall): what piled up went together, in full 60 ms requests ...
    assert sizes.count(960) >= 5
    # ... and once caught up the writer is back to one chunk per request.
    assert sizes[-20:].count(CHUNK) >= 18
    assert sum(sizes) == 8000 * 2 * 3


def test_a_backlog_over_half_the_queue_drains_in_requests_up_to_25_kb():
    """After a stall that left more than half the 6 s queue waiting, the writer sends what is queued in
    requests up to Google's 25 KB (not 60 ms each), but never further than the stream is behind its wall
    clock; nothing is lost or reordered, and once caught up requests are back to batch_ms."""
    with SpeechEmulator(script=list(HELLO.segments), small_window=True) as emu:
        # At 2x real time, 5 s of audio piles up: over half of 6 s even when the HTTP/2 window took 1 s of it.
        emu.faults.stall(2.5, after_s=0.2)
        s = make_session(emu, max_queue=300)
        pcm = HELLO.pcm16[: 8000 * 2 * 6]
        feed(s, pcm, speed=2)
        assert s.close(5)
        stream = emu.streams[0]
        chunks = stream.chunks
        sizes = [c.size for c in chunks]
        assert s.stats.drops == 0
    assert sum(sizes) == len(pcm)
    assert [c.offset for c in chunks] == sorted(c.offset for c in chunks)
    assert max(sizes) <= 25 * 1024
    big = [c for c in chunks if c.size > 960]
    assert big and sum(c.size for c in big) >= 8000 * 2 * 1.0  # at least 1 s of the backlog went in requests over 60 ms
    for c in big:  # ... none of which ran ahead of the stream's wall clock (the client's opens a little earlier)
        audio_end_ms = (c.offset + c.size) / 16.0
        assert audio_end_ms <= (c.received_at - stream.started_at) * 1000 + 200, (audio_end_ms, c)
    assert max(sizes[-10:]) <= 960  # caught up: batch_ms again


def test_catching_up_never_puts_a_stream_ahead_of_its_wall_clock():
    """Audio pushed at 8x real time runs ahead of the stream's wall clock: a backlog over half the queue
    then still goes batch_ms per request (a 25 KB request would send audio faster than real time)."""
    with SpeechEmulator(script=list(HELLO.segments), small_window=True) as emu:
        # 3.6 s of audio piles up during the stall: over half of 4 s even when the HTTP/2 window took 1 s of it.
        emu.faults.stall(0.45, after_s=0.1)
        s = make_session(emu, max_queue=200)
        backlog: list[float] = []
        pcm = HELLO.pcm16[: 8000 * 2 * 5]
        feed(s, pcm, speed=8, on_push=lambda x: backlog.append(x.stats.backlog_frames))
        assert s.close(5)
        sizes = [c.size for c in emu.streams[0].chunks]
    assert max(backlog) > 100  # the backlog did pass half the queue
    assert max(sizes) <= 960 and sum(sizes) == len(pcm)


def test_while_the_process_is_busy_a_stream_sends_fuller_requests():
    """While the process measures itself busy, a stream's oldest queued chunk waits up to batch_ms - 20 ms, so
    each request carries about batch_ms (60 ms) of audio; none is lost or reordered.
    (The meter is told any CPU share is busy.)"""
    with SpeechEmulator(script=list(HELLO.segments)) as emu:
        s, _ = busy_session(emu)
        pcm = HELLO.pcm16[: 8000 * 2 * 2]
        feed(s, pcm, speed=1.0)  # a chunk every 20 ms for 2 s
        assert s.close(5)
        sizes = [c.size for c in emu.streams[0].chunks]
        offsets = [c.offset for c in emu.streams[0].chunks]
    assert s.stats.spaced_requests > 0
    assert max(sizes) <= 960 and sum(sizes) == len(pcm)
    assert sizes.count(960) >= len(sizes) // 2  # mostly three 20 ms chunks per request
    assert len(sizes) <= len(pcm) // CHUNK // 2  # at most half the requests of one per chunk
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]  # in order, nothing skipped


def test_at_the_first_busy_level_a_stream_waits_one_frame_not_a_whole_batch():
    """Level 1 (the load needs only a little relief): the oldest chunk waits 20 ms, so requests carry
    two 20 ms chunks, not batch_ms (60 ms); nothing lost or reordered."""
    with SpeechEmulator(script=list(HELLO.segments)) as emu:
        s, _ = busy_session(emu, max_level=1)
        pcm = HELLO.pcm16[: 8000 * 2 * 2]
        feed(s, pcm, speed=1.0)
        assert s.close(5)
        sizes = [c.size for c in emu.streams[0].chunks]
        offsets = [c.offset for c in emu.streams[0].chunks]
    assert s.stats.spaced_requests > 0
    assert sizes.count(2 * CHUNK) >= len(sizes) // 2  # mostly two chunks per request
    assert sizes.count(960) <= len(sizes) // 10  # rarely a full batch (a late wake-up)
    assert sum(sizes) == len(pcm) and offsets == [sum(sizes[:i]) for i in range(len(sizes))]


def test_while_busy_a_chunk_longer_than_one_frame_does_not_wait():
    """RxDrainProcessor merges frames for the same busy signal: its 40 ms chunks go at once, also
    at level 2, where single frames would wait for a 60 ms request (no second wait on top)."""
    with SpeechEmulator(script=list(HELLO.segments)) as emu:
        s, meter = busy_session(emu)
        pcm = HELLO.pcm16[: 8000 * 2 * 2]
        feed(s, pcm, speed=1.0, chunk=2 * CHUNK)
        assert s.close(5)
        sizes = [c.size for c in emu.streams[0].chunks]
    assert meter.level() == meter.max_level == 2  # busy all along
    assert s.stats.spaced_requests == 0
    assert sum(sizes) == len(pcm) and sizes.count(2 * CHUNK) >= len(sizes) * 9 // 10


def test_watchdog_cancels_a_stalled_stream_and_replays_only_young_audio_each_word_once():
    bound, speed = 0.4, 2.0
    with SpeechEmulator(script=list(HELLO.segments), small_window=True) as emu:
        # The server stops reading 3.7 s into the audio (after the first final, in the pause)
        # and would stay stalled longer than the whole call.
        emu.faults.stall(30.0, after_s=3.7 / speed)
        s = make_session(emu, max_queue=1000, write_stall_s=bound)
        t0 = time.monotonic()
        feed(s, HELLO.pcm16, speed=speed)
        assert s.close(5)
        st = s.stats
        streams = emu.streams
    results = drain_results(s)
    assert final_texts(results) == list(HELLO.segments)  # every word once, in order
    assert st.duplicate_finals_suppressed == 0
    assert st.write_stalls == 1 and len(streams) == 2 and streams[0].end.reason == "client_cancelled"
    assert st.stale_dropped_ms > 0  # what HTTP/2 swallowed for the stalled stream was too old to replay
    # No audio older than the bound reached the server: stream 1 until it stalled, then stream 2,
    # which starts at the young end of the replay buffer (everything after it went to stream 2).
    period = CHUNK / 16000.0 / speed
    origin2 = len(HELLO.pcm16) - streams[1].audio_bytes
    ages = [c.received_at - (t0 + (c.offset // CHUNK) * period) for c in streams[0].chunks]
    ages += [c.received_at - (t0 + ((origin2 + c.offset) // CHUNK) * period) for c in streams[1].chunks]
    assert max(ages) < bound + 0.25, max(ages)


def _feed_realtime_with_abort(emu, **kw):
    # Abort 2.5 s in, mid-utterance: the new stream must re-hear ~2.5 s of unfinalized audio.
    emu.faults.abort(after_s=2.5, code="UNAVAILABLE")
    s = make_session(emu, max_queue=1000, **kw)
    feed(s, HELLO.pcm16[: 8000 * 2 * 4], speed=1.0)
    assert s.close(5)
    return s


def test_replay_respects_the_lead_bound_so_google_never_says_too_fast():
    with SpeechEmulator(script=list(HELLO.segments), limits=EmulatorLimits(max_lead_s=1.0)) as emu:
        s = _feed_realtime_with_abort(emu, max_lead_ms=800)
        reasons = [r.end.reason for r in emu.streams]
    st = s.stats
    assert "too_fast" not in reasons, reasons
    assert st.replayed_ms >= 2000 and st.reconnects == 1
    assert 700 <= st.max_lead_ms <= 800 + 1  # paced at the bound, never past it
    assert final_texts(drain_results(s)) == [HELLO.segments[0]]


def test_an_unpaced_replay_is_refused_by_the_emulator_lead_limit():
    """The control for the test above: the same call without a lead bound trips the limit."""
    with SpeechEmulator(script=list(HELLO.segments), limits=EmulatorLimits(max_lead_s=1.0)) as emu:
        s = _feed_realtime_with_abort(emu, max_lead_ms=None)
        ends = [r.end for r in emu.streams]
    assert any(e.reason == "too_fast" for e in ends)
    assert s.stats.max_lead_ms > 1000


def test_emulator_lead_limit_answers_with_googles_text():
    from google.cloud.speech_v2.types import cloud_speech

    spec = spec_for("v2")
    with SpeechEmulator(limits=EmulatorLimits(max_lead_s=0.5)) as emu:
        client = emulator_client(emu.address, api="v2")
        one_s = b"\0" * 16000

        def requests():
            yield spec.config_request()
            for _ in range(2):  # 2 s of audio at once
                yield cloud_speech.StreamingRecognizeRequest(audio=one_s)

        with pytest.raises(Exception) as info:
            for _ in client.streaming_recognize(requests=requests()):
                pass
        client.transport.close()
    err = info.value
    assert getattr(err, "grpc_status_code", None) == grpc.StatusCode.OUT_OF_RANGE
    assert TOO_FAST in str(err)
    assert TOO_FAST == "Audio data is being streamed too fast. Please stream audio data approximately at real time."


@pytest.mark.parametrize("mode, expected_threads", [(IoThreadMode.SHARED, 1), (IoThreadMode.PER_SESSION, 3)])
def test_io_thread_model_and_every_thread_stops(mode, expected_threads):
    with SpeechEmulator(script=list(HELLO.segments)) as emu:
        sessions = [make_session(emu, max_queue=1000, io_thread=mode) for _ in range(3)]
        for s in sessions:
            s.push_audio(HELLO.pcm16[:CHUNK])
        assert wait_until_blocking(lambda: emu.stream_count == 3, 5)
        names = {t.name for t in threading.enumerate() if t.name.startswith("rxdrain-stt")}
        assert len(names) == expected_threads, names
        for s in sessions:
            assert s.close(3)
    assert stt_threads() == []


def test_a_drop_storm_logs_a_rate_limited_warning():
    from loguru import logger

    lines = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING",
                      filter=lambda r: "dropped" in r["message"])
    try:
        with SpeechEmulator(script=list(HELLO.segments), small_window=True) as emu:
            emu.faults.stall(5.0, after_chunks=2)
            s = make_session(emu, max_queue=10, telemetry_interval_s=0.1, drop_warning_interval_s=0.5,
                             write_stall_s=30.0)
            feed(s, HELLO.pcm16[: 8000 * 2 * 2], speed=1.0)  # 2 s of audio into a 0.2 s queue
            drops = s.stats.drops
            assert s.close(0.5)
    finally:
        logger.remove(sink)
    assert drops > 50
    storm = [m for m in lines if "queued audio chunk" in m]
    assert 2 <= len(storm) <= 5, storm  # once per 0.5 s at most, not once per drop


def test_audio_still_queued_when_close_gives_up_is_counted_in_drops():
    with SpeechEmulator(script=list(HELLO.segments), small_window=True) as emu:
        emu.faults.stall(30.0, after_chunks=2)
        s = make_session(emu, max_queue=1000, close_timeout_s=0.3, drain_timeout_s=0.2)
        durations = feed(s, HELLO.pcm16[: 8000 * 2 * 3], speed=4)
        assert s.close()
        st = s.stats
    assert st.discarded_on_close > 0 and st.drops >= st.discarded_on_close
    assert st.audio_sent_ms * 16 / CHUNK + st.drops == len(durations) == st.pushed_chunks  # nothing silent
