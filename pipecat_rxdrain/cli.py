"""The ``rxdrain`` command: ``rxdrain emulator``, ``rxdrain call``, ``rxdrain demo``.

Each subcommand lives in the module that owns the idea; this file only dispatches.
"""

from __future__ import annotations

import importlib
import sys

_SUBCOMMANDS = {
    "emulator": ("pipecat_rxdrain.emulator.cli", "Run the local Google Speech-to-Text emulator."),
    "call": ("pipecat_rxdrain.twilio.caller", "Call a bot's /ws like Twilio Media Streams does, from a WAV file."),
    "demo": ("pipecat_rxdrain.demo", "Emulator + example bot + simulated caller, end to end, offline."),
}


def _usage() -> str:
    lines = ["usage: rxdrain [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in _SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"rxdrain {__version__}")
        return 0
    entry = _SUBCOMMANDS.get(argv[0])
    if entry is None:
        print(f"rxdrain: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
