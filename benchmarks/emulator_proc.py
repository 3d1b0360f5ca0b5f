"""The benchmark's Speech emulator in its own process (the scale scenarios).

    python -m benchmarks.emulator_proc --timing fast [--small-window] [--max-stream-s S]
        [--stall AFTER,SECONDS] [--abort-at-s T] [--fault-times N]

Prints ``SPEECH_EMULATOR_HOST=127.0.0.1:<port>`` when it listens. On ``stop`` (a line on stdin) or
end of stdin it stops the emulator and prints one JSON line: every stream record
(:class:`benchmarks.emulation.StreamView`) and this process's CPU seconds. The emulator is built
by :func:`benchmarks.emulation.emulator_kwargs`, like the in-process one, so ``--timing`` means the
same in both. (``rxdrain emulator`` has no way to hand the per-chunk records back; this does.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .emulation import DEFAULT_TIMING, TIMINGS, StreamView, arm_faults, emulator_kwargs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.emulator_proc", description=__doc__.splitlines()[0])
    p.add_argument("--timing", choices=TIMINGS, default=DEFAULT_TIMING)
    p.add_argument("--small-window", action="store_true")
    p.add_argument("--max-stream-s", type=float, default=None)
    p.add_argument("--stall", default=None, help="AFTER_S,SECONDS")
    p.add_argument("--abort-at-s", type=float, default=None)
    p.add_argument("--fault-times", type=int, default=1)
    args = p.parse_args(argv)

    from pipecat_rxdrain.emulator import SpeechEmulator

    try:
        emu = SpeechEmulator(**emulator_kwargs(timing=args.timing, small_window=args.small_window, max_stream_s=args.max_stream_s))
    except ValueError as e:
        print(f"emulator_proc: {e}", file=sys.stderr)
        return 2
    stall = tuple(float(x) for x in args.stall.split(",")) if args.stall else None
    emu.start()
    try:
        arm_faults(emu.faults, stall=stall, abort_at_s=args.abort_at_s, times=args.fault_times)
        print(f"SPEECH_EMULATOR_HOST={emu.address}", flush=True)
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        time.sleep(0.2)  # the last results / stream ends
    finally:
        streams = [StreamView.of(s).to_json() for s in emu.streams]
        emu.stop()
    print(json.dumps({"streams": streams, "cpu_s": time.process_time()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
