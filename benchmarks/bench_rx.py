"""RX back-pressure benchmark: overhead per frame and age added to frames.

    python -m benchmarks.bench_rx            # ~30 s
    python -m benchmarks.bench_rx --quick    # ~10 s

Two parts, numbers printed as markdown tables (nothing is asserted):

1. Age added to frames, in simulated time (``FakeClock``, deterministic, a
   60 s call in well under a second): the :class:`RxBackpressure` mechanism
   driven exactly as ``RxDrainProcessor`` drives it, against a plain
   pass-through (a frame leaves the moment it arrives, so it adds no age by
   definition) and against a real-time pacer without drain or catch-up (the
   production receive loop this package replaces: 20 ms cadence even when
   behind). Age = time a frame waits between arriving and being released.
2. Overhead per frame in a real Pipecat pipeline (``PipelineWorker`` +
   ``WorkerRunner``): ``[X, counter]`` with X = ``RxDrainProcessor`` or a
   pass-through ``FrameProcessor``; wall time per frame when frames are
   pushed in bursts (drain path), and CPU time per frame for a real-time
   50 fps stream (normal path, includes the pacing task's timer wake-ups).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata

from pipecat_rxdrain.clock import FakeClock
from pipecat_rxdrain.rx_backpressure import ActionKind, RxBackpressure

FRAME_S = 0.020


# -- part 1: age in simulated time ------------------------------------------------


def steady(duration_s: float, jitter_ms: float = 0.0) -> list[float]:
    """Arrival times of a 50 fps stream; optional deterministic jitter (a fixed pattern)."""
    n = int(duration_s / FRAME_S)
    pattern = [0.0, 0.6, -0.4, 0.9, -0.8, 0.3, -0.2, 0.7, -0.9, -0.2]
    return sorted(max(0.0, k * FRAME_S + jitter_ms / 1000.0 * pattern[k % 10]) for k in range(n))


def with_stalls(duration_s: float, stalls: list[tuple[float, float]]) -> list[float]:
    """50 fps, except that frames due during each (start, length) stall all arrive at its end."""
    out = []
    for k in range(int(duration_s / FRAME_S)):
        t = k * FRAME_S
        for start, length in stalls:
            if start <= t < start + length:
                t = start + length
                break
        out.append(t)
    return out


@dataclass
class AgeResult:
    mean_ms: float
    p99_ms: float
    max_ms: float
    end_q: int
    drops: int
    drain_ms: float


def simulate(arrivals: list[float], **params) -> AgeResult:
    clock = FakeClock(0.0)
    rx = RxBackpressure(clock=clock, emit=lambda _line: None, **params)
    offered: dict[int, float] = {}
    ages: list[float] = []
    i, end = 0, arrivals[-1] + 30.0
    q_at_last_arrival = 0
    while True:
        now = clock.now
        rx.report_if_due(now)
        while i < len(arrivals) and arrivals[i] <= now:
            offered[i] = now
            rx.offer(i, now)
            i += 1
            if i == len(arrivals):
                q_at_last_arrival = rx.q
        action = rx.next_action(now)
        if action.kind is ActionKind.RELEASE:
            rx.on_release_result(True, now)
            ages.append(now - offered.pop(action.item))
            continue
        if action.kind is ActionKind.PASS:
            continue
        if i >= len(arrivals) and not rx.pending:
            break
        target = min(now + action.wait_s, arrivals[i] if i < len(arrivals) else end)
        clock.set(max(target, now + 1e-12))
    s = rx.stats()
    ages.sort()
    return AgeResult(
        mean_ms=statistics.fmean(ages) * 1000,
        p99_ms=ages[int(0.99 * (len(ages) - 1))] * 1000,
        max_ms=ages[-1] * 1000,
        end_q=q_at_last_arrival,
        drops=s.drops,
        drain_ms=s.time_in_drain_s * 1000,
    )


def age_table(duration_s: float) -> str:
    scenarios = {
        "steady 50 fps": steady(duration_s),
        "steady 50 fps, ±9 ms jitter": steady(duration_s, jitter_ms=10.0),
        "2 s stall, then burst": with_stalls(duration_s, [(10.0, 2.0)]),
        "25-frame bunches every 5 s": with_stalls(
            duration_s, [(5.0 * k - 0.5, 0.5) for k in range(1, int(duration_s / 5) + 1)]
        ),
    }
    variants = {
        "RxDrainProcessor (defaults)": {},
        "real-time pacer, no drain/catch-up": dict(high_watermark=200, low_watermark=199, catchup_speed=1.0),
    }
    rows = [
        "| scenario | variant | mean age ms | p99 age ms | max age ms | q at last arrival | drops | time in drain ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, arrivals in scenarios.items():
        rows.append(f"| {name} | pass-through | 0.0 | 0.0 | 0.0 | 0 | 0 | 0 |")
        for vname, params in variants.items():
            r = simulate(arrivals, **params)
            rows.append(
                f"| {name} | {vname} | {r.mean_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.0f} | {r.end_q} | {r.drops} | {r.drain_ms:.0f} |"
            )
    return "\n".join(rows)


def mechanism_overhead_us(n: int = 200_000) -> float:
    """Pure-Python cost of offer + next_action + on_release_result, per frame (drain path)."""
    rx = RxBackpressure(high_watermark=1, low_watermark=0, emit=lambda _l: None)
    frame = object()
    t0 = time.perf_counter()
    for _ in range(n):
        rx.offer(frame, 0.0)
        rx.next_action(0.0)
        rx.on_release_result(True, 0.0)
    return (time.perf_counter() - t0) / n * 1e6


# -- part 2: overhead in a real Pipecat pipeline -----------------------------------------


async def _pipeline_run(kind: str, mode: str, frames: int) -> tuple[float, float]:
    """Returns (wall seconds, CPU seconds) to get ``frames`` audio frames through [X, counter]."""
    from loguru import logger
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from pipecat_rxdrain.rx_processor import RxDrainParams, RxDrainProcessor

    class PassThrough(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    class Counter(FrameProcessor):
        def __init__(self):
            super().__init__()
            self.n = 0
            self.done = asyncio.Event()

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, InputAudioRawFrame):
                self.n += 1
                if self.n >= frames:
                    self.done.set()
            await self.push_frame(frame, direction)

    if kind == "rx":
        # Burst mode measures the drain path (back-to-back); stream mode the 20 ms cadence.
        params = RxDrainParams(high_watermark=1, low_watermark=0) if mode == "burst" else RxDrainParams()
        x = RxDrainProcessor(params=params)
    else:
        x = PassThrough()
    counter = Counter()
    worker = PipelineWorker(Pipeline([x, counter]), params=PipelineParams(audio_in_sample_rate=8000),
                            cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _s(_w, _f):
        started.set()

    audio = bytes(320)
    result: list[float] = []

    async def feed():
        await asyncio.wait_for(started.wait(), 20)
        loop = asyncio.get_running_loop()
        w0, c0 = time.perf_counter(), time.process_time()
        if mode == "burst":
            sent = 0
            while sent < frames:
                batch = min(100, frames - sent)
                await worker.queue_frames(
                    [InputAudioRawFrame(audio=audio, sample_rate=8000, num_channels=1) for _ in range(batch)]
                )
                sent += batch
                while counter.n < sent:
                    await asyncio.sleep(0)
        else:
            t0 = loop.time()
            for k in range(frames):
                delay = t0 + k * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await worker.queue_frame(InputAudioRawFrame(audio=audio, sample_rate=8000, num_channels=1))
        await asyncio.wait_for(counter.done.wait(), 30)
        result.extend([time.perf_counter() - w0, time.process_time() - c0])
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    handler_ids = []
    logger.remove()
    handler_ids.append(logger.add(sys.stderr, level="WARNING"))
    try:
        await asyncio.wait_for(asyncio.gather(runner.run(), feed()), 120)
    finally:
        for h in handler_ids:
            logger.remove(h)
        logger.add(sys.stderr)
    return result[0], result[1]


def pipeline_table(burst_frames: int, stream_s: float, repeats: int) -> str:
    rows = [
        "| path | measure | pass-through µs/frame | RxDrainProcessor µs/frame | overhead µs/frame |",
        "|---|---|---:|---:|---:|",
    ]
    stream_frames = int(stream_s / FRAME_S)
    measured: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for mode, frames, runs in (("burst", burst_frames, repeats), ("stream", stream_frames, 1)):
        for kind in ("pass", "rx"):
            measured[mode, kind] = [
                tuple(x / frames * 1e6 for x in asyncio.run(_pipeline_run(kind, mode, frames))) for _ in range(runs)
            ]
    for mode, idx, what in (
        ("burst", 0, "wall time, bursts of 100 (drain path)"),
        ("burst", 1, "CPU time, bursts of 100 (drain path)"),
        ("stream", 1, "CPU time, real-time 50 fps (normal path)"),
    ):
        per = {kind: min(m[idx] for m in measured[mode, kind]) for kind in ("pass", "rx")}
        rows.append(
            f"| {mode} | {what} | {per['pass']:.1f} | {per['rx']:.1f} | {per['rx'] - per['pass']:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_rx")
    p.add_argument("--quick", action="store_true", help="shorter runs (~10 s)")
    args = p.parse_args(argv)
    duration = 60.0
    burst_frames, stream_s, repeats = (2000, 3.0, 1) if args.quick else (10000, 8.0, 3)

    print(f"## Age added to frames (simulated {duration:.0f} s call, FakeClock)\n")
    t0 = time.perf_counter()
    print(age_table(duration))
    print(f"\n(simulated in {time.perf_counter() - t0:.2f} s of wall time)\n")

    print("## Overhead per frame\n")
    print(f"Mechanism alone (offer + next_action + on_release_result): {mechanism_overhead_us():.2f} µs/frame\n")
    print(pipeline_table(burst_frames, stream_s, repeats))
    print(
        f"\n(real Pipecat {metadata.version('pipecat-ai')} pipeline [X, counter]; burst: {burst_frames} frames, best of {repeats}; stream: {stream_s:.0f} s at 50 fps; "
        "noisy shared machine, compare columns rather than absolute values)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
