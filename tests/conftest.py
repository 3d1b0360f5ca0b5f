"""Fixtures every test directory may use: thread and asyncio task leak checks, a Speech emulator.

``no_thread_leaks``: every thread started during the test must be gone at its end (after the
test's own fixtures have stopped what they started), within a bounded wait.
``no_task_leaks``: likewise for the asyncio tasks of a coroutine test's loop.
``no_leaks``: both; ``tests/rx``, ``tests/stt`` and ``tests/emulator`` use it in every test (their conftest.py).
``emulator``: the Speech emulator on loopback, scripted with hello_en, stopped at the end of the test.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import pytest

LEAK_WAIT_S = 5.0
# Started on first use and kept for the life of the process, so not a leak of the test that came first:
# grpc.aio's completion-queue poller thread.
PROCESS_WIDE_THREADS = ("_poll_wrapper",)


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t not in before and t.is_alive() and not any(p in t.name for p in PROCESS_WIDE_THREADS)]


@pytest.fixture
def no_thread_leaks():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + LEAK_WAIT_S
    while (left := _new_threads(before)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"threads started by the test still running after {LEAK_WAIT_S:g} s: {sorted(t.name for t in left)}"


@pytest.fixture
async def no_task_leaks():
    before = set(asyncio.all_tasks())
    yield
    me = asyncio.current_task()
    deadline = time.monotonic() + LEAK_WAIT_S
    while left := [t for t in asyncio.all_tasks() if t not in before and t is not me and not t.done()]:
        if time.monotonic() > deadline:
            raise AssertionError(f"asyncio tasks started by the test still pending after {LEAK_WAIT_S:g} s: "
                                 f"{sorted(t.get_name() for t in left)}")
        await asyncio.sleep(0.02)


@pytest.fixture
def no_leaks(request, no_thread_leaks):
    """Both checks: threads for every test, asyncio tasks too for a coroutine test."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("no_task_leaks")


@pytest.fixture
def emulator():
    from pipecat_rxdrain.emulator import SpeechEmulator

    emu = SpeechEmulator(script="hello_en").start()
    yield emu
    emu.stop()
