"""One Twilio Media Streams call: its transport, its pipeline's life, its numbers.

The application supplies only the pipeline (``build_pipeline(call)`` returns the
processors, starting with ``call.transport().input()``; a plain function is run in a
worker thread, so it must only construct objects, not touch the event loop; a
coroutine function runs on the loop); :class:`MediaStreamCall` does the rest the
same way for every call:

* the transport: Pipecat's ``FastAPIWebsocketTransport`` with the hardened Twilio
  serializer, fed by the parser that already read ``connected``/``start``, and an
  :class:`~pipecat_rxdrain.twilio.input_backlog.InputBacklog` that bounds the
  input transport's queue (its meter is inserted right after ``transport.input()``);
* Twilio's ``stop``: the input backlog is drained (bounded) before ``EndFrame``, so
  Pipecat does not drop the caller's last words with its input queue;
* a caller that hangs up cancels the call; a client that goes silent (no ``stop``,
  no close) is ended after ``media_idle_timeout_s``; an end that hangs is cancelled
  after ``shutdown_grace_s``;
* a fatal error (``ErrorFrame`` from the STT service, from a processor that became
  unusable, or marked fatal) ends the call through the transport (the websocket
  closes; with Twilio credentials the serializer hangs up) and marks it failed;
* ``refresh()`` gathers the RX, STT, Twilio-parser and input-backlog numbers into
  the :class:`~pipecat_rxdrain.twilio.calls.CallRecord` shown by ``/stats``, and
  feeds them to the process's Prometheus metrics (the watchdog refreshes ~4 times a
  second, so a scrape is at most 250 ms behind; the call's last numbers go in at its end).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from loguru import logger
from pipecat.frames.frames import EndFrame, ErrorFrame
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.stt_service import STTService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

from ..clock import monotonic
from ..metrics import CallMetrics, RxdrainMetrics
from ..rx.processor import RxDrainProcessor
from .calls import CallEndReason, CallOutcome, CallRecord
from .config import ServerConfig
from .input_backlog import DEFAULT_INPUT_BACKLOG, InputBacklog
from .logs import ThrottledWarnings, loggable
from .messages import Start, TwilioStreamParser
from .serializer import HardenedTwilioFrameSerializer, InputBacklogMeter

if TYPE_CHECKING:
    from pipecat.pipeline.worker import PipelineWorker

BuildPipeline = Callable[["MediaStreamCall"], Sequence[FrameProcessor] | Awaitable[Sequence[FrameProcessor]]]

#: How long Twilio's ``stop`` waits for the input backlog to reach the pipeline.
STOP_DRAIN_TIMEOUT_S = 3.0


class MediaStreamCall:
    """One accepted, authenticated media stream and the pipeline that serves it.

    Guarantees: :meth:`run` returns (it never raises for the caller's behaviour or
    a pipeline failure) with ``record.ended_at`` and ``record.end_reason`` set;
    every audio frame the serializer accepted is accounted for in
    ``record.input`` (arrived, or ``discarded_at_end``), every bad message in
    ``record.twilio``.
    """

    def __init__(
        self,
        websocket,
        start: Start,
        parser: TwilioStreamParser,
        config: ServerConfig,
        *,
        input_backlog: int = DEFAULT_INPUT_BACKLOG,
        metrics: RxdrainMetrics | None = None,
    ) -> None:
        self.ws, self.start, self.parser, self.config = websocket, start, parser, config
        self.record = CallRecord(start.call_sid, start.stream_sid)
        self.backlog = InputBacklog(input_backlog)
        self.serializer: HardenedTwilioFrameSerializer | None = None
        self.worker: PipelineWorker | None = None
        self.processors: list[FrameProcessor] = []
        self.rx: RxDrainProcessor | None = None
        self.stt: STTService | None = None
        self._transport: FastAPIWebsocketTransport | None = None
        self._ending = False
        self._warn = ThrottledWarnings()
        self._drops_seen: dict[str, int] = {}
        self._metrics = metrics
        self.metrics: CallMetrics | None = None  # set by run(): counted like registry.active

    # ------------------------------------------------------------------ building
    def transport(self, **params: Any) -> FastAPIWebsocketTransport:
        """The call's websocket transport (built on first use; ``params`` go to ``FastAPIWebsocketParams``)."""
        if self._transport is not None:
            return self._transport
        cfg = self.config
        hang_up = bool(cfg.twilio_account_sid and cfg.twilio_auth_token)
        self.serializer = HardenedTwilioFrameSerializer(
            self.start.stream_sid,
            self.start.call_sid,
            self.start.account_sid or cfg.twilio_account_sid,
            cfg.twilio_auth_token if hang_up else None,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=hang_up),
            parser=self.parser,
            backlog=self.backlog,
        )
        self.serializer.on_stop = self._on_stop
        defaults: dict[str, Any] = dict(audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False)
        defaults.update(params)
        self._transport = FastAPIWebsocketTransport(
            self.ws, FastAPIWebsocketParams(serializer=self.serializer, **defaults)
        )
        return self._transport

    async def _build(self, build_pipeline: BuildPipeline) -> None:
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker

        if inspect.iscoroutinefunction(build_pipeline):
            processors = await build_pipeline(self)
        else:
            # A plain function runs in a thread: building loads models (Silero's ONNX session
            # takes 60-120 ms per call), which would stall every other call on this loop.
            processors = await asyncio.to_thread(build_pipeline, self)
        if inspect.isawaitable(processors):
            processors = await processors
        processors = list(processors)
        transport = self._transport
        if transport is None or not processors or processors[0] is not transport.input():
            raise ValueError("build_pipeline must return a pipeline that starts with call.transport().input()")
        processors.insert(1, InputBacklogMeter(self.backlog))
        self.processors = processors
        self.rx = next((p for p in processors if isinstance(p, RxDrainProcessor)), None)
        self.stt = next((p for p in processors if isinstance(p, STTService)), None)
        self.worker = worker = PipelineWorker(
            Pipeline(processors),
            params=PipelineParams(
                audio_in_sample_rate=8000, audio_out_sample_rate=8000, enable_metrics=self.config.pipeline_metrics
            ),
            idle_timeout_secs=None,  # the media idle watchdog and the websocket decide
            cancel_on_idle_timeout=False,
            # A phone line has no RTVI client, and Pipecat's default RTVI processor and observer cost 70-160 µs
            # of loop CPU per audio frame with 20 calls (python -m benchmarks.bench_rtvi).
            enable_rtvi=False,
        )

        @transport.event_handler("on_client_disconnected")
        async def _on_disconnected(transport, websocket):
            if self._ending:
                return  # stop/EndFrame already on its way; the watchdog bounds it
            logger.info("[BOT] caller hung up; ending the call")
            self.record.end_reason = self.record.end_reason or CallEndReason.CALLER_DISCONNECTED
            await worker.cancel()

        @worker.event_handler("on_pipeline_error")
        async def _on_error(worker, frame: ErrorFrame):
            processor = frame.processor
            fatal = bool(frame.fatal) or (processor is not None and (processor is self.stt or not processor.is_usable))
            if fatal:
                await self.fail(f"{type(processor).__name__ if processor else 'pipeline'}: {frame.error}")

    # ------------------------------------------------------------------ ending
    async def _on_stop(self) -> None:
        """Twilio's ``stop``: end gracefully once the audio still in the input transport reached the pipeline."""
        if not self._ending and self.worker is not None:
            self._ending = True
            self.record.end_reason = CallEndReason.STOP
            if not await self.backlog.drain(STOP_DRAIN_TIMEOUT_S):
                logger.warning(
                    f"[BOT] {self.backlog.in_flight} inbound audio frames still queued "
                    f"{STOP_DRAIN_TIMEOUT_S:g}s after stop"
                )
            await self.worker.queue_frame(EndFrame())

    async def end(self, reason: CallEndReason) -> None:
        """End the call gracefully (EndFrame: the websocket closes, Twilio hangs up); cancelled if it hangs."""
        if self.worker is None or self.worker.has_finished():
            return
        if not self._ending:
            self._ending = True
            self.record.end_reason = reason
            await self.worker.queue_frame(EndFrame())

    async def fail(self, error: str) -> None:
        """A fatal error: count the call as failed and end it (once)."""
        if self.record.outcome is CallOutcome.FAILED:
            return
        self.record.outcome = CallOutcome.FAILED
        self.record.error = loggable(error, 300)
        logger.error(f"[BOT] call failed, hanging up: {self.record.error}")
        if self._ending:
            return
        await self.end(CallEndReason.FAILED)

    def _warn_about_drops(self) -> None:
        """A WARNING when audio starts being dropped anywhere (then at most one summary line per 10 s)."""
        rec = self.refresh()
        for where, n, why in (
            (
                "rx",
                rec.rx.get("drops") or 0,
                "the oldest caller audio (RX queue full: audio arrives faster than STT takes it)",
            ),
            ("stt", rec.stt.get("drops") or 0, "the oldest audio chunks (STT queue full: Google is slow or stalled)"),
            ("input", rec.input.get("overflow") or 0, "caller audio (the input transport's backlog stayed full)"),
        ):
            if n > self._drops_seen.get(where, 0):
                self._warn(f"drops_{where}", f"[BOT] dropping {why}: {n} so far this call")
                self._drops_seen[where] = n

    async def _watchdog(self) -> None:
        """Ends a call whose client went silent (no ``stop``, no close) or whose end hangs; reports drops."""
        cfg = self.config
        ending_since: float | None = None
        ticks = 0
        worker, serializer = self.worker, self.serializer
        assert worker is not None and serializer is not None  # the watchdog starts after _build
        while True:
            await asyncio.sleep(0.25)
            self._warn_about_drops()
            ticks += 1
            if cfg.pipeline_metrics and ticks % 4 == 0 and not self._ending:
                await self._queue_metrics_frame()
            now = monotonic()
            if self._ending:
                ending_since = ending_since or now
                if now - ending_since > cfg.shutdown_grace_s:
                    logger.warning(f"[BOT] call did not end within {cfg.shutdown_grace_s:g}s; cancelling")
                    await worker.cancel()
                    return
            elif now - serializer.last_message_at > cfg.media_idle_timeout_s:
                logger.warning(f"[BOT] no message from Twilio for {cfg.media_idle_timeout_s:g}s; ending the call")
                self.record.end_reason = CallEndReason.MEDIA_IDLE
                await worker.cancel()
                return

    async def _queue_metrics_frame(self) -> None:
        from ..pipeline_metrics import metrics_frame

        frame = metrics_frame(
            rx=(self.rx.name, self.rx.stats) if self.rx is not None else None,
            stt=(self.stt.name, stt_stats(self.stt)) if self.stt is not None else None,
        )
        if frame is not None and self.worker is not None:
            await self.worker.queue_frame(frame)

    # ------------------------------------------------------------------ running
    async def run(self, build_pipeline: BuildPipeline) -> None:
        from pipecat.workers.runner import WorkerRunner

        watchdog = None
        if self._metrics is not None:
            self.metrics = self._metrics.start_call()
        try:
            await self._build(build_pipeline)
            logger.info(f"[BOT] call started: stream={self.start.stream_sid} mode={self.record.mode}")
            runner = WorkerRunner(handle_sigint=False)
            assert self.worker is not None  # _build made it
            await runner.add_workers(self.worker)
            watchdog = asyncio.create_task(self._watchdog(), name=f"watchdog-{self.start.call_sid}")
            await runner.run()
        except Exception as e:  # a pipeline that cannot be built or crashes: a failed call, not a dead server
            self.record.outcome = CallOutcome.FAILED
            self.record.error = loggable(f"{type(e).__name__}: {e}", 300)
            logger.error(f"[BOT] call failed: {self.record.error}")
        finally:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            self._finish()

    def _finish(self) -> None:
        if self.serializer is not None:
            self.serializer.log_summary_if_due(force=True)
        discarded = self.backlog.settle()
        if discarded:
            logger.warning(
                f"[BOT] {discarded} inbound audio frames were discarded by the input transport at the end of the call"
            )
        self.record.ended_at = time.time()
        self.record.end_reason = self.record.end_reason or (
            CallEndReason.FAILED if self.record.outcome is CallOutcome.FAILED else CallEndReason.PIPELINE_ENDED
        )
        rec = self.refresh()
        if self.metrics is not None:
            self.metrics.end(rec.end_reason)
        logger.info(
            f"[BOT] call ended ({rec.end_reason}): rx peak_q={rec.rx.get('peak_q')} drops={rec.rx.get('drops')} "
            f"drain_s={rec.rx.get('time_in_drain_s')} | stt drops={rec.stt.get('drops')} "
            f"write_ms_mean={rec.stt.get('write_ms_mean')} finals={len(rec.finals)} | "
            f"twilio received={rec.twilio.get('received')} dropped={rec.twilio.get('dropped_total')} | "
            f"input overflow={rec.input.get('overflow')} discarded_at_end={rec.input.get('discarded_at_end')}"
        )

    # ------------------------------------------------------------------ numbers
    def refresh(self) -> CallRecord:
        if self.rx is not None:
            s = self.rx.stats
            self.record.rx = {
                "mode": getattr(s.mode, "value", s.mode),
                "q": s.q,
                "drops": s.drops,
                "peak_q": s.peak_q,
                "time_in_drain_s": round(s.time_in_drain_s, 3),
                "drain_episodes": s.drain_episodes,
                # frames handed to a full STT because RX + STT would hold more than max_queue (it drops its oldest)
                "overflow_releases": self.rx.overflow_releases,
                "frames_in": s.frames_in,
                "frames_out": s.frames_out,
                "write_ms": round(s.write_ms, 2),
            }
        if self.stt is not None:
            self.record.stt = stt_numbers(self.stt)
        self.record.twilio = self.parser.stats.as_dict()
        if self.serializer is not None:
            self.record.twilio["marks"] = self.serializer.marks_total
        self.record.input = self.backlog.stats.as_dict()
        if self.metrics is not None:
            self.metrics.observe(
                rx=self.rx.stats if self.rx is not None else None,
                stt=stt_stats(self.stt) if self.stt is not None else None,
                twilio=self.parser.stats,
                finals=self.record.finals,
            )
        return self.record


def stt_stats(stt: Any) -> Any:
    """Our ``GoogleSTTService``'s live session stats, else its final stats (``None`` for another STT service)."""
    session = getattr(stt, "session", None)
    return session.stats if session is not None else getattr(stt, "final_stats", None)


def stt_numbers(stt: Any) -> dict[str, Any]:
    """The STT numbers for ``/stats`` (our ``GoogleSTTService``: its live session, else its final stats)."""
    t = stt_stats(stt)
    if t is None:
        return {}
    numbers: dict[str, Any] = {}
    for name in ("state", "q", "drops", "write_ms_mean", "write_ms_max", "finals", "reconnects", "last_error"):
        value = getattr(t, name, None)
        if isinstance(value, float):
            value = round(value, 2)
        elif value is not None and not isinstance(value, (int, str, bool)):
            value = str(getattr(value, "value", value))
        numbers[name] = value
    return numbers
