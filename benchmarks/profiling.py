"""Where the CPU goes, in µs per audio frame and per stage (the benchmark's profile rows).

Method (documented in RESULTS.md): thread CPU accounting plus a stack sampler.

* CPU per thread from ``psutil`` over the run: the event-loop thread (where the transport, the
  serializer, RX, the STT services' frame handling and, for stock, its gRPC aio calls run), our STT
  writer threads (``rxdrain-stt-*``), the blocking baseline's reader threads, and the rest (gRPC's
  C-core threads, executors); the emulator's process CPU when it runs in its own process.
* The loop thread's CPU is split by stage with :class:`StageSampler`: every ``interval_s`` it reads
  the loop thread's Python stack (``sys._current_frames``) and attributes the sample to the innermost
  frame that belongs to a known stage (stdlib frames are looked through); samples in the selector's
  wait are idle. Stage share x loop-thread CPU / frames = µs per frame. Sampling costs the loop
  a little (the sampler needs the GIL), so the profile scenario is separate from the capacity ladder.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter

# (path fragment, stage); first match from the innermost frame outwards wins.
_STAGES = (
    ("pipecat_rxdrain/rx_", "RX (RxDrainProcessor)"),
    ("pipecat_rxdrain/stt/", "STT push (ours, on the loop)"),
    ("pipecat/services/google/stt", "STT service (stock)"),
    ("pipecat/services/stt_service", "STT service base"),
    ("pipecat_rxdrain/twilio/", "transport + serializer"),
    ("pipecat/serializers/", "transport + serializer"),
    ("pipecat/transports/", "transport + serializer"),
    ("/websockets/", "transport + serializer"),
    ("/uvicorn/", "transport + serializer"),
    ("/starlette/", "transport + serializer"),
    ("/fastapi/", "transport + serializer"),
    ("/grpc/", "gRPC client (on the loop)"),
    ("/google/", "gRPC client (on the loop)"),
    ("/proto/", "gRPC client (on the loop)"),
    ("/benchmarks/", "benchmark probes"),
    ("pipecat/", "Pipecat plumbing (queues, frame pushes)"),
)
IDLE = "idle"
OTHER = "event loop + C-extension callbacks (grpc.aio, ...)"


def classify(frame) -> str:
    innermost = frame.f_code.co_filename if frame is not None else ""
    f = frame
    while f is not None:
        path = f.f_code.co_filename.replace("\\", "/")
        for frag, stage in _STAGES:
            if frag in path:
                return stage
        f = f.f_back
    return IDLE if innermost.endswith("selectors.py") else OTHER


class StageSampler:
    """Samples one thread's Python stack at a fixed interval on a daemon thread; ``stop()`` joins it."""

    def __init__(self, thread_ident: int, interval_s: float = 0.002) -> None:
        self._ident = thread_ident
        self._interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-stage-sampler", daemon=True)

    def start(self) -> "StageSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            frame = sys._current_frames().get(self._ident)
            self.counts[classify(frame)] += 1
            del frame

    def shares(self) -> dict[str, float]:
        busy = {k: v for k, v in self.counts.items() if k != IDLE}
        total = sum(busy.values())
        return {k: v / total for k, v in busy.items()} if total else {}


def thread_kind(name: str | None, is_loop: bool) -> str:
    if is_loop:
        return "loop"
    if name is None:
        return "other threads (gRPC C-core, ...)"
    if name.startswith("rxdrain-stt-"):
        return "STT writer threads (ours)"
    if name.startswith("bench-blocking-reader"):
        return "blocking reader threads"
    if name.startswith("bench-stage-sampler"):
        return "sampler"
    return "other threads (gRPC C-core, ...)"


def profile_rows(loop_cpu_s: float, thread_cpu: dict[str, float], shares: dict[str, float], emulator_cpu_s: float, frames: int) -> dict[str, float]:
    """µs per frame by stage (the loop thread split by ``shares``) and by thread kind."""
    if frames <= 0:
        return {}
    us = 1e6 / frames
    out = {f"loop: {stage}": loop_cpu_s * share * us for stage, share in sorted(shares.items(), key=lambda x: -x[1])}
    out["loop thread total"] = loop_cpu_s * us
    for kind, cpu in sorted(thread_cpu.items()):
        if kind not in ("loop", "sampler"):
            out[kind] = cpu * us
    if emulator_cpu_s == emulator_cpu_s:  # not NaN: the emulator ran in its own process
        out["emulator process"] = emulator_cpu_s * us
    return out
