"""The RX back-pressure demo (``make demo`` until the Twilio bot lands).

A real Pipecat pipeline, ``[RxDrainProcessor, SinkProcessor]``, run by a
``PipelineWorker`` / ``WorkerRunner``. A feeder plays a bundled 8 kHz sample as
20 ms ``InputAudioRawFrame`` s at recorded rate, the way Twilio delivers them,
with two faults. A network stall: for ``--stall-s`` seconds nothing arrives,
then every held frame arrives at once; nothing is behind downstream, so they
go straight through (inline, no queue). Then a downstream stall: the sink
(standing in for the STT, an ``AudioSink``) refuses audio for
``--sink-stall-s`` seconds. You see the queue build behind it, the ``[RX]``
telemetry switch to ``mode=drain``, the backlog leave back-to-back once the
sink accepts again, and ``mode=normal``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from loguru import logger

FRAME_MS = 20


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rxdrain demo", description=__doc__.split("\n\n")[1])
    p.add_argument("--sample", default="call_en", help="bundled sample to play (default: call_en)")
    p.add_argument("--seconds", type=float, default=None, help="play only the first N seconds")
    p.add_argument("--stall-at", type=float, default=6.0, help="when the network stall starts (s)")
    p.add_argument("--stall-s", type=float, default=3.0, help="how long nothing arrives (s)")
    p.add_argument("--sink-stall-at", type=float, default=12.0, help="when the sink starts refusing audio (s)")
    p.add_argument("--sink-stall-s", type=float, default=3.0, help="how long the sink refuses (s)")
    p.add_argument("--high", type=int, default=100, help="high watermark (frames)")
    p.add_argument("--low", type=int, default=20, help="low watermark (frames)")
    p.add_argument("--max-queue", type=int, default=200, help="queue cap (frames)")
    return p.parse_args(argv)


def _frames(pcm16: bytes, sample_rate: int, seconds: float | None) -> list[bytes]:
    step = sample_rate * FRAME_MS // 1000 * 2
    if seconds is not None:
        pcm16 = pcm16[: int(seconds * sample_rate) * 2]
    return [pcm16[i : i + step] for i in range(0, len(pcm16) - step + 1, step)]


async def _run(args: argparse.Namespace) -> int:
    from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from ..samples import load_sample
    from .processor import RxDrainParams, RxDrainProcessor

    sample = load_sample(args.sample)
    chunks = _frames(sample.pcm16, sample.sample_rate, args.seconds)
    n = len(chunks)
    interval = FRAME_MS / 1000.0
    loop = asyncio.get_running_loop()
    offered_at: dict[int, float] = {}
    t0 = 0.0

    def say(msg: str) -> None:
        logger.info(f"t={loop.time() - t0:6.2f}s  {msg}")

    class SinkProcessor(FrameProcessor):
        """Stands in for the STT: records how long each frame waited in the RX queue.

        An ``AudioSink``: it refuses audio during the simulated downstream stall.
        """

        def __init__(self) -> None:
            super().__init__(name="sink")
            self.count = 0
            self.waits: list[float] = []
            self.refusing = False

        def can_accept_audio(self) -> bool:
            return not self.refusing

        async def process_frame(self, frame: Frame, direction: FrameDirection):
            await super().process_frame(frame, direction)
            if isinstance(frame, InputAudioRawFrame):
                self.count += 1
                sent = offered_at.pop(frame.id, None)
                if sent is not None:
                    self.waits.append(loop.time() - sent)
            await self.push_frame(frame, direction)

    sink = SinkProcessor()
    # merge_when_busy off: the demo follows each frame by its id through the queue (merging under
    # load would hand the sink new, longer frames).
    rx = RxDrainProcessor(
        params=RxDrainParams(
            max_queue=args.max_queue, high_watermark=args.high, low_watermark=args.low, merge_when_busy=False
        ),
        sink=sink,
    )
    drain_started: list[float] = []

    @rx.event_handler("on_rx_mode_changed")
    async def _on_mode(_proc, mode: str):
        if mode == "drain":
            drain_started.append(loop.time())
            say(f">>> drain started (q={rx.stats.q:.0f}): releasing back-to-back")
        else:
            took = (loop.time() - drain_started[-1]) * 1000 if drain_started else 0.0
            say(f"<<< drain ended after {took:.0f} ms (q={rx.stats.q:.0f}); the rest leaves as the sink takes it")

    worker = PipelineWorker(
        Pipeline([rx, sink]),
        params=PipelineParams(audio_in_sample_rate=sample.sample_rate),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_worker, _frame):
        started.set()

    stall_from = int(args.stall_at * 1000 / FRAME_MS)
    stall_to = int((args.stall_at + args.stall_s) * 1000 / FRAME_MS)
    sink_from = int(args.sink_stall_at * 1000 / FRAME_MS)
    sink_to = int((args.sink_stall_at + args.sink_stall_s) * 1000 / FRAME_MS)

    async def feed() -> None:
        nonlocal t0
        await asyncio.wait_for(started.wait(), 20)
        t0 = loop.time()
        say(
            f"playing {sample.name} ({n * interval:.1f} s, {n} frames of {FRAME_MS} ms) at recorded rate; "
            f"network stall {args.stall_at:.1f}-{args.stall_at + args.stall_s:.1f} s"
        )
        held: list = []
        for k, chunk in enumerate(chunks):
            due = t0 + k * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = InputAudioRawFrame(audio=chunk, sample_rate=sample.sample_rate, num_channels=1)
            if k == sink_from and k < n:
                say("downstream stall: the sink refuses audio now")
                sink.refusing = True
            if k == sink_to and sink.refusing:
                say(f"downstream back: the sink accepts again (q={rx.stats.q:.0f})")
                sink.refusing = False
            if stall_from <= k < stall_to:
                if not held:
                    say("network stall: nothing arrives now")
                held.append(frame)
                continue
            if held:
                say(f"network back: {len(held)} held frames arrive at once (nothing behind: they go straight on)")
                now = loop.time()
                for f in held:
                    offered_at[f.id] = now
                await worker.queue_frames(held)
                held = []
            offered_at[frame.id] = loop.time()
            await worker.queue_frame(frame)
        if held:
            now = loop.time()
            for f in held:
                offered_at[f.id] = now
            await worker.queue_frames(held)
        sink.refusing = False
        await asyncio.sleep(0.2)
        say("end of audio: EndFrame (flushes whatever is still queued)")
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), feed()), n * interval + 30)

    s = rx.stats
    waits = sorted(sink.waits)
    p50 = waits[len(waits) // 2] * 1000 if waits else 0.0
    print()
    print("RX summary")
    print(f"  frames in / out      {s.frames_in} / {s.frames_out} (sink got {sink.count})")
    print(f"  peak q               {s.peak_q:.0f} frames ({s.peak_q * FRAME_MS:.0f} ms of audio)")
    print(f"  released inline      {s.inline_releases} of {s.frames_out} (no queue, no task hop)")
    print(f"  drain episodes       {s.drain_episodes}, time in drain {s.time_in_drain_s * 1000:.0f} ms")
    print(f"  drops                {s.drops:.0f} (queue cap {args.max_queue})")
    print(f"  wait in RX queue     median {p50:.1f} ms, max {waits[-1] * 1000 if waits else 0.0:.0f} ms")
    print(f"  end state            mode={s.mode.value} q={s.q:.0f}")
    ok = s.frames_out == s.frames_in - s.drops and sink.count == s.frames_out and s.frames_in == n
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # A readable console: our lines (the [RX] telemetry and the narration) at INFO, everything
    # else only from WARNING. Restored afterwards so an embedding program keeps its logging.
    removed_default = False
    try:
        logger.remove(0)
        removed_default = True
    except ValueError:
        pass
    handler = logger.add(
        sys.stdout,
        level="INFO",
        format="<green>{time:HH:mm:ss.SSS}</green> {message}",
        filter=lambda r: r["name"].startswith("pipecat_rxdrain") or r["level"].no >= 30,
    )
    started = time.monotonic()
    try:
        rc = asyncio.run(_run(args))
    finally:
        logger.remove(handler)
        if removed_default:
            logger.add(sys.stderr)
    print(f"  demo ran {time.monotonic() - started:.1f} s")
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
