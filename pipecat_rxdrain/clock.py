"""Clocks for timing logic.

Every timing decision in this package reads time through a ``Clock``: a
zero-argument callable returning monotonic seconds. Production code uses
``time.monotonic``; tests inject a :class:`pipecat_rxdrain.testing.FakeClock` so pacing, hysteresis,
debounce and telemetry throttling are deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# FakeClock lives in pipecat_rxdrain.testing; the name stays importable from here.
from pipecat_rxdrain.testing import FakeClock as FakeClock

Clock = Callable[[], float]

monotonic: Clock = time.monotonic
