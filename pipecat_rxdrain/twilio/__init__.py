"""Twilio Media Streams for Pipecat bots: the reusable plumbing of the example bot, and the caller simulator.

* :mod:`.messages` – parse/validate inbound websocket JSON (counted drops, never raises) and
  build Twilio's exact message shapes. No Pipecat import.
* :mod:`.audio` – G.711 mu-law codec, WAV -> 8 kHz mono 160-byte frames. No Pipecat import.
* :mod:`.security` – webhook signature check and per-call media-stream tokens. No Pipecat import.
* :mod:`.config` – settings from the environment, checked at start-up (``ServerConfig``). No Pipecat import.
* :mod:`.calls` – call slots (``max_calls``), call records, health. No Pipecat import.
* :mod:`.input_backlog` – the bound on Pipecat's input-transport queue. No Pipecat import.
* :mod:`.connections` – pending-socket cap and request deadline for uvicorn. No Pipecat import.
* :mod:`.ws_read_ahead` – uvicorn's websocket protocol without a read pause per message. No Pipecat import.
* :mod:`.serializer` – ``HardenedTwilioFrameSerializer`` and ``InputBacklogMeter`` (Pipecat adapters).
* :mod:`.media_call` – ``MediaStreamCall``: one call's transport, pipeline life and numbers.
* :mod:`.transcripts` – ``TranscriptRecorder``: logs finals with their latency.
* :mod:`.server` – ``create_app(config, build_pipeline)``, ``BotServer``, ``serve_forever``.
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
    "ConfigError": ".config",
    "ServerConfig": ".config",
    "CallRegistry": ".calls",
    "CallRecord": ".calls",
    "InputBacklog": ".input_backlog",
    "ReadAheadWebSocketProtocol": ".ws_read_ahead",
    "read_ahead_ws_protocol": ".ws_read_ahead",
    "HardenedTwilioFrameSerializer": ".serializer",
    "InputBacklogMeter": ".serializer",
    "MediaStreamCall": ".media_call",
    "TranscriptRecorder": ".transcripts",
    "create_app": ".server",
    "BotServer": ".server",
    "serve_forever": ".server",
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
