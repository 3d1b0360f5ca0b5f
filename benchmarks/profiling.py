"""Where the CPU goes, in µs per audio frame and per stage (the benchmark's profile rows).

Method (documented in RESULTS.md): thread CPU accounting plus a stack sampler.

* CPU per thread from ``psutil`` over the run: the event-loop thread (where the transport, the
  serializer, RX, the STT services' frame handling and, for stock, its gRPC aio calls run), our STT
  writer threads (``rxdrain-stt-*``), the blocking baseline's reader threads, and the rest (gRPC's
  C-core threads, executors); the emulator's process CPU when it runs in its own process.
* The loop thread's CPU is split by stage with :class:`StageSampler`: a ``SIGPROF`` interval timer
  (``setitimer(ITIMER_PROF)``, every ``interval_s`` of process CPU) runs a handler on the loop thread
  (the main thread) at its next bytecode boundary; the sample goes to the innermost frame of the
  interrupted stack that belongs to a known stage (stdlib frames are looked through). Because the
  handler runs in the frame that called a C function once it returns, C work (JSON, base64,
  resampling) is charged to its Python caller, and a sleeping loop is charged to "idle" (the
  selector), which is left out. Stage share x loop-thread CPU / frames = µs per frame. The thread
  CPU is read by a separate thread (``ThreadCpuSampler``), never on the loop, and only in the
  profile scenario; it is separate from the capacity ladder.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter

# (path fragment, stage); first match from the innermost frame outwards wins.
_STAGES = (
    ("pipecat_rxdrain/rx/", "RX (RxDrainProcessor)"),
    ("pipecat_rxdrain/busy.py", "RX (RxDrainProcessor)"),  # on the loop only RX reads the busy level
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
#: asyncio's own work (running callbacks and task steps, the selector's bookkeeping) when no known
#: stage is inside it; without this it was charged to the benchmark, whose asyncio.run is at the base.
LOOP = "asyncio event loop (scheduling)"
_LOOP_FILES = ("asyncio/base_events.py", "asyncio/events.py")


def classify(frame) -> str:
    innermost = frame.f_code.co_filename if frame is not None else ""
    f = frame
    while f is not None:
        path = f.f_code.co_filename.replace("\\", "/")
        for frag, stage in _STAGES:
            if frag in path:
                return stage
        if path.endswith(_LOOP_FILES):
            return IDLE if innermost.endswith("selectors.py") else LOOP
        f = f.f_back
    return IDLE if innermost.endswith("selectors.py") else OTHER


class StageSampler:
    """SIGPROF sampling of the main thread's stack by stage; ``start()``/``stop()`` on the main thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self._interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self._old = None
        self.active = False

    def _on_tick(self, signum, frame) -> None:
        self.counts[classify(frame)] += 1

    def start(self) -> "StageSampler":
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            self._old = signal.signal(signal.SIGPROF, self._on_tick)
            signal.setitimer(signal.ITIMER_PROF, self._interval_s, self._interval_s)
            self.active = True
        return self

    def stop(self) -> None:
        if self.active:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)
            signal.signal(signal.SIGPROF, self._old or signal.SIG_DFL)
            self.active = False

    def shares(self) -> dict[str, float]:
        busy = {k: v for k, v in self.counts.items() if k != IDLE}
        total = sum(busy.values())
        return {k: v / total for k, v in busy.items()} if total else {}


class ThreadCpuSampler:
    """Reads every thread's CPU (and name) every ``interval_s`` on its own thread, so threads that exit
    mid-run (the calls' STT threads) are still counted; ``stop()`` joins it."""

    def __init__(self, proc, interval_s: float = 0.25) -> None:
        self._proc = proc
        self._interval_s = interval_s
        self.names: dict[int, str] = {}
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-sampler", daemon=True)

    def sample(self) -> None:
        for t in threading.enumerate():
            if t.native_id:
                self.names.setdefault(t.native_id, t.name)
        try:
            self.seen.update({t.id: t.user_time + t.system_time for t in self._proc.threads()})
        except Exception:  # a thread vanished mid-read: the next sample has it
            pass

    def start(self) -> "ThreadCpuSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()


def thread_kind(name: str | None, is_loop: bool) -> str:
    if is_loop:
        return "loop"
    if name is None:
        return "other threads (gRPC C-core, ...)"
    if name.startswith("rxdrain-stt-"):
        return "STT writer threads (ours)"
    if name.startswith("bench-blocking-reader"):
        return "blocking reader threads"
    if name.startswith("bench-cpu-sampler"):
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
