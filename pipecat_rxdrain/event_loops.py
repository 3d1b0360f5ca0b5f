"""Helpers for the private asyncio loops our own threads run (the emulator's server, each STT session)."""

from __future__ import annotations

import asyncio


def finish_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Wind down a loop that has stopped running, as ``asyncio.run`` does before closing it.

    Cancels and awaits the tasks still pending (e.g. gRPC's request consumer of a failed
    call), so none is destroyed while pending, then shuts down async generators and the
    default executor. The caller closes the loop.
    """
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
