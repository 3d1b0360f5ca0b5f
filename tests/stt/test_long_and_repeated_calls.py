"""Long and repeated calls leave nothing behind: a 30-minute call time-compressed, and 12 sequential pipeline calls in one process.

The long call drives ``StreamingSTTSession`` against the emulator as fast as the
session accepts audio (the feeder waits on ``can_accept()``, as ``RxDrainProcessor``
does with its sink), with an audio-time clock so proactive rotation happens on
audio time: 30 minutes of audio, a stream every 60 s of it. Counts are checked, not
just "no exception": finals exact, threads / tasks / file descriptors back to the
baseline after every call, RSS flat (bounded growth).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid

import psutil
import pytest
from pipecat.frames.frames import EndFrame, InputAudioRawFrame, TranscriptionFrame

from pipecat_rxdrain import RxDrainParams, RxDrainProcessor
from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.google_clients import EMULATOR_ENV, SESSION_METADATA_KEY, emulator_client
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.stt.backoff import Backoff
from pipecat_rxdrain.stt.recognition_config import build_v2_spec, recognizer_path
from pipecat_rxdrain.stt.service import GoogleSTTService
from pipecat_rxdrain.stt.session import StreamingSTTSession
from pipecat_rxdrain.testing import FakeClock
from tests.helpers.pipeline import run_pipeline
from tests.helpers.stt_session import stt_threads

CALL = load_sample("call_en")
HELLO = load_sample("hello_en")
PROC = psutil.Process()


def settle(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        gc.collect()
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_thirty_minute_call_rotates_many_times_loses_nothing_and_stays_flat():
    repeats = 79  # 79 x 22.9 s = 30.2 minutes of audio
    chunk = 1600  # 100 ms per push
    script = list(CALL.segments) * repeats
    audio_clock = FakeClock(0.0)  # session time = audio time pushed so far
    with SpeechEmulator(script=script) as emu:
        threads_before = threading.active_count()
        fds_before = PROC.num_fds()
        finals: list = []
        s = StreamingSTTSession(
            build_v2_spec(sample_rate=8000, recognizer=recognizer_path("rxdrain-long", "global"),
                          language_codes=["en-US"], model="latest_long"),
            lambda: emulator_client(emu.address, api="v2", asynchronous=True),
            on_result=lambda r: finals.append(r) if r.is_final else None,
            max_queue=200,
            batch_ms=200,
            # At ~500x real time the recognizer's finals trail the sent audio by tens of seconds of
            # audio (tens of ms of wall time), so the replay window is scaled up with the compression.
            max_replay_ms=300_000,
            stream_limit_s=60.0,
            rotate_grace_s=10.0,
            clock=audio_clock,
            max_lead_ms=None,  # ~500x real time: a lead bound would pace it back to real time
            write_stall_s=60.0,  # session time is audio time: an 8 ms write is 4 s of it at ~500x
            telemetry_interval_s=None,
            backoff=Backoff(initial_s=0.05, max_s=0.2, rng=lambda: 0.5),
            metadata=[(SESSION_METADATA_KEY, str(uuid.uuid4()))],
        ).start()
        rss: dict[int, float] = {}
        t0 = time.monotonic()
        pushed_s = 0.0
        for rep in range(repeats):
            for i in range(0, len(CALL.pcm16), chunk):
                deadline = time.monotonic() + 10
                while not s.can_accept(chunk):  # back-pressure, like RxDrainProcessor with its sink
                    assert time.monotonic() < deadline, "the session stopped taking audio"
                    time.sleep(0.001)
                piece = CALL.pcm16[i : i + chunk]
                assert s.push_audio(piece)
                pushed_s += len(piece) / 16000.0
                audio_clock.set(pushed_s)
            minute = int(pushed_s // 60)
            if minute in (10, 20, 30) and minute not in rss:
                gc.collect()
                rss[minute] = PROC.memory_info().rss / 1e6
        assert s.close(10)
        wall = time.monotonic() - t0
        st = s.stats
        print(
            f"30-min call: {pushed_s / 60:.1f} min of audio in {wall:.1f} s ({pushed_s / wall:.0f}x), "
            f"{st.streams_opened} streams, {st.rotations} rotations, {len(finals)} finals, RSS at 10/20/30 min: {rss}"
        )
        assert pushed_s >= 30 * 60
        # Every utterance exactly once, at the right place in the session's audio, across every
        # rotation: finals by repetition of the sample, and their end offsets within it. (Texts are
        # not compared: the scripted emulator numbers a final it sent on a stream the client had
        # just cancelled, so its script drifts; the positions are the ground truth.)
        period_ms = len(CALL.pcm16) / 16.0
        ends = [r.end_ms for r in finals]
        assert ends == sorted(ends) and len(set(ends)) == len(ends)
        assert len(finals) == len(script)
        per_rep = [[e - k * period_ms for e in ends if k * period_ms <= e < (k + 1) * period_ms] for k in range(repeats)]
        reference = per_rep[0]
        assert len(reference) == len(CALL.segments)
        for k, offsets in enumerate(per_rep):
            assert len(offsets) == len(reference), k
            assert all(abs(a - b) <= 40 for a, b in zip(offsets, reference)), (k, offsets, reference)
        assert st.drops == 0 and st.reconnects == 0 and st.replay_overflow_ms == 0
        assert st.rotations >= 25 and st.streams_opened == st.rotations + 1
        assert st.audio_sent_ms == pytest.approx(pushed_s * 1000)
        # RSS flat: the second 20 minutes cost (almost) nothing (the emulator's own records included).
        assert rss[30] - rss[10] < 25, rss
        assert stt_threads() == []
        assert settle(lambda: threading.active_count() <= threads_before and PROC.num_fds() <= fds_before), (
            threading.active_count(), threads_before, PROC.num_fds(), fds_before)


# -- many sequential calls through a real Pipecat pipeline -----------------------------------------


async def one_call(pcm: bytes) -> list[str]:
    stt = GoogleSTTService(sample_rate=8000, max_queue=200, debounce_ms=None, final_timeout_ms=None,
                           telemetry_interval_s=None)
    rx = RxDrainProcessor(params=RxDrainParams(telemetry_interval_s=60.0), sink=stt)

    async def caller(worker, src, dst):
        for n, i in enumerate(range(0, len(pcm), 320)):
            await worker.queue_frame(InputAudioRawFrame(audio=pcm[i : i + 320], sample_rate=8000, num_channels=1))
            if n % 25 == 24:
                await asyncio.sleep(0.02)  # 20x real time
        await asyncio.sleep(0.3)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([rx, stt], caller)
    assert stt.final_stats is not None and stt.final_stats.drops == 0
    one_call.last = (stt.final_stats, rx.stats, stt.audio_rejected)
    return [f.text for f in dst.down(TranscriptionFrame)]


async def test_twelve_sequential_calls_leave_nothing_behind():
    with SpeechEmulator(script=["hello I would like to book an appointment"] * 100) as emu:
        mp = pytest.MonkeyPatch()
        mp.setenv(EMULATOR_ENV, emu.address)
        try:
            pcm = HELLO.pcm16[: int(4.0 * 16000)]  # the first sentence
            await one_call(pcm)  # warm-up: imports, gRPC's process-wide poller thread
            gc.collect()
            base_threads = threading.active_count()
            base_fds = PROC.num_fds()
            base_tasks = len([t for t in asyncio.all_tasks() if not t.done()])
            rss = []
            for k in range(12):
                finals = await one_call(pcm)
                assert finals == ["hello I would like to book an appointment"], (k, finals, one_call.last, emu.stream(-1))
                end = time.monotonic() + 5
                while time.monotonic() < end:
                    gc.collect()
                    tasks = len([t for t in asyncio.all_tasks() if not t.done()])
                    if (threading.active_count() <= base_threads and PROC.num_fds() <= base_fds
                            and tasks <= base_tasks):
                        break
                    await asyncio.sleep(0.02)
                assert stt_threads() == [], k
                assert threading.active_count() <= base_threads, (k, [t.name for t in threading.enumerate()])
                assert PROC.num_fds() <= base_fds, (k, PROC.num_fds(), base_fds)
                assert len([t for t in asyncio.all_tasks() if not t.done()]) <= base_tasks, k
                rss.append(PROC.memory_info().rss / 1e6)
            print(f"RSS over 12 calls (MB): first {rss[0]:.1f}, last {rss[-1]:.1f}, max {max(rss):.1f}")
            assert rss[-1] - rss[2] < 10, rss  # flat after the first few calls (measured: under 1 MB)
            assert emu.stream_count == 13
        finally:
            mp.undo()
