"""The acceptance protocol between the RX back-pressure processor and what it feeds."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class AudioSink(Protocol):
    """Something downstream that can say whether it takes audio *now*.

    ``RxDrainProcessor(sink=...)`` releases a queued frame only when
    ``can_accept_audio()`` is true; otherwise the frame stays pending at the
    head of the RX queue and the pacing deadline does not advance. The STT
    service implements it as "my bounded queue has room, so this frame would be
    taken without dropping anything". It must be cheap and must never block:
    it is called from the event loop for every frame.
    """

    def can_accept_audio(self) -> bool: ...
