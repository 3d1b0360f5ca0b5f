"""Shared helpers for the Twilio bot tests: the example bot in-process on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

from loguru import logger

from pipecat_rxdrain.twilio.logs import LOG_FORMAT
from pipecat_rxdrain.twilio.server import BotServer

REPO = Path(__file__).resolve().parents[2]
BOT_PATH = REPO / "examples" / "twilio_bot" / "bot.py"
BOT_MODULE = "pipecat_rxdrain.examples.twilio_bot.bot"
STATS_TOKEN = "stats-token-for-tests-0123456789"


def load_bot_module():
    """The example bot (``examples/twilio_bot/bot.py``), imported as the installed package sees it."""
    return importlib.import_module(BOT_MODULE)


class LogCapture:
    """Collects formatted loguru lines (with the call SID) while active."""

    def __init__(self, level: str = "DEBUG") -> None:
        self.lines: list[str] = []
        self.records: list[dict] = []
        self._lock = threading.Lock()
        self._level = level
        self._id: int | None = None

    def _sink(self, message) -> None:
        with self._lock:
            self.lines.append(str(message).rstrip("\n"))
            rec = message.record
            self.records.append({"message": rec["message"], "call_sid": rec["extra"].get("call_sid", "-"), "level": rec["level"].name})

    def __enter__(self) -> "LogCapture":
        logger.configure(extra={"call_sid": "-"})
        self._id = logger.add(self._sink, level=self._level, format=LOG_FORMAT, enqueue=False)
        return self

    def __exit__(self, *exc) -> None:
        if self._id is not None:
            logger.remove(self._id)

    @property
    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def messages(self) -> list[dict]:
        with self._lock:
            return list(self.records)


@contextlib.asynccontextmanager
async def running_bot(config, *, metrics=None, app=None):
    """Serve the example's ``create_app(config)`` on 127.0.0.1:<free port>; yields the ``BotServer``.

    ``metrics``: an ``RxdrainMetrics`` of the test's own (default: a fresh one, so tests never share counters).
    ``app``: serve this app (e.g. the library's ``create_app`` with a test pipeline) instead of the example's.
    """
    from pipecat_rxdrain.metrics import RxdrainMetrics

    if app is None:
        app = load_bot_module().create_app(config, metrics=metrics or RxdrainMetrics())
    server = BotServer(config, app)
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("bot server exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("bot server did not start")
            await asyncio.sleep(0.02)
        yield server
    finally:
        await asyncio.wait_for(server.shutdown("test teardown"), 30)
        await asyncio.wait_for(task, 30)


def make_config(**overrides):
    bot = load_bot_module()
    # workers=1: the tests serve one app in this process (the default, one worker per core, is for serve_forever)
    base = dict(host="127.0.0.1", port=0, stt_language="en-US", log_level="DEBUG", stats_token=STATS_TOKEN, workers=1)
    base.update(overrides)
    return bot.BotConfig.from_env({}, **base)


def get_json(url: str, token: str | None = STATS_TOKEN) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read().decode())


def clean_env(tmp_path, **extra) -> dict[str, str]:
    """The environment for a bot subprocess: none of the developer's Google/Twilio/bot settings.

    ``WORKERS=1`` unless ``extra`` says otherwise: the bot's default (one worker per core) would put
    a supervisor in front, and these tests read one process's ``/stats``.
    """
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOOGLE", "TWILIO", "SPEECH_", "STT_", "RX_", "BOT_", "MEDIA_", "STATS_", "MAX_",
                                "WORKERS", "PROMETHEUS_"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), PYTHONUNBUFFERED="1", WORKERS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class BotProcess:
    """The example bot as a subprocess on a free loopback port (``python -m``), its output collected."""

    def __init__(self, env: dict[str, str], *, nofile: int | None = None, cwd: str | Path | None = None) -> None:
        import subprocess

        def limit_fds():  # runs in the child before exec
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        self.out: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        self.url: str | None = None
        self.p = subprocess.Popen([sys.executable, "-m", BOT_MODULE, "--port", "0"], env=env, text=True, cwd=cwd,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=limit_fds if nofile else None)
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

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def wait_ready(self, timeout: float = 60) -> None:
        if not self.ready.wait(timeout) or not self.url:
            raise RuntimeError("bot did not start:\n" + "\n".join(self.err[-30:]))

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.p.pid).memory_info().rss

    def stop(self, timeout: float = 30) -> int:
        import signal
        import subprocess

        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            code = self.p.wait(10)
        for t in self._t:
            t.join(5)
        return code

    @property
    def log(self) -> str:
        return "\n".join(self.err)
