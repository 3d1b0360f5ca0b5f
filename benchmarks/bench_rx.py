"""RX back-pressure benchmark: age added to frames, overhead per frame, and what merging does to VAD.

    python -m benchmarks.bench_rx            # ~40 s
    python -m benchmarks.bench_rx --quick    # ~15 s

Three parts, numbers printed as markdown tables (nothing is asserted):

1. Age added to frames, in simulated time (``FakeClock``, deterministic, a
   60 s call in well under a second): the :class:`RxBackpressure` mechanism
   driven exactly as ``RxDrainProcessor`` drives it (each arrival offered and
   stepped at once, as ``process_frame`` does inline), against a plain
   pass-through (a frame leaves the moment it arrives, so it adds no age by
   definition) and against a reference model of the design before issue 13
   (a 20 ms grid whose deadline follows ``max(d + 20 ms, arrival)``, 1.5x
   catch-up, drain at 100/20). Age = time a frame waits between arriving and
   being released, for an accepting sink and for a sink that refuses 300 ms.
2. Overhead per frame in a real Pipecat pipeline (``PipelineWorker`` +
   ``WorkerRunner``): ``[X, counter]`` with X = ``RxDrainProcessor`` or a
   pass-through ``FrameProcessor``: CPU time per frame for a real-time 50 fps
   stream and for bursts of 100 (both the inline path), and wall / CPU time per
   frame to release a backlog of 100 held behind a closed sink (the drain
   path), with and without ``merge_backlog`` (then the counter sees one frame
   per 60 ms of audio). For the pass-through, "backlog" is the plain burst.
3. Merging and VAD: Pipecat's Silero VAD over the bundled samples fed as 20 ms
   frames, as 40 ms and as 60 ms merged chunks (what ``merge_backlog`` hands
   over when it releases a backlog): speech segments found and how far their
   start / stop move, in audio time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata

from pipecat_rxdrain.testing import FakeClock
from pipecat_rxdrain.rx.backpressure import ActionKind, RxBackpressure

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
    p50_ms: float
    p99_ms: float
    max_ms: float
    end_q: float
    drops: float
    drain_ms: float


def _result(ages: list[float], end_q: float, drops: float, drain_s: float) -> AgeResult:
    ages.sort()
    return AgeResult(
        mean_ms=statistics.fmean(ages) * 1000,
        p50_ms=ages[len(ages) // 2] * 1000,
        p99_ms=ages[int(0.99 * (len(ages) - 1))] * 1000,
        max_ms=ages[-1] * 1000,
        end_q=end_q,
        drops=drops,
        drain_ms=drain_s * 1000,
    )


def _refuses(window: tuple[float, float] | None):
    return (lambda now: True) if window is None else (lambda now: not window[0] <= now < window[1])


def simulate(arrivals: list[float], *, refuse: tuple[float, float] | None = None, **params) -> AgeResult:
    """Drive the mechanism as RxDrainProcessor does: each arrival offered, then stepped at once."""
    clock = FakeClock(0.0)
    rx = RxBackpressure(clock=clock, emit=lambda _line: None, **params)
    accept = _refuses(refuse)
    offered: dict[int, float] = {}
    ages: list[float] = []
    i, end = 0, arrivals[-1] + 30.0
    q_at_last_arrival = 0.0
    while True:
        now = clock.now
        rx.report_if_due(now)
        if i < len(arrivals) and arrivals[i] <= now:
            offered[i] = now
            rx.offer(i, now)
            i += 1
            if i == len(arrivals):
                q_at_last_arrival = rx.q
        action = rx.next_action(now)
        if action.kind is ActionKind.RELEASE:
            ok = accept(now)
            rx.on_release_result(ok, now)
            if ok:
                ages.extend(now - offered.pop(item) for item in action.items)
            continue
        if action.kind is ActionKind.PASS:
            continue
        if i < len(arrivals) and arrivals[i] <= now:
            continue
        if i >= len(arrivals) and not rx.pending:
            break
        target = min(now + action.wait_s, arrivals[i] if i < len(arrivals) else end)
        clock.set(max(target, now + 1e-12))
    s = rx.stats()
    return _result(ages, q_at_last_arrival, s.drops, s.time_in_drain_s)


def simulate_old_grid(arrivals: list[float], *, refuse: tuple[float, float] | None = None) -> AgeResult:
    """Reference model of the RX rules before issue 13, for comparison (frames of 20 ms, 200/100/20).

    normal: one frame per 20 ms on a deadline that advances on acceptance and restarts at the
    arrival of a frame that finds the queue idle (d = max(d, arrival)); 1.5x while more than 2
    frames are queued; drain back-to-back from 100 down to 20, then d = now.
    """
    accept = _refuses(refuse)
    step, retry = FRAME_S, 0.005
    q: list[tuple[int, float]] = []
    ages: list[float] = []
    d = 0.0
    retry_at = None
    drain = False
    drain_s, drain_from, drops = 0.0, 0.0, 0
    i, now, end_q = 0, 0.0, 0
    while i < len(arrivals) or q:
        while i < len(arrivals) and arrivals[i] <= now + 1e-12:
            if not q and d < now:
                d = now
            if len(q) == 200:
                q.pop(0)
                drops += 1
            q.append((i, now))
            i += 1
            if len(q) >= 100 and not drain:
                drain, drain_from = True, now
            if i == len(arrivals):
                end_q = len(q)
        due = None
        if q:
            if retry_at is not None and now + 1e-12 < retry_at:
                due = retry_at
            elif drain or now + 1e-12 >= d:
                if not accept(now):
                    retry_at = now + retry
                    continue
                retry_at = None
                backlog = len(q)
                _, t = q.pop(0)
                ages.append(now - t)
                if drain:
                    if len(q) <= 20:
                        drain, d = False, now
                        drain_s += now - drain_from
                else:
                    d += step / 1.5 if backlog > 2 else step
                    d = max(d, now - step)
                continue
            else:
                due = d
        nxt = arrivals[i] if i < len(arrivals) else float("inf")
        now = min(due if due is not None else float("inf"), nxt)
    return _result(ages, end_q, drops, drain_s)


def age_table(duration_s: float) -> str:
    scenarios = {
        "steady 50 fps": (steady(duration_s), None),
        "steady 50 fps, ±8 ms jitter": (steady(duration_s, jitter_ms=9.0), None),
        "2 s stall, then burst": (with_stalls(duration_s, [(10.0, 2.0)]), None),
        "bunches of 25 every 500 ms": (
            with_stalls(duration_s, [(0.5 * k, 0.5) for k in range(int(duration_s / 0.5))]), None,
        ),
        "steady, sink refuses 300 ms at t=5 s": (steady(duration_s), (5.0, 5.3)),
        "start-up backlog: 3 s arrive with the first frame": (
            [0.0] * 150 + [k * FRAME_S for k in range(1, int(duration_s / FRAME_S) - 150)], None,
        ),
    }
    variants = {
        "before issue 13 (20 ms grid, 1.5x catch-up)": None,
        "RxDrainProcessor (defaults)": {},
        "RxDrainProcessor (merge_backlog)": dict(merge_backlog=True),
    }
    rows = [
        "| scenario | variant | mean age ms | p50 ms | p99 ms | max ms | q at last arrival | drops | time in drain ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (arrivals, refuse) in scenarios.items():
        rows.append(f"| {name} | pass-through | 0.0 | 0.0 | 0.0 | 0 | 0 | 0 | 0 |")
        for vname, params in variants.items():
            if params is None:
                r = simulate_old_grid(arrivals, refuse=refuse)
            else:
                r = simulate(arrivals, refuse=refuse, **params)
            rows.append(
                f"| {name} | {vname} | {r.mean_ms:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.0f} | "
                f"{r.end_q:.0f} | {r.drops:.0f} | {r.drain_ms:.0f} |"
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


async def _pipeline_run(kind: str, mode: str, frames: int) -> tuple[float, float, int]:
    """Returns (wall seconds, CPU seconds, frames the counter saw) to get ``frames`` x 20 ms through [X, counter]."""
    from loguru import logger
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from pipecat_rxdrain.rx.processor import RxDrainParams, RxDrainProcessor

    class PassThrough(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    class Counter(FrameProcessor):
        def __init__(self):
            super().__init__()
            self.n = 0  # 20 ms frames' worth of audio seen
            self.pushes = 0  # audio frames seen (fewer than n when RX merges)
            self.done = asyncio.Event()

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, InputAudioRawFrame):
                self.n += len(frame.audio) // 320
                self.pushes += 1
                if self.n >= frames:
                    self.done.set()
            await self.push_frame(frame, direction)

    class Gate:
        """An AudioSink that holds a backlog in RX until it opens (backlog mode)."""

        open = True

        def can_accept_audio(self) -> bool:
            return self.open

    gate = Gate()
    if kind.startswith("rx"):
        # stream: the normal, inline path; burst: frames pushed faster than real time (still
        # inline while nothing is behind); backlog: 100 frames held behind a closed sink, then
        # released back-to-back (the drain path), merged or not.
        lead = {"lead_ms": 1e9} if mode == "burst" else {}  # bursts beyond real time: lift the rate bound
        # merge_when_busy off: this measures the per-frame path (a loaded machine would merge otherwise).
        x = RxDrainProcessor(
            params=RxDrainParams(merge_backlog=kind == "rx_merge", merge_when_busy=False, **lead), sink=gate
        )
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
        held_wall = held_cpu = 0.0  # time spent filling RX's backlog (backlog mode): not counted
        if mode in ("burst", "backlog"):
            sent = 0
            while sent < frames:
                batch = min(100, frames - sent)
                hold = mode == "backlog" and kind != "pass"
                if hold:
                    gate.open = False
                    h0, hc0 = time.perf_counter(), time.process_time()
                await worker.queue_frames(
                    [InputAudioRawFrame(audio=audio, sample_rate=8000, num_channels=1) for _ in range(batch)]
                )
                sent += batch
                if hold:
                    while x.stats.frames_in < sent:
                        await asyncio.sleep(0.001)
                    held_wall += time.perf_counter() - h0
                    held_cpu += time.process_time() - hc0
                    gate.open = True
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
        result.extend([time.perf_counter() - w0 - held_wall, time.process_time() - c0 - held_cpu, counter.pushes])
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
    return result[0], result[1], result[2]


def pipeline_table(burst_frames: int, stream_s: float, repeats: int) -> str:
    kinds = ("pass", "rx", "rx_merge")  # the pass-through is not run in backlog mode (no backlog forms)
    rows = [
        "| path | measure | pass-through | RxDrainProcessor | overhead | RxDrainProcessor, merge_backlog | overhead |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    stream_frames = int(stream_s / FRAME_S)
    measured: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for mode, frames, runs in (
        ("burst", burst_frames, repeats), ("backlog", burst_frames, repeats), ("stream", stream_frames, 1)
    ):
        for kind in kinds:
            if mode == "backlog" and kind == "pass":
                continue
            measured[mode, kind] = []
            for _ in range(runs):
                wall, cpu, pushes = asyncio.run(_pipeline_run(kind, mode, frames))
                measured[mode, kind].append((wall / frames * 1e6, cpu / frames * 1e6, pushes / frames))
    for mode, idx, what in (
        ("stream", 1, "CPU µs per 20 ms frame, real-time 50 fps (normal path, inline)"),
        ("burst", 1, "CPU µs per 20 ms frame, bursts of 100, accepting sink, rate bound lifted (inline)"),
        ("backlog", 0, "wall µs per 20 ms frame, releasing a held backlog of 100 (drain path)"),
        ("backlog", 1, "CPU µs per 20 ms frame, releasing a held backlog of 100 (drain path)"),
        ("backlog", 2, "frames seen downstream per 20 ms of audio, held backlog of 100"),
    ):
        pick = max if idx == 2 else min
        per = {kind: pick(m[idx] for m in measured[mode, kind]) for kind in kinds if (mode, kind) in measured}
        fmt = "{:.2f}" if idx == 2 else "{:.1f}"
        if mode == "backlog":
            # No backlog forms in a pass-through: compare merging against not merging.
            rows.append(
                f"| {mode} | {what} | – | {fmt.format(per['rx'])} | – | {fmt.format(per['rx_merge'])} | "
                f"{fmt.format(per['rx_merge'] - per['rx'])} vs not merging |"
            )
            continue
        rows.append(
            f"| {mode} | {what} | {fmt.format(per['pass'])} | {fmt.format(per['rx'])} | "
            f"{fmt.format(per['rx'] - per['pass'])} | {fmt.format(per['rx_merge'])} | "
            f"{fmt.format(per['rx_merge'] - per['pass'])} |"
        )
    return "\n".join(rows)


# -- part 3: merging and VAD ---------------------------------------------------------------


async def _vad_segments(pcm16: bytes, rate: int, chunk_ms: int) -> list[tuple[float, float]]:
    """Speech segments (start, stop) in audio seconds, as Pipecat's Silero VAD reports them for this chunking.

    An event is dated at the end of the chunk whose analysis changed the state: that is when
    a processor downstream of RX would learn of it.
    """
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADState

    vad = SileroVADAnalyzer(sample_rate=rate)
    vad.set_sample_rate(rate)  # what VADController does on StartFrame
    step = rate * chunk_ms // 1000 * 2
    segments: list[tuple[float, float]] = []
    start = None
    speaking = False
    for off in range(0, len(pcm16) - step + 1, step):
        state = await vad.analyze_audio(pcm16[off : off + step])
        t = (off + step) / 2 / rate
        if state is VADState.SPEAKING and not speaking:
            speaking, start = True, t
        elif state is VADState.QUIET and speaking:
            speaking = False
            segments.append((start, t))
    if speaking:
        segments.append((start, len(pcm16) / 2 / rate))
    await vad.cleanup()
    return segments


def vad_table() -> str:
    from pipecat_rxdrain.samples import load_sample

    rows = [
        "| sample | chunking | speech segments | start moved ms (mean / max) | stop moved ms (mean / max) | unmatched |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in ("call_en", "hello_en", "shalom_he"):
        sample = load_sample(name)
        base = asyncio.run(_vad_segments(sample.pcm16, sample.sample_rate, 20))
        rows.append(f"| {name} | 20 ms frames (reference) | {len(base)} | 0 / 0 | 0 / 0 | 0 |")
        for chunk in (40, 60):
            segs = asyncio.run(_vad_segments(sample.pcm16, sample.sample_rate, chunk))
            starts, stops, unmatched = [], [], 0
            for s0, s1 in base:
                match = min(segs, key=lambda s: abs(s[0] - s0), default=None)
                if match is None or abs(match[0] - s0) > 0.3:
                    unmatched += 1
                    continue
                starts.append(abs(match[0] - s0) * 1000)
                stops.append(abs(match[1] - s1) * 1000)
            unmatched += max(0, len(segs) - len(base))
            mean = lambda xs: statistics.fmean(xs) if xs else 0.0  # noqa: E731
            rows.append(
                f"| {name} | {chunk} ms merged chunks | {len(segs)} | {mean(starts):.0f} / {max(starts, default=0):.0f} | "
                f"{mean(stops):.0f} / {max(stops, default=0):.0f} | {unmatched} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_rx")
    p.add_argument("--quick", action="store_true", help="shorter runs (~15 s)")
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
        "noisy shared machine, compare columns rather than absolute values)\n"
    )
    print("## Merging and VAD (Pipecat's Silero VAD, default VADParams)\n")
    print(vad_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
