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


def options_for(spec: dict, frames: list[bytes]):
    from pipecat_rxdrain.twilio.caller import CallerOptions

    out = []
    for i, call_id in enumerate(spec["call_ids"]):
        out.append(
            CallerOptions(
                url=spec["url"],
                frames=frames,
                custom_parameters={"call": call_id, "pipeline": spec["pipeline"]},
                stall_at_s=spec["stall_at_s"],
                stall_s=spec["stall_s"],
                bunch=spec["bunch"],
                tail_silence_s=1.0,
                linger_s=0.2,
                connect_timeout_s=30.0,
                seed=i,
            )
        )
    return out


async def _run(spec: dict) -> list[dict]:
    from pipecat_rxdrain.twilio.caller import simulate_call

    from .harness import _loop_frames

    frames = _loop_frames(spec["audio_s"])
    opts = options_for(spec, frames)
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
