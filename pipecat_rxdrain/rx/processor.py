"""``RxDrainProcessor``: the Pipecat adapter around :class:`RxBackpressure`.

Put it right after ``transport.input()``::

    Pipeline([transport.input(), RxDrainProcessor(sink=stt), stt, ...])

The rules live in :mod:`pipecat_rxdrain.rx.backpressure`; this module only
moves frames in and out of it on the event loop: inline from ``process_frame``
while nothing is behind, from a pacing task while something is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import warnings
from collections.abc import Callable

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

from ..busy import BusyMeter
from ..clock import Clock, monotonic
from . import backpressure as rb
from .backpressure import ActionKind, RxBackpressure, RxMode, RxStats
from .sink import AudioSink


class RxDrainParams(BaseModel):
    """Tuning of the RX queue (all validated; a bad value raises ``ValueError`` naming the setting).

    Audio amounts are in 20 ms-frame equivalents of audio (200 = 4 s), whatever
    the size of the chunks the transport delivers.

    Parameters:
        max_queue: Hard cap (200 = 4 s of audio); beyond it the oldest audio is dropped.
        high_watermark: Enter ``drain`` (release back-to-back) at q >= this.
        low_watermark: Leave ``drain`` at q <= this. Needs ``0 <= low < high <= max_queue``.
        frame_interval_ms: Duration assumed for an audio frame whose duration cannot be
            computed (no sample rate). Durations are otherwise read from each frame.
        lead_ms: Rate bound: in ``normal`` the audio released may run at most this far ahead
            of the wall-clock time since the call's first frame.
        merge_backlog: When releasing a backlog, hand consecutive frames downstream as one
            chunk of at most ``batch_ms`` (fewer frames for every processor downstream).
        merge_when_busy: While the process measures itself busy (its CPU share over 0.5 s
            windows, :class:`~pipecat_rxdrain.busy.BusyMeter`), hold a frame up to 20 ms per busy
            level (two levels, + 5 ms) so consecutive frames go downstream as one: a loaded
            process then spends less per frame in every processor downstream. An idle process
            never holds anything.
        batch_ms: Longest merged chunk.
        retry_interval_ms: How soon a frame the sink refused is offered again.
        telemetry_interval_s: Period of the ``[RX]`` telemetry line.
        flush_timeout_s: On ``EndFrame``, how long to keep retrying audio the sink refuses
            before discarding the rest (counted as ``discarded_on_end``).
        catchup_target, catchup_speed: Deprecated, ignored (the release is work-conserving:
            a backlog leaves as fast as the sink accepts it). Still validated; setting them warns.
    """

    max_queue: int = rb.DEFAULT_MAX_QUEUE
    high_watermark: int = rb.DEFAULT_HIGH_WATERMARK
    low_watermark: int = rb.DEFAULT_LOW_WATERMARK
    frame_interval_ms: float = rb.DEFAULT_FRAME_INTERVAL_MS
    lead_ms: float = rb.DEFAULT_LEAD_MS
    merge_backlog: bool = False
    merge_when_busy: bool = True
    batch_ms: float = rb.DEFAULT_BATCH_MS
    retry_interval_ms: float = rb.DEFAULT_RETRY_INTERVAL_MS
    telemetry_interval_s: float = rb.DEFAULT_TELEMETRY_INTERVAL_S
    flush_timeout_s: float = rb.DEFAULT_FLUSH_TIMEOUT_S
    catchup_target: int | None = None
    catchup_speed: float | None = None

    @model_validator(mode="after")
    def _validate(self) -> RxDrainParams:
        rb.check_params(**self.backpressure_kwargs(merge=False))
        if self.catchup_target is not None or self.catchup_speed is not None:
            if self.catchup_target is not None and not self.catchup_target >= 0:
                raise ValueError(f"catchup_target must be >= 0, got catchup_target={self.catchup_target}")
            if self.catchup_speed is not None and not (math.isfinite(self.catchup_speed) and self.catchup_speed >= 1.0):
                raise ValueError(f"catchup_speed must be >= 1.0, got catchup_speed={self.catchup_speed}")
            warnings.warn(
                "RxDrainParams.catchup_target / catchup_speed are ignored since RX release became "
                "work-conserving (a backlog leaves as fast as the sink accepts it); drop them",
                DeprecationWarning,
                stacklevel=2,
            )
        return self

    def backpressure_kwargs(self, *, merge: bool = True) -> dict:
        """The settings :class:`RxBackpressure` takes."""
        kw = self.model_dump(exclude={"catchup_target", "catchup_speed", "merge_backlog", "merge_when_busy"})
        if merge:
            kw["merge_backlog"] = self.merge_backlog
        return kw


# An inline push slower than this (a slow, direct-mode downstream) sends the following frames
# through the pacing task until a push is fast again, so process_frame never keeps waiting on it.
_SLOW_PUSH_S = 0.020


class RxDrainProcessor(FrameProcessor):
    """A bounded, work-conserving queue for inbound audio, right after ``transport.input()``.

    Guarantees:

    * While nothing is behind (queue empty, no refusal pending) and the rate
      bound allows, an ``InputAudioRawFrame`` goes downstream inline from
      ``process_frame``: no task hop, no timer. Otherwise it joins the bounded
      queue (drop-oldest in audio time at ``max_queue``, counted in
      ``drops``) and the pacing task releases it as soon as the sink accepts
      it; ``process_frame`` never waits for the queue, so other system frames
      are never stuck behind audio.
    * Every other system frame, and every upstream frame, is passed on at once.
    * Other downstream frames (data, control, ``EndFrame``) keep their order
      relative to the audio queued before them; they are never dropped (except
      interruptible ones on an ``InterruptionFrame``, as Pipecat itself does).
    * ``EndFrame``: the queued audio is flushed first (back-to-back), then the
      ``EndFrame`` passes. ``CancelFrame``: passes at once and the backlog is
      discarded (counted in ``stats.discarded_on_cancel``, not in ``drops``).
    * With a ``sink`` (:class:`~pipecat_rxdrain.rx.sink.AudioSink`) a frame is
      released only when ``sink.can_accept_audio()`` is true; without one, a
      pushed frame counts as accepted. If the sink also reports its backlog
      (``audio_backlog()``, 20 ms-frame equivalents), the audio held by both
      queues together never exceeds ``max_queue``: past that, the head frame
      goes to the sink anyway and the sink drops its oldest (counted there;
      ``overflow_releases`` here).
    * The pacing task is created on ``StartFrame``, sleeps while there is
      nothing to pace (it wakes only for the telemetry line), and is cancelled
      on ``EndFrame`` / ``CancelFrame`` / cleanup.
    * Runs in Pipecat's direct mode unless ``enable_direct_mode=False`` is passed: a frame is
      handled in the task of the processor that pushed it (no input queue or task here, no
      extra hop per frame), which is safe because ``process_frame`` never waits for the queue.
    * Bad input never takes a queue slot: zero-length audio frames are
      dropped (counted in ``empty_audio_dropped``) and audio arriving after
      the ``EndFrame`` is dropped (``audio_after_end``) rather than sent
      downstream behind it.

    * While the process is busy (``merge_when_busy``), a frame may wait up to
      20 ms per busy level (+ 5 ms) to leave together with the next one; the
      merged frame keeps the first frame's ``pts``, metadata and source.
      ``busy_level`` injects the level (tests); the default meter compares the
      process's CPU time with real time, so with an injected ``clock`` it is
      off unless ``busy_level`` is given too.

    Event handlers: ``on_rx_mode_changed(processor, mode: RxMode)``.
    """

    def __init__(
        self,
        *,
        params: RxDrainParams | None = None,
        sink: AudioSink | None = None,
        clock: Clock | None = None,
        busy_level: Callable[[], int] | None = None,
        **kwargs,
    ) -> None:
        # Direct mode (Pipecat's own, as its pipeline source and sink use): no input queue and task
        # of its own, so a frame costs no extra hop through this processor. Safe because
        # process_frame never waits for the queue (see the class guarantees).
        kwargs.setdefault("enable_direct_mode", True)
        super().__init__(**kwargs)
        if sink is not None and not isinstance(sink, AudioSink):
            raise TypeError(f"sink must implement AudioSink.can_accept_audio(), got {type(sink).__name__}")
        self._params = params or RxDrainParams()
        self._sink = sink
        # Optional AudioSink.audio_backlog, resolved once: it is consulted on every pacing step.
        self._sink_backlog = getattr(sink, "audio_backlog", None)
        self._clock: Clock = clock or monotonic
        if not self._params.merge_when_busy:
            busy_level = None
        elif busy_level is None and clock is None:
            busy_level = BusyMeter().level
        self._rx = RxBackpressure(**self._params.backpressure_kwargs(), busy_level=busy_level, clock=self._clock)
        # The merge key is a tuple and a getattr per frame: only computed when frames may merge.
        self._keyed = self._params.merge_backlog or busy_level is not None
        self._wake = asyncio.Event()
        self._pacing_task: asyncio.Task | None = None
        self._sink_error_reported = False
        self._ended = False
        self._inline_ok = True  # false after a slow push, until a push is fast again
        self.empty_audio_dropped = 0  # zero-length audio frames (no audio lost, no queue slot taken)
        self.audio_after_end = 0  # audio frames that arrived after the EndFrame (the call is over)
        self.overflow_releases = 0  # frames handed to a full sink because RX q + its backlog hit max_queue
        self.pacing_steps = 0  # pacing task iterations: stays near zero while nothing is behind
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
        elif (
            direction is FrameDirection.DOWNSTREAM
            and isinstance(frame, InputAudioRawFrame)
            and (self._ended or not frame.audio)
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
                logger.debug(f"{self}: cancelled with {discarded:.0f} frames of queued audio discarded")
            await self.push_frame(frame, direction)
            await self._stop_pacing()
        elif direction is FrameDirection.UPSTREAM or not self._pacing:
            await self.push_frame(frame, direction)
        elif isinstance(frame, InputAudioRawFrame):
            await self._offer_audio(frame)
        elif isinstance(frame, SystemFrame):
            if isinstance(frame, InterruptionFrame):
                # As Pipecat does with its own queues: queued interruptible non-system
                # frames go; system frames (the caller's audio) are never dropped.
                self._rx.drop_passengers(lambda p: p[0].interruptible)
            await self.push_frame(frame, direction)
        elif self._rx.idle and not isinstance(frame, EndFrame):
            await self.push_frame(frame, direction)  # nothing queued ahead of it: no reason to queue it
        else:
            self._rx.add_passenger((frame, direction))
            if isinstance(frame, EndFrame):
                self._ended = True
                self._rx.start_flush(self._clock())
            self._wake.set()

    async def _offer_audio(self, frame: InputAudioRawFrame) -> None:
        rx = self._rx
        now = self._clock()
        mode = rx.mode
        # Inline also when a busy hold waits for this very frame: the merge leaves in this step.
        was_holding = rx.holding
        inline = (rx.idle or was_holding) and self._inline_ok
        key = _merge_key(frame) if self._keyed else None
        rx.offer(frame, now, duration_s=_duration_s(frame), key=key)
        if inline:
            action = rx.next_action(now)  # this very frame, unless the rate bound says wait
            if action.kind is ActionKind.RELEASE and await self._release(action) and action.items[-1] is frame:
                rx.note_inline()
        # A hold that goes on is already timed by the pacing task (its end is fixed by the head
        # frame's arrival): waking the task for every frame it holds would only re-arm that timer.
        if rx.pending and not (was_holding and rx.holding):
            self._wake.set()
        if rx.mode is not mode:
            await self._notify_mode(mode)

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
                self.pacing_steps += 1
                now = self._clock()
                rx.report_if_due(now)
                action = rx.next_action(now, urgent=self._sink is not None and rx.q > 0 and self._sink_overflowing())
                if action.kind is ActionKind.PASS:
                    frame, direction = action.item
                    await self.push_frame(frame, direction)
                elif action.kind is ActionKind.RELEASE:
                    mode = rx.mode
                    await self._release(action)
                    await self._notify_mode(mode)
                    if rx.mode is RxMode.DRAIN or rx.flushing:
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

    async def _release(self, action: rb.RxAction) -> bool:
        """Hand the action's chunk(s) downstream unless the sink refuses; True if handed on."""
        if self._sink is not None and not self._sink_accepts(self._sink):
            if not self._sink_overflowing():
                self._rx.on_release_result(False, self._clock())
                return False
            # RX + sink would hold more than max_queue: let the sink drop its oldest (the oldest
            # audio of the two queues, counted there) instead of holding newer audio here.
            self.overflow_releases += 1
        frames = action.items or (action.item,)
        frame = frames[0] if len(frames) == 1 else _merge(frames)
        start = self._clock()
        try:
            await self.push_frame(frame)  # Pipecat turns a downstream exception into push_error
        except asyncio.CancelledError:
            # Cancelled mid-push (direct mode runs in the upstream's task, which a stopping
            # transport cancels, e.g. to pause): not handed on, so it stays pending (counted as one
            # refusal) rather than counted as released, and the next release retries it.
            self._rx.on_release_result(False, self._clock())
            raise
        end = self._clock()
        self._inline_ok = end - start < _SLOW_PUSH_S
        self._rx.on_release_result(True, end, write_s=end - start)
        return True

    def _sink_overflowing(self) -> bool:
        if self._sink_backlog is None:
            return False
        try:
            backlog = float(self._sink_backlog())
        except Exception:
            return False  # a broken backlog report must not force releases
        return self._rx.q + backlog > self._params.max_queue

    def _sink_accepts(self, sink: AudioSink) -> bool:
        try:
            return bool(sink.can_accept_audio())
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

    async def _notify_mode(self, before: RxMode) -> None:
        if self._rx.mode is not before:
            await self._call_event_handler("on_rx_mode_changed", self._rx.mode)


def _duration_s(frame: InputAudioRawFrame) -> float | None:
    rate, channels = frame.sample_rate or 0, frame.num_channels or 1
    if rate <= 0 or channels <= 0:
        return None  # the mechanism assumes frame_interval_ms
    return len(frame.audio) / (2 * channels * rate)


def _merge_key(frame: InputAudioRawFrame) -> tuple:
    return (type(frame), frame.sample_rate, frame.num_channels, getattr(frame, "user_id", None))


def _merge(frames: tuple[InputAudioRawFrame, ...]) -> InputAudioRawFrame:
    """One frame carrying consecutive frames' audio (same type, rate, channels, user: see _merge_key)."""
    first = frames[0]
    merged = dataclasses.replace(first, audio=b"".join(f.audio for f in frames))
    merged.transport_source = first.transport_source
    merged.pts = first.pts
    merged.metadata = dict(first.metadata)
    return merged
