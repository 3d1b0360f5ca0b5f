"""One StreamingRecognize call inside the emulator (runs on the emulator's event loop).

Three coroutines per call: a *reader* that pulls requests off the wire and
stamps their receive time (it stops pulling while a stall fault is active, so
HTTP/2 flow control pushes back on the client), the *processor* that validates,
segments audio, produces results and enforces limits and faults, and a *sender*
that writes responses (after the configured latency fault, if any).

Limits (sources in ``google-stt-twilio-facts.md`` §4):

* stream duration: Google docs "A stream can remain open for up to 5 minutes";
  the real cut is ``Exceeded maximum allowed stream duration of 305 seconds.``
  (jambonz-feature-server#919). Code OUT_OF_RANGE is a best guess.
* no requests for the inactivity timeout (~10 s, not documented by Google):
  v1 ``OUT_OF_RANGE`` ``Audio Timeout Error: Long duration elapsed without audio. Audio
  should be sent close to real time.`` (googleapis/python-speech#489); v2 ``ABORTED``
  ``Stream timed out after receiving no more client requests.`` (pipecat #2180).
* per-request audio: Google's quotas page says "Each request in the stream is limited to
  25 KB of audio", yet the real service transcribes Google's own v1 sample, which sends
  57958 bytes in one request. So the check is off by default: larger requests are accepted
  and counted (``StreamRecord.oversize_requests``); ``strict_request_size=True`` rejects
  them with INVALID_ARGUMENT, for clients that must stay under the documented limit.
* voice_activity_timeout (v1 and v2, honoured when voice activity events are enabled, as
  Google documents): no speech begun ``speech_start_timeout`` into the audio, or no new
  speech ``speech_end_timeout`` after the end of the last speech, closes the stream
  cleanly (status OK) after the pending final. Both are measured in audio time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import grpc

from .apis import MALORDERED, StreamConfig, StreamError, Word, check_rate_channels, invalid, parse_wav_header
from .faults import FaultKind, Faults, StreamFaultState
from .records import ChunkRecord, EndReason, ResultKind, ResultRecord, StreamEnd, StreamLog, StreamRecord
from .segmenter import AudioDecoder, EnergySegmenter, SegmenterSettings, SegmentEvent, SegmentEventKind
from .timing import TimingModel

_TICK_S = 0.05  # how often time-based faults are re-checked
_SENDER_FLUSH_S = 5.0  # bound on waiting for queued responses at the end of a stream


@dataclass(frozen=True)
class EmulatorLimits:
    """Google-like limits; shrink them in tests (e.g. ``max_stream_s=2``)."""

    max_stream_s: float = 305.0  # Google's hard cut (docs say "up to 5 minutes")
    inactivity_timeout_s: float = 10.0  # no request at all for this long ends the stream
    max_request_bytes: int = 25 * 1024  # audio bytes per request (docs: 25 KB)
    strict_request_size: bool = False  # reject requests over max_request_bytes (Google accepts them)
    # Optional "too fast" rule: a stream whose audio runs more than this many seconds ahead of
    # its own wall clock fails with Google's OUT_OF_RANGE text. None (default): accepted.
    max_lead_s: float | None = None


TOO_FAST = "Audio data is being streamed too fast. Please stream audio data approximately at real time."


@dataclass
class StreamShared:
    """State every stream handler reads (owned by the emulator)."""

    log: StreamLog
    faults: Faults
    recognizer: Any
    limits: EmulatorLimits
    segmenter_settings: SegmenterSettings
    interim_every_s: float
    timing: TimingModel = field(default_factory=TimingModel)
    stopping: bool = False
    runs: set = field(default_factory=set)
    _executor: concurrent.futures.ThreadPoolExecutor | None = None

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="emulator-recognizer"
            )
        return self._executor

    def shutdown_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


_INTERIM_SLICE_S = 0.1  # audio fed to the segmenter at a time when interims decode audio


def _fmt_s(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class StreamRun:
    """One StreamingRecognize call: reads, validates and recognizes audio, writes responses, records it all."""

    def __init__(self, shared: StreamShared, api, context, record: StreamRecord) -> None:
        self.shared = shared
        self.api = api
        self.context = context
        self.record = record
        self.inq: asyncio.Queue = asyncio.Queue(maxsize=4)
        self.outq: asyncio.Queue = asyncio.Queue()
        self.killed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.started = record.started_at
        self.last_rx = record.started_at
        self.stall_until = 0.0
        self.fstate = StreamFaultState(session=record.session, started_at=record.started_at)
        self.config: StreamConfig | None = None
        self.decoder: AudioDecoder | None = None
        self.segmenter: EnergySegmenter | None = None
        # The live record's lists, appended to under the log's lock (its snapshots hold tuples).
        self._chunks: list[ChunkRecord] = []
        self._results: list[ResultRecord] = []
        self._stalls: list[tuple[float, float]] = []

        def attach() -> None:
            record.chunks, record.results, record.stalls = self._chunks, self._results, self._stalls

        shared.log.update(attach)
        self.audio_offset = 0
        self.segment = -1
        self.next_interim_s = 0.0
        self.interims_in_segment = 0
        self.in_speech = False
        self.last_speech_end_s: float | None = None
        self.single_done = False
        self.request_id = str(uuid.uuid4())
        self._get_task: asyncio.Task | None = None

    # --- public -------------------------------------------------------
    def kill(self, code: grpc.StatusCode, details: str, reason: EndReason) -> None:
        """End this stream from outside (emulator stop / down)."""
        if not self.killed.done():
            self.killed.set_result((code, details, reason))

    async def run(self) -> None:
        refusal = self.shared.faults.take_refusal()
        if refusal is not None:
            self._finish(refusal[0], refusal[1], EndReason.REFUSED)
            return
        reader = asyncio.create_task(self._read_loop())
        sender = asyncio.create_task(self._send_loop())
        try:
            try:
                code, details, reason = await self._process()
            except StreamError as exc:
                code, details, reason = exc.code, exc.details, exc.reason
            finally:
                reader.cancel()
                if self._get_task is not None:
                    self._get_task.cancel()
            if code != grpc.StatusCode.OK:  # results not yet written are lost, as with a real failure
                while not self.outq.empty():
                    self.outq.get_nowait()
            # Never cancel a write in flight: gRPC would refuse the status batch
            # (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS) and the client would hang.
            await self.outq.put(None)
            done, _ = await asyncio.wait({sender}, timeout=_SENDER_FLUSH_S)
            if not done:  # the client stopped reading responses; give up on them
                sender.cancel()
        except asyncio.CancelledError:
            reader.cancel()
            sender.cancel()
            stopping = self.shared.stopping
            self._finish(
                grpc.StatusCode.CANCELLED,
                "server stopped" if stopping else "cancelled by the client",
                EndReason.SERVER_STOPPED if stopping else EndReason.CLIENT_CANCELLED,
                abort=False,
            )
            raise
        self._finish(code, details, reason)

    # --- reader / sender ----------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while True:
                while self.stall_until > time.monotonic():
                    await asyncio.sleep(self.stall_until - time.monotonic())
                msg = await self.context.read()
                received = time.monotonic()
                if msg is grpc.aio.EOF:
                    await self.inq.put((received, None))
                    return
                await self.inq.put((received, msg))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call broke underneath us
            await self.inq.put((time.monotonic(), exc))

    async def _send_loop(self) -> None:
        while True:
            item = await self.outq.get()
            if item is None:
                return
            produced, due, response, result = item
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.context.write(response)
            sent = ResultRecord(sent_at=time.monotonic(), produced_at=produced, **result)
            self.shared.log.update(partial(self._results.append, sent))

    def _emit_event(self, kind: ResultKind, offset_s: float) -> None:
        """A speech event (begin, end, end of single utterance) at audio time ``offset_s``."""
        self._emit(self.api.event(kind, offset_s), kind=kind, end_offset_s=offset_s, segment=self.segment)

    def _emit(self, response, hold_s: float = 0.0, **result: Any) -> None:
        """Queue ``response``; it is written ``hold_s`` (timing profile) + the latency fault from now."""
        now = time.monotonic()
        self.outq.put_nowait((now, now + hold_s + self.shared.faults.latency_s, response, result))

    # --- processing ---------------------------------------------------
    async def _next(self, timeout: float):
        if self._get_task is None:
            self._get_task = asyncio.ensure_future(self.inq.get())
        done, _ = await asyncio.wait(
            {self._get_task, self.killed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self.killed.done():
            raise StreamError(*self.killed.result())
        if self._get_task in done:
            task, self._get_task = self._get_task, None
            return task.result()
        return None

    def _timeout(self, now: float) -> float:
        limits = self.shared.limits
        deadlines = [self.started + limits.max_stream_s]
        if self.stall_until > now:
            deadlines.append(self.stall_until)
        else:
            deadlines.append(max(self.last_rx, self.stall_until) + limits.inactivity_timeout_s)
        timeout = min(deadlines) - now
        if self.shared.faults.has_timed_rules:
            timeout = min(timeout, _TICK_S)
        return max(0.0, timeout)

    def _check_limits(self, now: float) -> None:
        limits = self.shared.limits
        if now - self.started >= limits.max_stream_s:
            raise StreamError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"Exceeded maximum allowed stream duration of {_fmt_s(limits.max_stream_s)} seconds.",
                EndReason.MAX_DURATION,
            )
        if self.stall_until <= now and now - max(self.last_rx, self.stall_until) >= limits.inactivity_timeout_s:
            code, details = self.api.inactivity
            raise StreamError(code, details, EndReason.INACTIVITY)

    def _apply_faults(self, now: float) -> None:
        for action in self.shared.faults.check(self.fstate, now):
            if action.kind is FaultKind.ABORT:
                raise StreamError(action.code, action.details, EndReason.ABORT_FAULT)
            if action.kind is FaultKind.CLOSE:
                raise StreamError(grpc.StatusCode.OK, "", EndReason.CLOSE_FAULT)
            if action.kind is FaultKind.STALL:
                start, end = now, now + action.seconds
                self.stall_until = max(self.stall_until, end)
                self.shared.log.update(partial(self._stalls.append, (start, end)))

    async def _process(self) -> tuple[grpc.StatusCode, str, EndReason]:
        self._apply_faults(time.monotonic())
        while True:
            now = time.monotonic()
            self._check_limits(now)
            item = await self._next(self._timeout(now))
            now = time.monotonic()
            if item is None:
                self._apply_faults(now)
                continue
            received, msg = item
            if isinstance(msg, Exception):
                raise StreamError(grpc.StatusCode.CANCELLED, f"stream broken: {msg!r}", EndReason.ERROR)
            self.last_rx = received
            self._check_limits(received)
            if msg is None:  # client half-closed
                if self.config is None:
                    raise invalid(MALORDERED)
                await self._finalize()
                return grpc.StatusCode.OK, "", EndReason.HALF_CLOSE
            self.shared.log.update(self._count_request)
            if self.config is None:
                self._configure(msg)
            else:
                await self._audio(msg, received)
            self._apply_faults(time.monotonic())

    def _count_request(self) -> None:
        self.record.requests += 1

    def _count_oversize(self) -> None:
        self.record.oversize_requests += 1

    def _configure(self, msg) -> None:
        config = self.api.parse_config(msg)
        self.config = config

        def save() -> None:
            self.record.config = config.as_dict
            self.record.recognizer = config.recognizer

        self.shared.log.update(save)
        if config.encoding != "AUTO":
            self._start_decoding(config, config.encoding, config.sample_rate, config.channels)

    def _start_decoding(self, config: StreamConfig, encoding: str, rate: int, channels: int) -> None:
        settings = self.shared.segmenter_settings
        if self.shared.recognizer.needs_audio and not settings.keep_audio:
            settings = replace(settings, keep_audio=True)
        config.sample_rate = rate
        self.decoder = AudioDecoder(encoding, channels)
        self.segmenter = EnergySegmenter(rate, settings)

    async def _audio(self, msg, received: float) -> None:
        cfg = self.config
        assert cfg is not None  # _process hands audio over only once the config request is in
        if self.api.kind(msg) != "audio" and self.api.kind(msg) != "audio_content":
            raise invalid(MALORDERED)
        audio = self.api.audio(msg)
        limits = self.shared.limits
        if len(audio) > limits.max_request_bytes:
            if limits.strict_request_size:
                raise invalid(
                    f"Request audio is {len(audio)} bytes; each request in the stream is limited to "
                    f"{limits.max_request_bytes} bytes (25 KB) of audio."
                )
            self.shared.log.update(self._count_oversize)
        chunk = ChunkRecord(len(self._chunks), len(audio), received, self.audio_offset)
        self.audio_offset += len(audio)
        self._check_lead(received)
        self.fstate.chunks += 1
        self.shared.log.update(partial(self._chunks.append, chunk))
        if self.single_done:
            return
        if self.decoder is None:  # v2 auto_decoding_config: a WAV header must come first
            encoding, rate, channels, header = parse_wav_header(audio)
            check_rate_channels(rate, channels)
            self._start_decoding(cfg, encoding, rate, channels)
            audio = audio[header:]
        decoder, segmenter = self.decoder, self.segmenter
        assert decoder is not None and segmenter is not None  # both set by _start_decoding
        samples = decoder.decode(audio)
        if cfg.interim_results and self.shared.recognizer.needs_audio:
            # interims decode the segment's audio so far: keep it close to the event being handled
            step = max(1, int(cfg.sample_rate * _INTERIM_SLICE_S))
            pieces = [samples[i : i + step] for i in range(0, len(samples), step)]
        else:
            pieces = [samples]
        for piece in pieces:
            for event in segmenter.feed(piece):
                await self._on_event(event)
            self._check_voice_timeouts(cfg, segmenter)

    def _check_voice_timeouts(self, cfg: StreamConfig, segmenter: EnergySegmenter) -> None:
        if not cfg.voice_activity_events or self.single_done:
            return
        heard = segmenter.audio_s
        start_t, end_t = cfg.speech_start_timeout_s, cfg.speech_end_timeout_s
        if start_t is not None and self.segment < 0 and heard >= start_t - 1e-9:
            raise StreamError(grpc.StatusCode.OK, "", EndReason.SPEECH_START_TIMEOUT)
        if (
            end_t is not None
            and not self.in_speech
            and self.last_speech_end_s is not None
            and heard - self.last_speech_end_s >= end_t - 1e-9
        ):
            raise StreamError(grpc.StatusCode.OK, "", EndReason.SPEECH_END_TIMEOUT)

    def _check_lead(self, received: float) -> None:
        max_lead = self.shared.limits.max_lead_s
        cfg = self.config
        if max_lead is None or cfg is None or cfg.encoding == "AUTO" or not cfg.sample_rate:
            return
        per_s = cfg.sample_rate * cfg.channels * (2 if cfg.encoding == "LINEAR16" else 1)
        if self.audio_offset / per_s - (received - self.started) > max_lead:
            raise StreamError(grpc.StatusCode.OUT_OF_RANGE, TOO_FAST, EndReason.TOO_FAST)

    async def _finalize(self) -> None:
        if self.segmenter is not None and not self.single_done:
            for event in self.segmenter.flush():
                await self._on_event(event)

    async def _on_event(self, ev: SegmentEvent) -> None:
        cfg = self.config
        assert cfg is not None  # segment events come from the segmenter, made from the config
        if self.single_done:
            return
        if ev.kind is SegmentEventKind.BEGIN:
            self.segment += 1
            self.in_speech = True
            self.next_interim_s = self.shared.interim_every_s
            self.interims_in_segment = 0
            if cfg.voice_activity_events:
                self._emit_event(ResultKind.SPEECH_BEGIN, ev.start_s)
        elif ev.kind is SegmentEventKind.SPEECH:
            if cfg.interim_results and ev.speech_s + 1e-9 >= self.next_interim_s:
                self.next_interim_s += self.shared.interim_every_s
                await self._interim(ev)
        elif ev.kind is SegmentEventKind.END:
            self.in_speech = False
            self.last_speech_end_s = ev.end_s
            if cfg.voice_activity_events:
                self._emit_event(ResultKind.SPEECH_END, ev.end_s)
            hyp = await self._run_recognizer(
                self.shared.recognizer.final,
                self.record.session,
                ev.audio,
                cfg.sample_rate,
                cfg.language,
                cfg.max_alternatives,
            )
            if cfg.single_utterance:
                self._emit_event(ResultKind.END_OF_SINGLE_UTTERANCE, ev.end_s)
                self.single_done = True
            words = self._words(hyp, ev) if cfg.word_time_offsets else ()
            delay = self.shared.timing.final_delay_s(f"{self.record.id}|{self.segment}")
            hold = max(0.0, delay - (ev.offset_s - ev.end_s))  # silence already heard counts toward the delay
            self._emit(
                self.api.result(
                    hyp.text,
                    is_final=True,
                    stability=0.0,
                    end_s=ev.end_s,
                    language=cfg.language,
                    words=words,
                    alternatives=hyp.alternatives,
                    billed_s=self._billed_s(),
                    request_id=self.request_id,
                ),
                hold_s=hold,
                kind=ResultKind.FINAL,
                transcript=hyp.text,
                is_final=True,
                end_offset_s=ev.end_s,
                segment=self.segment,
                alternatives=tuple(hyp.alternatives),
                words=tuple(words),
            )

    async def _interim(self, ev: SegmentEvent) -> None:
        cfg, segmenter = self.config, self.segmenter
        assert cfg is not None and segmenter is not None  # interims come from the segmenter's events
        rec = self.shared.recognizer
        audio = segmenter.segment_audio() if rec.needs_audio else None
        text = await self._run_recognizer(rec.interim, self.record.session, ev.speech_s, audio, cfg.sample_rate)
        if not text:
            return
        self.interims_in_segment += 1
        key = f"{self.record.id}|{self.segment}|{self.interims_in_segment}"
        words, revised = self.shared.timing.interim_words(text.split(), key)
        text = " ".join(words)
        stability = 0.1 if revised else min(0.9, round(0.1 * self.interims_in_segment, 2))
        self._emit(
            self.api.result(
                text,
                is_final=False,
                stability=stability,
                end_s=ev.offset_s,
                language=cfg.language,
                billed_s=self._billed_s(),
                request_id=self.request_id,
            ),
            kind=ResultKind.INTERIM,
            transcript=text,
            stability=stability,
            end_offset_s=ev.offset_s,
            segment=self.segment,
        )

    async def _run_recognizer(self, fn, *args):
        if self.shared.recognizer.blocking:
            return await asyncio.get_running_loop().run_in_executor(self.shared.executor(), fn, *args)
        return fn(*args)

    def _words(self, hyp, ev: SegmentEvent) -> tuple[Word, ...]:
        if hyp.words:
            return tuple(Word(w, ev.audio_start_s + a, ev.audio_start_s + b) for w, a, b in hyp.words)
        tokens = hyp.text.split()  # no timings from the recognizer: spread the words over the segment
        if not tokens:
            return ()
        step = max(0.0, ev.end_s - ev.start_s) / len(tokens)
        return tuple(Word(w, ev.start_s + i * step, ev.start_s + (i + 1) * step) for i, w in enumerate(tokens))

    def _billed_s(self) -> float:
        """Audio billed so far: whole seconds, rounded up (Google bills streaming audio per second)."""
        heard = self.segmenter.audio_s if self.segmenter is not None else 0.0
        return float(math.ceil(heard - 1e-9))

    # --- ending -------------------------------------------------------
    def _finish(self, code: grpc.StatusCode, details: str, reason: EndReason, abort: bool = True) -> None:
        end = StreamEnd(code, details, time.monotonic(), reason)

        def save() -> None:
            if self.record.end is None:
                self.record.end = end

        self.shared.log.update(save)
        if abort and code != grpc.StatusCode.OK:
            self.context.set_code(code)
            self.context.set_details(details)
