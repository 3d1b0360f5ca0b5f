"""Bundled speech samples (8 kHz mono PCM16 WAV, made with espeak-ng; see scripts/make_samples.sh).

Each ``<name>.wav`` has a ``<name>.json`` with its language and the transcript of
each speech segment, in order.
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sample:
    name: str
    path: Path
    pcm16: bytes  # little-endian signed 16-bit mono
    sample_rate: int
    language: str
    segments: tuple[str, ...]

    @property
    def duration_s(self) -> float:
        return len(self.pcm16) / 2 / self.sample_rate


def sample_names() -> list[str]:
    return sorted(p.stem for p in SAMPLES_DIR.glob("*.wav"))


def sample_path(name: str) -> Path:
    path = SAMPLES_DIR / f"{name}.wav"
    if not path.exists():
        raise FileNotFoundError(f"no bundled sample {name!r}; have {sample_names()}")
    return path


def load_sample(name: str) -> Sample:
    path = sample_path(name)
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path} must be mono 16-bit PCM")
        pcm = w.readframes(w.getnframes())
        rate = w.getframerate()
    return Sample(name, path, pcm, rate, meta["language"], tuple(meta["segments"]))
