"""STT write-path benchmark: this package's GoogleSTTService vs Pipecat's stock one, same emulator, one run.

    python -m benchmarks.bench_stt [--seconds 8] [--stall 3] [--pushes 20000]

Prints numbers; asserts nothing. Both services run in a real Pipecat pipeline
on the same event loop, fed 20 ms 8 kHz frames in real time from the bundled
``call_en`` sample, against the emulator with small HTTP/2 windows and a
server stall of ``--stall`` seconds (``emu.faults.stall``) two seconds in.

* ``run_stt`` = time for the service's ``run_stt`` step per audio frame (what
  the pipeline's input task waits for);
* ``push_audio`` = the raw ``StreamingSTTSession.push_audio`` call, in a tight loop;
* ``write_ms`` = time gRPC takes to accept one request (gap between the request
  generator's yield and its resumption; measured the same way for both);
* event-loop lag = how late a 5 ms ``asyncio.sleep`` wakes up, sampled during the stall.

The stock service is built with a generated service-account JSON (an RSA key
made on the spot with ``cryptography``, never sent anywhere) and its
``_client`` is then replaced by ``emulator_client(addr, api="v2", asynchronous=True)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from loguru import logger


def _pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def _fake_service_account() -> str:
    from pipecat_rxdrain.testing import fake_service_account_json

    return fake_service_account_json("bench-project")


async def _run_pipeline(svc, pcm: bytes, seconds: float, stall_window: tuple[float, float]) -> dict:
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.task import PipelineParams
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    run_stt_s: list[float] = []
    orig_run_stt = svc.run_stt

    async def timed_run_stt(audio: bytes):
        t0 = time.perf_counter()
        async for frame in orig_run_stt(audio):
            run_stt_s.append(time.perf_counter() - t0)
            yield frame

    svc.run_stt = timed_run_stt
    worker = PipelineWorker(
        Pipeline([svc]), params=PipelineParams(audio_in_sample_rate=8000), cancel_on_idle_timeout=False
    )
    lag_all: list[float] = []
    lag_stall: list[float] = []
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(*_):
        started.set()

    async def monitor(t_start: float):
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lag = time.perf_counter() - t0 - 0.005
            lag_all.append(lag)
            if stall_window[0] <= t0 - t_start <= stall_window[1]:
                lag_stall.append(lag)

    async def feed():
        await asyncio.wait_for(started.wait(), 20)
        t_start = time.perf_counter()
        mon = asyncio.create_task(monitor(t_start))
        chunk, n = 320, int(seconds * 50)
        for i in range(n):
            off = (i * chunk) % (len(pcm) - chunk)
            await worker.queue_frame(InputAudioRawFrame(audio=pcm[off : off + chunk], sample_rate=8000, num_channels=1))
            delay = t_start + (i + 1) * 0.02 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        mon.cancel()
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), feed())
    return {"run_stt": run_stt_s, "lag_all": lag_all, "lag_stall": lag_stall}


async def _watch(get, depth, max_q: list, seen: list) -> None:
    """Sample a queue's depth every 10 ms (outside the timed run_stt path)."""
    while True:
        obj = get()
        if obj is not None:
            if not seen or seen[-1] is not obj:
                seen.append(obj)
            max_q[0] = max(max_q[0], depth(obj))
        await asyncio.sleep(0.01)


def _wrap_stock_writes(svc, write_s: list[float]) -> None:
    orig = svc._request_generator

    async def timed():
        async for request in orig():
            t0 = time.perf_counter()
            yield request
            write_s.append(time.perf_counter() - t0)

    svc._request_generator = timed


def _report(name: str, res: dict, write_s: list[float], extra: str) -> None:
    us = [x * 1e6 for x in res["run_stt"]]
    ms = [x * 1e3 for x in write_s]
    lag = [x * 1e3 for x in res["lag_stall"]]
    print(f"{name}")
    print(f"  run_stt per frame   p50 {_pct(us, 50):8.1f} us   p99 {_pct(us, 99):8.1f} us   max {max(us or [0]):9.1f} us   (n={len(us)})")
    if ms:
        print(f"  write_ms            mean {statistics.fmean(ms):7.2f} ms   p99 {_pct(ms, 99):8.2f} ms   max {max(ms):8.1f} ms   (n={len(ms)})")
    else:
        print("  write_ms            (no writes)")
    print(f"  loop lag in stall   p50 {_pct(lag, 50):7.2f} ms    p99 {_pct(lag, 99):8.2f} ms   max {max(lag or [0]):8.2f} ms   (n={len(lag)})")
    print(f"  {extra}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="call length per service (real time)")
    p.add_argument("--stall", type=float, default=3.0, help="server stall length (s), starting 2 s in")
    p.add_argument("--pushes", type=int, default=20000, help="push_audio calls in the micro-benchmark")
    args = p.parse_args(argv)

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    os.environ.pop("SPEECH_EMULATOR_HOST", None)

    from pipecat.services.google.stt import GoogleSTTService as StockGoogleSTTService

    from pipecat_rxdrain.emulator import SpeechEmulator
    from pipecat_rxdrain.google_clients import emulator_client
    from pipecat_rxdrain.samples import load_sample
    from pipecat_rxdrain.stt.recognition_config import build_v2_spec, recognizer_path
    from pipecat_rxdrain.stt.service import GoogleSTTService
    from pipecat_rxdrain.stt.session import StreamingSTTSession

    sample = load_sample("call_en")
    pcm = sample.pcm16
    stall_window = (2.0, 2.0 + args.stall)
    print(f"bench_stt: {args.seconds:.0f} s real-time call per service, 20 ms frames @ 8 kHz, "
          f"server stall {args.stall:.1f} s at t=2 s (small HTTP/2 windows), emulator on loopback")

    # 1. push_audio micro-benchmark (session only, queue kept full so drop-oldest is exercised too).
    spec = build_v2_spec(sample_rate=8000, recognizer=recognizer_path("bench", "global"), language_codes=["en-US"], model="latest_long")
    s = StreamingSTTSession(spec, lambda: None, max_queue=200, telemetry_interval_s=None)
    chunk = pcm[:320]
    times = []
    for _ in range(args.pushes):
        t0 = time.perf_counter_ns()
        s.push_audio(chunk)
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    print(f"push_audio (StreamingSTTSession, tight loop, queue full)  p50 {_pct(times, 50):.2f} us  p99 {_pct(times, 99):.2f} us  "
          f"max {max(times):.1f} us  (n={len(times)}, drops={s.stats.drops})")
    s.close(0)

    # 2. This package's service.
    with SpeechEmulator(script=list(sample.segments), small_window=True) as emu:
        emu.faults.stall(args.stall, after_s=2.0)

        async def ours():
            svc = GoogleSTTService(endpoint=emu.address, telemetry_interval_s=None)
            watcher = asyncio.create_task(_watch(lambda: svc.session, lambda ss: ss.stats.q, max_q, sessions))
            res = await _run_pipeline(svc, pcm, args.seconds, stall_window)
            watcher.cancel()
            return svc, res

        max_q = [0]
        sessions: list = []

        t0 = time.perf_counter()
        svc, res = asyncio.run(ours())
        sess_stats = svc.final_stats
        samples = sessions[0].write_samples() if sessions else []
        print()
        _report(
            "pipecat_rxdrain GoogleSTTService (bounded drop-oldest queue, writer thread)",
            res,
            samples,
            f"session: {sess_stats.requests_sent} requests; max q {max_q[0]} (cap {sess_stats.max_queue}), drops {sess_stats.drops}, "
            f"reconnects {sess_stats.reconnects}; wall {time.perf_counter() - t0:.1f} s",
        )

    # 3. Stock Pipecat service on an identical emulator.
    with SpeechEmulator(script=list(sample.segments), small_window=True) as emu:
        emu.faults.stall(args.stall, after_s=2.0)
        stock_writes: list[float] = []

        async def stock():
            svc = StockGoogleSTTService(credentials=_fake_service_account())
            svc._client = emulator_client(emu.address, api="v2", asynchronous=True)
            _wrap_stock_writes(svc, stock_writes)
            max_q = [0]
            watcher = asyncio.create_task(
                _watch(lambda: getattr(svc, "_request_queue", None), lambda q: q.qsize(), max_q, [])
            )
            res = await _run_pipeline(svc, pcm, args.seconds, stall_window)
            watcher.cancel()
            return res, max_q[0]

        t0 = time.perf_counter()
        res, max_q = asyncio.run(stock())
        print()
        _report(
            "pipecat stock GoogleSTTService 1.14 (unbounded asyncio.Queue, writes on the event loop)",
            res,
            stock_writes,
            f"max request-queue depth {max_q} (unbounded, never drops); wall {time.perf_counter() - t0:.1f} s; "
            "built with a generated service-account JSON, _client replaced by emulator_client(addr, api='v2', asynchronous=True)",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
