"""``RuleBasedLLMService``: a Pipecat LLM service that answers each user turn from :class:`ReplyRules`."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings

from .rules import ReplyRules


def last_user_text(messages: list[Any]) -> str:
    """The text of the newest ``user`` message (string content or text parts); "" if there is none."""
    for msg in reversed(messages):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return ""
    return ""


class RuleBasedLLMService(LLMService):
    """An LLM service with no model: every ``LLMContextFrame`` gets one canned reply, at once.

    Guarantees: for each ``LLMContextFrame`` it pushes exactly ``LLMFullResponseStartFrame``,
    one ``LLMTextFrame`` (the reply of :meth:`ReplyRules.reply_for` for the newest user message)
    and ``LLMFullResponseEndFrame``, in that order, as a cloud LLM service does; every other frame
    passes through unchanged. It never calls out of the process.
    """

    def __init__(self, *, rules: ReplyRules | None = None, settings: LLMSettings | None = None, **kwargs) -> None:
        # Every field initialized, as Pipecat expects of a service (none of them steers a rule reply).
        unset: dict[str, Any] = {f.name: None for f in fields(LLMSettings) if f.init and f.name != "extra"}
        store = LLMSettings(**unset)
        store.filter_incomplete_user_turns = False
        if settings is not None:
            store.apply_update(settings)
        super().__init__(settings=store, **kwargs)
        if rules is not None and not isinstance(rules, ReplyRules):
            raise ValueError(f"RuleBasedLLMService rules must be a ReplyRules, not {type(rules).__name__}")
        self._rules = rules or ReplyRules.default()

    @property
    def rules(self) -> ReplyRules:
        return self._rules

    def can_generate_metrics(self) -> bool:
        return True

    def reply_for_context(self, context: LLMContext) -> str:
        return self._rules.reply_for(last_user_text(context.get_messages()))

    async def run_inference(self, context: LLMContext, max_tokens=None, system_instruction=None, response_schema=None):
        """Out-of-band inference: the rule reply for ``context`` (``max_tokens`` and the rest are ignored)."""
        return self.reply_for_context(context)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        await self.start_ttfb_metrics()
        try:
            reply = self.reply_for_context(frame.context)
            logger.debug(f"{self}: reply {reply!r}")
            await self.stop_ttfb_metrics()
            await self.push_frame(LLMTextFrame(reply))
        finally:
            await self.stop_processing_metrics()
            await self.push_frame(LLMFullResponseEndFrame())
