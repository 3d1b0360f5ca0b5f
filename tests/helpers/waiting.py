"""Bounded polling for the tests: ``await wait_until(...)`` in a coroutine, ``wait_until_blocking(...)`` in a thread.

Both poll ``predicate`` every ``interval`` seconds and return its first truthy value; past
``timeout`` seconds they raise AssertionError naming the predicate, so a condition that is never
reached fails the test where it was awaited (no forgotten ``assert``, no unbounded loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _timed_out(predicate: Callable, timeout: float) -> AssertionError:
    code = getattr(predicate, "__code__", None)
    where = f"{code.co_filename}:{code.co_firstlineno}" if code else repr(predicate)
    return AssertionError(f"condition not reached within {timeout:g} s: {where}")


def wait_until_blocking(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Blocks (``time.sleep``) until ``predicate()`` is truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise _timed_out(predicate, timeout)
        time.sleep(interval)
    return value


async def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Like ``wait_until_blocking``, sleeping with ``asyncio.sleep`` so the event loop keeps running."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise _timed_out(predicate, timeout)
        await asyncio.sleep(interval)
    return value
