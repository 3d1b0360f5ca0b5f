"""The blocking baseline (pipecat_rxdrain.baseline) keeps the behaviour the demo and benchmarks compare against."""

from __future__ import annotations

import threading
import time

import pytest
from pipecat.frames.frames import InputAudioRawFrame, TranscriptionFrame
from pipecat.tests.utils import run_test

from pipecat_rxdrain.baseline import BlockingSyncWriter, PacedRxQueue
from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.samples import load_sample


def _frame(i: int) -> InputAudioRawFrame:
    return InputAudioRawFrame(audio=bytes([i]) * 320, sample_rate=8000, num_channels=1)


async def test_paced_queue_drops_the_oldest_counts_it_and_flushes_the_rest_in_order_at_the_end():
    paced = PacedRxQueue(max_queue=3)
    t0 = time.time()
    down, _ = await run_test(paced, frames_to_send=[_frame(i) for i in range(6)])
    audio = [f.audio[0] for f in down if isinstance(f, InputAudioRawFrame)]
    # the pacer releases one frame per 20 ms, so most of the burst waits; the oldest waiting ones go
    assert audio == sorted(audio) and audio[-1] == 5 and len(audio) + paced.drops == 6
    assert paced.drops >= 2 and paced.peak_q == 3 and paced.q == 0
    assert len(paced.stats["drop_times"]) == paced.drops and all(t >= t0 for t in paced.stats["drop_times"])
    assert paced.stats["frames_in"] == 6 and paced.stats["frames_out"] == len(audio)


def test_paced_queue_rejects_a_bad_bound():
    with pytest.raises(ValueError, match="max_queue"):
        PacedRxQueue(max_queue=0)


async def test_blocking_writer_writes_every_frame_to_one_stream_and_pushes_finals():
    sample = load_sample("hello_en")
    pcm = sample.pcm16 + b"\x00" * 16000
    frames = [InputAudioRawFrame(audio=pcm[i : i + 320], sample_rate=8000, num_channels=1) for i in range(0, len(pcm) - 319, 320)]
    with SpeechEmulator(script="hello_en") as emu:
        writer = BlockingSyncWriter(emu.address, language="en-US")
        down, _ = await run_test(writer, frames_to_send=frames, start_timeout=5.0)
        texts = [f.text for f in down if isinstance(f, TranscriptionFrame)]
        assert emu.stream_count == 1 and emu.stream().audio_bytes == 320 * len(frames)
    assert not [t for t in threading.enumerate() if t.name == "baseline-blocking-reader"]  # joined at the end
    assert not [f for f in down if isinstance(f, InputAudioRawFrame)]  # the writer is the end of the audio path
    assert texts and texts[0] == sample.segments[0]
