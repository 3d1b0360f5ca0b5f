"""Warm start (issue 17): the first call after start-up finds everything loaded, and /readyz says when.

The cold-start test runs the example bot as a fresh process (nothing imported, nothing
cached), answers its first webhook and streams its first call: RX must not go into drain
(peak q <= 5, the caller has no network stall) and the loop-block monitor's worst block is
printed for the README; the assert on it is a coarse 250 ms (a cold load blocks ~530 ms), not the
50 ms budget, because this machine is shared.
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
    # ~530 ms on this machine; warm, the worst block is ~25 ms. The bound is 10x that, not a latency target.
    assert stats["loop"]["max_block_ms"] < 250, stats["loop"]


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
cfg = ServerConfig(port=0, require_media_token=False)
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
