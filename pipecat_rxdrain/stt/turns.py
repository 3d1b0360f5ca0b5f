"""Turn timing for streaming transcripts: interim debounce, VAD hangover, early final that never costs words.

Pure logic with an injectable clock (no Pipecat, no threads, no I/O): feed it
what happened (``interim``, ``final``, ``vad_started``, ``vad_stopped``) and
call ``poll`` when ``next_deadline()`` passes; every call returns the
:class:`TurnEmit` list the owner should turn into frames, in order.

The three field-tuned knobs (each ``None`` or ``0`` switches it off):

``debounce_ms`` (110)
    At most one interim per window. The first interim after a quiet window goes
    out at once; later ones inside the window are coalesced, and the newest
    pending text is flushed when the window ends (so the last word is never
    held back longer than ``debounce_ms``).

``vad_hangover_ms`` (180) and ``final_timeout_ms`` (320)
    When the VAD says the user stopped speaking, wait ``vad_hangover_ms`` (the
    user may resume) and then up to ``final_timeout_ms`` more for Google's
    final. If it has not come by then, the newest interim of the segment may be
    emitted as the final (an *early final*, ``TurnEmit.early=True``). Speech
    resuming (``vad_started``) cancels it. ``final_timeout_ms`` off disables
    early finals entirely.

An early final may only shorten the wait, never cost words. Two rules:

1. **Hold a stale interim** (the gate). ``vad_stopped(speech_end_ms=...)``
   says where, in the recognizer's audio time, the speech ended; each
   ``interim(..., end_ms=...)`` says how far into the audio Google had heard
   when it wrote that text. The early final fires only if the newest interim
   reaches the end of speech (within ``coverage_ms``) *and* Google says it is
   stable (``stability >= min_stability``, default 0.5: Google marks a tail it
   may still revise with a low stability, ~0.01, and a settled one ~0.9). When Google answers
   late (network latency, a backlog in our own audio queue) the newest interim
   predates the last words: the early final is held, and fires as soon as an
   interim that does cover the speech arrives, or never, if Google's final
   comes first. The worst case is therefore exactly the stock behaviour
   (wait for Google's final), never a shorter transcript.
2. **Catch up** (the guarantee). Google may still revise or extend an
   interim that looked complete. When Google's real final for a segment
   arrives after its early final, it is aligned word by word with the early
   text (a diff, not a prefix test, since Google revises interims) and the
   words the early final did not have, everything after the aligned part, are
   emitted as one more final (``TurnEmit.catch_up=True``). A late final that
   adds nothing is suppressed, so no text is delivered twice.
3. **Keep betting only while the bets win** (trust). An early final is a bet
   that Google's final will say nothing more than its newest interim. After a
   bet loses (a catch-up was needed), early finals are withheld: at each
   deadline the timer still notes what it would have sent and checks it
   against Google's final, and ships early finals again once such a shadow
   early final turns out complete. A call whose interims keep lagging their
   finals gets complete finals at Google's pace instead of split turns.

Why both, rather than only catching up. Pipecat's user aggregator ends the
user turn on a finalized TranscriptionFrame, so the LLM answers the early
final's text at once. A catch-up final arriving after that starts a second
user turn (``TranscriptionUserTurnStartStrategy``), which interrupts the bot
and sends the missing words to the LLM as a message of their own. Catching
up alone would keep every word but give the LLM split turns on most slow
answers. The gate keeps early finals to the case where Google has demonstrably
heard the whole utterance, so the catch-up is the rare exception (a revision),
and the turn the LLM sees is complete. Holding costs latency only when
Google is already late, and then never more than waiting for its final.

Without positions (``speech_end_ms=None``) the gate is open and only rule 2
applies. Interims that arrive between an early final and the late final of
the same segment are held back (the catch-up final carries any new words).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from ..clock import Clock, monotonic

_WORD_RE = re.compile(r"[\w']+", re.UNICODE)

# Default tolerance of the gate: how far before the end of speech the newest interim may end.
# About one interim period of Google's streaming results, plus the VAD's own stop jitter.
DEFAULT_COVERAGE_MS = 200.0
DEFAULT_MIN_STABILITY = 0.5  # an interim Google may still revise is never shipped as an early final


def words_of(text: str) -> list[str]:
    """Lower-cased words of ``text`` (punctuation dropped), as the alignment compares them."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def _ms(value: float | int | None) -> float:
    """A knob in ms as seconds; None/0 mean 'off' (0.0)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"turn timing values must be finite numbers >= 0 ms, or None, got {value!r}")
    return float(value) / 1000.0


@dataclass(frozen=True)
class TurnEmit:
    """One transcript the owner should deliver (as a frame), in order."""

    text: str
    final: bool
    early: bool = False  # a final synthesised from the newest interim after the VAD stop
    catch_up: bool = False  # the words Google's late final had that the early final missed
    payload: Any = None  # whatever the caller attached (e.g. the raw recognition result)


@dataclass
class TurnCounters:
    interims_in: int = 0
    interims_out: int = 0
    interims_coalesced: int = 0
    interims_held: int = 0
    finals_in: int = 0
    finals_out: int = 0
    early_finals: int = 0
    early_finals_held: int = 0  # the deadline passed but the newest interim had not heard the end of speech
    early_finals_withheld: int = 0  # not sent because the last early final (or shadow) was incomplete
    late_finals_suppressed: int = 0  # Google's late final had nothing the early final lacked
    catch_up_finals: int = 0  # Google's late final had words the early final lacked: delivered


@dataclass
class _Segment:
    newest_text: str | None = None
    newest_payload: Any = None
    newest_end_ms: float | None = None
    newest_stability: float | None = None


class TurnTimer:
    """Turns raw interim/final/VAD events into the transcript stream a voice bot wants.

    Guarantees: at most one interim per ``debounce_ms`` and always the newest
    text; an early final only after ``vad_hangover_ms + final_timeout_ms`` of
    VAD silence without Google's final, and only from an interim that heard
    the end of speech (when positions are given); every word of Google's
    finals is delivered exactly once: words an early final missed follow as
    a catch-up final, words it already had are not repeated. Deterministic
    given the clock.
    """

    def __init__(
        self,
        *,
        debounce_ms: float | None = 110,
        vad_hangover_ms: float | None = 180,
        final_timeout_ms: float | None = 320,
        coverage_ms: float | None = DEFAULT_COVERAGE_MS,
        min_stability: float = DEFAULT_MIN_STABILITY,
        clock: Clock = monotonic,
    ) -> None:
        self._debounce_s = _ms(debounce_ms)
        self._hangover_s = _ms(vad_hangover_ms)
        self._early_enabled = bool(final_timeout_ms)
        self._timeout_s = _ms(final_timeout_ms)
        self._coverage_ms = _ms(coverage_ms) * 1000.0
        if not (isinstance(min_stability, (int, float)) and 0.0 <= min_stability <= 1.0):
            raise ValueError(f"min_stability must be a number in [0, 1], got min_stability={min_stability!r}")
        self._min_stability = float(min_stability)
        self._clock = clock
        self.counters = TurnCounters()
        self._seg = _Segment()
        self._last_interim_out: float | None = None
        self._pending_interim: tuple[str, Any] | None = None
        self._early_deadline: float | None = None
        self._speech_end_ms: float | None = None
        # The deadline passed with a stale interim: fire as soon as an interim covers the speech.
        self._early_held = False
        # Words of the early final still to be matched with Google's late final (empty: none awaited).
        self._early_words: list[str] = []
        self._new_segment_since_early = False
        # Rule 3: did the last early final (sent or shadow) hold every word of Google's final?
        self._trusted = True
        self._shadow_words: list[str] | None = None

    # ------------------------------------------------------------------ inputs
    def interim(
        self, text: str, payload: Any = None, end_ms: float | None = None, stability: float | None = None
    ) -> list[TurnEmit]:
        """An interim result; ``end_ms``: how far into the audio (recognizer time) it reaches;
        ``stability``: Google's estimate that it will not change (None: unknown, not gated on)."""
        now = self._clock()
        self.counters.interims_in += 1
        if not text:
            return []
        if self._early_words and not self._new_segment_since_early:
            self.counters.interims_held += 1
            return []
        self._seg = _Segment(text, payload, end_ms, stability)
        out = self._due(now)
        if self._early_held and self._covers_speech():
            emits = self._fire_early()
            if emits:
                return out + emits
        if not self._debounce_s or self._last_interim_out is None or now - self._last_interim_out >= self._debounce_s:
            if self._pending_interim is not None:
                self.counters.interims_coalesced += 1
                self._pending_interim = None
            out.append(self._emit_interim(text, payload, now))
        else:
            if self._pending_interim is not None:
                self.counters.interims_coalesced += 1
            self._pending_interim = (text, payload)
        return out

    def final(self, text: str, payload: Any = None) -> list[TurnEmit]:
        now = self._clock()
        self.counters.finals_in += 1
        out = self._due(now)
        # A final supersedes any interim still waiting for its debounce window.
        if self._pending_interim is not None:
            self.counters.interims_coalesced += 1
            self._pending_interim = None
        self._early_deadline = None
        self._early_held = False
        self._seg = _Segment()
        if self._shadow_words is not None:
            self._trusted = self._complete(self._shadow_words, text)
            self._shadow_words = None
        catch_up = False
        if self._early_words:
            unsaid = self._unsaid(text)
            if unsaid is None:
                self.counters.late_finals_suppressed += 1
                return out
            catch_up = True
            self._trusted = False
            self.counters.catch_up_finals += 1
            text = unsaid
        if not text:
            return out
        self.counters.finals_out += 1
        out.append(TurnEmit(text=text, final=True, catch_up=catch_up, payload=payload))
        return out

    def vad_started(self) -> list[TurnEmit]:
        out = self._due(self._clock())
        self._early_deadline = None
        self._early_held = False
        self._speech_end_ms = None
        self._shadow_words = None  # speech resumed: the withheld early final would not have fired
        if self._early_words:
            self._new_segment_since_early = True
        return out

    def vad_stopped(self, speech_end_ms: float | None = None) -> list[TurnEmit]:
        """The VAD says speech stopped; ``speech_end_ms``: where it ended, in the recognizer's audio time."""
        now = self._clock()
        out = self._due(now)
        self._speech_end_ms = speech_end_ms
        self._early_held = False
        if self._early_enabled:
            self._early_deadline = now + self._hangover_s + self._timeout_s
        return out

    def poll(self) -> list[TurnEmit]:
        """Emit whatever timers have come due."""
        return self._due(self._clock())

    def next_deadline(self) -> float | None:
        """Clock time of the next timer, or None when nothing is pending."""
        deadlines = [d for d in (self._interim_deadline(), self._early_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def reset(self) -> None:
        """Forget the current segment and timers (e.g. on an interruption or a stream restart)."""
        self._seg = _Segment()
        self._pending_interim = None
        self._early_deadline = None
        self._early_held = False
        self._speech_end_ms = None
        self._early_words = []
        self._new_segment_since_early = False
        self._shadow_words = None

    # --------------------------------------------------------------- internals
    def _interim_deadline(self) -> float | None:
        if self._pending_interim is None or self._last_interim_out is None:
            return None
        return self._last_interim_out + self._debounce_s

    def _emit_interim(self, text: str, payload: Any, now: float) -> TurnEmit:
        self._last_interim_out = now
        self.counters.interims_out += 1
        return TurnEmit(text=text, final=False, payload=payload)

    def _covers_speech(self) -> bool:
        stability = self._seg.newest_stability
        if stability is not None and stability < self._min_stability:
            return False  # Google may still revise this text: wait for a settled interim or the final
        if self._speech_end_ms is None:
            return True  # no positions: the gate is open
        end = self._seg.newest_end_ms
        return end is not None and end >= self._speech_end_ms - self._coverage_ms

    def _due(self, now: float) -> list[TurnEmit]:
        out: list[TurnEmit] = []
        d = self._interim_deadline()
        if d is not None and now >= d:
            text, payload = self._pending_interim  # type: ignore[misc]
            self._pending_interim = None
            out.append(self._emit_interim(text, payload, now))
        if self._early_deadline is not None and now >= self._early_deadline:
            self._early_deadline = None
            if self._seg.newest_text:
                if self._covers_speech():
                    out += self._fire_early()
                else:
                    self._early_held = True
                    self.counters.early_finals_held += 1
        return out

    def _fire_early(self) -> list[TurnEmit]:
        self._early_held = False
        if not self._trusted:
            # Rule 3: remember the bet instead of making it; Google's final will judge it.
            self._shadow_words = words_of(self._seg.newest_text or "")
            self.counters.early_finals_withheld += 1
            return []
        self._pending_interim = None  # the final carries the newest text
        text, payload = self._seg.newest_text or "", self._seg.newest_payload
        self._seg = _Segment()
        self._early_words = words_of(text)
        self._new_segment_since_early = False
        self.counters.early_finals += 1
        self.counters.finals_out += 1
        return [TurnEmit(text=text, final=True, early=True, payload=payload)]

    @staticmethod
    def _align(early: list[str], words: list[str]) -> tuple[bool, int, int]:
        """(anchored, words of the final covered, early words covered) of a word diff."""
        blocks = [b for b in difflib.SequenceMatcher(a=early, b=words, autojunk=False).get_matching_blocks() if b.size]
        matched = sum(b.size for b in blocks)
        anchored = bool(blocks) and blocks[0].a <= 1 and blocks[0].b <= 1 and 2 * matched >= min(len(early), len(words))
        if not anchored:
            return False, 0, 0
        return True, blocks[-1].b + blocks[-1].size, blocks[-1].a + blocks[-1].size

    def _complete(self, early: list[str], text: str) -> bool:
        """Would an early final of ``early`` have held every word of the final ``text``?"""
        words = words_of(text)
        anchored, covered_final, _ = self._align(early, words)
        return not words or (anchored and covered_final == len(words))

    def _unsaid(self, text: str) -> str | None:
        """The part of Google's late final the early final did not deliver (None: nothing new).

        The final is aligned with the early words by a word diff. When the
        alignment is trustworthy (it starts at the beginning of both and
        matches at least half of the early words) everything after its last
        matched word is new. Otherwise the final is delivered whole: a
        possible repeat is better than a lost word. A final that matches only
        the start of the early text (Google split the segment) leaves the rest
        of the early words to be matched by the next final.
        """
        matches = list(_WORD_RE.finditer(text))
        words = [m.group(0).lower() for m in matches]
        early = self._early_words
        anchored, covered_final, covered_early = self._align(early, words)
        if not anchored:
            self._early_words = []
            self._new_segment_since_early = False
            return text or None
        if covered_final < len(words):
            self._early_words = []
            self._new_segment_since_early = False
            return text[matches[covered_final].start() :].strip()
        # Everything in this final was already delivered.
        # A final covering only the start of the early text: Google split the segment, the
        # rest of the early words are matched against its next final (unless speech resumed).
        self._early_words = [] if self._new_segment_since_early else early[covered_early:]
        if not self._early_words:
            self._new_segment_since_early = False
        return None
