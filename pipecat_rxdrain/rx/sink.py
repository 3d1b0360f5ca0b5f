"""The acceptance protocol between the RX back-pressure processor and what it feeds."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class AudioSink(Protocol):
    """Something downstream that can say whether it takes audio *now*.

    ``RxDrainProcessor(sink=...)`` releases a queued frame only when
    ``can_accept_audio()`` is true; otherwise the frame stays pending at the
    head of the RX queue (retried first) and the rate bound's deadline does not
    advance. The STT service implements it as "my bounded queue has room, so
    this frame would be taken without dropping anything". It must be cheap and
    must never block: it is called from the event loop for every frame (also
    inline from ``process_frame`` when the RX queue is empty).

    Optional: ``audio_backlog() -> float``, the audio the sink holds and has not
    handed on yet, **in 20 ms-frame equivalents** (50 = 1 s of audio, whatever the
    size of the chunks it holds; a float is fine). With it, ``RxDrainProcessor``
    bounds the audio held by *both* queues together: RX q + backlog never exceeds
    the RX ``max_queue`` (RX q is counted in the same unit). When it would, RX
    hands the head frame to the (refusing) sink anyway and the sink's drop-oldest
    rule discards the globally oldest audio, rather than RX holding newer audio
    behind a full sink (two 4 s queues in series would otherwise age audio by 8 s
    instead of 4 s during a stall). It is called on pacing steps, so it must be as
    cheap as ``can_accept_audio()``.
    """

    def can_accept_audio(self) -> bool: ...
