"""Turn timing for streaming transcripts: interim debounce, VAD hangover, early final.

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
    final. If it has not come by then, the newest interim of the segment is
    emitted as the final (an *early final*, ``TurnEmit.early=True``). Speech
    resuming (``vad_started``) before the deadline cancels it. ``final_timeout_ms``
    off disables early finals entirely.

Late finals: Google's final for a segment that already got an early final is
suppressed. If the user had started a new segment before the late final
arrived, the late final is compared by words with the early one: the words it
repeats are dropped and only the new tail (if any) is emitted, so no text is
delivered twice and none is lost. Interims that arrive between an early final
and the late final of the same segment are held back (they would only show
text the pipeline already has as final).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock, monotonic

_WORD_RE = re.compile(r"[\w']+", re.UNICODE)


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def _ms(value: float | int | None) -> float:
    """A knob in ms as seconds; None/0/negative mean 'off' (0.0)."""
    if value is None:
        return 0.0
    if value < 0:
        raise ValueError(f"turn timing values must be >= 0 ms or None, got {value}")
    return float(value) / 1000.0


@dataclass(frozen=True)
class TurnEmit:
    """One transcript the owner should deliver (as a frame), in order."""

    text: str
    final: bool
    early: bool = False  # a final synthesised from the newest interim after the VAD stop
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
    late_finals_suppressed: int = 0
    late_finals_trimmed: int = 0


@dataclass
class _Segment:
    newest_text: str | None = None
    newest_payload: Any = None
    early_words: list[str] = field(default_factory=list)


class TurnTimer:
    """Turns raw interim/final/VAD events into the transcript stream a voice bot wants.

    Guarantees: at most one interim per ``debounce_ms`` and always the newest
    text; an early final only after ``vad_hangover_ms + final_timeout_ms`` of
    VAD silence without Google's final; never the same segment's text twice
    (a late final is suppressed or trimmed to its new words). Deterministic
    given the clock.
    """

    def __init__(
        self,
        *,
        debounce_ms: float | None = 110,
        vad_hangover_ms: float | None = 180,
        final_timeout_ms: float | None = 320,
        clock: Clock = monotonic,
    ) -> None:
        self._debounce_s = _ms(debounce_ms)
        self._hangover_s = _ms(vad_hangover_ms)
        self._early_enabled = bool(final_timeout_ms)
        self._timeout_s = _ms(final_timeout_ms)
        self._clock = clock
        self.counters = TurnCounters()
        self._seg = _Segment()
        self._last_interim_out: float | None = None
        self._pending_interim: tuple[str, Any] | None = None
        self._early_deadline: float | None = None
        # Set after an early final until Google's (late) final for that segment arrives.
        self._awaiting_late_final = False
        self._new_segment_since_early = False

    # ------------------------------------------------------------------ inputs
    def interim(self, text: str, payload: Any = None) -> list[TurnEmit]:
        now = self._clock()
        self.counters.interims_in += 1
        if not text:
            return []
        if self._awaiting_late_final and not self._new_segment_since_early:
            self.counters.interims_held += 1
            return []
        self._seg.newest_text, self._seg.newest_payload = text, payload
        out = self._due(now)
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
        seg, self._seg = self._seg, _Segment()
        if self._awaiting_late_final:
            self._awaiting_late_final = False
            if not self._new_segment_since_early:
                self.counters.late_finals_suppressed += 1
                return out
            tail = self._tail_after(text, seg.early_words)
            self._new_segment_since_early = False
            if tail is None:
                self.counters.late_finals_suppressed += 1
                return out
            if tail != text:
                self.counters.late_finals_trimmed += 1
            text = tail
        if not text:
            return out
        self.counters.finals_out += 1
        out.append(TurnEmit(text=text, final=True, payload=payload))
        return out

    def vad_started(self) -> list[TurnEmit]:
        out = self._due(self._clock())
        self._early_deadline = None
        if self._awaiting_late_final:
            self._new_segment_since_early = True
        return out

    def vad_stopped(self) -> list[TurnEmit]:
        now = self._clock()
        out = self._due(now)
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
        self._awaiting_late_final = False
        self._new_segment_since_early = False

    # --------------------------------------------------------------- internals
    def _interim_deadline(self) -> float | None:
        if self._pending_interim is None or self._last_interim_out is None:
            return None
        return self._last_interim_out + self._debounce_s

    def _emit_interim(self, text: str, payload: Any, now: float) -> TurnEmit:
        self._last_interim_out = now
        self.counters.interims_out += 1
        return TurnEmit(text=text, final=False, payload=payload)

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
                self._pending_interim = None  # the final carries the newest text
                text, payload = self._seg.newest_text, self._seg.newest_payload
                self._seg = _Segment(early_words=_words(text))
                self._awaiting_late_final = True
                self._new_segment_since_early = False
                self.counters.early_finals += 1
                self.counters.finals_out += 1
                out.append(TurnEmit(text=text, final=True, early=True, payload=payload))
        return out

    def _tail_after(self, text: str, early_words: list[str]) -> str | None:
        """``text`` minus a leading repeat of ``early_words`` (None if nothing new is left)."""
        matches = list(_WORD_RE.finditer(text))
        words = [m.group(0).lower() for m in matches]
        if not early_words or words[: len(early_words)] != early_words:
            # Not a repeat of the early final: it is new speech, deliver it whole.
            return text
        if len(words) == len(early_words):
            return None
        return text[matches[len(early_words)].start():].strip()
