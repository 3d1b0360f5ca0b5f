"""Canned replies chosen by simple rules (no Pipecat import): the "model" behind :class:`RuleBasedLLMService`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplyRule:
    """Answer ``reply`` when the user's text matches ``pattern`` (a regular expression, case-insensitive)."""

    pattern: str
    reply: str

    def __post_init__(self) -> None:
        if not self.reply.strip():
            raise ValueError(f"ReplyRule reply must not be empty (pattern {self.pattern!r})")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"ReplyRule pattern {self.pattern!r} is not a valid regular expression: {e}") from None


class ReplyRules:
    """An ordered list of rules and a fallback: :meth:`reply_for` always returns a non-empty reply.

    The first rule whose pattern is found in the text wins; empty or unmatched text gets ``fallback``.
    Deterministic: the same text always gets the same reply.
    """

    MAX_TEXT = 2000  # characters of user text looked at; longer input is cut, never an error

    def __init__(self, rules: Iterable[ReplyRule] = (), fallback: str = "Sorry, could you say that again?") -> None:
        self.rules = tuple(rules)
        if not fallback.strip():
            raise ValueError("ReplyRules fallback must not be empty")
        self.fallback = fallback
        self._compiled = [(re.compile(r.pattern, re.IGNORECASE), r.reply) for r in self.rules]

    @classmethod
    def default(cls) -> ReplyRules:
        """A few replies for a phone line (English)."""
        return cls(
            [
                ReplyRule(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b", "Hello! How can I help you today?"),
                ReplyRule(
                    r"\b(arrive|deliver|delivery|package|order|shipment)\b",
                    "I'm sorry about your delivery. Let me check the order for you.",
                ),
                ReplyRule(
                    r"\b(refund|money back|charge[ds]?)\b",
                    "I can help with a refund. Could you give me your order number?",
                ),
                ReplyRule(r"\b(thank|thanks)\b", "You're welcome. Is there anything else?"),
                ReplyRule(r"\b(bye|goodbye)\b", "Goodbye, and have a nice day."),
            ],
            fallback="I see. Could you tell me a bit more?",
        )

    def reply_for(self, text: str | None) -> str:
        text = (text or "")[: self.MAX_TEXT]
        for rx, reply in self._compiled:
            if rx.search(text):
                return reply
        return self.fallback
