"""A Twilio serializer that survives bad input: every bad message is a counted, logged drop.

Pipecat's ``FastAPIWebsocketInputTransport`` ends its receive loop (and so the
call's input) on the first exception from ``deserialize``, and the stock
``TwilioFrameSerializer`` raises on bad base64 and logs whole messages (audio
payloads) on bad JSON. :class:`HardenedTwilioFrameSerializer` keeps the stock
serializer's outbound side and replaces the inbound side with
:class:`~pipecat_rxdrain.twilio.messages.TwilioStreamParser`.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import Frame, InputAudioRawFrame, InputDTMFFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer

from ..clock import Clock, monotonic
from .audio import mulaw_decode
from .input_backlog import InputBacklog
from .messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    TWILIO_FRAME_BYTES,
    DropReason,
    Dtmf,
    Mark,
    Media,
    ParserStats,
    Rejected,
    Start,
    Stop,
    TwilioStreamParser,
)


class HardenedTwilioFrameSerializer(TwilioFrameSerializer):
    """``TwilioFrameSerializer`` whose ``deserialize`` never raises and never loses input silently.

    Guarantees:

    * Each inbound message is either turned into a frame / accepted control
      event, or dropped and counted by reason in :attr:`stats` (exact books,
      see :class:`TwilioStreamParser`).
    * The first drop of each reason is logged at WARNING at once; later drops
      are summarised at most once per ``log_interval_s``. Logs never contain
      payloads or custom parameter values.
    * ``connected``/``start`` may be consumed before the transport exists: pass
      the same ``parser`` (already fed) so sequence numbers keep being checked.
    * ``last_message_at`` (clock seconds) lets the owner detect a silent client.
    * With a ``backlog``, at most ``backlog.limit`` audio frames are ever waiting in
      Pipecat's (unbounded) input-transport queue: ``deserialize`` waits for room
      (which pauses reading the websocket), and a frame that still has no room
      after ``backlog.wait_s`` is dropped and counted (``DropReason.INPUT_OVERFLOW``).
      Put :class:`InputBacklogMeter` right after ``transport.input()``.
    * Per-call state is bounded: only the last :attr:`MARKS_KEPT` mark names are kept
      (``marks_total`` counts them all).
    """

    MARKS_KEPT = 16

    def __init__(
        self,
        stream_sid: str,
        call_sid: str | None = None,
        account_sid: str | None = None,
        auth_token: str | None = None,
        region: str | None = None,
        edge: str | None = None,
        base_url: str | None = None,
        params: TwilioFrameSerializer.InputParams | None = None,
        *,
        api_key_sid: str | None = None,
        api_key_secret: str | None = None,
        parser: TwilioStreamParser | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        frame_bytes: int | None = TWILIO_FRAME_BYTES,
        log_interval_s: float = 5.0,
        clock: Clock | None = None,
        backlog: InputBacklog | None = None,
    ) -> None:
        super().__init__(
            stream_sid,
            call_sid,
            account_sid,
            auth_token,
            region,
            edge,
            base_url,
            params,
            api_key_sid=api_key_sid,
            api_key_secret=api_key_secret,
        )
        if not isinstance(log_interval_s, (int, float)) or not math.isfinite(log_interval_s) or log_interval_s < 0:
            raise ValueError(f"log_interval_s must be a finite number >= 0, got {log_interval_s!r}")
        self.parser = parser or TwilioStreamParser(max_message_bytes=max_message_bytes, frame_bytes=frame_bytes)
        self._clock: Clock = clock or monotonic
        self._log_interval_s = log_interval_s
        self._logged_reasons: set[DropReason] = set()
        self._pending_log: Counter = Counter()
        self._last_summary_at = self._clock()
        self.last_message_at = self._clock()
        self.backlog = backlog
        self.marks_received: deque[str] = deque(maxlen=self.MARKS_KEPT)
        self.marks_total = 0
        self.stop_received = False
        #: awaited once when Twilio's ``stop`` arrives (e.g. to queue an ``EndFrame``)
        self.on_stop: Callable[[], Awaitable[None]] | None = None

    def __repr__(self) -> str:  # the base keeps the Twilio auth token: never show it
        return f"HardenedTwilioFrameSerializer(stream_sid={self._stream_sid!r}, call_sid={self._call_sid!r})"

    __str__ = __repr__

    @property
    def stats(self) -> ParserStats:
        return self.parser.stats

    async def deserialize(self, data: str | bytes) -> Frame | None:
        self.last_message_at = self._clock()
        message = self.parser.feed(data)  # never raises
        if type(message) is Media and self.backlog is None and self._sample_rate == self._twilio_sample_rate:
            # The common case, without the general path's coroutine and type checks: 8 kHz audio, no backlog.
            try:
                pcm = mulaw_decode(message.payload)
                return InputAudioRawFrame(audio=pcm, sample_rate=self._sample_rate, num_channels=1) if pcm else None
            except Exception as e:  # as in the general path: counted, never raised
                self._move_to_dropped(DropReason.INTERNAL, f"{type(e).__name__} while handling Media")
                return None
        if isinstance(message, Rejected):
            self._note_drop(message)
            return None
        try:
            return await self._to_frame(message)
        except Exception as e:  # decode/resample/callback bug: move it from accepted to dropped, keep the call
            self._move_to_dropped(DropReason.INTERNAL, f"{type(e).__name__} while handling {type(message).__name__}")
            return None

    def _move_to_dropped(self, reason: DropReason, detail: str) -> None:
        """A message the parser accepted that we could not use after all: keep the books exact."""
        stats = self.parser.stats
        stats.accepted -= 1
        stats.dropped[reason] += 1
        self._note_drop(Rejected(reason, detail))

    async def _to_frame(self, message) -> Frame | None:
        if isinstance(message, Media):
            pcm = mulaw_decode(message.payload)
            rate = self._sample_rate or self._twilio_sample_rate
            if rate != self._twilio_sample_rate:
                pcm = await self._input_resampler.resample(pcm, self._twilio_sample_rate, rate)
            if not pcm:
                return None
            backlog = self.backlog
            if backlog is not None:
                if not backlog.has_room() and not await backlog.wait_for_room():
                    backlog.note_overflow()
                    self._move_to_dropped(
                        DropReason.INPUT_OVERFLOW, f"input transport backlog full ({backlog.limit} frames)"
                    )
                    return None
                backlog.note_sent()
            return InputAudioRawFrame(audio=pcm, sample_rate=rate, num_channels=1)
        if isinstance(message, Dtmf):
            return InputDTMFFrame(KeypadEntry(message.digit))
        if isinstance(message, Mark):
            self.marks_total += 1
            self.marks_received.append(message.name[:64])
        elif isinstance(message, Stop):
            self.stop_received = True
            logger.info(f"[TWILIO] stop received for stream {self._stream_sid}")
            if self.on_stop is not None:
                await self.on_stop()
        elif isinstance(message, Start):
            pass
        return None

    def _note_drop(self, rejected: Rejected) -> None:
        if rejected.reason not in self._logged_reasons:
            self._logged_reasons.add(rejected.reason)
            logger.warning(
                f"[TWILIO] dropped bad inbound message (reason={rejected.reason.value}): {rejected.detail}; "
                f"further drops are summarised every {self._log_interval_s:g}s"
            )
        else:
            self._pending_log[rejected.reason] += 1
        self.log_summary_if_due()

    def log_summary_if_due(self, *, force: bool = False) -> None:
        now = self._clock()
        if not self._pending_log or (not force and now - self._last_summary_at < self._log_interval_s):
            return
        parts = ", ".join(f"{r.value}={n}" for r, n in sorted(self._pending_log.items(), key=lambda kv: kv[0].value))
        logger.warning(
            f"[TWILIO] dropped {sum(self._pending_log.values())} more bad inbound messages ({parts}); "
            f"total dropped={self.parser.stats.dropped_total} of received={self.parser.stats.received}"
        )
        self._pending_log.clear()
        self._last_summary_at = now


class InputBacklogMeter(FrameProcessor):
    """Counts caller audio as it leaves Pipecat's input transport (see :class:`InputBacklog`).

    Place it directly after ``transport.input()``. Frames pass through unchanged, in order.
    """

    def __init__(self, backlog: InputBacklog, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backlog = backlog

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction is FrameDirection.DOWNSTREAM:
            self.backlog.note_arrived()
        await self.push_frame(frame, direction)
