"""How fast, and how cleanly, the emulator answers: its timing profile.

``TimingProfile.FAST`` (the default of ``SpeechEmulator()``) sends a final the moment the
segmenter has heard ``end_silence_ms`` of silence after speech (0.6 s of audio by default) and
interims that are growing prefixes of the final. It keeps tests quick, and it is kinder
than Google: a client whose turn logic only works with a prompt final passes against it.

``TimingProfile.GOOGLE`` answers like the real service does on telephone audio:

* finals arrive a *delay after the end of speech* drawn from a log-normal distribution with
  median ``FINAL_MEDIAN_S`` (0.9 s) and 99th percentile ``FINAL_P99_S`` (1.6 s). When the
  segmenter closes a segment it has already heard ``s`` seconds of silence after the last
  speech frame; the final is then held ``max(0, delay - s)`` more wall-clock seconds. With
  audio sent in real time that makes the final arrive ``delay`` after the end of speech;
  the segmenter's silence (0.6 s by default) is a floor, so the ~5 % of draws below it are
  sent as soon as the segment ends. Responses stay in order: a held final holds back what
  follows it.
* interims are *revised*: an interim's last word is sometimes misheard (a near-miss of the
  right word) and corrected by a later interim or the final, so a client cannot assume each
  interim extends the previous one.

Every draw is a pure function of ``(seed, key)`` (the key names the stream and segment), so a
run is reproducible under a seed whatever the thread scheduling.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum

FINAL_MEDIAN_S = 0.9
FINAL_P99_S = 1.6
_Z99 = 2.3263478740408408  # standard normal 99th percentile
FINAL_SIGMA = math.log(FINAL_P99_S / FINAL_MEDIAN_S) / _Z99
REVISE_PROBABILITY = 0.35  # chance that an interim's last word is misheard


class TimingProfile(Enum):
    """The emulator's answer timing: ``FAST`` (prompt, prefix interims) or ``GOOGLE`` (realistic)."""

    FAST = "fast"
    GOOGLE = "google"

    @classmethod
    def parse(cls, value: TimingProfile | str) -> TimingProfile:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"timing must be one of {[p.value for p in cls]}, got {value!r}") from None


# Near-misses a recognizer plausibly produces before it has heard the whole word.
_CONFUSIONS = {
    "to": "two",
    "two": "to",
    "for": "four",
    "four": "for",
    "nine": "night",
    "i": "eye",
    "hi": "high",
    "order": "odor",
    "test": "text",
    "morning": "mourning",
    "would": "wood",
    "there": "their",
    "it": "at",
    "is": "as",
    "the": "a",
    "a": "the",
    "me": "we",
}


def misheard(word: str) -> str:
    """A deterministic near-miss of ``word`` (never ``word`` itself)."""
    low = word.lower()
    if low in _CONFUSIONS:
        return _CONFUSIONS[low]
    if len(word) > 3:
        return word[:-1]  # the end of the word not heard yet: "tomorro", "appointmen"
    return word + "s"


@dataclass(frozen=True)
class TimingModel:
    """The draws of one profile under one seed. Pure: no clock, no shared state."""

    profile: TimingProfile = TimingProfile.FAST
    seed: int = 0

    def _rng(self, key: str) -> random.Random:
        return random.Random(f"{self.seed}|{key}")

    def final_delay_s(self, key: str) -> float:
        """Seconds after end of speech at which the final of ``key`` is due (0 for FAST: at once)."""
        if self.profile is TimingProfile.FAST:
            return 0.0
        return FINAL_MEDIAN_S * math.exp(FINAL_SIGMA * self._rng(f"final|{key}").gauss(0.0, 1.0))

    def interim_words(self, words: list[str], key: str) -> tuple[list[str], bool]:
        """The words an interim shows (``words`` is the correct prefix so far) and whether one was revised."""
        if self.profile is TimingProfile.FAST or not words:
            return words, False
        if self._rng(f"interim|{key}").random() >= REVISE_PROBABILITY:
            return words, False
        return words[:-1] + [misheard(words[-1])], True
