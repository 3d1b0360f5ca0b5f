"""pipecat-rxdrain: back-pressure for Pipecat phone bots.

Public names are imported lazily so that light entry points (the emulator CLI,
the caller simulator) do not pay for importing Pipecat.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS: dict[str, str] = {
    # RX back-pressure
    "RxBackpressure": "pipecat_rxdrain.rx.backpressure",
    "RxStats": "pipecat_rxdrain.rx.backpressure",
    "RxDrainProcessor": "pipecat_rxdrain.rx.processor",
    "RxDrainParams": "pipecat_rxdrain.rx.processor",
    # shared
    "AudioSink": "pipecat_rxdrain.rx.sink",
    "FakeClock": "pipecat_rxdrain.testing",
    # Google STT
    "StreamingSTTSession": "pipecat_rxdrain.stt.session",
    "GoogleSTTService": "pipecat_rxdrain.stt.service",
    # emulator
    "SpeechEmulator": "pipecat_rxdrain.emulator",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipecat_rxdrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .emulator import SpeechEmulator as SpeechEmulator
    from .rx.backpressure import RxBackpressure as RxBackpressure
    from .rx.backpressure import RxStats as RxStats
    from .rx.processor import RxDrainParams as RxDrainParams
    from .rx.processor import RxDrainProcessor as RxDrainProcessor
    from .rx.sink import AudioSink as AudioSink
    from .stt.service import GoogleSTTService as GoogleSTTService
    from .stt.session import StreamingSTTSession as StreamingSTTSession
    from .testing import FakeClock as FakeClock
