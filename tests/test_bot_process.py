"""The example bot as a real process: SIGTERM during a call exits 0; missing credentials fail fast and clearly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

from bot_harness import BOT_MODULE
from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call

AUTH = "proc-test-auth-token-0123456789abcdef"


def _clean_env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE", "TWILIO", "SPEECH_", "STT_", "RX_", "BOT_"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), PYTHONUNBUFFERED="1", **extra)
    return env


class _Proc:
    def __init__(self, env):
        self.out: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        self.url = None
        self.p = subprocess.Popen([sys.executable, "-m", BOT_MODULE, "--port", "0"], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._t = [threading.Thread(target=self._pump, args=(self.p.stdout, self.out), daemon=True),
                   threading.Thread(target=self._pump, args=(self.p.stderr, self.err), daemon=True)]
        for t in self._t:
            t.start()

    def _pump(self, stream, sink):
        for line in stream:
            sink.append(line.rstrip("\n"))
            if line.startswith("BOT_LISTENING="):
                self.url = line.strip().split("=", 1)[1]
                self.ready.set()
        self.ready.set()

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        for t in self._t:
            t.join(5)


async def test_sigterm_during_a_call_ends_it_cleanly_and_exits_zero(tmp_path):
    with SpeechEmulator(script="hello_en") as emu:
        # SHUTDOWN_GRACE_S shorter than the call: the bot waits that long for it to finish, then ends it.
        proc = _Proc(_clean_env(tmp_path, SPEECH_EMULATOR_HOST=emu.address, STT_LANGUAGE="en-US", REQUIRE_MEDIA_TOKEN="false",
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
            proc.close()
    log = "\n".join(proc.err)
    assert code == 0, log[-3000:]
    assert "[BOT] SIGTERM: shutting down" in log and "call ended (SIGTERM)" in log and "[BOT] stopped" in log
    assert "Traceback" not in log and AUTH not in log
    assert summary.frames_sent < summary.frames_total and summary.close_code is not None  # the bot ended the call


def test_missing_google_credentials_fail_at_startup_with_a_clear_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", BOT_MODULE, "--port", "0"], env=_clean_env(tmp_path), text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 2
    assert "no Google Cloud credentials" in r.stderr and "SPEECH_EMULATOR_HOST" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_configuration_fails_at_startup_with_a_clear_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", BOT_MODULE], env=_clean_env(tmp_path, RX_HIGH_WATERMARK="500"), text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and "configuration error" in r.stderr and "RX watermarks" in r.stderr
    assert "Traceback" not in r.stderr
