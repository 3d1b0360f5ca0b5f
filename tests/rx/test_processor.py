"""RxDrainProcessor in real Pipecat pipelines (PipelineWorker + WorkerRunner, no mocks).

Pacing runs on real asyncio time here (or on a frozen FakeClock), so these
tests assert semantics (order, what arrives before what, counts, which path a
frame took), never speed. The exact timing rules are tested on the mechanism
with a FakeClock in test_backpressure.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    TextFrame,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.tests.utils import run_test

from pipecat_rxdrain import RxDrainParams, RxDrainProcessor
from pipecat_rxdrain.telemetry import RX_LINE_RE
from pipecat_rxdrain.testing import FakeClock
from tests.helpers.pipeline import UP, run_pipeline
from tests.helpers.waiting import wait_until

# A non-draining queue with no lead: a burst faster than real time leaves at real time while it
# keeps coming (the tests that need a backlog to stay also hold it behind a closed GateSink).
SLOW = dict(max_queue=200, high_watermark=200, low_watermark=0, lead_ms=0)


def never_busy() -> int:
    return 0


def make_rx(**kw) -> RxDrainProcessor:
    """An RxDrainProcessor whose busy level is 0 unless the test sets one: these tests count frames,
    and a loaded test machine must not make RX merge them (the busy merge has tests of its own)."""
    kw.setdefault("busy_level", never_busy)
    return RxDrainProcessor(**kw)


def audio(k: int, n: int = 160) -> InputAudioRawFrame:
    """``n`` samples (160: 20 ms at 8 kHz), each holding ``k``: the frame's id."""
    return InputAudioRawFrame(audio=k.to_bytes(2, "little") * n, sample_rate=8000, num_channels=1)


def audio_id(frame: InputAudioRawFrame) -> int:
    return int.from_bytes(frame.audio[:2], "little")


def labels(frames: list[Frame]) -> list:
    return [audio_id(f) if isinstance(f, InputAudioRawFrame) else type(f).__name__ for f in frames]


# -- order ---------------------------------------------------------------------


async def test_data_frames_keep_their_place_among_queued_audio():
    sink = GateSink(open_=False)  # holds a backlog in RX until opened
    proc = make_rx(params=RxDrainParams(**SLOW), sink=sink)

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(60)])
        await wait_until(lambda: proc.stats.frames_in == 60)
        assert proc.stats.q > 10  # the text frame really arrives behind a backlog
        await worker.queue_frame(TextFrame("between"))
        await asyncio.sleep(0.05)
        await worker.queue_frames([audio(k) for k in range(60, 100)])
        await wait_until(lambda: proc.stats.frames_in == 100)
        sink.open = True
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    assert labels(dst.down()) == list(range(60)) + ["TextFrame"] + list(range(60, 100)) + ["EndFrame"]
    s = proc.stats
    assert (s.frames_in, s.frames_out, s.drops, s.q) == (100, 100, 0, 0)


async def test_drain_burst_arrives_complete_and_in_order():
    proc = make_rx()  # defaults: 200 / 100 / 20
    modes: list[str] = []

    @proc.event_handler("on_rx_mode_changed")
    async def _mode(_proc, mode):
        modes.append(mode)

    async def script(worker, src, dst):
        # 5 s at once: the first 2 s (the rate bound's lead) leave inline, the rest reaches the high watermark.
        await worker.queue_frames([audio(k) for k in range(250)])
        await wait_until(lambda: proc.stats.frames_out >= 240)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    assert labels(dst.down()) == list(range(250)) + ["EndFrame"]
    s = proc.stats
    assert s.drain_episodes == 1 and s.peak_q >= 100 and s.drops == 0
    await wait_until(lambda: modes == ["drain", "normal"], timeout=5)


# -- system frames ---------------------------------------------------------------


async def test_system_frames_are_not_delayed_behind_the_backlog():
    sink = GateSink(open_=False)
    proc = make_rx(params=RxDrainParams(**SLOW), sink=sink)

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(150)])
        await wait_until(lambda: proc.stats.frames_in == 150)
        await worker.queue_frame(InputDTMFFrame(button=KeypadEntry.ONE))
        await wait_until(lambda: any(isinstance(f, InputDTMFFrame) for f in dst.down()))
        sink.open = True
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    got = labels(dst.down())
    dtmf_at = got.index("InputDTMFFrame")
    assert dtmf_at < 75, f"DTMF arrived behind {dtmf_at} audio frames"
    assert dst.q_at_arrival[dtmf_at] > 50  # it overtook a real backlog
    # ... and audio order is untouched, all of it flushed before EndFrame.
    assert [x for x in got if isinstance(x, int)] == list(range(150))
    assert got[-1] == "EndFrame"


async def test_upstream_frames_pass_immediately():
    sink = GateSink(open_=False)
    proc = make_rx(params=RxDrainParams(**SLOW), sink=sink)

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(100)])
        await wait_until(lambda: proc.stats.frames_in == 100)
        await worker.queue_frame(TextFrame("to the transport"), UP)
        await wait_until(lambda: any(isinstance(f, TextFrame) for f in src.up()))
        sink.open = True
        await worker.queue_frame(EndFrame())

    src, dst = await run_pipeline([proc], script, watch=proc)
    ups = [i for i, (d, f) in enumerate(src.seen) if d is UP and isinstance(f, TextFrame)]
    assert len(ups) == 1
    assert src.q_at_arrival[ups[0]] > 50  # passed while the audio backlog was still queued
    assert labels(dst.down()) == list(range(100)) + ["EndFrame"]


async def test_interruption_passes_at_once_and_keeps_the_callers_audio():
    sink = GateSink(open_=False)
    proc = make_rx(params=RxDrainParams(**SLOW), sink=sink)

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(40)])
        await wait_until(lambda: proc.stats.frames_in == 40)
        await worker.queue_frame(TextFrame("stale"))  # interruptible, queued behind audio
        await asyncio.sleep(0.03)
        await worker.queue_frame(InterruptionFrame())
        await asyncio.sleep(0.03)
        sink.open = True
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    got = labels(dst.down())
    assert got.index("InterruptionFrame") < 20
    assert [x for x in got if isinstance(x, int)] == list(range(40))  # no audio dropped
    assert "TextFrame" not in got  # dropped like Pipecat drops queued interruptible frames
    assert got[-1] == "EndFrame"
    assert proc.stats.passengers_dropped == 1 and proc.stats.drops == 0


# -- EndFrame / CancelFrame ----------------------------------------------------------


async def test_end_frame_flushes_the_queued_audio_first():
    # 20 ms cadence, no drain: without the flush this backlog would take 3 s to leave.
    proc = make_rx(params=RxDrainParams(**SLOW))

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(150)])
        await wait_until(lambda: proc.stats.frames_in == 150)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    assert labels(dst.down()) == list(range(150)) + ["EndFrame"]
    s = proc.stats
    assert (s.frames_out, s.q, s.drops, s.discarded_on_end) == (150, 0, 0, 0)


async def test_cancel_is_prompt_and_discards_the_backlog():
    proc = make_rx(params=RxDrainParams(**SLOW))  # 150 frames = 3 s at 20 ms

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(150)])
        await wait_until(lambda: proc.stats.frames_in == 150)
        await asyncio.sleep(0.1)
        await worker.cancel()

    t0 = time.monotonic()
    _, dst = await run_pipeline([proc], script, watch=proc, timeout=15)
    elapsed = time.monotonic() - t0
    s = proc.stats
    assert s.frames_out < 150
    assert s.discarded_on_cancel == 150 - s.frames_out
    assert s.drops == 0 and s.q == 0
    got = labels(dst.down())
    assert "CancelFrame" in got
    assert [x for x in got if isinstance(x, int)] == list(range(s.frames_out))
    assert not any(isinstance(x, int) for x in got[got.index("CancelFrame") :])
    # Generous bound (noisy shared box): a flush at 20 ms cadence would take ~3 s more.
    assert elapsed < 10


# -- sink acceptance ---------------------------------------------------------------


class GateSink:
    """A tiny real AudioSink: accepts audio only while open."""

    def __init__(self, open_: bool = False):
        self.open = open_
        self.calls = 0

    def can_accept_audio(self) -> bool:
        self.calls += 1
        return self.open


async def test_sink_holds_frames_until_it_accepts():
    sink = GateSink(open_=False)
    proc = make_rx(sink=sink)

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(30)])
        await wait_until(lambda: proc.stats.frames_in == 30)
        await wait_until(lambda: sink.calls >= 5)
        s = proc.stats
        assert (s.frames_out, s.q, s.drops) == (0, 30, 0)
        assert s.refusals >= 5
        sink.open = True
        await wait_until(lambda: proc.stats.frames_out == 30)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    assert labels(dst.down()) == list(range(30)) + ["EndFrame"]


async def test_end_flush_gives_up_on_a_sink_that_never_accepts():
    sink = GateSink(open_=False)
    proc = make_rx(params=RxDrainParams(flush_timeout_s=0.3), sink=sink)

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(10)])
        await wait_until(lambda: proc.stats.frames_in == 10)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    assert labels(dst.down()) == ["EndFrame"]
    s = proc.stats
    assert (s.discarded_on_end, s.frames_out, s.drops, s.q) == (10, 0, 0, 0)


def test_a_sink_without_the_protocol_is_rejected():
    with pytest.raises(TypeError, match="can_accept_audio"):
        make_rx(sink=object())


# -- overflow and telemetry ------------------------------------------------------------


async def test_overflow_drops_oldest_counts_it_and_logs_rx_lines():
    sink = GateSink(open_=False)
    params = RxDrainParams(max_queue=50, high_watermark=40, low_watermark=10, telemetry_interval_s=0.2)
    proc = make_rx(params=params, sink=sink)
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(m.record["message"]), filter=lambda r: r["message"].startswith("[RX]"))

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(80)])
        await wait_until(lambda: proc.stats.frames_in == 80)
        await asyncio.sleep(0.45)  # at least two periodic lines while stuck
        sink.open = True
        await wait_until(lambda: proc.stats.frames_out == 50)
        await worker.queue_frame(EndFrame())

    try:
        _, dst = await run_pipeline([proc], script, watch=proc)
    finally:
        logger.remove(handler)
    assert labels(dst.down()) == list(range(30, 80)) + ["EndFrame"]
    s = proc.stats
    assert (s.drops, s.frames_out, s.peak_q) == (30, 50, 50)
    assert lines and all(RX_LINE_RE.match(line) for line in lines)
    parsed = [RX_LINE_RE.match(line).groupdict() for line in lines]
    assert any(p["mode"] == "drain" and p["q"] == "50" and p["drops"] == "30" for p in parsed)
    assert parsed[-1]["mode"] == "normal" or any(p["mode"] == "normal" for p in parsed[1:])


# -- the interim demo ---------------------------------------------------------------------


def test_rx_demo_shows_drain_start_and_end(capsys):
    from pipecat_rxdrain.rx.demo import main

    # A 3 s cut of the bundled call: a 0.6 s network stall (30 held frames pass straight on), then the
    # sink refuses for 1 s: 50 frames queue behind it, so drain at 40/10.
    rc = main(["--seconds", "3", "--stall-at", "0.3", "--stall-s", "0.6", "--sink-stall-at", "1.4",
               "--sink-stall-s", "1.0", "--high", "40", "--low", "10"])
    out = capsys.readouterr().out
    assert rc == 0
    rx_lines = [line.split(" ", 1)[1] for line in out.splitlines() if " [RX] " in line]
    assert rx_lines and all(RX_LINE_RE.match(line) for line in rx_lines)
    modes = [RX_LINE_RE.match(line)["mode"] for line in rx_lines]
    assert "drain" in modes and modes[modes.index("drain") + 1 :].count("normal") >= 1
    assert "drain started" in out and "drain ended" in out
    assert "RX summary" in out and "drops                0" in out
    assert "held frames arrive at once" in out and "released inline" in out


class BoundedSink:
    """A tiny real AudioSink with a backlog: a drop-oldest queue that nothing drains (a stalled server)."""

    def __init__(self, cap: int):
        from collections import deque

        self.held: deque[int] = deque(maxlen=cap)
        self.cap = cap
        self.drops = 0

    def can_accept_audio(self) -> bool:
        return len(self.held) < self.cap

    def audio_backlog(self) -> int:
        return len(self.held)

    def take(self, k: int) -> None:
        if len(self.held) == self.cap:
            self.drops += 1
        self.held.append(k)


class Into(FrameProcessor):
    """Hands each audio frame to a BoundedSink (what the STT's push_audio does)."""

    def __init__(self, sink: BoundedSink):
        super().__init__()
        self.sink = sink

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.sink.take(audio_id(frame))
        await self.push_frame(frame, direction)


async def test_rx_and_a_full_sink_together_hold_at_most_max_queue_dropping_the_oldest():
    """Two queues in series must not age audio by both their sizes: the pair holds max_queue frames.

    The sink is full and never drains (a stalled server). RX may hold frames only while RX q plus
    the sink's backlog stays within max_queue; past that it hands the head frame over anyway and
    the sink drops its oldest, so what is lost is the oldest audio of the two queues.
    """
    sink = BoundedSink(cap=30)
    params = RxDrainParams(max_queue=50, high_watermark=40, low_watermark=10, frame_interval_ms=20, flush_timeout_s=0.2)
    proc = make_rx(params=params, sink=sink)
    worst = 0

    def total() -> int:
        return proc.stats.q + sink.audio_backlog()

    async def script(worker, src, dst):
        nonlocal worst
        for k in range(200):  # arriving 10x faster than real time
            await worker.queue_frame(audio(k))
            await asyncio.sleep(0.002)
            worst = max(worst, total())
        await wait_until(lambda: total() == 50)
        s = proc.stats
        assert s.q == 20 and s.frames_out + s.drops + s.q == 200
        # the 150 oldest frames went (in RX or in the sink, all counted); the newest 50 are held
        assert s.drops + sink.drops == 150
        assert list(sink.held) == list(range(150, 180))
        await worker.queue_frame(EndFrame())

    await run_pipeline([proc, Into(sink)], script, watch=proc)
    assert worst <= 50 + 2  # never more than max_queue (+ a frame arriving while one is handed over)
    assert proc.overflow_releases > 0
    s = proc.stats
    assert s.discarded_on_end == 20  # the sink never accepted again: the flush gave up, counted


# -- work-conserving release ------------------------------------------------------------


async def test_a_frame_arriving_to_an_empty_queue_goes_downstream_inline():
    """With the clock frozen no timer can ever fire: what leaves, left inline from process_frame.

    (Under the old 20 ms grid only the first frame would ever have left.) Past the rate bound's
    lead (2 s of audio ahead of a clock that does not move), with all that audio offered within the
    (frozen) last 500 ms, the input is ahead of real time: frames wait in the queue, and the
    EndFrame flush releases them.
    """
    sink = GateSink(open_=True)
    clock = FakeClock(100.0)
    proc = make_rx(sink=sink, clock=clock)

    async def script(worker, src, dst):
        for k in range(101):  # the 2 s lead: frames starting at 0 .. 2000 ms of audio may go at t=0
            await worker.queue_frame(audio(k))
            await wait_until(lambda: len(dst.down()) == k + 1)
        s = proc.stats
        assert (s.inline_releases, s.releases, s.frames_out, s.q, s.refusals) == (101, 101, 101, 0, 0)
        assert proc.pacing_steps <= 3  # the pacing task slept through all of it
        for k in range(101, 130):
            await worker.queue_frame(audio(k))
        await wait_until(lambda: proc.stats.frames_in == 130)
        await asyncio.sleep(0.05)
        assert proc.stats.q == 29 and proc.stats.inline_releases == 101  # held by the bound, not lost
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    assert labels(dst.down()) == list(range(130)) + ["EndFrame"]
    assert dst.q_at_arrival[:101] == [1] * 101  # nothing but the frame itself (in flight) was queued


class Pusher(FrameProcessor):
    """A queued processor upstream of RX: after each audio frame it pushes, notes how many frames
    the recorder at the end of the pipeline had already seen when that push returned."""

    def __init__(self, dst_count):
        super().__init__()
        self.dst_count = dst_count
        self.seen_on_return: list[int] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.seen_on_return.append(self.dst_count())


@pytest.mark.parametrize("direct", [True, False])
async def test_rx_runs_in_direct_mode_by_default_so_audio_costs_no_extra_hop(direct):
    """By default a frame goes through RX inside the pushing processor's own push (no input queue or task of RX's
    own): it has reached the (direct-mode) recorder behind RX when the push returns. enable_direct_mode=False
    brings Pipecat's queue back, and then it has not."""
    kw = {} if direct else dict(enable_direct_mode=False)
    proc = make_rx(sink=GateSink(open_=True), **kw)
    box = {}
    pusher = Pusher(lambda: len(box["dst"].down(InputAudioRawFrame)))

    async def script(worker, src, dst):
        box["dst"] = dst
        for k in range(5):
            await worker.queue_frame(audio(k))
            await wait_until(lambda k=k: len(dst.down()) == k + 1)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([pusher, proc], script, watch=proc)
    assert labels(dst.down()) == [0, 1, 2, 3, 4, "EndFrame"]
    expected = [1, 2, 3, 4, 5] if direct else [0, 1, 2, 3, 4]
    assert pusher.seen_on_return == expected


async def test_while_busy_consecutive_frames_go_downstream_as_one_frame():
    """Busy level 1 (pairs), on a FakeClock moved 20 ms per frame: each odd frame waits and leaves
    merged with the next one, inline from the push that brought the partner. The merged frame
    carries both frames' audio in order and the first one's pts."""
    clock = FakeClock(100.0)
    proc = make_rx(sink=GateSink(open_=True), clock=clock, busy_level=lambda: 1)
    pts: list[int] = []

    async def script(worker, src, dst):
        for k in range(6):
            frame = audio(k)
            frame.pts = 1000 + k
            pts.append(frame.pts)
            await worker.queue_frame(frame)
            await wait_until(lambda k=k: proc.stats.frames_in == k + 1)
            clock.advance(0.020)
        await wait_until(lambda: proc.stats.frames_out == 6)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    frames = dst.down(InputAudioRawFrame)
    assert [f.audio for f in frames] == [audio(k).audio + audio(k + 1).audio for k in (0, 2, 4)]
    assert [f.pts for f in frames] == [1000, 1002, 1004]
    s = proc.stats
    assert (s.frames_out, s.releases, s.busy_holds, s.inline_releases) == (6, 3, 3, 3)


async def test_a_busy_hold_with_no_partner_coming_releases_the_frame_alone():
    """Busy level 2, one frame and nothing after it: the pacing task lets it go alone when the hold
    (2 x 20 ms + 5 ms) is over, not later than the EndFrame."""
    proc = make_rx(sink=GateSink(open_=True), busy_level=lambda: 2)

    async def script(worker, src, dst):
        await worker.queue_frame(audio(7))
        await wait_until(lambda: proc.stats.frames_out == 1)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    assert labels(dst.down()) == [7, "EndFrame"]
    s = proc.stats
    assert (s.busy_holds, s.inline_releases, s.releases) == (1, 0, 1)


async def test_a_refused_frame_is_queued_retried_first_and_the_rest_wait_behind_it():
    sink = GateSink(open_=False)
    proc = make_rx(sink=sink)

    async def script(worker, src, dst):
        await worker.queue_frame(audio(0))  # arrives to an empty queue, refused inline
        await wait_until(lambda: proc.stats.refusals >= 1)
        await worker.queue_frames([audio(k) for k in range(1, 5)])
        await wait_until(lambda: proc.stats.frames_in == 5)
        await wait_until(lambda: proc.stats.refusals >= 3)  # retried by the pacing task
        assert proc.stats.q == 5 and proc.stats.frames_out == 0
        sink.open = True
        await wait_until(lambda: proc.stats.frames_out == 5)
        await worker.queue_frame(audio(5))  # nothing behind any more: inline again
        await wait_until(lambda: proc.stats.frames_out == 6)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    assert labels(dst.down()) == list(range(6)) + ["EndFrame"]
    assert proc.stats.inline_releases == 1  # frame 5; frame 0 was refused inline, released by the task


async def test_merge_backlog_hands_a_backlog_downstream_as_batch_ms_chunks():
    sink = GateSink(open_=False)
    proc = make_rx(params=RxDrainParams(merge_backlog=True, batch_ms=60), sink=sink)

    async def script(worker, src, dst):
        await worker.queue_frames([audio(k) for k in range(8)])
        await wait_until(lambda: proc.stats.frames_in == 8)
        sink.open = True
        await wait_until(lambda: proc.stats.frames_out == 8)
        await worker.queue_frame(audio(8))  # alone: inline, not merged, not held
        await wait_until(lambda: proc.stats.frames_out == 9)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    got = [f for f in dst.down() if isinstance(f, InputAudioRawFrame)]
    ids = [[int.from_bytes(f.audio[i : i + 2], "little") for i in range(0, len(f.audio), 320)] for f in got]
    assert ids == [[0, 1, 2], [3, 4, 5], [6, 7], [8]]
    assert [len(f.audio) for f in got] == [960, 960, 640, 320]
    assert all(f.sample_rate == 8000 and f.num_channels == 1 for f in got)
    s = proc.stats
    assert (s.frames_out, s.releases) == (9, 4)


def _twilio_media(k: int) -> str:
    import base64
    import json
    import math

    payload = bytes(int(128 + 90 * math.sin((k * 160 + i) / 7.0)) % 256 for i in range(160))
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(payload).decode()}})


async def _twilio_frames(rate: int, n_messages: int) -> list[InputAudioRawFrame]:
    """What Pipecat's own Twilio serializer hands the pipeline at ``rate``: 20 ms at 8 kHz, ~95 ms at 16 kHz."""
    from pipecat.serializers.twilio import TwilioFrameSerializer

    ser = TwilioFrameSerializer("MZ00000000000000000000000000000000",
                                params=TwilioFrameSerializer.InputParams(auto_hang_up=False))

    class _Setup:
        audio_in_sample_rate = rate

    await ser.setup(_Setup())
    frames = []
    for k in range(n_messages):
        f = await ser.deserialize(_twilio_media(k))
        if f is not None:
            frames.append(f)
    return frames


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
async def test_queue_watermarks_and_drops_count_audio_time_with_the_twilio_serializer(rate):
    """3 s of Twilio audio behind a closed sink, max_queue 100 (2 s): RX holds 2 s of audio, not 100 chunks."""
    frames = await _twilio_frames(rate, 150)
    chunk = len(frames[1].audio) / 2 / rate / 0.020  # in 20 ms-frame equivalents
    if rate > 8000:
        assert chunk > 4  # ~95 ms (16 kHz) / ~137 ms (24 kHz): a chunk count would mean 19 s / 27 s
    audio_in = sum(len(f.audio) for f in frames) / 2 / rate / 0.020
    sink = GateSink(open_=False)
    proc = make_rx(params=RxDrainParams(max_queue=100, high_watermark=60, low_watermark=10), sink=sink)
    modes: list = []

    @proc.event_handler("on_rx_mode_changed")
    async def _mode(_proc, mode):
        modes.append(mode)

    async def script(worker, src, dst):
        await worker.queue_frames(frames)
        await wait_until(lambda: proc.stats.frames_in == len(frames))
        s = proc.stats
        assert s.audio_in == pytest.approx(audio_in)
        assert 100 - chunk < s.q <= 100  # 2 s of audio, whatever the chunk size
        assert s.drops == pytest.approx(audio_in - s.q)  # the oldest audio went, counted in audio
        assert s.peak_q <= 100
        assert s.mode == "drain"  # entered when the queued audio reached 60 x 20 ms
        sink.open = True
        await wait_until(lambda: proc.stats.q == 0)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([proc], script, watch=proc)
    s = proc.stats
    out = [f for f in dst.down() if isinstance(f, InputAudioRawFrame)]
    assert len(out) == s.frames_out == len(frames) - s.chunks_dropped
    assert [f.id for f in out] == [f.id for f in frames[s.chunks_dropped:]]  # the newest, in order
    await wait_until(lambda: [m.value for m in modes] == ["drain", "normal"], timeout=5)


def test_the_old_module_paths_are_deprecated_aliases_of_the_rx_package():
    import importlib
    import sys

    from pipecat_rxdrain import AudioSink, RxBackpressure
    from pipecat_rxdrain.rx import backpressure, processor, sink

    for old, new in (("rx_processor", processor), ("rx_backpressure", backpressure), ("sink", sink)):
        sys.modules.pop(f"pipecat_rxdrain.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"pipecat_rxdrain.{old} moved"):
            mod = importlib.import_module(f"pipecat_rxdrain.{old}")
        assert mod is new
    assert processor.RxDrainProcessor is RxDrainProcessor and sink.AudioSink is AudioSink
    assert backpressure.RxBackpressure is RxBackpressure


# -- bad audio: empty frames, audio after the EndFrame, frames shorter than the interval ---------------


async def test_rx_drops_empty_frames_and_audio_after_end_counted():
    gate = GateSink(open_=False)  # holds the EndFrame flush open
    proc = make_rx(params=RxDrainParams(flush_timeout_s=10.0), sink=gate)

    async def script(worker, src, dst):
        await worker.queue_frames([audio(1), InputAudioRawFrame(audio=b"", sample_rate=8000, num_channels=1), audio(2)])
        await worker.queue_frame(EndFrame())
        await wait_until(lambda: proc._ended, timeout=5)
        for k in (3, 4):  # the caller's audio, still arriving after the end (src stands in for transport.input())
            await src.push_frame(audio(k))
        await wait_until(lambda: proc.audio_after_end >= 2, timeout=5)
        gate.open = True

    _, dst = await run_pipeline([proc], script, watch=proc, timeout=20)
    assert labels(dst.down()) == [1, 2, "EndFrame"]
    assert proc.empty_audio_dropped == 1 and proc.audio_after_end == 2
    assert proc.stats.frames_in == 2 and proc.stats.drops == 0


async def test_rx_counts_frames_that_do_not_match_the_interval_by_their_duration():
    # RX counts audio time: 10 ms frames are half a 20 ms-frame equivalent each (no longer paced
    # as one interval each, so there is nothing to warn about).
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        proc = make_rx()
        await run_test(proc, frames_to_send=[audio(k, n=80) for k in range(5)])  # 10 ms frames, 20 ms interval
    finally:
        logger.remove(sink)
    s = proc.stats
    assert (s.frames_in, s.frames_out, s.audio_in, s.audio_out) == (5, 5, 2.5, 2.5)
    assert not any("frame_interval_ms" in ln for ln in lines)
