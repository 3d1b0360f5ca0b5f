"""Google Cloud Speech-to-Text for phone calls: a never-blocking streaming session and its Pipecat service.

``StreamingSTTSession`` (``.session``) is the mechanism and imports no Pipecat; its pure parts are
``AudioQueue`` (``.audio_queue``), ``ReconnectPolicy`` (``.reconnect``), ``SttSessionParams``
(``.params``) and ``StreamLead`` (``.lead``); ``IoThreadMode`` (``.io_thread``) picks the I/O thread model;
``GoogleSTTService`` (``.service``) is the drop-in Pipecat adapter;
``TurnTimer`` (``.turns``) is the pure debounce / early-final logic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "AudioQueue",
    "GoogleSTTService",
    "IoThreadMode",
    "ReconnectPolicy",
    "SessionState",
    "StreamLead",
    "StreamingSTTSession",
    "SttError",
    "SttResult",
    "SttSessionParams",
    "SttStats",
    "TurnTimer",
]

_WHERE = {
    "StreamingSTTSession": ".session",
    "SttResult": ".session",
    "SttError": ".session",
    "SttStats": ".session",
    "SessionState": ".session",
    "AudioQueue": ".audio_queue",
    "ReconnectPolicy": ".reconnect",
    "SttSessionParams": ".params",
    "StreamLead": ".lead",
    "IoThreadMode": ".io_thread",
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
    from .audio_queue import AudioQueue
    from .io_thread import IoThreadMode
    from .lead import StreamLead
    from .params import SttSessionParams
    from .reconnect import ReconnectPolicy
    from .service import GoogleSTTService
    from .session import SessionState, StreamingSTTSession, SttError, SttResult, SttStats
    from .turns import TurnTimer
