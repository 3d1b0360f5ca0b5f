"""Deprecated alias of :mod:`pipecat_rxdrain.rx.backpressure` (RX moved into the ``pipecat_rxdrain.rx`` package).

Kept so that code importing the old path keeps working; import from
``pipecat_rxdrain`` (the public names) or ``pipecat_rxdrain.rx.backpressure`` instead.
"""

import sys as _sys
import warnings as _warnings

from .rx import backpressure as _moved

_warnings.warn(
    "pipecat_rxdrain.rx_backpressure moved to pipecat_rxdrain.rx.backpressure; import from there or from pipecat_rxdrain",
    DeprecationWarning,
    stacklevel=2,
)
_sys.modules[__name__] = _moved
