"""Audio decoding and energy-based speech segmentation for the emulator.

``AudioDecoder`` turns request bytes (LINEAR16, MULAW or ALAW, interleaved
channels) into mono int16 samples (first channel), carrying partial samples
across requests. ``EnergySegmenter`` classifies each 20 ms frame as speech or
silence by RMS energy and reports segments: a segment opens once
``min_speech_ms`` of speech has been heard and closes after ``end_silence_ms``
of continuous silence. All offsets are seconds of *audio* since the stream
start, so results do not depend on how fast the client sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


def _ulaw_table() -> np.ndarray:
    u = (~np.arange(256, dtype=np.uint8)).astype(np.int32)
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign, exponent, mantissa = a & 0x80, (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


ULAW_TO_PCM16 = _ulaw_table()
ALAW_TO_PCM16 = _alaw_table()

SUPPORTED_ENCODINGS = ("LINEAR16", "MULAW", "ALAW")


class AudioDecoder:
    """Decode a byte stream of ``encoding`` with ``channels`` interleaved channels to mono int16 (channel 1)."""

    def __init__(self, encoding: str, channels: int = 1) -> None:
        if encoding not in SUPPORTED_ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}")
        self.encoding = encoding
        self.channels = max(1, channels)
        self._bytes_per_sample = 2 if encoding == "LINEAR16" else 1
        self._frame_bytes = self._bytes_per_sample * self.channels
        self._pending = b""

    def decode(self, data: bytes) -> np.ndarray:
        data = self._pending + data
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        raw = data[:usable]
        if self.encoding == "LINEAR16":
            samples = np.frombuffer(raw, dtype="<i2")
        else:
            table = ULAW_TO_PCM16 if self.encoding == "MULAW" else ALAW_TO_PCM16
            samples = table[np.frombuffer(raw, dtype=np.uint8)]
        if self.channels > 1:
            samples = samples[:: self.channels]
        return samples


@dataclass(frozen=True)
class SegmenterSettings:
    """Speech/silence detection knobs (defaults suit the bundled espeak samples and telephone audio)."""

    frame_ms: int = 20
    threshold_rms: float = 250.0  # int16 RMS above which a frame counts as speech
    end_silence_ms: int = 600  # silence that ends a segment (samples pause 0.8-1.2 s between sentences)
    min_speech_ms: int = 100  # speech needed before a segment opens (ignores clicks)
    keep_audio: bool = False  # keep each segment's samples (for a real recognizer)
    preroll_ms: int = 200  # audio kept before the segment start when keep_audio


class SegmentEventKind(StrEnum):
    """What a :class:`SegmentEvent` reports."""

    BEGIN = "begin"  # a segment opened
    SPEECH = "speech"  # one more speech frame inside an open segment
    END = "end"  # the segment closed (end silence heard)


@dataclass(frozen=True)
class SegmentEvent:
    """``kind``: a :class:`SegmentEventKind` (segment opened, one more speech frame in it, segment closed).

    ``start_s``/``end_s``: segment start and end of its last speech frame; ``offset_s``: audio time of
    the event; ``speech_s``: speech heard so far in the segment; ``audio``: samples (``keep_audio`` only).
    """

    kind: SegmentEventKind
    start_s: float
    offset_s: float
    speech_s: float = 0.0
    end_s: float = 0.0
    audio: np.ndarray | None = None
    audio_start_s: float = 0.0


class EnergySegmenter:
    """Feed mono int16 samples; get ``SegmentEvent``s. Not thread-safe (one per stream)."""

    def __init__(self, sample_rate: int, settings: SegmenterSettings | None = None) -> None:
        self.settings = s = settings or SegmenterSettings()
        self.sample_rate = sample_rate
        self._frame = max(1, sample_rate * s.frame_ms // 1000)
        self._frame_s = self._frame / sample_rate
        self._buf = np.zeros(0, dtype=np.int16)
        self._frames_done = 0  # frames consumed since stream start
        self._open = False  # segment confirmed (begin emitted)
        self._candidate_start: float | None = None
        self._speech_s = 0.0
        self._silence_s = 0.0
        self._last_speech_end = 0.0
        self._audio: list[np.ndarray] = []
        self._audio_start = 0.0
        self._preroll: list[np.ndarray] = []

    @property
    def audio_s(self) -> float:
        """Seconds of audio consumed (whole frames)."""
        return self._frames_done * self._frame_s

    def segment_audio(self) -> np.ndarray | None:
        """The open segment's samples so far, preroll included (``keep_audio`` only)."""
        if not self.settings.keep_audio or not self._audio:
            return None
        return np.concatenate(self._audio)

    def feed(self, samples: np.ndarray) -> list[SegmentEvent]:
        events: list[SegmentEvent] = []
        buf = np.concatenate((self._buf, samples)) if len(self._buf) else samples
        n = len(buf) // self._frame
        if n:
            frames = buf[: n * self._frame].reshape(n, self._frame)
            rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
            for i in range(n):
                self._step(frames[i], bool(rms[i] > self.settings.threshold_rms), events)
        self._buf = buf[n * self._frame :].copy()
        return events

    def flush(self) -> list[SegmentEvent]:
        """End of audio: close an open segment (a candidate too short to open is dropped)."""
        events: list[SegmentEvent] = []
        if self._open:
            events.append(self._close())
        self._reset_segment()
        return events

    def _step(self, frame: np.ndarray, speech: bool, events: list[SegmentEvent]) -> None:
        s = self.settings
        start = self._frames_done * self._frame_s
        self._frames_done += 1
        end = start + self._frame_s
        if s.keep_audio:
            if self._candidate_start is not None:
                self._audio.append(frame)
            else:
                self._preroll.append(frame)
                keep = max(1, s.preroll_ms // s.frame_ms)
                del self._preroll[:-keep]
        if speech:
            if self._candidate_start is None:
                self._candidate_start = start
                self._speech_s = 0.0
                self._audio_start = start
                if s.keep_audio:
                    self._audio = self._preroll[:-1] + [frame]
                    self._audio_start = start - (len(self._audio) - 1) * self._frame_s
                    self._preroll = []
            self._speech_s += self._frame_s
            self._silence_s = 0.0
            self._last_speech_end = end
            if not self._open and self._speech_s * 1000 >= s.min_speech_ms - 1e-9:
                self._open = True
                events.append(SegmentEvent(SegmentEventKind.BEGIN, self._candidate_start, end, self._speech_s))
            if self._open:
                events.append(SegmentEvent(SegmentEventKind.SPEECH, self._candidate_start, end, self._speech_s))
            return
        if self._candidate_start is None:
            return
        self._silence_s += self._frame_s
        if self._silence_s * 1000 >= s.end_silence_ms - 1e-9:
            if self._open:
                events.append(self._close())
            self._reset_segment()

    def _close(self) -> SegmentEvent:
        audio = np.concatenate(self._audio) if self.settings.keep_audio and self._audio else None
        return SegmentEvent(
            SegmentEventKind.END,
            self._candidate_start or 0.0,
            self.audio_s,
            self._speech_s,
            self._last_speech_end,
            audio,
            self._audio_start,
        )

    def _reset_segment(self) -> None:
        self._open = False
        self._candidate_start = None
        self._speech_s = 0.0
        self._silence_s = 0.0
        self._audio = []
