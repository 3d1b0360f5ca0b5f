"""The benchmark's Speech emulator, configured in ONE place, in this process or in its own.

* :func:`emulator_kwargs` is the only place that turns a scenario and the run's ``--timing`` into
  ``SpeechEmulator`` arguments; :func:`emulator_argv` is the same for the emulator's own process
  (:mod:`benchmarks.emulator_proc`, which calls :func:`emulator_kwargs` again on its side).
* ``--timing`` names an emulator timing profile (``TimingProfile.<NAME>`` of
  ``pipecat_rxdrain.emulator``). Today's emulator has one fixed timing, so ``fast`` (the default)
  passes nothing; an emulator that has ``TimingProfile`` gets ``timing=TimingProfile.FAST`` /
  ``.GOOGLE`` (realistic finals ~0.9 s after the end of speech) with no change here.
* :class:`InProcessEmulator` and :class:`EmulatorProcess` give the harness the same handle:
  ``start()``, ``address``, ``finish() -> (streams, emulator CPU s)``. Streams come back as
  :class:`StreamView` (the fields the metrics read), the same for both.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

TIMINGS = ("fast", "google")
DEFAULT_TIMING = "fast"  # the emulator's timing before TimingProfile existed
SCRIPT_LINES = 400


def bench_script(n: int = SCRIPT_LINES) -> list[str]:
    """Unique per position (so lost / repeated finals are visible), real words from call_en."""
    from pipecat_rxdrain.samples import load_sample

    segs = load_sample("call_en").segments
    return [f"{segs[i % len(segs)]} u{i}" for i in range(n)]


def timing_kwargs(timing: str | None) -> dict:
    """``SpeechEmulator`` keyword arguments for a timing profile name (``fast`` | ``google``)."""
    timing = (timing or DEFAULT_TIMING).lower()
    if timing not in TIMINGS:
        raise ValueError(f"--timing must be one of {', '.join(TIMINGS)}, not {timing!r}")
    try:
        from pipecat_rxdrain.emulator import TimingProfile  # type: ignore[attr-defined]
    except ImportError:
        if timing == "fast":
            return {}
        raise ValueError(
            f"--timing {timing}: this emulator has no timing profiles (pipecat_rxdrain.emulator.TimingProfile); "
            "only --timing fast is available"
        ) from None
    return {"timing": TimingProfile[timing.upper()]}


def emulator_kwargs(*, timing: str | None, small_window: bool = False, max_stream_s: float | None = None) -> dict:
    """Every ``SpeechEmulator`` argument the benchmark uses, in one place."""
    from pipecat_rxdrain.emulator import EmulatorLimits

    kw: dict = {"script": bench_script(), "small_window": small_window}
    if max_stream_s:
        kw["limits"] = EmulatorLimits(max_stream_s=max_stream_s)
    kw.update(timing_kwargs(timing))
    return kw


def scenario_emulator_kwargs(scenario, timing: str | None) -> dict:
    return emulator_kwargs(
        timing=scenario.timing or timing, small_window=scenario.small_window, max_stream_s=scenario.max_stream_s
    )


def arm_faults(faults, *, stall: tuple[float, float] | None, abort_at_s: float | None, times: int) -> None:
    """The scenario's server faults, on ``emulator.faults`` (in either process)."""
    if stall:
        faults.stall(stall[1], after_s=stall[0], times=times)
    if abort_at_s is not None:
        faults.abort(after_s=abort_at_s, code="UNAVAILABLE", times=times)


def emulator_argv(scenario, timing: str | None) -> list[str]:
    """``python -m benchmarks.emulator_proc`` arguments for ``scenario`` (same settings as in-process)."""
    argv = ["--timing", (scenario.timing or timing or DEFAULT_TIMING)]
    if scenario.small_window:
        argv.append("--small-window")
    if scenario.max_stream_s:
        argv += ["--max-stream-s", str(scenario.max_stream_s)]
    if scenario.server_stall:
        argv += ["--stall", f"{scenario.server_stall[0]},{scenario.server_stall[1]}"]
    if scenario.abort_at_s is not None:
        argv += ["--abort-at-s", str(scenario.abort_at_s)]
    argv += ["--fault-times", str(scenario.calls)]
    return argv


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class ChunkView:
    size: int
    received_at: float
    offset: int


@dataclass(frozen=True)
class ResultView:
    kind: str
    sent_at: float
    end_offset_s: float
    transcript: str


@dataclass(frozen=True)
class StreamView:
    """What the metrics read of one emulator stream record (``StreamRecord``), JSON-portable."""

    id: int
    session: str
    started_at: float
    chunks: tuple[ChunkView, ...]
    results: tuple[ResultView, ...]
    end_reason: str | None

    @classmethod
    def of(cls, rec) -> "StreamView":
        return cls(
            id=rec.id,
            session=rec.session,
            started_at=rec.started_at,
            chunks=tuple(ChunkView(c.size, c.received_at, c.offset) for c in rec.chunks),
            results=tuple(ResultView(r.kind, r.sent_at, r.end_offset_s, r.transcript) for r in rec.results),
            end_reason=rec.end.reason if rec.end is not None else None,
        )

    def to_json(self) -> list:
        return [
            self.id, self.session, self.started_at,
            [[c.size, c.received_at, c.offset] for c in self.chunks],
            [[r.kind, r.sent_at, r.end_offset_s, r.transcript] for r in self.results],
            self.end_reason,
        ]

    @classmethod
    def from_json(cls, x: list) -> "StreamView":
        return cls(
            id=x[0], session=x[1], started_at=x[2],
            chunks=tuple(ChunkView(*c) for c in x[3]),
            results=tuple(ResultView(*r) for r in x[4]),
            end_reason=x[5],
        )


# ------------------------------------------------------------------------------ handles


class InProcessEmulator:
    """``SpeechEmulator`` on its own thread in this process (its CPU is subtracted by thread)."""

    in_process = True

    def __init__(self, scenario, timing: str | None) -> None:
        from pipecat_rxdrain.emulator import SpeechEmulator

        self._emu = SpeechEmulator(**scenario_emulator_kwargs(scenario, timing))
        self._scenario = scenario
        self.address = ""
        self.pid = os.getpid()

    async def start(self) -> None:
        self._emu.start()
        sc = self._scenario
        arm_faults(self._emu.faults, stall=sc.server_stall, abort_at_s=sc.abort_at_s, times=sc.calls)
        self.address = self._emu.address

    def thread_ids(self) -> set[int]:
        ids = {t.native_id for t in threading.enumerate() if t.name.startswith("emulator") and t.native_id}
        thread = getattr(self._emu, "_thread", None)  # its server thread, whatever its name
        if thread is not None and thread.native_id:
            ids.add(thread.native_id)
        return ids

    async def finish(self) -> tuple[list[StreamView], float]:
        try:
            streams = [StreamView.of(s) for s in self._emu.streams]
        finally:
            await asyncio.to_thread(self._emu.stop)
        return streams, float("nan")

    async def abort(self) -> None:
        await asyncio.to_thread(self._emu.stop)


class EmulatorProcess:
    """The emulator in a child process (:mod:`benchmarks.emulator_proc`): its CPU and GIL are its own."""

    in_process = False
    START_TIMEOUT_S = 30.0

    def __init__(self, scenario, timing: str | None) -> None:
        self._argv = emulator_argv(scenario, timing)
        self._proc: asyncio.subprocess.Process | None = None
        self.address = ""
        self.pid: int | None = None

    async def start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("SPEECH_EMULATOR_HOST", None)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.emulator_proc", *self._argv, cwd=root, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=1 << 28,
        )
        self.pid = self._proc.pid
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), self.START_TIMEOUT_S)
        except asyncio.TimeoutError:
            line = b""
        text = line.decode().strip()
        if not text.startswith("SPEECH_EMULATOR_HOST="):
            err = b""
            await self.abort()
            if self._proc.stderr is not None:
                err = await self._proc.stderr.read()
            raise RuntimeError(f"emulator process did not start: {text!r} {err.decode(errors='replace')[-500:]}")
        self.address = text.split("=", 1)[1]

    def thread_ids(self) -> set[int]:
        return set()

    async def finish(self) -> tuple[list[StreamView], float]:
        proc = self._proc
        assert proc is not None
        try:
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            data = json.loads(line)
            await asyncio.wait_for(proc.wait(), 15)
        except BaseException:
            await self.abort()
            raise
        return [StreamView.from_json(x) for x in data["streams"]], float(data["cpu_s"])

    async def abort(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


def make_emulator(scenario, timing: str | None):
    return EmulatorProcess(scenario, timing) if scenario.emulator_process else InProcessEmulator(scenario, timing)
