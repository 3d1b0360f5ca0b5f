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

REPO = Path(__file__).resolve().parents[1]
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
async def running_bot(config):
    """Serve the example's ``create_app(config)`` on 127.0.0.1:<free port>; yields the ``BotServer``."""
    bot = load_bot_module()
    server = BotServer(config, bot.create_app(config))
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
    base = dict(host="127.0.0.1", port=0, stt_language="en-US", log_level="DEBUG", stats_token=STATS_TOKEN)
    base.update(overrides)
    return bot.BotConfig.from_env({}, **base)


def get_json(url: str, token: str | None = STATS_TOKEN) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read().decode())


async def wait_until(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


def non_daemon_threads() -> set[str]:
    return {t.name for t in threading.enumerate()}
