"""``RxDrainProcessor``: the Pipecat adapter around :class:`RxBackpressure`.

Put it right after ``transport.input()``::

    Pipeline([transport.input(), RxDrainProcessor(sink=stt), stt, ...])

The rules live in :mod:`pipecat_rxdrain.rx_backpressure`; this module only
moves frames in and out of it on the event loop.
"""

from __future__ import annotations

import asyncio

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    StartFrame,
    SystemFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pydantic import BaseModel, model_validator

from . import rx_backpressure as rb
from .clock import Clock, monotonic
from .rx_backpressure import ActionKind, RxBackpressure, RxStats
from .sink import AudioSink


class RxDrainParams(BaseModel):
    """Tuning of the RX queue (all validated; a bad combination raises ``ValueError``).

    Parameters:
        max_queue: Hard cap in frames (200 x 20 ms = 4 s); beyond it the oldest frame is dropped.
        high_watermark: Enter ``drain`` (release back-to-back) at q >= this.
        low_watermark: Leave ``drain`` at q <= this. Needs ``0 <= low < high <= max_queue``.
        frame_interval_ms: Cadence in ``normal`` (one frame per interval, 20 ms for Twilio).
        catchup_target: In ``normal``, while q is above this many frames, release faster...
        catchup_speed: ...at this multiple of real time (1.0 disables catch-up).
        retry_interval_ms: How soon a frame the sink refused is offered again.
        telemetry_interval_s: Period of the ``[RX]`` telemetry line.
        flush_timeout_s: On ``EndFrame``, how long to keep retrying audio the sink refuses
            before discarding the rest (counted as ``discarded_on_end``).
    """

    max_queue: int = rb.DEFAULT_MAX_QUEUE
    high_watermark: int = rb.DEFAULT_HIGH_WATERMARK
    low_watermark: int = rb.DEFAULT_LOW_WATERMARK
    frame_interval_ms: float = rb.DEFAULT_FRAME_INTERVAL_MS
    catchup_target: int = rb.DEFAULT_CATCHUP_TARGET
    catchup_speed: float = rb.DEFAULT_CATCHUP_SPEED
    retry_interval_ms: float = rb.DEFAULT_RETRY_INTERVAL_MS
    telemetry_interval_s: float = rb.DEFAULT_TELEMETRY_INTERVAL_S
    flush_timeout_s: float = rb.DEFAULT_FLUSH_TIMEOUT_S

    @model_validator(mode="after")
    def _validate(self) -> "RxDrainParams":
        rb._check_params(**self.model_dump())
        return self


class RxDrainProcessor(FrameProcessor):
    """A bounded, self-draining queue for inbound audio, right after ``transport.input()``.

    Guarantees:

    * ``InputAudioRawFrame`` s going downstream go through the bounded queue
      (drop-oldest at ``max_queue``, counted in ``drops``); ``process_frame``
      never waits for them, so other system frames are never stuck behind
      audio.
    * Every other system frame, and every upstream frame, is passed on at once.
    * Other downstream frames (data, control, ``EndFrame``) keep their order
      relative to the audio queued before them; they are never dropped (except
      interruptible ones on an ``InterruptionFrame``, as Pipecat itself does).
    * ``EndFrame``: the queued audio is flushed first (back-to-back), then the
      ``EndFrame`` passes. ``CancelFrame``: passes at once and the backlog is
      discarded (counted in ``stats.discarded_on_cancel``, not in ``drops``).
    * With a ``sink`` (:class:`~pipecat_rxdrain.sink.AudioSink`) a frame is
      released only when ``sink.can_accept_audio()`` is true; without one, a
      pushed frame counts as accepted. If the sink also reports its backlog
      (``audio_backlog()``), the audio held by both queues together never
      exceeds ``max_queue``: past that, the head frame goes to the sink anyway
      and the sink drops its oldest (counted there; ``overflow_releases`` here).
    * The pacing task is created on ``StartFrame`` and cancelled on
      ``EndFrame`` / ``CancelFrame`` / cleanup.
    * Bad input never takes a queue slot: zero-length audio frames are
      dropped (counted in ``empty_audio_dropped``) and audio arriving after
      the ``EndFrame`` is dropped (``audio_after_end``) rather than sent
      downstream behind it. Frames whose duration differs from
      ``frame_interval_ms`` are paced as one interval each (logged once).

    Event handlers: ``on_rx_mode_changed(processor, mode: str)``.
    """

    def __init__(
        self,
        *,
        params: RxDrainParams | None = None,
        sink: AudioSink | None = None,
        clock: Clock | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if sink is not None and not isinstance(sink, AudioSink):
            raise TypeError(f"sink must implement AudioSink.can_accept_audio(), got {type(sink).__name__}")
        self._params = params or RxDrainParams()
        self._sink = sink
        # Optional AudioSink.audio_backlog, resolved once: it is consulted on every pacing step.
        self._sink_backlog = getattr(sink, "audio_backlog", None)
        self._clock: Clock = clock or monotonic
        self._rx = RxBackpressure(**self._params.model_dump(), clock=self._clock)
        self._wake = asyncio.Event()
        self._pacing_task: asyncio.Task | None = None
        self._sink_error_reported = False
        self._ended = False
        self._duration_warned = False
        self.empty_audio_dropped = 0  # zero-length audio frames (no audio lost, no queue slot taken)
        self.audio_after_end = 0  # audio frames that arrived after the EndFrame (the call is over)
        self.overflow_releases = 0  # frames handed to a full sink because RX q + its backlog hit max_queue
        self._register_event_handler("on_rx_mode_changed")

    @property
    def params(self) -> RxDrainParams:
        return self._params

    @property
    def backpressure(self) -> RxBackpressure:
        return self._rx

    @property
    def stats(self) -> RxStats:
        return self._rx.stats(self._clock())

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, StartFrame):
            self._ended = False
            await self.push_frame(frame, direction)
            self._start_pacing()
        elif direction is FrameDirection.DOWNSTREAM and isinstance(frame, InputAudioRawFrame) and (
            self._ended or not frame.audio
        ):
            if self._ended:
                self.audio_after_end += 1
                if self.audio_after_end == 1:
                    logger.warning(f"{self}: audio after EndFrame dropped (counted in audio_after_end)")
            else:
                self.empty_audio_dropped += 1
        elif isinstance(frame, CancelFrame):
            # Cancel must not wait for the backlog.
            discarded = self._rx.discard_backlog(self._clock())
            self._rx.drop_passengers(lambda _: True)
            if discarded:
                logger.debug(f"{self}: cancelled with {discarded} queued audio frames discarded")
            await self.push_frame(frame, direction)
            await self._stop_pacing()
        elif direction is FrameDirection.UPSTREAM or not self._pacing:
            await self.push_frame(frame, direction)
        elif isinstance(frame, InputAudioRawFrame):
            if not self._duration_warned:
                self._check_duration(frame)
            mode = self._rx.mode
            self._rx.offer(frame, self._clock())
            self._wake.set()
            await self._notify_mode(mode)
        elif isinstance(frame, SystemFrame):
            if isinstance(frame, InterruptionFrame):
                # As Pipecat does with its own queues: queued interruptible non-system
                # frames go; system frames (the caller's audio) are never dropped.
                self._rx.drop_passengers(lambda p: p[0].interruptible)
            await self.push_frame(frame, direction)
        else:
            self._rx.add_passenger((frame, direction))
            if isinstance(frame, EndFrame):
                self._ended = True
                self._rx.start_flush(self._clock())
            self._wake.set()

    def _check_duration(self, frame: InputAudioRawFrame) -> None:
        rate, channels = frame.sample_rate or 0, frame.num_channels or 1
        if rate <= 0:
            return
        ms = len(frame.audio) / (2 * channels * rate) * 1000.0
        interval = self._params.frame_interval_ms
        if abs(ms - interval) > interval / 4:
            self._duration_warned = True
            logger.warning(
                f"{self}: audio frames last {ms:.1f} ms but frame_interval_ms={interval:g}; "
                "each frame is paced as one interval (set frame_interval_ms to the transport's frame duration)"
            )

    async def cleanup(self):
        await super().cleanup()
        await self._stop_pacing()

    # -- pacing -------------------------------------------------------------

    @property
    def _pacing(self) -> bool:
        return self._pacing_task is not None and not self._pacing_task.done()

    def _start_pacing(self) -> None:
        if not self._pacing:
            self._rx.reset_telemetry(self._clock())
            self._pacing_task = self.create_task(self._pacing_loop(), name="rx_pacing")

    async def _stop_pacing(self) -> None:
        task, self._pacing_task = self._pacing_task, None
        if task is not None and not task.done():
            await self.cancel_task(task)

    async def _pacing_loop(self) -> None:
        rx = self._rx
        while True:
            try:
                now = self._clock()
                rx.report_if_due(now)
                action = rx.next_action(now, urgent=self._sink is not None and rx.q > 0 and self._sink_overflowing())
                if action.kind is ActionKind.PASS:
                    frame, direction = action.item
                    await self.push_frame(frame, direction)
                elif action.kind is ActionKind.RELEASE:
                    mode = rx.mode
                    await self._release(action.item)
                    await self._notify_mode(mode)
                    if rx.mode == "drain" or rx.flushing:
                        # Back-to-back releases: still let the loop run everything else in between.
                        await asyncio.sleep(0)
                elif rx.flushing and not rx.pending:
                    return  # EndFrame flushed and passed on
                else:
                    await self._wait(action.wait_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug here must not silently stop the caller's audio
                await self.push_error(f"{self}: RX pacing error: {e}", exception=e)
                await asyncio.sleep(rx.retry_interval_s)

    async def _release(self, frame: InputAudioRawFrame) -> None:
        if self._sink is not None and not self._sink_accepts():
            if not self._sink_overflowing():
                self._rx.on_release_result(False, self._clock())
                return
            # RX + sink would hold more than max_queue: let the sink drop its oldest (the oldest
            # audio of the two queues, counted there) instead of holding newer audio here.
            self.overflow_releases += 1
        start = self._clock()
        await self.push_frame(frame)
        end = self._clock()
        self._rx.on_release_result(True, end, write_s=end - start)

    def _sink_overflowing(self) -> bool:
        if self._sink_backlog is None:
            return False
        try:
            backlog = int(self._sink_backlog())
        except Exception:
            return False  # a broken backlog report must not force releases
        return self._rx.q + backlog > self._params.max_queue

    def _sink_accepts(self) -> bool:
        try:
            return bool(self._sink.can_accept_audio())
        except Exception as e:
            # Fail open: a broken sink must not stall the caller's audio forever.
            if not self._sink_error_reported:
                self._sink_error_reported = True
                logger.error(f"{self}: sink.can_accept_audio() raised {e!r}; releasing audio without it")
            return True

    async def _wait(self, seconds: float) -> None:
        self._wake.clear()
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        handle = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            handle.cancel()

    async def _notify_mode(self, before: str) -> None:
        if self._rx.mode != before:
            await self._call_event_handler("on_rx_mode_changed", self._rx.mode)
