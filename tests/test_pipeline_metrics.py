"""RX and STT numbers reach Pipecat's metrics path: MetricsFrames flow down a real call's pipeline."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import MetricsFrame
from pipecat.processors.frame_processor import FrameProcessor

from pipecat_rxdrain.metrics import RxdrainMetrics
from pipecat_rxdrain.pipeline_metrics import RxMetricsData, STTMetricsData, metrics_frame
from pipecat_rxdrain.samples import sample_path
from pipecat_rxdrain.twilio.audio import wav_to_twilio_frames
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call
from pipecat_rxdrain.twilio.server import BotServer, create_app
from tests.helpers.bot_harness import load_bot_module, make_config
from tests.helpers.waiting import wait_until


class MetricsTap(FrameProcessor):
    """Keeps the MetricsFrames that reach it (what an observer of this hop sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[MetricsFrame] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, MetricsFrame):
            self.seen.append(frame)
        await self.push_frame(frame, direction)


async def run_call(cfg, tap: MetricsTap, frames: list[bytes] | None = None):
    bot = load_bot_module()

    def build(call):
        processors = bot.build_pipeline(cfg, call)
        return [*processors[:-1], tap, processors[-1]]  # just before transport.output()

    server = BotServer(cfg, create_app(cfg, build, metrics=RxdrainMetrics()))
    task = asyncio.create_task(server.serve())
    try:
        assert await wait_until(lambda: server.started or task.done(), timeout=15) and server.started
        opts = CallerOptions(url=f"ws://127.0.0.1:{server.port}/ws", sample="hello_en")
        if frames is not None:
            opts = CallerOptions(url=opts.url, frames=frames, tail_silence_s=0.2)
        summary = await simulate_call(opts)
        await wait_until(lambda: list(server.app.state.calls.completed), timeout=10)
        return summary, server.app.state.calls.completed[0].as_dict()
    finally:
        await server.shutdown("test")
        await asyncio.wait_for(task, 30)


async def test_a_call_emits_rx_and_stt_metrics_frames_each_second(emulator):
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False, pipeline_metrics=True)
    tap = MetricsTap()
    summary, record = await run_call(cfg, tap)
    assert summary.ok, summary.error
    ours = [d for f in tap.seen for d in f.data if isinstance(d, (RxMetricsData, STTMetricsData))]
    rx = [d for d in ours if isinstance(d, RxMetricsData)]
    stt = [d for d in ours if isinstance(d, STTMetricsData)]
    assert len(rx) >= 5 and len(stt) == len(rx)  # a ~8.6 s call, one frame a second
    assert rx[-1].processor.startswith("RxDrainProcessor") and stt[-1].processor.startswith("GoogleSTTService")
    frames_in = [d.frames_in for d in rx]
    assert frames_in == sorted(frames_in) and 0 < frames_in[-1] <= record["rx"]["frames_in"]
    assert all(d.mode in ("normal", "drain") and d.drops == 0 for d in rx)
    assert all(d.drops == 0 and d.state for d in stt)


async def test_no_metrics_frames_unless_asked(emulator):
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False)
    tap = MetricsTap()
    # 3 s of the call: with metrics on, that is three metrics frames already.
    summary, _ = await run_call(cfg, tap, wav_to_twilio_frames(sample_path("hello_en"))[:150])
    assert summary.ok, summary.error
    assert not [d for f in tap.seen for d in f.data if isinstance(d, (RxMetricsData, STTMetricsData))]


def test_metrics_frame_needs_something_to_report():
    assert metrics_frame() is None
    assert metrics_frame(rx=("rx", None)) is None
