"""The demo's numbers (pipecat_rxdrain.demo.measure): pure functions over what the caller and emulator saw."""

from __future__ import annotations

import math

import pytest

from pipecat_rxdrain.demo.measure import (
    Chunk,
    audio_ages,
    burst_starts,
    chunks_of,
    finals_latency,
    percentile,
    reply_latency,
    speech_ends,
)
from pipecat_rxdrain.emulator.records import ChunkRecord, StreamRecord
from pipecat_rxdrain.samples import load_sample


def test_audio_age_is_receive_time_minus_send_time_per_frame():
    t0 = 100.0
    # a 60 ms batch of frames 0..2, received 10 ms after frame 2 was sent; then frame 3 on time
    chunks = [Chunk(0, 960, t0 + 0.05), Chunk(960, 320, t0 + 0.06)]
    ages = audio_ages(chunks, t0)
    assert [round(t, 3) for t, _ in ages] == [0.0, 0.02, 0.04, 0.06]
    assert [round(a, 3) for _, a in ages] == [0.05, 0.03, 0.01, 0.0]


def test_audio_age_counts_each_drop_before_a_write_as_one_older_frame_skipped():
    t0 = 0.0
    # frames 0 and 1 were dropped (drop-oldest) before the first write: the first byte is caller frame 2
    chunks = [Chunk(0, 320, 0.5), Chunk(320, 320, 0.6)]
    ages = audio_ages(chunks, t0, drop_times=[0.1, 0.2])
    assert [round(t, 3) for t, _ in ages] == [0.04, 0.06]
    assert [round(a, 3) for _, a in ages] == [0.46, 0.54]
    # a drop after the write does not move it
    assert round(audio_ages([Chunk(0, 320, 0.5)], t0, drop_times=[0.7])[0][0], 3) == 0.0


def test_chunks_of_continues_a_later_stream_where_the_last_ended():
    def stream(i, chunks):
        return StreamRecord(id=i, api="v2", peer="", session="s", metadata={}, started_at=0.0, chunks=chunks)

    s1 = stream(1, [ChunkRecord(0, 320, 1.0, 0), ChunkRecord(1, 320, 1.1, 320)])
    s2 = stream(2, [ChunkRecord(0, 640, 2.0, 0)])
    assert chunks_of([s2, s1]) == [Chunk(0, 320, 1.0), Chunk(320, 320, 1.1), Chunk(640, 640, 2.0)]


def test_bursts_and_the_reply_that_answers_each_utterance():
    assert burst_starts([1.0, 1.02, 1.04, 3.0, 3.02, 3.5]) == [1.0, 3.0]
    t0 = 10.0
    ends = [1.02, 4.02]  # last speech frames sent at t0 + 1.0 and t0 + 4.0
    sound = [11.5 + i * 0.02 for i in range(50)] + [15.0 + i * 0.02 for i in range(50)]
    finals = [11.3, 14.6]
    assert [round(x, 3) for x in reply_latency(sound, ends, t0, finals)] == [0.5, 1.0]
    # a reply cannot answer words not yet transcribed: with final 1 late, the first burst is too early for it
    late = reply_latency(sound, ends, t0, [11.3, 15.5])
    assert round(late[0], 3) == 0.5 and late[1] is None
    # a blocking path: final 1 after utterance 2 ended; the first reply answers utterance 1, not 2
    lagging = reply_latency([15.0 + i * 0.02 for i in range(50)], ends, t0, [14.8, 17.0])
    assert round(lagging[0], 3) == 4.0 and lagging[1] is None


def test_finals_latency_pairs_finals_with_utterances_in_order():
    assert [round(x, 3) for x in finals_latency([12.0, 10.9], [1.02, 2.02], 10.0)] == [-0.1, 0.0]
    assert finals_latency([], [1.0], 0.0) == []


def test_percentile_nearest_rank():
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("name, count", [("hello_en", 2), ("call_en", 5)])
def test_speech_ends_finds_one_end_per_scripted_segment(name, count):
    meta = load_sample(name)
    ends = speech_ends(meta.pcm16, meta.sample_rate)
    assert len(ends) == len(meta.segments) == count
    assert ends == sorted(ends) and 0 < ends[-1] <= meta.duration_s
