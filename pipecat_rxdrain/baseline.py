"""The blocking receive path the project started from: the anti-pattern pipecat-rxdrain replaces.

Kept, on purpose unfixed, so the demo (``rxdrain demo``) and the benchmarks can run the same call
through it and through ours, side by side. Do not use it in a bot.

* :class:`PacedRxQueue` holds at most ``max_queue`` frames (drop-oldest) and releases one frame, then
  sleeps 20 ms, *whatever the backlog*: a backlog never shrinks, and the per-frame ``asyncio.sleep``
  overshoot makes it grow.
* :class:`BlockingSyncWriter` hands each frame to a *synchronous* ``streaming_recognize`` through a
  one-slot ``queue.Queue`` and waits, on the event loop, until gRPC takes it. A reader thread turns the
  stream's finals into ``TranscriptionFrame``s.

It talks only to the local emulator (``pipecat_rxdrain.emulator``): it exists to be measured, not deployed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.time import time_now_iso8601

from .google_clients import SESSION_METADATA_KEY

__all__ = ["BlockingSyncWriter", "PacedRxQueue", "SyncStream"]


class PacedRxQueue(FrameProcessor):
    """The original receive queue: bounded (drop-oldest), releasing one frame then sleeping 20 ms, always.

    Guarantees (of the pattern, not of a fix): at most ``max_queue`` frames held; every drop counted in
    ``drops``; ``peak_q`` is the deepest the queue got; on ``EndFrame`` the rest is flushed, then the
    ``EndFrame`` goes on. ``stats`` is a dict kept up to date in place (``q``, ``peak_q``, ``drops``,
    ``frames_in``, ``frames_out``, and ``drop_times``: ``time.time()`` of the first
    :data:`MAX_DROP_TIMES` drops), so a caller can hand it to whatever reports the call.
    """

    MAX_DROP_TIMES = 10_000

    def __init__(self, max_queue: int = 200, interval_s: float = 0.02, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_queue < 1 or interval_s <= 0:
            raise ValueError(f"PacedRxQueue needs max_queue >= 1 and interval_s > 0, got {max_queue}, {interval_s}")
        self._q: deque[InputAudioRawFrame] = deque()
        self._max = max_queue
        self._interval_s = interval_s
        self.stats: dict[str, Any] = {"mode": "paced", "q": 0, "peak_q": 0, "drops": 0, "frames_in": 0, "frames_out": 0}
        self.stats["drop_times"] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._end: EndFrame | None = None

    @property
    def q(self) -> int:
        return len(self._q)

    @property
    def drops(self) -> int:
        return self.stats["drops"]

    @property
    def peak_q(self) -> int:
        return self.stats["peak_q"]

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._task = self.create_task(self._pace(), name="paced_rx")
        elif isinstance(frame, InputAudioRawFrame) and direction is FrameDirection.DOWNSTREAM:
            s = self.stats
            if len(self._q) >= self._max:
                self._q.popleft()
                s["drops"] += 1
                if len(s["drop_times"]) < self.MAX_DROP_TIMES:
                    s["drop_times"].append(time.time())  # wall clock: the demo reads it from another process
            self._q.append(frame)
            s["frames_in"] += 1
            s["q"] = len(self._q)
            s["peak_q"] = max(s["peak_q"], len(self._q))
            self._wake.set()
        elif isinstance(frame, EndFrame):
            self._end = frame
            self._wake.set()
        elif isinstance(frame, CancelFrame):
            self._q.clear()
            await self._stop()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _pace(self):
        while True:
            if self._q:
                frame = self._q.popleft()
                self.stats["q"] = len(self._q)
                self.stats["frames_out"] += 1
                await self.push_frame(frame)
                if self._end is None:
                    await asyncio.sleep(self._interval_s)  # "real time", whatever the backlog
                else:
                    await asyncio.sleep(0)  # ending: flush
            elif self._end is not None:
                await self.push_frame(self._end)
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _stop(self):
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            await self.cancel_task(task)

    async def cleanup(self):
        await super().cleanup()
        await self._stop()


class SyncStream:
    """One synchronous StreamingRecognize call fed from a one-slot queue, with a reader thread.

    ``on_final(text)`` is called on the reader thread for each final result. ``close()`` joins the thread.
    """

    _END = object()

    def __init__(self, client, recognizer: str, config, metadata, on_final) -> None:
        from google.cloud.speech_v2.types import cloud_speech

        self._cs = cloud_speech
        self.requests: queue.Queue = queue.Queue(maxsize=1)
        self.dead = threading.Event()
        first = cloud_speech.StreamingRecognizeRequest(recognizer=recognizer, streaming_config=config)

        def gen():
            yield first
            while True:
                item = self.requests.get()
                if item is self._END:
                    return
                yield item

        self._responses = None

        def read():
            # The call is opened here: the client prefetches the first response when the
            # call is created, which would deadlock a caller that must write audio first.
            try:
                self._responses = client.streaming_recognize(requests=gen(), retry=None, metadata=metadata)
                for response in self._responses:
                    for result in response.results:
                        if result.is_final and result.alternatives:
                            on_final(result.alternatives[0].transcript)
            except Exception:
                pass
            finally:
                self.dead.set()

        self.reader = threading.Thread(target=read, name="baseline-blocking-reader", daemon=True)
        self.reader.start()

    def put(self, audio: bytes) -> bool:
        """Block until gRPC takes the previous request (the pathology), unless the stream died."""
        req = self._cs.StreamingRecognizeRequest(audio=audio)
        while True:
            try:
                self.requests.put(req, timeout=0.05)
                return True
            except queue.Full:
                if self.dead.is_set():
                    return False

    def close(self, timeout: float) -> None:
        try:
            self.requests.put(self._END, timeout=timeout)
        except queue.Full:
            pass
        self.reader.join(timeout)
        if self.reader.is_alive() and self._responses is not None:
            self._responses.cancel()
            self.reader.join(2.0)


class BlockingSyncWriter(FrameProcessor):
    """The original STT write path: a synchronous gRPC stream written from the event loop.

    Each ``InputAudioRawFrame`` is written with :meth:`SyncStream.put` on the event loop (blocking it
    while gRPC is behind); a dead stream is replaced by a new one (one retry per frame). Finals come back
    as ``TranscriptionFrame``s pushed downstream from the loop. Subclasses (the benchmark's probes)
    observe it through :meth:`on_write`, :meth:`on_stream_opened` and :meth:`on_final`.
    """

    def __init__(
        self,
        address: str,
        *,
        sample_rate: int = 8000,
        language: str = "en-US",
        session_key: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        from google.cloud.speech_v2.types import cloud_speech

        from .google_clients import emulator_client

        self._client = emulator_client(address, api="v2", asynchronous=False)
        self._language = language
        self._config = cloud_speech.StreamingRecognitionConfig(
            config=cloud_speech.RecognitionConfig(
                explicit_decoding_config=cloud_speech.ExplicitDecodingConfig(
                    encoding=cloud_speech.ExplicitDecodingConfig.AudioEncoding.LINEAR16,
                    sample_rate_hertz=sample_rate,
                    audio_channel_count=1,
                ),
                language_codes=[language],
                model="latest_long",
            ),
            streaming_features=cloud_speech.StreamingRecognitionFeatures(interim_results=True),
        )
        self._recognizer = "projects/baseline-project/locations/global/recognizers/_"
        self._metadata = ((SESSION_METADATA_KEY, session_key),) if session_key else ()
        self._stream: SyncStream | None = None
        self._streams: list[SyncStream] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.write_ms_max = 0.0

    # --- hooks ---------------------------------------------------------------------------------
    def on_stream_opened(self, reopened: bool) -> None:
        """A new gRPC stream was opened (``reopened``: it replaces a dead one)."""

    def on_write(self, audio: bytes, seconds: float, ok: bool) -> None:
        """One blocking ``put`` of ``audio`` took ``seconds`` (``ok``: gRPC took it)."""

    def on_final(self, text: str) -> None:
        """Reader thread: a final result; pushes a ``TranscriptionFrame`` from the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        frame = TranscriptionFrame(text, "", time_now_iso8601())
        try:
            asyncio.run_coroutine_threadsafe(self.push_frame(frame), loop)
        except RuntimeError:
            pass  # the loop is shutting down

    # --- the pattern -----------------------------------------------------------------------------
    def write_blocking(self, audio: bytes) -> None:
        for _ in range(2):
            if self._stream is None or self._stream.dead.is_set():
                reopened = self._stream is not None
                self._stream = SyncStream(self._client, self._recognizer, self._config, self._metadata, self.on_final)
                self._streams.append(self._stream)
                self.on_stream_opened(reopened)
            t0 = time.perf_counter()
            ok = self._stream.put(audio)
            dt = time.perf_counter() - t0
            self.write_ms_max = max(self.write_ms_max, dt * 1e3)
            self.on_write(audio, dt, ok)
            if ok:
                return

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._loop = asyncio.get_running_loop()
        if isinstance(frame, InputAudioRawFrame) and direction is FrameDirection.DOWNSTREAM:
            self.write_blocking(frame.audio)  # blocking, on the event loop: the point of this baseline
            return
        if isinstance(frame, (EndFrame, CancelFrame)):
            self._close(2.0 if isinstance(frame, EndFrame) else 0.1)
        await self.push_frame(frame, direction)

    def _close(self, timeout: float) -> None:
        streams, self._streams, self._stream = self._streams, [], None
        for s in streams:
            s.close(timeout)

    async def cleanup(self):
        await super().cleanup()
        self._close(0.1)
        self._loop = None
        self._client.transport.close()
