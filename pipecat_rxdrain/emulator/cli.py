"""``rxdrain emulator``: run the local Google Speech-to-Text emulator until SIGINT/SIGTERM.

Prints ``SPEECH_EMULATOR_HOST=<host>:<port>`` (and ``listening on ...``) on
stdout, flushed, so scripts can parse the address when ``--port 0`` is used. Before it,
the lines that point Google's official clients at it (they ignore ``SPEECH_EMULATOR_HOST``),
each prefixed with ``# `` so the output stays easy to parse.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..google_clients import insecure_channel_recipe
from .control import FAULT_KINDS, apply_fault, parse_fault_spec
from .segmenter import SegmenterSettings
from .stream import EmulatorLimits
from .timing import TimingProfile


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rxdrain emulator", description="Local Google Speech-to-Text emulator (gRPC, v1+v2)."
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback only unless --allow-remote)")
    p.add_argument("--port", type=int, default=50051, help="port (0 picks a free one)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback bind (no TLS, no auth!)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--script", help="transcript script: a bundled sample name or a .txt/.json file")
    src.add_argument("--sample", help="same as --script with a bundled sample name (hello_en, call_en, shalom_he)")
    p.add_argument("--recognizer", choices=("scripted", "pocketsphinx"), default="scripted")
    p.add_argument("--max-stream-s", type=float, default=305.0, help="maximum stream duration (Google: 305 s)")
    p.add_argument(
        "--inactivity-timeout-s", type=float, default=10.0, help="end a stream after this long without requests"
    )
    p.add_argument(
        "--max-request-bytes", type=int, default=25 * 1024, help="documented audio bytes per request (25 KB)"
    )
    p.add_argument(
        "--strict-request-size",
        action="store_true",
        help="reject requests over --max-request-bytes (Google itself accepts them; default: count them)",
    )
    p.add_argument(
        "--timing",
        choices=[t.value for t in TimingProfile],
        default=TimingProfile.FAST.value,
        help="answer timing: fast (finals at once) or google (finals ~0.9 s median / 1.6 s p99 "
        "after end of speech, revised interims)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the timing profile's draws")
    p.add_argument("--end-silence-ms", type=int, default=600, help="silence that ends a speech segment")
    p.add_argument("--threshold-rms", type=float, default=250.0, help="int16 RMS above which a 20 ms frame is speech")
    p.add_argument("--interim-every-s", type=float, default=0.3, help="speech between interim results")
    p.add_argument(
        "--small-window", action="store_true", help="small HTTP/2 flow-control window (stalls push back fast)"
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"arm a fault at startup, e.g. 'abort:after_chunks=50,code=UNAVAILABLE', 'latency:0.5', 'refuse:2', "
        f"'stall:seconds=3,after_s=5,times=none' (kinds: {', '.join(FAULT_KINDS)}); repeatable",
    )
    p.add_argument(
        "--control-port", type=int, default=None, help="serve the runtime HTTP/JSON control endpoint (0 = free port)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .server import SpeechEmulator

    try:
        faults = [parse_fault_spec(spec) for spec in args.fault]
        emu = SpeechEmulator(
            args.host,
            args.port,
            script=args.script or args.sample,
            recognizer=args.recognizer,
            limits=EmulatorLimits(
                max_stream_s=args.max_stream_s,
                inactivity_timeout_s=args.inactivity_timeout_s,
                max_request_bytes=args.max_request_bytes,
                strict_request_size=args.strict_request_size,
            ),
            segmenter=SegmenterSettings(threshold_rms=args.threshold_rms, end_silence_ms=args.end_silence_ms),
            interim_every_s=args.interim_every_s,
            small_window=args.small_window,
            allow_remote=args.allow_remote,
            timing=args.timing,
            seed=args.seed,
        )
    except (ValueError, RuntimeError, TypeError) as exc:
        print(f"rxdrain emulator: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            emu.start()
        except OSError as exc:
            print(f"rxdrain emulator: {exc}", file=sys.stderr)
            return 1
        try:
            for kind, params in faults:
                apply_fault(emu, kind, params)
            control_port = emu.start_control(args.control_port) if args.control_port is not None else None
        except (ValueError, TypeError, OSError) as exc:
            print(f"rxdrain emulator: {exc}", file=sys.stderr)
            emu.stop()
            return 2
        print(
            f"listening on {emu.address} (Google Speech v1+v2 StreamingRecognize, recognizer={args.recognizer}, "
            f"timing={args.timing})"
        )
        print("# Google's clients ignore SPEECH_EMULATOR_HOST; point them here with an insecure channel:")
        for line in insecure_channel_recipe(emu.address).splitlines():
            print(f"#   {line}")
        if control_port is not None:
            print(f"EMULATOR_CONTROL=http://{emu.host}:{control_port}")
        print(f"SPEECH_EMULATOR_HOST={emu.address}", flush=True)
        while not stop.wait(0.5):
            if not emu.running:
                print("rxdrain emulator: server thread died", file=sys.stderr)
                return 1
        emu.stop()
        print("emulator stopped", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
