"""Frames through a real Pipecat pipeline (PipelineWorker + WorkerRunner, no mocks), recorded at both ends."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import Frame, StartFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

DOWN = FrameDirection.DOWNSTREAM
UP = FrameDirection.UPSTREAM


class Recorder(FrameProcessor):
    """Records every frame it sees, in the order it sees them (direct mode: no queue of its own).

    ``watch``: a processor with ``stats.q`` (RxDrainProcessor); its queue length at each arrival is kept.
    """

    def __init__(self, watch=None, **kwargs):
        super().__init__(enable_direct_mode=True, **kwargs)
        self.seen: list[tuple[FrameDirection, Frame]] = []
        self.q_at_arrival: list[int] = []
        self._watch = watch

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if not isinstance(frame, StartFrame):
            self.seen.append((direction, frame))
            self.q_at_arrival.append(self._watch.stats.q if self._watch else -1)
        await self.push_frame(frame, direction)

    def down(self, kind=Frame) -> list:
        return [f for d, f in self.seen if d is DOWN and isinstance(f, kind)]

    def up(self, kind=Frame) -> list:
        return [f for d, f in self.seen if d is UP and isinstance(f, kind)]

    def all(self, kind=Frame) -> list:
        return [f for _, f in self.seen if isinstance(f, kind)]


async def run_pipeline(processors, script, *, watch=None, in_rate: int = 8000, out_rate: int = 8000,
                       timeout: float = 30.0) -> tuple[Recorder, Recorder]:
    """Runs [src, *processors, dst]; ``await script(worker, src, dst)`` queues frames and must end the pipeline.

    A script that fails cancels the pipeline, so nothing is left running. Returns (src, dst).
    """
    src, dst = Recorder(watch=watch, name="src"), Recorder(watch=watch, name="dst")
    worker = PipelineWorker(
        Pipeline([src, *processors, dst]),
        params=PipelineParams(audio_in_sample_rate=in_rate, audio_out_sample_rate=out_rate),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame):
        started.set()

    async def drive():
        try:
            await asyncio.wait_for(started.wait(), 10)
            await script(worker, src, dst)
        except BaseException:
            await worker.cancel()
            raise

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), drive()), timeout)
    return src, dst
