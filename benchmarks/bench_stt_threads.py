"""STT I/O thread model: one shared gRPC I/O thread vs a thread (and loop) per call, N calls at once.

    python -m benchmarks.bench_stt_threads [--calls 10 20] [--seconds 8] [--modes shared,per_session]

Prints numbers; asserts nothing. The emulator runs in a separate process
(``python -m pipecat_rxdrain.cli emulator``), so the CPU measured is only this
process: one asyncio loop (standing in for Pipecat's) feeding N
``StreamingSTTSession``s one 20 ms 8 kHz frame each every 20 ms (own phase per
call), plus whatever threads the sessions use.

* ``cpu us/frame`` = process CPU time during the window / frames pushed, minus
  the same feeding loop pushing into nothing (``null``);
* ``push p50/p99/max`` = the ``push_audio`` call as the caller's loop sees it;
* ``feed lag p99`` = how late the caller's 20 ms ticks run (the loop's health);
* ``requests/frame`` = gRPC requests per pushed frame (1.0: one request per frame).

Mode ``on_loop`` is stock Pipecat's pattern, for comparison: each call an ``asyncio.Queue`` and a
grpc.aio stream on the caller's own loop (no thread hop; what the mission rules out for ours, since a
stalled write then stalls the loop). Mode ``shared_bound`` is ``shared`` in a process whose caller loop has also run a grpc.aio call (a
channel made ready on it first), as Pipecat's loop has when a bot uses another grpc.aio client there:
grpc.aio keeps every such loop bound to its one completion queue and wakes it for every completion.

``--legacy PATH`` also runs a checkout of the package at PATH (e.g. the code
before the shared thread) in a subprocess, with the default thread model it had.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid


def _pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def start_emulator() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipecat_rxdrain.cli", "emulator", "--port", "0", "--sample", "call_en"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 20
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("SPEECH_EMULATOR_HOST="):
            return proc, line.strip().split("=", 1)[1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("emulator did not start")


def stop_emulator(proc: subprocess.Popen) -> None:
    """Stop what :func:`start_emulator` started (killed if it does not exit within 10 s)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class OnLoopStream:
    """Stock Pipecat's write path: ``push_audio`` puts into an ``asyncio.Queue``; a grpc.aio stream on the
    caller's loop sends each chunk as one request."""

    def __init__(self, spec, client, metadata) -> None:
        import types

        self.spec, self.client, self.metadata = spec, client, metadata
        self.queue: asyncio.Queue = asyncio.Queue()
        self.stats = types.SimpleNamespace(requests_sent=0)

    def push_audio(self, pcm: bytes) -> None:
        self.queue.put_nowait(pcm)

    async def run(self) -> None:
        async def requests():
            yield self.spec.config_request()
            while True:
                audio = await self.queue.get()
                self.stats.requests_sent += 1
                yield self.spec.audio_request(audio)

        call = await self.client.streaming_recognize(requests=requests(), metadata=self.metadata)
        async for _ in call:
            pass

    def close(self, timeout: float) -> None:
        pass  # its task ends with the loop


def run_one(address: str, calls: int, seconds: float, mode: str) -> dict:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    from pipecat_rxdrain.emulator import SESSION_METADATA_KEY  # public there in every release (--legacy too)
    from pipecat_rxdrain.google_clients import emulator_client
    from pipecat_rxdrain.samples import load_sample
    from pipecat_rxdrain.stt.recognition_config import build_v2_spec, recognizer_path
    from pipecat_rxdrain.stt.session import StreamingSTTSession

    pcm = load_sample("call_en").pcm16
    spec = build_v2_spec(sample_rate=8000, recognizer=recognizer_path("bench", "global"), language_codes=["en-US"],
                         model="latest_long")
    sessions = []
    if mode not in ("null", "on_loop"):
        for i in range(calls):
            kw = dict(telemetry_interval_s=1.0, metadata=[(SESSION_METADATA_KEY, str(uuid.uuid4()))],
                      on_result=lambda r: None, name=f"bench-{i}")
            if mode != "legacy":
                kw["io_thread"] = "shared" if mode == "shared_bound" else mode
            sessions.append(
                StreamingSTTSession(spec, lambda: emulator_client(address, api="v2", asynchronous=True), **kw).start()
            )
    pushes: list[float] = []
    lags: list[float] = []
    frames = [0]

    async def caller(idx: int, t_end: float, measure_from: float):
        s = sessions[idx] if sessions else None
        pos = random.randrange(0, len(pcm) // 320) * 320
        loop = asyncio.get_running_loop()
        next_t = loop.time() + random.random() * 0.02
        while True:
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            now = loop.time()
            if now >= t_end:
                return
            chunk = pcm[pos : pos + 320] or pcm[:320]
            pos = (pos + 320) % (len(pcm) - 320)
            t0 = time.perf_counter_ns()
            if s is not None:
                s.push_audio(chunk)
            dt = (time.perf_counter_ns() - t0) / 1000.0
            if now >= measure_from:
                pushes.append(dt)
                lags.append((now - next_t) * 1000.0)
                frames[0] += 1
            next_t += 0.02

    async def main():
        loop = asyncio.get_running_loop()
        if mode == "shared_bound":
            import grpc

            bound = grpc.aio.insecure_channel(address)
            await asyncio.wait_for(bound.channel_ready(), 10)
        on_loop_tasks = []
        if mode == "on_loop":
            client = emulator_client(address, api="v2", asynchronous=True)
            for _ in range(calls):
                sessions.append(OnLoopStream(spec, client, [(SESSION_METADATA_KEY, str(uuid.uuid4()))]))
                on_loop_tasks.append(asyncio.create_task(sessions[-1].run()))
        warm = 1.5
        start = loop.time()
        measure_from = start + warm
        t_end = measure_from + seconds
        tasks = [asyncio.create_task(caller(i, t_end, measure_from)) for i in range(calls)]
        await asyncio.sleep(warm)
        c0 = time.process_time()
        w0 = time.perf_counter()
        req0 = sum(s.stats.requests_sent for s in sessions)
        await asyncio.gather(*tasks)
        cpu = time.process_time() - c0
        wall = time.perf_counter() - w0
        req = sum(s.stats.requests_sent for s in sessions) - req0
        for t in on_loop_tasks:  # a stream that died would leave its frames unsent: say so
            if t.done() and not t.cancelled() and t.exception() is not None:
                print(f"on_loop stream failed: {t.exception()!r}", file=sys.stderr)
        if mode == "shared_bound":
            await bound.close()
        return cpu, wall, req

    cpu, wall, req = asyncio.run(main())
    for s in sessions:
        s.close(2)
    return {
        "mode": mode,
        "calls": calls,
        "frames": frames[0],
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_us_per_frame": cpu / max(1, frames[0]) * 1e6,
        "push_p50_us": _pct(pushes, 50),
        "push_p99_us": _pct(pushes, 99),
        "push_max_us": max(pushes) if pushes else float("nan"),
        "lag_p99_ms": _pct(lags, 99),
        "requests_per_frame": req / max(1, frames[0]),
        "threads": len([t for t in __import__("threading").enumerate()]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--modes", default="shared,per_session")
    ap.add_argument("--legacy", default=None, help="path of another checkout to run as 'legacy'")
    ap.add_argument("--one", nargs=4, metavar=("ADDRESS", "CALLS", "SECONDS", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), float(args.one[2]), args.one[3])))
        return 0
    emu, address = start_emulator()
    rows = []
    try:
        for calls in args.calls:
            runs = [("null", None)] + [(m, None) for m in args.modes.split(",")]
            if args.legacy:
                runs.append(("legacy", args.legacy))
            for mode, path in runs:
                env = dict(os.environ)
                if path:
                    env["PYTHONPATH"] = path
                # Each configuration in a fresh process: no thread or channel left over from the last.
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_stt_threads", "--one", address, str(calls), str(args.seconds), mode],
                    capture_output=True, text=True, env=env, cwd=path or None, timeout=args.seconds + 60,
                )
                if out.returncode:
                    print(out.stderr[-2000:], file=sys.stderr)
                    continue
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"  {calls:3d} calls  {mode:12s} cpu {r['cpu_us_per_frame']:7.1f} us/frame  push p50/p99/max "
                      f"{r['push_p50_us']:6.1f} {r['push_p99_us']:7.1f} {r['push_max_us']:8.1f} us  feed lag p99 "
                      f"{r['lag_p99_ms']:5.2f} ms  requests/frame {r['requests_per_frame']:.2f}", flush=True)
    finally:
        stop_emulator(emu)
    print()
    print("| calls | model | CPU µs/frame (minus null) | push_audio p50 / p99 / max µs | feed lag p99 ms | requests/frame |")
    print("|---|---|---|---|---|---|")
    null = {r["calls"]: r["cpu_us_per_frame"] for r in rows if r["mode"] == "null"}
    for r in rows:
        if r["mode"] == "null":
            continue
        print(f"| {r['calls']} | {r['mode']} | {r['cpu_us_per_frame'] - null.get(r['calls'], 0):.0f} | "
              f"{r['push_p50_us']:.1f} / {r['push_p99_us']:.1f} / {r['push_max_us']:.0f} | {r['lag_p99_ms']:.2f} | "
              f"{r['requests_per_frame']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
