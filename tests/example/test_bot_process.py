"""The example bot as a real process: SIGTERM during a call exits 0; missing credentials fail fast and clearly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from tests.helpers.bot_harness import BOT_MODULE, BotProcess, clean_env
from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call

AUTH = "proc-test-auth-token-0123456789abcdef"


async def test_sigterm_during_a_call_ends_it_cleanly_and_exits_zero(tmp_path):
    with SpeechEmulator(script="hello_en") as emu:
        # SHUTDOWN_GRACE_S shorter than the call: the bot waits that long for it to finish, then ends it.
        proc = BotProcess(clean_env(tmp_path, SPEECH_EMULATOR_HOST=emu.address, STT_LANGUAGE="en-US", REQUIRE_MEDIA_TOKEN="false",
                                TWILIO_AUTH_TOKEN=AUTH, SHUTDOWN_GRACE_S="1"))
        try:
            assert await asyncio.to_thread(proc.ready.wait, 60) and proc.url, "\n".join(proc.err[-20:])
            host, port = proc.url.rsplit(":", 1)
            assert host == "http://127.0.0.1"  # loopback by default
            call = asyncio.create_task(simulate_call(CallerOptions(url=f"ws://127.0.0.1:{port}/ws", sample="hello_en",
                                                                   auth_token=AUTH)))  # signs the upgrade
            deadline = time.monotonic() + 20
            while not any("[RX]" in line for line in proc.err):  # the call is up and streaming
                assert time.monotonic() < deadline and not call.done(), "\n".join(proc.err[-30:])
                await asyncio.sleep(0.05)
            proc.p.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.p.wait, 30)
            summary = await asyncio.wait_for(call, 30)
        finally:
            await asyncio.to_thread(proc.stop)
    log = "\n".join(proc.err)
    assert code == 0, log[-3000:]
    assert "[BOT] SIGTERM: shutting down" in log and "call ended (server shutdown)" in log and "[BOT] stopped" in log
    assert "Traceback" not in log and AUTH not in log
    assert summary.frames_sent < summary.frames_total and summary.close_code is not None  # the bot ended the call


def test_missing_google_credentials_fail_at_startup_with_a_clear_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", BOT_MODULE, "--port", "0"], env=clean_env(tmp_path), text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 2
    assert "no Google Cloud credentials" in r.stderr and "SPEECH_EMULATOR_HOST" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_configuration_fails_at_startup_with_a_clear_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", BOT_MODULE], env=clean_env(tmp_path, RX_HIGH_WATERMARK="500"), text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and "configuration error" in r.stderr and "RX watermarks" in r.stderr
    assert "Traceback" not in r.stderr
