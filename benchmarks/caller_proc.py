"""The benchmark's callers in their own process: N ``simulate_call`` s, spec on stdin, summaries on stdout.

A separate process plays Twilio: the callers' CPU and GIL time do not count against
the pipelines under test, and a blocked pipeline loop cannot delay a caller's sends.
``time.monotonic()`` is the system-wide monotonic clock on Linux, so the callers'
schedules line up with the pipeline's and the emulator's stamps.
"""

from __future__ import annotations

import asyncio
import json
import sys

from .feed import caller_options, loop_frames


async def _run(spec: dict) -> list[dict]:
    from pipecat_rxdrain.twilio.caller import simulate_call

    frames = loop_frames(spec["audio_s"])
    opts = caller_options(spec, frames)
    n, stagger = len(opts), spec["stagger_s"]

    async def one(i, o):
        if stagger and n > 1:
            await asyncio.sleep(stagger * i / n)
        return await simulate_call(o)

    summaries = await asyncio.gather(*(one(i, o) for i, o in enumerate(opts)))
    return [s.as_dict() for s in summaries]


def main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_run(spec))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
