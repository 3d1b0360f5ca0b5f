"""RX back-pressure for inbound call audio: a work-conserving, bounded queue right after ``transport.input()``.

``RxBackpressure`` (``.backpressure``) is the mechanism and imports no Pipecat;
``RxDrainProcessor`` / ``RxDrainParams`` (``.processor``) are the Pipecat adapter;
``AudioSink`` (``.sink``) is the acceptance protocol between RX and what it feeds;
``.demo`` is the RX demo (``rxdrain demo --rx-only``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["RxBackpressure", "RxStats", "RxMode", "RxDrainProcessor", "RxDrainParams", "AudioSink"]

_WHERE = {
    "RxBackpressure": ".backpressure",
    "RxStats": ".backpressure",
    "RxMode": ".backpressure",
    "RxDrainProcessor": ".processor",
    "RxDrainParams": ".processor",
    "AudioSink": ".sink",
}


def alias_moved_module(old_name: str, new_name: str) -> None:
    """Make the pre-0.2 module ``old_name`` an alias of ``pipecat_rxdrain.rx.<new_name>``, with a DeprecationWarning."""
    import importlib
    import sys
    import warnings

    new = f"{__name__}.{new_name}"
    warnings.warn(
        f"{old_name} moved to {new}; import from there or from pipecat_rxdrain", DeprecationWarning, stacklevel=3
    )
    sys.modules[old_name] = importlib.import_module(new)


def __getattr__(name: str) -> Any:
    import importlib

    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipecat_rxdrain.rx' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


if TYPE_CHECKING:  # pragma: no cover
    from .backpressure import RxBackpressure, RxMode, RxStats
    from .processor import RxDrainParams, RxDrainProcessor
    from .sink import AudioSink
