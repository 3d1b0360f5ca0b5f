"""The example bot ships in the wheel and runs from it; its Docker and .env files do not trip users up."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.bot_harness import REPO, BotProcess, clean_env, load_bot_module

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call


def _build_wheel(out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "bdist_wheel" in r.stderr:
        pytest.skip("setuptools>=68 and wheel are needed to build offline (make setup installs them)")
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.glob("pipecat_rxdrain-*.whl"))


async def test_the_bot_runs_from_an_installed_wheel_and_takes_a_call(tmp_path):
    """The example bot ships in the wheel, loads from it (not from this checkout) and takes a real call.

    (``rxdrain demo`` from an installed package once said "the example bot is not at …/site-packages/…";
    the whole ``rxdrain demo --quick`` from a wheel installed with its dependencies is ``make wheel-demo``,
    which .ci/run runs after the suite.)
    """
    wheel = _build_wheel(tmp_path / "dist")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (site / "pipecat_rxdrain" / "examples" / "twilio_bot" / "bot.py").is_file()
    assert (site / "pipecat_rxdrain" / "examples" / "twilio_bot" / ".env.example").is_file()
    # Run from outside the checkout, with the wheel's copy first on the path (dependencies from this venv).
    env = clean_env(tmp_path, PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import pipecat_rxdrain.examples.twilio_bot.bot as b; print(b.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    with SpeechEmulator(script="hello_en") as emu:
        bot = BotProcess({**env, "SPEECH_EMULATOR_HOST": emu.address, "STT_LANGUAGE": "en-US"}, cwd=tmp_path)
        try:
            await asyncio.to_thread(bot.wait_ready, 120)
            port = bot.port
            summary = await asyncio.wait_for(simulate_call(CallerOptions(
                twiml_url=f"http://127.0.0.1:{port}/twiml", url=f"ws://127.0.0.1:{port}/ws", sample="hello_en",
                tail_silence_s=0.5)), 60)
        finally:
            code = await asyncio.to_thread(bot.stop)
    assert summary.ok and summary.close_code == 1000, summary
    assert code == 0, bot.log[-3000:]
    assert "[BOT] final transcript" in bot.log, bot.log[-3000:]  # the call was transcribed


def test_env_example_documents_every_setting_loads_cleanly_and_leaves_bot_host_to_the_image():
    bot = load_bot_module()
    text = (REPO / "examples" / "twilio_bot" / ".env.example").read_text()
    assigned = dict(re.findall(r"^([A-Z_]+)=(.*)$", text, flags=re.M))
    documented = set(re.findall(r"^#?\s?([A-Z][A-Z_]+)=", text, flags=re.M))
    from dataclasses import fields

    names = {f.metadata["env"] for f in fields(bot.BotConfig) if "env" in f.metadata}
    assert names <= documented, f"undocumented settings: {sorted(names - documented)}"
    assert "BOT_HOST" not in assigned  # docker run --env-file would put 127.0.0.1 over the image's 0.0.0.0
    cfg = bot.BotConfig.from_env({k: v for k, v in assigned.items() if v})
    assert cfg.host == "127.0.0.1" and cfg.max_calls == 20


def test_docker_build_context_and_healthcheck():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".env" in ignore and ".git" in ignore
    dockerfile = (REPO / "examples" / "twilio_bot" / "Dockerfile").read_text()
    health = next(line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK"))
    assert "8765/healthz" not in health and "BOT_PORT" in health
    assert "pipecat_rxdrain.examples.twilio_bot.bot" in dockerfile
