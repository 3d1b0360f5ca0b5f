"""The three pipelines the benchmark compares, and the probes that time each audio frame through them.

* ``stock``: ``transport.input() -> pipecat.services.google.stt.GoogleSTTService`` (Pipecat 1.14,
  unmodified). It is constructed with a generated service-account JSON (an RSA key made on
  the spot, never sent anywhere) so that its constructor succeeds offline; its ``_client`` is
  then replaced by ``emulator_client(addr, api="v2", asynchronous=True)``, the official
  ``SpeechAsyncClient`` on an insecure loopback channel. The only other change is that
  ``_client.streaming_recognize`` is wrapped to add ``x-rxdrain-session`` metadata, so the
  emulator can tell concurrent calls apart (all channels in one process share a peer).
* ``blocking``: the pattern the project started from, :mod:`pipecat_rxdrain.baseline` (one copy,
  shared with ``rxdrain demo``). ``PacedRxQueue`` holds at most 200 frames (drop-oldest) and
  releases one frame, then sleeps 20 ms, whatever the backlog; ``BlockingSyncWriter`` hands each
  frame to a *synchronous* ``streaming_recognize`` through a one-slot ``queue.Queue`` and waits,
  on the event loop, until gRPC takes it (here subclassed to feed the call's probe).
* ``ours``: ``transport.input() -> RxDrainProcessor(sink=stt) -> pipecat_rxdrain GoogleSTTService``.

All three get the caller simulator's Twilio frames through ``FastAPIWebsocketTransport``
with a serializer that stamps every audio frame (``time.monotonic()``, right after
deserialization) into the call's :class:`CallProbe`. The probe also records, per pipeline,
the exact order in which audio bytes went into gRPC streams (the *ledger*) and where each
stream starts in it, so :mod:`benchmarks.metrics` can map the emulator's per-chunk receive
times back to frames by byte offset.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_rxdrain.baseline import BlockingSyncWriter as _BlockingSyncWriter
from pipecat_rxdrain.baseline import PacedRxQueue
from pipecat_rxdrain.google_clients import SESSION_METADATA_KEY as SESSION_KEY
from pipecat_rxdrain.rx import processor as _rx_processor
from pipecat_rxdrain.stt.replay import ReplayBuffer

PCM_FRAME_BYTES = 320  # 20 ms of 8 kHz PCM16
PIPELINES = ("stock", "blocking", "ours")

# --- ours: where each new gRPC stream starts in the session's byte sequence ------------------
# StreamingSTTSession computes a stream's origin and calls ReplayBuffer.pieces() exactly once
# per stream it opens; recording the buffer position there gives the origin without touching
# the session's code. Keyed by id(ReplayBuffer).
_REPLAY_ORIGINS: dict[int, list[int]] = {}
_orig_pieces = ReplayBuffer.pieces


def _recording_pieces(self: ReplayBuffer, max_piece: int):
    _REPLAY_ORIGINS.setdefault(id(self), []).append(self.start if len(self) else self.end)
    return _orig_pieces(self, max_piece)


ReplayBuffer.pieces = _recording_pieces  # benchmark-only instrumentation

# --- ours: frames RxDrainProcessor merged into one ------------------------------------------
# A merged frame carries new bytes; record which frames' bytes it joined so the probe can map its
# audio back to them. The references keep the ids from being reused while the entry lives. Only
# while a scenario runs (record_merges), and forgotten after it: nothing accumulates elsewhere.
_MERGED: dict[int, tuple[bytes, list[bytes]]] = {}
_RECORDING = [False]
_orig_merge = _rx_processor._merge


def _recording_merge(frames):
    merged = _orig_merge(frames)
    if _RECORDING[0]:
        _MERGED[id(merged.audio)] = (merged.audio, [f.audio for f in frames])
    return merged


def record_merges(on: bool) -> None:
    """Start (or stop) recording RX merges for the probes; either way, forget the old records."""
    _RECORDING[0] = on
    _MERGED.clear()


_rx_processor._merge = _recording_merge  # benchmark-only instrumentation


@dataclass
class CallProbe:
    """Everything measured for one call in one pipeline (written on the loop and the STT threads)."""

    call_id: str
    pipeline: str
    start_at: float = 0.0  # monotonic time the harness read Twilio's `start` (≈ caller's t0)
    stamps: list[float] = field(default_factory=list)  # frame index -> time it entered the pipeline
    src: list[int] = field(default_factory=list)  # frame index -> index of the caller's last media message in it
    media_in: int = 0  # media messages deserialized (at 16 kHz the resampler merges them into fewer frames)
    by_id: dict[int, int] = field(default_factory=dict)  # id(frame.audio) -> frame index (while in flight)
    split_parts: dict[int, tuple[bytes, list[tuple[int, int]]]] = field(default_factory=dict)  # a split's tail
    ledger: list[tuple[int, int]] = field(default_factory=list)  # (frame index, bytes) in gRPC byte order
    origins: list[int] = field(default_factory=list)  # ledger byte position of each stream's first byte
    dropped: list[int] = field(default_factory=list)  # frame indexes dropped by an STT-side queue
    stt_at: dict[int, float] = field(default_factory=dict)  # frame index -> time the STT step got it
    session_key: str = ""
    enqueue_us: list[float] = field(default_factory=list)  # time of the STT enqueue step per frame
    push_audio_us: list[float] = field(default_factory=list)  # ours: the raw push_audio call
    write_ms: list[float] = field(default_factory=list)  # time gRPC took to accept one request
    finals: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, text) delivered to the pipeline
    interims: int = 0
    errors: int = 0
    rx_drops: int = 0
    stt_drops: int = 0
    time_in_drain_s: float = 0.0
    reconnects: int = 0
    rx_refusals: int = 0
    rx_frames_out: int = 0  # ours: frames RX handed downstream ...
    rx_releases: int = 0  # ... in this many pushes (fewer while it merged frames of a busy process)
    ended_at: float = 0.0
    q_fn: object = None  # () -> (rx_q, stt_q), sampled by the harness
    stats_fn: object = None  # () -> None: fill the counters above at the end
    replay_buffer_id: int | None = None
    reply_audio_at: list[float] = field(default_factory=list)  # times bot audio went out to the caller (reply scenario)

    def stamp(self, frame: InputAudioRawFrame, now: float) -> None:
        idx = len(self.stamps)
        self.stamps.append(now)
        self.src.append(self.media_in - 1)
        self.by_id[id(frame.audio)] = idx

    def caller_frame(self, idx: int) -> int:
        """The caller's frame (schedule index) whose arrival completed pipeline frame ``idx``."""
        return self.src[idx] if 0 <= idx < len(self.src) else idx

    def take(self, audio: bytes) -> int:
        return self.by_id.pop(id(audio), -1)

    def take_parts(self, audio: bytes) -> list[tuple[int, int]]:
        """(frame index, bytes) of each frame ``audio`` carries: one frame, or the frames RX merged or a split left."""
        # The split and merge records first: their keys are alive, while by_id may still hold the
        # id of a frame RX dropped, whose bytes are gone (and whose id a new object can reuse).
        key = id(audio)
        parts = self.split_parts.pop(key, None)
        if parts is not None and parts[0] is audio:
            return parts[1]
        merged = _MERGED.pop(key, None)
        if merged is not None and merged[0] is audio:
            return [(self.by_id.pop(id(a), -1), len(a)) for a in merged[1]]
        if key in self.by_id:
            return [(self.by_id.pop(key), len(audio))]
        return [(-1, len(audio))]

    def at_stt(self, audio: bytes, now: float) -> None:
        merged = _MERGED.get(id(audio))
        if merged is not None and merged[0] is audio:
            for a in merged[1]:
                i = self.by_id.get(id(a))
                if i is not None:
                    self.stt_at[i] = now
            return
        idx = self.by_id.get(id(audio))
        if idx is not None:
            self.stt_at[idx] = now

    def finish(self) -> None:
        if self.stats_fn is not None:
            try:
                self.stats_fn()
            except Exception as e:  # a probe problem must not hide the other numbers
                logger.warning(f"bench: stats for {self.pipeline}/{self.call_id} failed: {e!r}")
        if self.replay_buffer_id is not None:
            self.origins = list(_REPLAY_ORIGINS.pop(self.replay_buffer_id, []))


def stamping_serializer(base_cls, probe: CallProbe, on_stop, **kwargs):
    """An instance of a subclass of ``base_cls`` (a Twilio serializer) that stamps audio frames."""

    class Stamping(base_cls):
        async def deserialize(self, data):
            if isinstance(data, str) and '"media"' in data:
                probe.media_in += 1
            frame = await super().deserialize(data)
            if isinstance(frame, InputAudioRawFrame):
                probe.stamp(frame, time.monotonic())
            elif isinstance(data, str) and '"stop"' in data:
                try:
                    if json.loads(data).get("event") == "stop":
                        await on_stop()
                except ValueError:
                    pass
            return frame

        async def serialize(self, frame):
            data = await super().serialize(frame)
            if data and isinstance(frame, OutputAudioRawFrame):
                probe.reply_audio_at.append(time.monotonic())  # written to the caller's socket next (loopback)
            return data

    return Stamping(**kwargs)


class TranscriptCollector(FrameProcessor):
    """Last in the pipeline: records delivered finals (time, text), interims and errors."""

    def __init__(self, probe: CallProbe, **kwargs) -> None:
        super().__init__(**kwargs)
        self._probe = probe

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self._probe.finals.append((time.monotonic(), frame.text))
        elif isinstance(frame, InterimTranscriptionFrame):
            self._probe.interims += 1
        elif isinstance(frame, ErrorFrame):
            self._probe.errors += 1
        await self.push_frame(frame, direction)


class HiccupProcessor(FrameProcessor):
    """Another processor that blocks the event loop for ``block_s`` every ``every_s`` (time.sleep)."""

    def __init__(self, every_s: float, block_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self._every_s, self._block_s = every_s, block_s
        self._task: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame) and self._task is None:
            self._task = self.create_task(self._run(), name="hiccup")
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()
        await self.push_frame(frame, direction)

    async def _run(self):
        while True:
            await asyncio.sleep(self._every_s)
            time.sleep(self._block_s)  # the point: a blocking call on the loop

    async def _stop(self):
        task, self._task = self._task, None
        if task is not None:
            await self.cancel_task(task)

    async def cleanup(self):
        await super().cleanup()
        await self._stop()


# ---------------------------------------------------------------------------------- blocking


class BlockingSyncWriter(_BlockingSyncWriter):
    """The package's blocking baseline writer, observed by the call's probe (ledger, write times, finals)."""

    def __init__(self, probe: CallProbe, address: str, sample_rate: int = 8000, **kwargs) -> None:
        super().__init__(address, sample_rate=sample_rate, language="en-US", session_key=probe.session_key, **kwargs)
        self._probe = probe
        self._ledger_bytes = 0
        self._idx = -1

    def on_final(self, text: str) -> None:  # reader thread
        self._probe.finals.append((time.monotonic(), text))

    def on_stream_opened(self, reopened: bool) -> None:
        if reopened:
            self._probe.reconnects += 1
        self._probe.origins.append(self._ledger_bytes)

    def on_write(self, audio: bytes, seconds: float, ok: bool) -> None:
        self._probe.enqueue_us.append(seconds * 1e6)
        self._probe.write_ms.append(seconds * 1e3)
        if ok:
            self._probe.ledger.append((self._idx, len(audio)))
            self._ledger_bytes += len(audio)

    def write_blocking(self, audio: bytes) -> None:
        self._probe.at_stt(audio, time.monotonic())
        self._idx = self._probe.take(audio)
        super().write_blocking(audio)


# ---------------------------------------------------------------------------------- reply (full mode)


def reply_processors() -> tuple[list[FrameProcessor], list[FrameProcessor]]:
    """The offline full-mode turn after the STT, as the example bot wires it with the offline services.

    Returns (between STT and transport output, after transport output):
    ``[user aggregator (Silero VAD), RuleBasedLLMService, EspeakTTSService]``, ``[assistant aggregator]``.
    """
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams
    from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import SpeechTimeoutUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies

    from pipecat_rxdrain.offline import EspeakTTSService, RuleBasedLLMService

    # The turn ends on VAD stop + Pipecat's 0.6 s speech timeout + a transcript, so the STT's final is on the
    # critical path. (Pipecat's default stop strategy, the Smart Turn model, left 3 of the sample's 5 turns
    # unanswered here: it judged them incomplete while the caller went on talking.)
    pair = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(sample_rate=8000),
            user_turn_strategies=UserTurnStrategies(stop=[SpeechTimeoutUserTurnStopStrategy()]),
        ),
    )
    return [pair.user(), RuleBasedLLMService(), EspeakTTSService()], [pair.assistant()]


# ---------------------------------------------------------------------------------- builders


@dataclass
class BuildOptions:
    address: str  # emulator host:port
    stream_limit_s: float | None = None  # rotate before this (scaled Google limit); None = defaults
    rotate_grace_s: float | None = None
    hiccup: tuple[float, float] | None = None  # (every_s, block_s)
    sample_rate: int = 8000  # the pipeline's audio_in_sample_rate, which the STT services get
    rx_busy_level: int | None = None  # ours: RX's busy level fixed at this (None: BusyMeter measures it)




def fake_service_account() -> str:
    """A syntactically valid service-account JSON with a fresh RSA key (never sent anywhere)."""
    from pipecat_rxdrain.testing import fake_service_account_json

    return fake_service_account_json("bench-project")


def _timed_run_stt(svc, probe: CallProbe, before=None):
    orig = svc.run_stt

    async def run_stt(audio: bytes):
        probe.at_stt(audio, time.monotonic())
        if before is not None:
            before(audio)
        t0 = time.perf_counter()
        async for f in orig(audio):
            probe.enqueue_us.append((time.perf_counter() - t0) * 1e6)
            yield f

    svc.run_stt = run_stt


def build_stock(probe: CallProbe, opts: BuildOptions) -> list[FrameProcessor]:
    from pipecat.services.google.stt import GoogleSTTService as StockGoogleSTTService

    from pipecat_rxdrain.google_clients import emulator_client

    svc = StockGoogleSTTService(credentials=fake_service_account(), sample_rate=opts.sample_rate)
    client = emulator_client(opts.address, api="v2", asynchronous=True)
    orig_sr = client.streaming_recognize
    probe.session_key = f"stock-{probe.call_id}"
    metadata = ((SESSION_KEY, probe.session_key),)
    counters = {"bytes": 0}

    async def streaming_recognize(*args, **kwargs):
        kwargs.setdefault("metadata", metadata)
        return await orig_sr(*args, **kwargs)

    client.streaming_recognize = streaming_recognize
    svc._client = client
    if opts.stream_limit_s is not None:
        svc.STREAMING_LIMIT = int(opts.stream_limit_s * 1000)

    orig_gen = svc._request_generator

    async def request_generator():
        # Each generator is one stream: its first audio byte is the next ledger byte.
        probe.origins.append(counters["bytes"])
        async for request in orig_gen():
            t0 = time.perf_counter()
            yield request
            if request.audio:
                probe.write_ms.append((time.perf_counter() - t0) * 1e3)
                counters["bytes"] += len(request.audio)

    svc._request_generator = request_generator

    def before(audio: bytes):
        # Stock's queue is unbounded FIFO: the ledger order is the run_stt order.
        probe.ledger.append((probe.take(audio), len(audio)))

    _timed_run_stt(svc, probe, before)

    def q_fn():
        rq = getattr(svc, "_request_queue", None)
        return (None, rq.qsize() if rq is not None else 0)

    probe.q_fn = q_fn
    procs: list[FrameProcessor] = [svc]
    return procs


def build_blocking(probe: CallProbe, opts: BuildOptions) -> list[FrameProcessor]:
    probe.session_key = f"blocking-{probe.call_id}"
    paced = PacedRxQueue()
    writer = BlockingSyncWriter(probe, opts.address, sample_rate=opts.sample_rate)
    probe.q_fn = lambda: (paced.q, None)

    def stats():
        probe.rx_drops = paced.drops
        probe.reconnects = max(0, len(probe.origins) - 1)

    probe.stats_fn = stats
    return [paced, writer]


class _RecordingDeque(deque):
    """The session's audio deque, recording which frames the writer took (I/O thread) or dropped (loop)."""

    def __init__(self, items, probe: CallProbe):
        super().__init__(items)
        self._probe = probe

    def popleft(self):
        item = super().popleft()
        probe = self._probe
        parts = probe.take_parts(item)
        if threading.current_thread().name.startswith("rxdrain-stt-"):
            probe.ledger.extend(parts)
        else:
            probe.dropped.extend(i for i, _ in parts if i >= 0)
        return item

    def appendleft(self, rest):
        # AudioQueue.take() splits a chunk larger than it may send at once (the session: one 25 KB
        # request; a bare take(max_bytes): max_bytes): it pops the chunk, then puts its tail back.
        # The chunk's parts are the last ledger entries; the frames wholly in the tail go back with
        # it, and the frame cut in two completes only when its last byte (in the tail) is read.
        probe = self._probe
        ledger, popped, acc = probe.ledger, [], 0
        while acc < len(rest) and ledger:
            entry = ledger.pop()
            popped.insert(0, entry)
            acc += entry[1]
        head = acc - len(rest)  # bytes of the first popped frame that were sent
        if head > 0:
            ledger.append((-1, head))
            popped[0] = (popped[0][0], popped[0][1] - head)
        probe.split_parts[id(rest)] = (rest, popped)
        super().appendleft(rest)


def build_ours_stt_only(probe: CallProbe, opts: BuildOptions) -> list[FrameProcessor]:
    """Diagnostic (not in the default run): our STT service without RxDrainProcessor in front."""
    procs = build_ours(probe, opts)
    return procs[1:]


def build_ours(probe: CallProbe, opts: BuildOptions) -> list[FrameProcessor]:
    from pipecat.services.google.stt import GoogleSTTSettings
    from pipecat.transcriptions.language import Language

    from pipecat_rxdrain.rx.processor import RxDrainProcessor
    from pipecat_rxdrain.stt.service import GoogleSTTService

    kwargs = {}
    if opts.stream_limit_s is not None:
        kwargs["stream_limit_s"] = opts.stream_limit_s
    if opts.rotate_grace_s is not None:
        kwargs["rotate_grace_s"] = opts.rotate_grace_s
    svc = GoogleSTTService(
        endpoint=opts.address,
        sample_rate=opts.sample_rate,
        settings=GoogleSTTSettings(languages=[Language.EN_US]),
        **kwargs,
    )
    busy_level = None if opts.rx_busy_level is None else (lambda level=opts.rx_busy_level: level)
    rx = RxDrainProcessor(sink=svc, busy_level=busy_level)
    state = {"session": None}

    def before(audio: bytes):
        session = svc.session
        if session is not None and state["session"] is not session:
            state["session"] = session
            with session._lock:
                session._q = _RecordingDeque(session._q, probe)
            probe.replay_buffer_id = id(session._replay)
            probe.session_key = dict(session._metadata).get(SESSION_KEY, "")
            orig_push = session.push_audio

            def push_audio(pcm16: bytes) -> bool:
                t0 = time.perf_counter_ns()
                ok = orig_push(pcm16)
                probe.push_audio_us.append((time.perf_counter_ns() - t0) / 1000.0)
                return ok

            session.push_audio = push_audio

    _timed_run_stt(svc, probe, before)

    def q_fn():
        session = svc.session
        return (rx.backpressure.q, session.stats.q if session is not None else 0)

    def stats():
        s = rx.stats
        probe.rx_drops = s.drops
        probe.time_in_drain_s = s.time_in_drain_s
        probe.rx_refusals = s.refusals
        probe.rx_frames_out = s.frames_out
        probe.rx_releases = s.releases
        st = svc.stats
        if st is not None:
            probe.stt_drops = st.drops
            probe.reconnects = st.reconnects
        session = state["session"]
        if session is not None:
            probe.write_ms = [x * 1e3 for x in session.write_samples()]

    probe.q_fn = q_fn
    probe.stats_fn = stats
    return [rx, svc]


BUILDERS = {"stock": build_stock, "blocking": build_blocking, "ours": build_ours, "ours_stt_only": build_ours_stt_only}
