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


def sink_backlog(sink: object) -> int | None:
    """The sink's optional ``audio_backlog()``: frames it holds that were not sent on yet.

    A sink that implements it lets ``RxDrainProcessor`` bound the audio held by
    *both* queues together: RX q + backlog never exceeds the RX ``max_queue``.
    When it would, RX hands the head frame to the (refusing) sink anyway, and the
    sink's drop-oldest rule discards the globally oldest audio, rather than RX
    holding newer audio behind a full sink (two 200-frame queues in series would
    otherwise age audio by 8 s instead of 4 s during a stall). Returns None when
    the sink does not implement it or it fails.
    """
    backlog = getattr(sink, "audio_backlog", None)
    if backlog is None:
        return None
    try:
        return int(backlog())
    except Exception:
        return None
