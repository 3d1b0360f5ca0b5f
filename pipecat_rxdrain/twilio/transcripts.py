"""A pass-through processor that records each final transcript and its end-of-speech -> final latency."""

from __future__ import annotations

import time

from loguru import logger
from pipecat.frames.frames import Frame, TranscriptionFrame, VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from .calls import CallRecord
from .logs import loggable

#: finals kept per call in ``/stats`` (the count keeps going; the oldest texts go)
MAX_FINALS_KEPT = 200


class TranscriptRecorder(FrameProcessor):
    """Logs each final transcript (escaped, capped) and appends it to ``record.finals``.

    Put it after the VAD (it reads VAD stop frames to time end of speech -> final).
    Guarantees: frames pass through unchanged and in order; ``record.finals``
    keeps at most :data:`MAX_FINALS_KEPT` entries.
    """

    def __init__(self, record: CallRecord, **kwargs) -> None:
        super().__init__(**kwargs)
        self._record = record
        self._speech_stopped_at: float | None = None
        self._last_vad_id: int | None = None
        self.finals = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            # VAD frames are broadcast both ways; count each stop once.
            if frame.broadcast_sibling_id is None or frame.broadcast_sibling_id != self._last_vad_id:
                self._last_vad_id = frame.id
                # The VAD decides ``stop_secs`` after speech really ended.
                self._speech_stopped_at = time.monotonic() - float(getattr(frame, "stop_secs", 0.0) or 0.0)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._speech_stopped_at = None
        elif isinstance(frame, TranscriptionFrame):
            now = time.monotonic()
            latency_ms = None if self._speech_stopped_at is None else round((now - self._speech_stopped_at) * 1000.0)
            self._speech_stopped_at = None
            self.finals += 1
            finals = self._record.finals
            finals.append({"text": frame.text, "eos_to_final_ms": latency_ms, "at": time.time()})
            if len(finals) > MAX_FINALS_KEPT:
                del finals[0]
            shown = "n/a" if latency_ms is None else f"{latency_ms} ms"
            logger.info(f"[BOT] final transcript (end of speech -> final: {shown}): {loggable(frame.text, 1000)}")
        await self.push_frame(frame, direction)
