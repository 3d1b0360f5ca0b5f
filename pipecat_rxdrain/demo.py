"""``make demo`` / ``rxdrain demo``: the main job.

Until the end-to-end Twilio demo lands, this runs the RX back-pressure demo.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .rx_demo import main as rx_main

    return rx_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
