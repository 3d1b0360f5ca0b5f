"""How far a stream's audio runs ahead of its own wall clock, and how long to wait to keep that bounded."""

from __future__ import annotations

from ..clock import Clock, monotonic


class StreamLead:
    """The lead of one stream: audio sent on it minus wall time since it opened.

    Google wants audio "sent at a rate that approximates real time" and answers
    ``OUT_OF_RANGE: Audio data is being streamed too fast`` otherwise (no published
    tolerance). Live audio never leads (it is sent as it is spoken); a replay of
    unfinalized audio into a new stream does. Guarantees: if the sender waits
    ``delay_for(n)`` seconds before sending ``n`` ms of audio, the lead never
    exceeds ``max_lead_ms`` (None: unbounded, always 0 s to wait); ``max_seen_ms``
    is the largest lead reached. ``rate`` is how much audio time one second of
    wall time is worth (1.0 on a call; > 1 for tests that push faster than real
    time). Clock-driven, no I/O.
    """

    def __init__(
        self, max_lead_ms: float | None, clock: Clock = monotonic, started: float | None = None, rate: float = 1.0
    ) -> None:
        self.max_lead_ms = max_lead_ms
        self.rate = rate
        self._clock = clock
        self.started = clock() if started is None else started
        self.sent_ms = 0.0
        self.max_seen_ms = 0.0

    def lead_ms(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        return self.sent_ms - (now - self.started) * 1000.0 * self.rate

    def delay_for(self, audio_ms: float, now: float | None = None) -> float:
        """Seconds to wait before sending ``audio_ms`` more so the lead stays within the bound."""
        if self.max_lead_ms is None:
            return 0.0
        over = self.lead_ms(now) + audio_ms - self.max_lead_ms
        return over / 1000.0 / self.rate if over > 0 else 0.0

    def sent(self, audio_ms: float, now: float | None = None) -> None:
        self.sent_ms += audio_ms
        lead = self.lead_ms(now)
        if lead > self.max_seen_ms:
            self.max_seen_ms = lead
