"""Google Cloud Speech-to-Text for phone calls: a never-blocking streaming session and its Pipecat service.

``StreamingSTTSession`` (``.session``) is the mechanism and imports no Pipecat;
``GoogleSTTService`` (``.service``) is the drop-in Pipecat adapter;
``TurnTimer`` (``.turns``) is the pure debounce / early-final logic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["StreamingSTTSession", "GoogleSTTService", "TurnTimer", "SttResult", "SttError", "SttStats"]

_WHERE = {
    "StreamingSTTSession": ".session",
    "SttResult": ".session",
    "SttError": ".session",
    "SttStats": ".session",
    "GoogleSTTService": ".service",
    "TurnTimer": ".turns",
}


def __getattr__(name: str) -> Any:
    import importlib

    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipecat_rxdrain.stt' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


if TYPE_CHECKING:  # pragma: no cover
    from .service import GoogleSTTService
    from .session import SttError, SttResult, SttStats, StreamingSTTSession
    from .turns import TurnTimer
