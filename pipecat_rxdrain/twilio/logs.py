"""The bot's log format, and making caller-supplied text safe to log.

Every line carries the call SID (``-`` outside calls). Anything a caller
controls (a transcript, a header, a parameter) goes through :func:`loggable`
before it reaches a log line: control characters (newlines, ANSI escapes)
are escaped and the length is capped, so nobody can forge log lines or fill
the disk with one request. No Pipecat import.
"""

from __future__ import annotations

import sys
from typing import Any

from loguru import logger

LOG_FORMAT = "{time:HH:mm:ss.SSS} | {level: <7} | {extra[call_sid]} | {message}"


def loggable(value: Any, limit: int = 200) -> str:
    """``value`` as one printable line of at most ``limit`` characters (escaped, then cut with ``…``)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * limit:
        text = text[: 4 * limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def configure_logging(level: str = "INFO", sink: Any = sys.stderr) -> int:
    """Loguru to ``sink`` with the call SID on every line. Returns the handler id."""
    logger.remove()
    logger.configure(extra={"call_sid": "-"})
    return logger.add(sink, level=level, format=LOG_FORMAT, backtrace=False, diagnose=False)


class ThrottledWarnings:
    """WARNING lines for repeated events: the first of each kind at once, then a count at most every ``interval_s``.

    ``counts`` keeps every occurrence (for ``/stats``), whatever was logged.
    """

    def __init__(self, interval_s: float = 10.0, clock: Any = None) -> None:
        import time

        self.interval_s = interval_s
        self._clock = clock or time.monotonic
        self.counts: dict[str, int] = {}
        self._unlogged: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def __call__(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = self._clock()
        last = self._last.get(kind)
        if last is None:
            self._last[kind] = now
            logger.warning(message)
            return
        self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
        if now - last >= self.interval_s:
            n = self._unlogged.pop(kind)
            self._last[kind] = now
            logger.warning(f"{message} ({n} more since the last such line; {self.counts[kind]} in all)")
