"""Warm start (issue 17): the first call after start-up finds everything loaded, and /readyz says when.

The cold-start test runs the example bot as a fresh process (nothing imported, nothing
cached), answers its first webhook and streams its first call: RX must not go into drain
(peak q <= 5, the caller has no network stall) and the event loop is never blocked > 50 ms by
the bot's own work: the loop-lag monitor's CPU measure (loop-thread CPU between two 10 ms ticks,
which other processes on this shared 2-core box cannot inflate) must stay <= 50 ms. Its wall-clock
worst block (which they can) gets a coarse 250 ms bound (a cold load blocks ~530 ms). Both are
printed for the README.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from tests.helpers.bot_harness import STATS_TOKEN, BotProcess, clean_env, get_json, make_config
from tests.helpers.waiting import wait_until

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call
from pipecat_rxdrain.twilio.loop_lag import LoopLagMonitor
from pipecat_rxdrain.twilio.server import BotServer, create_app


def status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


@pytest.fixture
def emulator():
    emu = SpeechEmulator(script="hello_en").start()
    yield emu
    emu.stop()


async def test_first_call_of_a_fresh_process_starts_in_normal_mode(tmp_path, emulator):
    env = clean_env(tmp_path, SPEECH_EMULATOR_HOST=emulator.address, STT_LANGUAGE="en-US", STATS_TOKEN=STATS_TOKEN)
    proc = BotProcess(env)
    try:
        await asyncio.to_thread(proc.wait_ready, 90)
        assert await asyncio.to_thread(status, f"{proc.url}/readyz") == (200, "ready")
        port = proc.port
        summary = await simulate_call(CallerOptions(
            twiml_url=f"http://127.0.0.1:{port}/twiml", url=f"ws://127.0.0.1:{port}/ws", sample="hello_en"))
        stats = None
        for _ in range(100):
            stats = await asyncio.to_thread(get_json, f"{proc.url}/stats")
            if stats["completed"]:
                break
            await asyncio.sleep(0.1)
    finally:
        code = await asyncio.to_thread(proc.stop)
    assert summary.ok, summary.error
    assert code == 0, proc.log[-2000:]
    (record,) = stats["completed"]
    rx = record["rx"]
    print(f"\nfirst call after start: rx peak_q={rx['peak_q']} drain_episodes={rx['drain_episodes']} "
          f"drops={rx['drops']} | loop {stats['loop']}")
    assert "[BOT] warm-up done" in proc.log
    assert stats["loop"]["samples"] > 0
    assert rx["peak_q"] <= 5 and rx["drain_episodes"] == 0 and rx["drops"] == 0, rx
    assert rx["frames_in"] == summary.frames_sent
    # Loading Silero and the services on the loop (no warm-up, pipeline built on the loop) blocks it
    # ~530 ms on this machine. Warm, no callback of the first call computes for more than the 50 ms budget:
    loop = stats["loop"]
    assert loop["max_cpu_block_ms"] <= 50 and loop["cpu_blocks_over_50ms"] == 0, loop
    # wall clock also counts other processes holding the core (and waits): only a coarse bound
    assert loop["max_block_ms"] < 250, loop


async def test_readyz_passes_after_warm_up_and_fails_from_shutdown_on(emulator):
    calls = []
    cfg = make_config(speech_emulator_host=emulator.address)
    app = create_app(cfg, lambda call: [], warm_up=lambda: calls.append(app.state.warm))
    server = BotServer(cfg, app)
    task = asyncio.create_task(server.serve())
    try:
        assert await wait_until(lambda: server.started or task.done(), timeout=15) and server.started
        assert calls == [False]  # ran once, before the app was ready
        url = f"http://127.0.0.1:{server.port}"
        assert await asyncio.to_thread(status, f"{url}/readyz") == (200, "ready")
        app.state.calls.shutting_down = True  # what SIGTERM does first
        assert await asyncio.to_thread(status, f"{url}/readyz") == (503, "shutting down")
        assert (await asyncio.to_thread(status, f"{url}/healthz"))[0] == 503
    finally:
        await server.shutdown("test")
        await asyncio.wait_for(task, 30)


FAILING_WARM_UP = """
from pipecat_rxdrain.twilio.config import ServerConfig
from pipecat_rxdrain.twilio.server import create_app, serve_forever
def broken():
    raise RuntimeError("model file missing")
cfg = ServerConfig(port=0, require_media_token=False, workers=1)
raise SystemExit(serve_forever(cfg, create_app(cfg, lambda call: [], warm_up=broken)))
"""


def test_a_failing_warm_up_fails_start_up_and_never_listens(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", FAILING_WARM_UP], env=clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "BOT_LISTENING" not in p.stdout
    assert "model file missing" in p.stderr


async def test_loop_lag_monitor_sees_a_block():
    import time

    monitor = LoopLagMonitor(interval_s=0.005)
    monitor.start()
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # a blocking call on the loop
    await asyncio.sleep(0.05)
    await monitor.stop()
    assert monitor.max_block_s >= 0.15
    assert monitor.stats()["blocks_over_50ms"] >= 1
    assert monitor.max_cpu_block_s < 0.1  # a wait, not computation: the CPU measure does not count it


async def test_loop_lag_monitor_measures_the_loop_threads_cpu_not_the_machines():
    import threading
    import time

    monitor = LoopLagMonitor(interval_s=0.005)
    monitor.start()
    await asyncio.sleep(0.05)
    spent = time.thread_time()
    while time.thread_time() - spent < 0.12:  # 120 ms of this thread's CPU, on the loop, however busy the box
        pass
    await asyncio.sleep(0.05)
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            pass

    burner = threading.Thread(target=burn)
    burner.start()  # another thread computing (GIL switches every 5 ms) is not the loop's CPU
    await asyncio.sleep(0.2)
    stop.set()
    burner.join(5)
    await monitor.stop()
    assert monitor.max_cpu_block_s >= 0.12
    assert monitor.stats()["cpu_blocks_over_50ms"] == 1, monitor.stats()


def test_loop_lag_monitor_cpu_clock_is_injectable():
    ticks = iter([0.0, 0.070, 0.070, 0.071])

    async def run():
        monitor = LoopLagMonitor(interval_s=0.001, cpu_clock=lambda: next(ticks, 0.071))
        monitor.start()
        await asyncio.sleep(0.03)
        await monitor.stop()
        return monitor.stats()

    stats = asyncio.run(run())
    assert stats["max_cpu_block_ms"] == 70.0 and stats["cpu_blocks_over_50ms"] == 1
