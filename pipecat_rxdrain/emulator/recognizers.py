"""Where transcripts come from: a script (default) or the offline pocketsphinx recognizer.

Scripted mode: the n-th final of a *recognition session* gets ``script[n]``
(``"utterance <n+1>"`` once the script runs out, or with no script). A session
is keyed by the ``x-rxdrain-session`` request metadata (``SESSION_METADATA_KEY``)
when the client sends it; a stream without it is a session of its own.

Why this keying: Google keeps no state across streams, so a plain client (Google's
samples, stock Pipecat) that opens three streams on one channel must see each stream
start afresh at ``script[0]``, as keying by the client peer did not give (channels in
one process share a connection, hence a peer: its second stream got "utterance 3").
Our own STT service always sends the key, one value per call kept across reconnects, so
the session survives reconnects and the exactly-once replay tests keep their meaning:
a client that replays exactly its unfinalized audio after a reconnect gets every
scripted segment exactly once, one that replays finalized audio gets an extra segment
(duplication is visible) and one that loses a segment's audio gets too few.

Interims carry a growing prefix of the upcoming final's words (the GOOGLE timing profile
revises some of them, see :mod:`.timing`); pocketsphinx interims decode the segment's
audio heard so far.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Hypothesis:
    """A recognizer's final for one segment.

    ``words``: (word, start_s, end_s) relative to the start of the segment's audio (empty:
    the stream spreads the words evenly over the segment); ``alternatives``: less likely
    transcripts, best first, distinct from ``text``.
    """

    text: str
    words: tuple[tuple[str, float, float], ...] = ()
    alternatives: tuple[str, ...] = ()


def load_script(script: str | Path | Sequence[str] | None) -> tuple[str, ...]:
    """Resolve a script: None, a list of texts, a bundled sample name, or a file.

    Files: ``.json`` with a ``segments`` list (the bundled sample format), anything
    else is text with one segment per non-empty line.
    """
    if script is None:
        return ()
    if isinstance(script, (list, tuple)):
        return tuple(str(s) for s in script)
    if isinstance(script, (Path, str)):
        from pipecat_rxdrain.samples import load_sample, sample_names

        if isinstance(script, str) and script in sample_names():
            return load_sample(script).segments
        path = Path(script)
        if not path.is_file():
            raise ValueError(
                f"script {str(script)!r} is neither a bundled sample ({', '.join(sample_names())}) nor a file"
            )
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            segments = data.get("segments") if isinstance(data, dict) else data
            if not isinstance(segments, list):
                raise ValueError(f"{path}: expected a JSON list or an object with a 'segments' list")
            return tuple(str(s) for s in segments)
        return tuple(line.strip() for line in text.splitlines() if line.strip())
    raise TypeError(f"script must be None, a list of str, a sample name or a path, not {type(script).__name__}")


class SessionBook:
    """Per-session count of finals already issued (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}

    def peek(self, session: str) -> int:
        with self._lock:
            return self._next.get(session, 0)

    def take(self, session: str) -> int:
        with self._lock:
            n = self._next.get(session, 0)
            self._next[session] = n + 1
            return n

    def reset(self) -> None:
        with self._lock:
            self._next.clear()


class ScriptedRecognizer:
    """Transcripts from a script; deterministic and instant."""

    name = "scripted"
    needs_audio = False
    blocking = False

    def __init__(self, script=None, *, seconds_per_word: float = 0.35) -> None:
        self.script = load_script(script)
        self.seconds_per_word = seconds_per_word
        self.sessions = SessionBook()

    def text_for(self, n: int) -> str:
        return self.script[n] if n < len(self.script) else f"utterance {n + 1}"

    def interim(self, session: str, speech_s: float, audio: np.ndarray | None = None, sample_rate: int = 0) -> str:
        words = self.text_for(self.sessions.peek(session)).split()
        shown = min(len(words), max(1, math.ceil(speech_s / self.seconds_per_word)))
        return " ".join(words[:shown])

    def final(
        self, session: str, audio: np.ndarray | None, sample_rate: int, language: str, max_alternatives: int = 1
    ) -> Hypothesis:
        text = self.text_for(self.sessions.take(session))
        return Hypothesis(text, alternatives=scripted_alternatives(text, max_alternatives - 1))


def scripted_alternatives(text: str, count: int) -> tuple[str, ...]:
    """Up to ``count`` deterministic runners-up for ``text``: its last word misheard, then the one before, ..."""
    from .timing import misheard

    words = text.split()
    out: list[str] = []
    for i in reversed(range(len(words))):
        if len(out) >= count:
            break
        alt = " ".join(words[:i] + [misheard(words[i])] + words[i + 1 :])
        if alt != text and alt not in out:
            out.append(alt)
    return tuple(out)


class PocketsphinxRecognizer:
    """Real offline recognition of each segment with pocketsphinx's bundled US-English model.

    Needs the ``recognizer`` extra (``pip install pipecat-rxdrain[recognizer]``). Audio at
    other rates is resampled to 16 kHz (the model's rate) by linear interpolation.
    Interims re-decode the segment's audio so far (CPU grows with segment length; they
    are only computed when the stream asks for interim results). Finals carry word
    offsets and n-best alternatives. English only, whatever the requested language code.
    """

    name = "pocketsphinx"
    needs_audio = True
    blocking = True  # run final() off the event loop

    MODEL_RATE = 16000
    FRAME_RATE = 100  # pocketsphinx frames per second (seg() start/end frames)

    def __init__(self) -> None:
        try:
            import pocketsphinx  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "recognizer='pocketsphinx' needs the optional dependency: pip install 'pipecat-rxdrain[recognizer]'"
            ) from exc
        self.sessions = SessionBook()
        self._local = threading.local()

    def _decoder(self):
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            from pocketsphinx import Decoder

            decoder = Decoder(samprate=self.MODEL_RATE, loglevel="FATAL")
            self._local.decoder = decoder
        return decoder

    def _decode(self, audio: np.ndarray, sample_rate: int):
        pcm = resample_int16(audio, sample_rate, self.MODEL_RATE)
        decoder = self._decoder()
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        return decoder

    def interim(self, session: str, speech_s: float, audio: np.ndarray | None = None, sample_rate: int = 0) -> str:
        """The best hypothesis for the segment's audio so far (re-decoded each time)."""
        if audio is None or len(audio) == 0:
            return ""
        hyp = self._decode(audio, sample_rate).hyp()
        return hyp.hypstr if hyp is not None else ""

    def final(
        self, session: str, audio: np.ndarray | None, sample_rate: int, language: str, max_alternatives: int = 1
    ) -> Hypothesis:
        self.sessions.take(session)
        if audio is None or len(audio) == 0:
            return Hypothesis("")
        decoder = self._decode(audio, sample_rate)
        hyp = decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        frame_s = 1.0 / self.FRAME_RATE
        words = tuple(
            (_plain_word(seg.word), seg.start_frame * frame_s, (seg.end_frame + 1) * frame_s)
            for seg in decoder.seg()
            if _plain_word(seg.word)
        )
        alternatives: list[str] = []
        if max_alternatives > 1:
            for nb in itertools.islice(decoder.nbest(), 50):
                alt = nb.hypstr
                if alt and alt != text and alt not in alternatives:
                    alternatives.append(alt)
                if len(alternatives) >= max_alternatives - 1:
                    break
        return Hypothesis(text, words, tuple(alternatives))


def _plain_word(token: str) -> str:
    """pocketsphinx's ``brooklyn(2)`` -> ``brooklyn``; fillers (``<s>``, ``<sil>``, ``[NOISE]``) -> ``""``."""
    if not token or token[0] in "<[":
        return ""
    return token.split("(", 1)[0]


def resample_int16(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out or len(samples) == 0:
        return samples.astype(np.int16, copy=False)
    n_out = int(round(len(samples) * rate_out / rate_in))
    x_out = np.arange(n_out) * (rate_in / rate_out)
    out = np.interp(x_out, np.arange(len(samples)), samples.astype(np.float64))
    return np.clip(out, -32768, 32767).astype(np.int16)


def make_recognizer(kind: str, script=None):
    if kind == "scripted":
        return ScriptedRecognizer(script)
    if kind == "pocketsphinx":
        return PocketsphinxRecognizer()
    raise ValueError(f"recognizer must be 'scripted' or 'pocketsphinx', got {kind!r}")
