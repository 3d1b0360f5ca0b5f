"""Shared helpers for the Twilio bot tests: the example bot in-process on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

from loguru import logger

REPO = Path(__file__).resolve().parents[1]
BOT_PATH = REPO / "examples" / "twilio_bot" / "bot.py"


def load_bot_module():
    """Import ``examples/twilio_bot/bot.py`` (once) as ``rxdrain_example_bot``."""
    name = "rxdrain_example_bot"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BOT_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
        bot = load_bot_module()
        logger.configure(extra={"call_sid": "-"})
        self._id = logger.add(self._sink, level=self._level, format=bot.LOG_FORMAT, enqueue=False)
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
    """Serve ``create_app(config)`` on 127.0.0.1:<free port>; yields the ``BotServer``."""
    bot = load_bot_module()
    server = bot.BotServer(config)
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
    base = dict(host="127.0.0.1", port=0, stt_language="en-US", log_level="DEBUG")
    base.update(overrides)
    return bot.BotConfig.from_env({}, **base)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
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
