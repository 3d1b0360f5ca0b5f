"""Run one scenario through one pipeline: emulator, websocket server, caller simulator, samplers.

* the Speech emulator (:mod:`benchmarks.emulation`): in this process on its own thread and event
  loop, or in its own process for the scale scenarios (``Scenario.emulator_process``);
* a FastAPI app served by uvicorn on 127.0.0.1, on the benchmark's main event loop, where
  each call's Pipecat pipeline runs (``FastAPIWebsocketTransport`` + a Twilio serializer);
* the caller simulator (:func:`pipecat_rxdrain.twilio.caller.simulate_call`, exact Twilio
  messages, absolute 20 ms schedule) in a child process (:mod:`benchmarks.caller_proc`), so a
  blocked pipeline loop cannot slow the caller down: its frames queue in the socket, as
  Twilio's would.

``time.monotonic()`` is one clock for all of them (CLOCK_MONOTONIC is system-wide), so the
emulator's per-chunk receive times can be subtracted from the pipeline's per-frame stamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psutil
from fastapi import FastAPI, WebSocket
from loguru import logger

from .emulation import DEFAULT_TIMING, bench_script, make_emulator
from .feed import FRAME_S, caller_options, loop_frames
from .pipelines import (
    BUILDERS,
    BuildOptions,
    CallProbe,
    HiccupProcessor,
    TranscriptCollector,
    record_merges,
    stamping_serializer,
)


@dataclass(frozen=True)
class Scenario:
    """One workload. Times are seconds of call audio (the caller sends in real time)."""

    key: str
    title: str
    audio_s: float  # caller speech (call_en looped), followed by 1 s of silence
    calls: int = 1
    net_stall: tuple[float, float] | None = None  # (at_s, duration_s): caller sends nothing, then a burst
    bunch: int = 1  # frames sent in clumps of N
    hiccup: tuple[float, float] | None = None  # (every_s, block_s): a processor blocks the loop
    server_stall: tuple[float, float] | None = None  # (after_s, duration_s): emulator stops reading
    abort_at_s: float | None = None  # emulator aborts the stream (UNAVAILABLE) at this stream time
    max_stream_s: float | None = None  # emulator's stream duration limit (Google: 305 s)
    small_window: bool = False  # emulator with small HTTP/2 windows (real back-pressure)
    stagger_s: float = 0.0  # spread call starts over this many seconds
    jitter_ms: float = 0.0  # each send delayed by 0..J ms (J=16: ±8 ms around the mean)
    pipeline_rate: int = 8000  # PipelineParams.audio_in_sample_rate (16000: the serializer resamples)
    emulator_process: bool = False  # the emulator in its own process (scale scenarios)
    timing: str | None = None  # emulator timing profile; None = the run's --timing
    profile: bool = False  # sample the loop thread's stack for the µs/frame profile
    reply: bool = False  # full mode: user aggregator -> rule LLM -> espeak TTS -> transport output
    pipelines: tuple[str, ...] | None = None  # only these pipelines (None: all)
    rx_busy_level: int | None = None  # ours: RxDrainProcessor's busy level fixed at this (None: measured)
    plot: bool = False
    group: str = "fault"  # "fault" | "scale" | "profile"

    @property
    def fault_window(self) -> tuple[float, float] | None:
        """(start, end) of the injected fault in call seconds, for recovery metrics."""
        if self.net_stall:
            return self.net_stall[0], self.net_stall[0] + self.net_stall[1]
        if self.server_stall:
            return self.server_stall[0], self.server_stall[0] + self.server_stall[1]
        if self.abort_at_s is not None:
            return self.abort_at_s, self.abort_at_s
        return None


@dataclass
class RunData:
    """Raw observations of one (scenario, pipeline) run; :mod:`benchmarks.metrics` turns them into numbers."""

    scenario: Scenario
    pipeline: str
    probes: list[CallProbe]
    streams: list[Any]  # emulator StreamRecord snapshots
    schedules: dict[str, list[float]]  # call_id -> caller send offsets (s) per frame
    q_timeline: dict[str, list[tuple[float, int | None, int | None]]]
    lag: list[tuple[float, float]]  # (monotonic, loop lag s)
    rss: list[tuple[float, int]]
    threads: list[tuple[float, int]]
    threads_before: int
    cpu_s: float  # process CPU minus the emulator's and the caller's threads
    wall_s: float
    t_begin: float
    caller_errors: list[str] = field(default_factory=list)
    call_durations: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    script: list[str] = field(default_factory=list)  # the emulator's scripted finals, by position
    emulator_cpu_s: float = float("nan")  # the emulator process's CPU (NaN: it ran in this process)
    setup_end: float = 0.0  # monotonic time the last call of the scenario had started
    profile: dict[str, float] = field(default_factory=dict)  # µs per frame by stage (profile scenarios)
    timing: str = DEFAULT_TIMING


# ----------------------------------------------------------------------------- caller


_loop_frames = loop_frames  # the old name


class Callers:
    """N simulated Twilio callers in a child process (:mod:`benchmarks.caller_proc`)."""

    def __init__(self, url: str, scenario: Scenario, pipeline: str, call_ids: list[str], frames: list[bytes]) -> None:
        from pipecat_rxdrain.twilio.audio import silence_frames
        from pipecat_rxdrain.twilio.caller import send_schedule

        self.spec = {
            "url": url,
            "call_ids": call_ids,
            "pipeline": pipeline,
            "audio_s": scenario.audio_s,
            "stall_at_s": scenario.net_stall[0] if scenario.net_stall else None,
            "stall_s": scenario.net_stall[1] if scenario.net_stall else 0.0,
            "bunch": scenario.bunch,
            "jitter_ms": scenario.jitter_ms,
            "stagger_s": scenario.stagger_s,
        }
        tail = len(silence_frames(1.0))
        self.schedules = {
            o.custom_parameters["call"]: send_schedule(len(frames) + tail, o)[0] for o in caller_options(self.spec, frames)
        }
        self.summaries: list[dict] = []
        self.error: str | None = None
        self._proc = None

    async def start(self) -> None:
        import os
        import sys
        from pathlib import Path

        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.caller_proc", cwd=root, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        self._proc.stdin.write(json.dumps(self.spec).encode())
        self._proc.stdin.close()

    async def wait(self, timeout: float) -> None:
        try:
            out, err = await asyncio.wait_for(self._proc.communicate(), timeout)
        except asyncio.TimeoutError:
            self._proc.kill()
            await self._proc.wait()
            self.error = f"caller process did not finish within {timeout:.0f} s"
            return
        if self._proc.returncode != 0:
            self.error = f"caller process exited {self._proc.returncode}: {err.decode(errors='replace')[-500:]}"
            return
        self.summaries = json.loads(out.decode())


# ----------------------------------------------------------------------------- server


class BenchServer:
    """A FastAPI websocket endpoint that runs the pipeline named in ``start.customParameters``.

    ``read_ahead``: uvicorn runs our :class:`ReadAheadWebSocketProtocol` (as the bundled bot does) instead of its
    ``websockets-sansio`` protocol, which pauses reading after every message. ``run_all`` sets it when every
    pipeline of the process is one of ours: stock and blocking get uvicorn's default, as a stock user would.
    """

    def __init__(self, *, read_ahead: bool = False) -> None:
        self.read_ahead = read_ahead
        self.ws_protocol = ""  # what uvicorn actually runs, once started ("read_ahead", "websockets-sansio", ...)
        self.pending: dict[str, tuple[CallProbe, BuildOptions, Scenario]] = {}
        self.live: dict[str, CallProbe] = {}
        self.finished: dict[str, CallProbe] = {}
        self.failures: list[str] = []
        self._server = None
        self._task: asyncio.Task | None = None
        self.app = self._make_app()

    def _make_app(self):
        app = FastAPI()

        @app.websocket("/ws")
        async def media(websocket: WebSocket):
            await websocket.accept()
            from pipecat_rxdrain.twilio.messages import Start, TwilioStreamParser

            parser = TwilioStreamParser()
            start = None
            for _ in range(10):
                raw = await websocket.receive_text()
                parsed = parser.feed(raw)
                if isinstance(parsed, Start):
                    start = parsed
                    break
            if start is None:
                await websocket.close(code=1008)
                return
            t_start = time.monotonic()
            call_id = start.custom_parameters.get("call", "")
            entry = self.pending.pop(call_id, None)
            if entry is None:
                await websocket.close(code=1008)
                return
            probe, opts, scenario = entry
            probe.start_at = t_start
            self.live[call_id] = probe
            try:
                await self._run_call(websocket, start, parser, probe, opts, scenario)
            except Exception as e:
                self.failures.append(f"{probe.pipeline}/{call_id}: {type(e).__name__}: {e}")
                logger.exception("bench call failed")
            finally:
                probe.ended_at = time.monotonic()
                self.live.pop(call_id, None)
                self.finished[call_id] = probe

        return app

    async def _run_call(self, websocket, start, parser, probe: CallProbe, opts: BuildOptions, scenario: Scenario):
        from pipecat.frames.frames import EndFrame
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker
        from pipecat.serializers.twilio import TwilioFrameSerializer
        from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
        from pipecat.workers.runner import WorkerRunner

        from pipecat_rxdrain.twilio.serializer import HardenedTwilioFrameSerializer

        state = {"ending": False, "worker": None, "input": None}

        async def end_call():
            if not state["ending"] and state["worker"] is not None:
                state["ending"] = True
                # Pipecat's input transport cancels its audio task on EndFrame and drops what is
                # still in its audio queue (base_input.py stop()); let that queue drain first so
                # the last frames of the call are not lost in the harness (bounded).
                q = getattr(state["input"], "_audio_in_queue", None)
                if q is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(q.join(), 3.0)
                await state["worker"].queue_frame(EndFrame())

        common = dict(stream_sid=start.stream_sid, call_sid=start.call_sid, params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
        if probe.pipeline.startswith("ours"):
            serializer = stamping_serializer(HardenedTwilioFrameSerializer, probe, end_call, parser=parser, **common)
        else:
            serializer = stamping_serializer(TwilioFrameSerializer, probe, end_call, **common)
        transport = FastAPIWebsocketTransport(
            websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True, audio_out_enabled=scenario.reply, add_wav_header=False, serializer=serializer
            ),
        )
        state["input"] = transport.input()
        procs = [state["input"], *BUILDERS[probe.pipeline](probe, opts)]
        if opts.hiccup:
            procs.append(HiccupProcessor(*opts.hiccup))
        procs.append(TranscriptCollector(probe))
        if scenario.reply:
            from .pipelines import reply_processors

            turn, after = reply_processors()
            procs += [*turn, transport.output(), *after]
        worker = PipelineWorker(
            Pipeline(procs),
            params=PipelineParams(audio_in_sample_rate=opts.sample_rate, audio_out_sample_rate=8000),
            idle_timeout_secs=None,
            cancel_on_idle_timeout=False,
        )
        state["worker"] = worker

        @transport.event_handler("on_client_disconnected")
        async def _gone(transport, ws):
            await end_call()

        async def watchdog():
            while not state["ending"]:
                await asyncio.sleep(0.2)
            await asyncio.sleep(12.0)
            if not worker.has_finished():
                probe.errors += 1
                await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        dog = asyncio.create_task(watchdog())
        try:
            await runner.run()
        finally:
            dog.cancel()
            await asyncio.gather(dog, return_exceptions=True)
            probe.finish()

    async def start(self) -> str:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield

        from pipecat_rxdrain.twilio.ws_read_ahead import ReadAheadWebSocketProtocol, read_ahead_ws_protocol

        try:
            import websockets.asyncio.server  # noqa: F401

            ws_impl = read_ahead_ws_protocol() if self.read_ahead else "websockets-sansio"
        except ImportError:  # pragma: no cover
            ws_impl = "websockets"
        self.ws_protocol = "read_ahead" if ws_impl is ReadAheadWebSocketProtocol else str(ws_impl)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, ws=ws_impl, ws_ping_interval=None, log_config=None,
            access_log=False, lifespan="off", backlog=1024,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 15
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("bench websocket server did not start")
            await asyncio.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)


# ----------------------------------------------------------------------------- run


def _thread_cpu(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


async def run_scenario(
    server: BenchServer, url: str, scenario: Scenario, pipeline: str, *, timing: str | None = None
) -> RunData:
    """One scenario through one pipeline; returns the raw observations.

    ``timing`` is the run's emulator timing profile (``--timing``), unless the scenario pins one.
    """
    from .profiling import StageSampler, ThreadCpuSampler, profile_rows, thread_kind

    emu = make_emulator(scenario, timing)
    await emu.start()
    record_merges(True)
    notes: list[str] = []
    emulator_cpu = float("nan")
    try:
        opts = BuildOptions(
            address=emu.address, hiccup=scenario.hiccup, sample_rate=scenario.pipeline_rate, rx_busy_level=scenario.rx_busy_level
        )
        if scenario.max_stream_s:
            # Scale the clients' proactive rotation like Google's: 240 s (+30 s grace) of 305 s.
            opts.stream_limit_s = scenario.max_stream_s * 240 / 305
            opts.rotate_grace_s = scenario.max_stream_s * 30 / 305

        frames = loop_frames(scenario.audio_s)
        tag = uuid.uuid4().hex[:6]
        call_ids = [f"{pipeline}-{tag}-{i}" for i in range(scenario.calls)]
        probes = []
        for cid in call_ids:
            probe = CallProbe(call_id=cid, pipeline=pipeline)
            probes.append(probe)
            server.pending[cid] = (probe, opts, scenario)

        proc = psutil.Process()
        threads_before = proc.num_threads()
        caller = Callers(url, scenario, pipeline, call_ids, frames)
        q_timeline: dict[str, list] = {cid: [] for cid in call_ids}
        lag: list[tuple[float, float]] = []
        rss: list[tuple[float, int]] = []
        threads: list[tuple[float, int]] = []

        async def sample_q():
            while True:
                now = time.monotonic()
                for cid, probe in list(server.live.items()):
                    if cid in q_timeline and probe.q_fn is not None:
                        try:
                            rx_q, stt_q = probe.q_fn()
                        except Exception:
                            continue
                        q_timeline[cid].append((now, rx_q, stt_q))
                await asyncio.sleep(0.05)

        async def sample_lag():
            while True:
                t0 = time.monotonic()
                await asyncio.sleep(0.01)
                lag.append((t0, max(0.0, time.monotonic() - t0 - 0.01)))

        async def sample_proc():
            while True:
                rss.append((time.monotonic(), proc.memory_info().rss))
                threads.append((time.monotonic(), proc.num_threads()))
                await asyncio.sleep(0.5)

        loop_tid = threading.get_native_id()
        cpu0 = _thread_cpu(proc)
        proc_cpu0 = sum(proc.cpu_times()[:2])
        t_begin = time.monotonic()
        samplers = [asyncio.create_task(c()) for c in (sample_q, sample_lag, sample_proc)]
        thread_cpu = ThreadCpuSampler(proc).start() if scenario.profile else None
        stage_sampler = StageSampler().start() if scenario.profile else None
        await caller.start()
        try:
            await caller.wait(timeout=scenario.audio_s + scenario.stagger_s + 60)
            # The calls end after the caller's stop; bound the wait for the pipelines to finish.
            deadline = time.monotonic() + 20
            while any(cid in server.live for cid in call_ids) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            if stage_sampler is not None:
                stage_sampler.stop()
            for t in samplers:
                t.cancel()
            await asyncio.gather(*samplers, return_exceptions=True)
        wall = time.monotonic() - t_begin
        if thread_cpu is not None:
            thread_cpu.stop()
        # The process's CPU counts threads that have exited (the calls' STT threads); the emulator's threads
        # (in-process only: alive the whole run) and the profile's CPU sampler are taken out.
        cpu1 = _thread_cpu(proc)
        cpu = sum(proc.cpu_times()[:2]) - proc_cpu0
        excluded = emu.thread_ids() if emu.in_process else set()
        cpu -= sum(cpu1.get(tid, 0.0) - cpu0.get(tid, 0.0) for tid in excluded)
        by_kind: dict[str, float] = {}
        if thread_cpu is not None:
            for tid, v in thread_cpu.seen.items():
                if tid in excluded:
                    continue
                kind = thread_kind(thread_cpu.names.get(tid), tid == loop_tid)
                by_kind[kind] = by_kind.get(kind, 0.0) + v - cpu0.get(tid, 0.0)
            cpu -= by_kind.pop("sampler", 0.0)
            # What the 0.25 s samples missed (a thread's last moments) goes to "other".
            other = thread_kind(None, False)
            by_kind[other] = by_kind.get(other, 0.0) + max(0.0, cpu - sum(by_kind.values()))
        stuck = [cid for cid in call_ids if cid in server.live]
        if stuck:
            notes.append(f"{len(stuck)} call(s) had not finished 20 s after the caller hung up")
        never = [cid for cid in call_ids if cid in server.pending]
        if never:
            notes.append(f"{len(never)} call(s) never reached the pipeline")
        for cid in call_ids:
            server.pending.pop(cid, None)
        await asyncio.sleep(0.3)  # last results / stream ends recorded by the emulator
        streams, emulator_cpu = await emu.finish()
    except BaseException:
        record_merges(False)
        await emu.abort()
        raise
    record_merges(False)  # every ledger is complete: the writers have stopped

    started = [p.start_at for p in probes if p.start_at]
    profile: dict[str, float] = {}
    if stage_sampler is not None:
        profile = profile_rows(
            by_kind.get("loop", 0.0), by_kind, stage_sampler.shares(), emulator_cpu, sum(len(p.stamps) for p in probes)
        )
    errors = [s["error"] for s in caller.summaries if s.get("error")] + ([caller.error] if caller.error else [])
    return RunData(
        scenario=scenario,
        pipeline=pipeline,
        probes=probes,
        streams=streams,
        schedules=caller.schedules,
        q_timeline=q_timeline,
        lag=lag,
        rss=rss,
        threads=threads,
        threads_before=threads_before,
        cpu_s=cpu,
        wall_s=wall,
        t_begin=t_begin,
        caller_errors=errors,
        call_durations=[s["duration_s"] for s in caller.summaries],
        notes=notes + _take(server.failures),
        script=bench_script(),
        emulator_cpu_s=emulator_cpu,
        setup_end=max(started) if started else t_begin,
        profile=profile,
        timing=scenario.timing or timing or DEFAULT_TIMING,
    )


def _take(items: list) -> list:
    out = list(items)
    items.clear()
    return out
