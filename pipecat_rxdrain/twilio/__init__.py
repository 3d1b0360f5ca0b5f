"""Twilio Media Streams for the example bot and the caller simulator.

* :mod:`.messages` – parse/validate inbound websocket JSON (counted drops, never raises) and
  build Twilio's exact message shapes. No Pipecat import.
* :mod:`.audio` – G.711 mu-law codec, WAV -> 8 kHz mono 160-byte frames. No Pipecat import.
* :mod:`.security` – webhook signature check and per-call media-stream tokens. No Pipecat import.
* :mod:`.serializer` – ``HardenedTwilioFrameSerializer``, the Pipecat adapter (imports Pipecat).
* :mod:`.caller` – the caller simulator (``rxdrain call``). No Pipecat import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TwilioStreamParser": ".messages",
    "DropReason": ".messages",
    "ParserStats": ".messages",
    "WebhookVerifier": ".security",
    "MediaTokens": ".security",
    "HardenedTwilioFrameSerializer": ".serializer",
    "CallerOptions": ".caller",
    "CallSummary": ".caller",
    "simulate_call": ".caller",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipecat_rxdrain.twilio' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
