"""Google Cloud Speech-to-Text for phone calls: a never-blocking streaming session and its Pipecat service.

``StreamingSTTSession`` (``.session``) is the mechanism and imports no Pipecat; its pure parts are
``AudioQueue`` (``.audio_queue``), ``ReconnectPolicy`` (``.reconnect``), ``STTSessionParams``
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
    "STTError",
    "STTResult",
    "STTSessionParams",
    "STTStats",
    "TurnTimer",
]

_WHERE = {
    "StreamingSTTSession": ".session",
    "STTResult": ".session",
    "STTError": ".session",
    "STTStats": ".session",
    "SessionState": ".session",
    "AudioQueue": ".audio_queue",
    "ReconnectPolicy": ".reconnect",
    "STTSessionParams": ".params",
    "StreamLead": ".lead",
    "IoThreadMode": ".io_thread",
    "GoogleSTTService": ".service",
    "TurnTimer": ".turns",
}


def __getattr__(name: str) -> Any:
    import importlib

    from ..deprecation import STT_RENAMES

    if name in STT_RENAMES and STT_RENAMES[name] in _WHERE:  # a 0.1.0 name: warns, as the module does
        return getattr(importlib.import_module(_WHERE[STT_RENAMES[name]], __name__), name)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipecat_rxdrain.stt' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


if TYPE_CHECKING:  # pragma: no cover
    from .audio_queue import AudioQueue
    from .io_thread import IoThreadMode
    from .lead import StreamLead
    from .params import STTSessionParams
    from .reconnect import ReconnectPolicy
    from .service import GoogleSTTService
    from .session import SessionState, StreamingSTTSession, STTError, STTResult, STTStats
    from .turns import TurnTimer
