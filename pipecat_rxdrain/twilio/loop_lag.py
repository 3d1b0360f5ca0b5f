"""How long the server's event loop was kept from running: the worst block since start-up.

Every call of a process shares one event loop, so anything that holds it (a model
loaded on the loop, a blocking import) delays every call's audio. :class:`LoopLagMonitor`
wakes every ``interval_s`` and records how late it woke: a late wake-up is a block of
at least that long. On a shared machine a late wake-up also counts the time other
processes had the core, so the monitor measures a second number that they cannot
inflate: the CPU time the loop's own thread used between two wake-ups
(``time.thread_time()``, read in the loop thread). That is an upper bound of the longest
block the loop's own callbacks caused by computing (a block spent waiting, e.g. a
blocking socket read or a lock, shows in the wall-clock number only). No Pipecat import.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

#: a block longer than this is counted (the budget for "the loop was never blocked")
BLOCK_BUDGET_S = 0.050


class LoopLagMonitor:
    """Samples the running loop's lateness; :meth:`stats` has the worst block and how many went over budget.

    Guarantees: :meth:`start`/:meth:`stop` own one task (``stop`` awaits it); a block of
    ``d`` seconds shows as ``max_block_ms >= (d - interval_s) * 1000``; a callback that
    computes for ``c`` seconds of CPU without yielding shows as ``max_cpu_block_ms >= c * 1000``,
    however busy the machine; ``max_cpu_block_ms`` never counts other processes' or
    other threads' CPU. ``cpu_clock`` (default ``time.thread_time``) is injectable.
    """

    def __init__(
        self,
        interval_s: float = 0.010,
        budget_s: float = BLOCK_BUDGET_S,
        *,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if not interval_s > 0 or not budget_s > 0:
            raise ValueError("interval_s and budget_s must be > 0")
        self.interval_s = interval_s
        self.budget_s = budget_s
        self.max_block_s = 0.0
        self.over_budget = 0
        self.max_cpu_block_s = 0.0  # most loop-thread CPU between two wake-ups
        self.cpu_over_budget = 0
        self.samples = 0
        self._cpu_clock = cpu_clock
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            cpu_before = self._cpu_clock()
            await asyncio.sleep(self.interval_s)
            late = loop.time() - before - self.interval_s
            cpu = self._cpu_clock() - cpu_before
            self.samples += 1
            if late > self.max_block_s:
                self.max_block_s = late
            if late > self.budget_s:
                self.over_budget += 1
            if cpu > self.max_cpu_block_s:
                self.max_cpu_block_s = cpu
            if cpu > self.budget_s:
                self.cpu_over_budget += 1

    def stats(self) -> dict[str, Any]:
        budget_ms = f"{self.budget_s * 1000:g}ms"
        return {
            "max_block_ms": round(self.max_block_s * 1000, 1),
            f"blocks_over_{budget_ms}": self.over_budget,
            "max_cpu_block_ms": round(self.max_cpu_block_s * 1000, 1),
            f"cpu_blocks_over_{budget_ms}": self.cpu_over_budget,
            "samples": self.samples,
        }
