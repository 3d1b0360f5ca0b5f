"""What Pipecat's default RTVI support costs a phone pipeline: loop CPU per audio frame with it on and off.

    python -m benchmarks.bench_rtvi [--calls 20] [--seconds 6] [--rounds 2]

Prints numbers; asserts nothing. ``PipelineWorker`` adds an ``RTVIProcessor`` and an
``RTVIObserver`` unless ``enable_rtvi=False``; a Twilio call has no RTVI client, so
``MediaStreamCall`` turns it off. Each configuration runs in a fresh process with N
pipelines ``RxDrainProcessor -> our GoogleSTTService`` fed one 20 ms 8 kHz frame each
every 20 ms (own phase per call) through ``worker.queue_frame``; the emulator runs in
its own process (``bench_stt_threads.start_emulator``). ``loop`` = the loop thread's CPU
per frame, ``process`` = the whole process's (including the STT I/O thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time

from .bench_stt_threads import start_emulator, stop_emulator


async def _run(address: str, rtvi: bool, calls: int, seconds: float) -> dict:
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    from pipecat_rxdrain.rx.processor import RxDrainProcessor
    from pipecat_rxdrain.stt.service import GoogleSTTService

    workers, tasks = [], []
    for _ in range(calls):
        stt = GoogleSTTService(endpoint=address, sample_rate=8000)
        worker = PipelineWorker(
            Pipeline([RxDrainProcessor(sink=stt), stt]), params=PipelineParams(audio_in_sample_rate=8000),
            idle_timeout_secs=None, cancel_on_idle_timeout=False, enable_rtvi=rtvi,
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        tasks.append(asyncio.create_task(runner.run()))
        workers.append(worker)
    await asyncio.sleep(2.0)  # every pipeline started
    pcm = b"\x01\x00" * 160
    n = int(seconds * 50)

    async def feed(worker, phase: float) -> None:
        t0 = time.monotonic() + phase
        for k in range(n):
            delay = t0 + k * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await worker.queue_frame(InputAudioRawFrame(audio=pcm, sample_rate=8000, num_channels=1))

    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.thread_time()
    await asyncio.gather(*(feed(w, i * 0.02 / calls) for i, w in enumerate(workers)))
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), time.thread_time()
    for worker in workers:
        await worker.queue_frame(EndFrame())
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    frames = calls * n
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return {"loop_us": (c1 - c0) / frames * 1e6, "process_us": cpu / frames * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_rtvi", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # address rtvi(on|off) calls seconds
    args = p.parse_args(argv)
    if args.one:
        from loguru import logger

        logger.remove()
        address, rtvi, calls, seconds = args.one
        print(json.dumps(asyncio.run(_run(address, rtvi == "on", int(calls), float(seconds)))))
        return 0
    emu, address = start_emulator()
    try:
        print(f"{args.calls} pipelines, {args.seconds:g} s of 20 ms frames each")
        print(f"{'round':>5} {'rtvi':>4} {'loop µs/frame':>13} {'process µs/frame':>16}")
        for rnd in range(1, args.rounds + 1):
            for rtvi in ("on", "off"):
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_rtvi", "--one", address, rtvi, str(args.calls), str(args.seconds)],
                    capture_output=True, text=True, timeout=args.seconds + 90,
                )
                if out.returncode:
                    print(f"{rnd:>5} {rtvi:>4} failed: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{rnd:>5} {rtvi:>4} {r['loop_us']:>13.0f} {r['process_us']:>16.0f}", flush=True)
    finally:
        stop_emulator(emu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
