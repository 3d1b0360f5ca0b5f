"""Deprecated alias of :mod:`pipecat_rxdrain.rx.sink` (RX moved into the ``pipecat_rxdrain.rx`` package).

Kept so that code importing the old path keeps working; import from
``pipecat_rxdrain`` (the public names) or ``pipecat_rxdrain.rx.sink`` instead.
"""

import sys as _sys
import warnings as _warnings

from .rx import sink as _moved

_warnings.warn(
    "pipecat_rxdrain.sink moved to pipecat_rxdrain.rx.sink; import from there or from pipecat_rxdrain",
    DeprecationWarning,
    stacklevel=2,
)
_sys.modules[__name__] = _moved
