"""How long the server's event loop was kept from running: the worst block since start-up.

Every call of a process shares one event loop, so anything that holds it (a model
loaded on the loop, a blocking import) delays every call's audio. :class:`LoopLagMonitor`
wakes every ``interval_s`` and records how late it woke: a late wake-up is a block of
at least that long. No Pipecat import.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: a block longer than this is counted (the budget for "the loop was never blocked")
BLOCK_BUDGET_S = 0.050


class LoopLagMonitor:
    """Samples the running loop's lateness; :meth:`stats` has the worst block and how many went over budget.

    Guarantees: :meth:`start`/:meth:`stop` own one task (``stop`` awaits it); a block of
    ``d`` seconds shows as ``max_block_ms >= (d - interval_s) * 1000``.
    """

    def __init__(self, interval_s: float = 0.010, budget_s: float = BLOCK_BUDGET_S) -> None:
        if not interval_s > 0 or not budget_s > 0:
            raise ValueError("interval_s and budget_s must be > 0")
        self.interval_s = interval_s
        self.budget_s = budget_s
        self.max_block_s = 0.0
        self.over_budget = 0
        self.samples = 0
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
            await asyncio.sleep(self.interval_s)
            late = loop.time() - before - self.interval_s
            self.samples += 1
            if late > self.max_block_s:
                self.max_block_s = late
            if late > self.budget_s:
                self.over_budget += 1

    def stats(self) -> dict[str, Any]:
        return {
            "max_block_ms": round(self.max_block_s * 1000, 1),
            f"blocks_over_{self.budget_s * 1000:g}ms": self.over_budget,
            "samples": self.samples,
        }
