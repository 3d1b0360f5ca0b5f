"""The fault matrix: one simulated call per fault against the local Speech emulator, and the table it makes.

Run ``python scripts/fault_matrix.py [--out docs/fault-matrix.md] [--only ID ...]`` to
(re)generate ``docs/fault-matrix.md``. ``tests/stt/test_fault_matrix.py`` runs the very same
``SCENARIOS`` through :func:`run_scenario` and asserts the targets; this script only
reports the numbers.

Each call is a ``StreamingSTTSession`` (the mechanism under ``GoogleSTTService``) fed
a bundled espeak sample in 20 ms chunks over real loopback gRPC. Time compression: audio
is pushed at ``speed`` x real time. Where the outcome depends on how much audio arrives
during a fault, the fault or the queue is scaled so the call sees what a real-time call
would see (see ``Scenario.equivalent``).
"""

from __future__ import annotations

import argparse
import difflib
import gc
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from pipecat_rxdrain.emulator import EmulatorLimits, SpeechEmulator
from pipecat_rxdrain.emulator.faults import FAULT_CODES
from pipecat_rxdrain.google_clients import CHANNEL_OPTIONS, SESSION_METADATA_KEY, emulator_client, insecure_channel
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.stt.backoff import Backoff
from pipecat_rxdrain.stt.recognition_config import build_v2_spec, recognizer_path
import grpc

from pipecat_rxdrain.stt.reconnect import ReconnectPolicy
from pipecat_rxdrain.stt.session import STTError, StreamingSTTSession

CHUNK = 320  # 20 ms of 8 kHz mono PCM16
CHUNKS_PER_S = 50
PRODUCTION_QUEUE = 200  # GoogleSTTService's default max_queue: 4 s of caller audio


@dataclass
class CallContext:
    """What an in-call action can touch: the emulator(s), the session, and the delivered results."""

    emulator: SpeechEmulator
    session: StreamingSTTSession
    script: tuple[str, ...]
    results: list
    old_emulators: list[SpeechEmulator] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    id: str
    fault: str  # what happens, for the table
    sample: str = "call_en"
    repeat: int = 1  # the sample is played this many times back to back
    speed: float = 8.0  # audio pushed at this multiple of real time
    max_queue: int | None = None  # None: PRODUCTION_QUEUE x speed, i.e. the same 4 s of wall time
    emulator: dict = field(default_factory=dict)  # SpeechEmulator kwargs
    arm: Callable[[SpeechEmulator], Any] | None = None  # before the call
    at_audio_s: float | None = None  # run ``action`` when this much audio has been pushed
    action: Callable[[CallContext], Any] | None = None
    session: dict = field(default_factory=dict)  # StreamingSTTSession kwargs
    expect: str = "survive"  # or "error": the call ends with one clear, non-retriable error
    max_words_lost: int | None = 0  # None: reported, not a target (e.g. audio lost by design)
    max_duplicates: int | None = 0
    equivalent: str = ""  # how the compressed run maps to a real-time call
    close_timeout_s: float = 8.0
    # SIGSTOP rows: the emulator runs as its own process (``rxdrain emulator``), frozen with
    # SIGSTOP for ``freeze_s`` wall seconds at ``at_audio_s``, then SIGCONT. The client's
    # keep-alive times (production: ping 10 s, timeout 5 s) are multiplied by ``keepalive_scale``.
    freeze_s: float | None = None
    keepalive_scale: float = 1.0
    channel_options: tuple = ()  # extra client channel options for this row only (not production's)
    slow: bool = False  # too slow for the test suite; its compressed twin is tested instead

    @property
    def queue(self) -> int:
        return self.max_queue if self.max_queue is not None else int(PRODUCTION_QUEUE * self.speed)


@dataclass
class Outcome:
    scenario: Scenario
    survived: bool
    errors: list[STTError]
    expected_words: int
    words_lost: int
    duplicates: int  # words delivered beyond the expected transcript (repeated or invented)
    finals: list[str]
    audio_dropped_ms: float  # counted drops (bounded queue) and audio discarded by a fatal error
    stale_dropped_ms: float  # sent audio too old to replay after the write-stall watchdog fired
    write_stalls: int
    max_lead_ms: float  # the furthest a stream got ahead of its wall clock (in real-time audio ms)
    recovery_s: float  # longest wall-clock gap in audio reaching the server during the call
    reconnects: int
    rotations: int
    streams: int
    replayed_ms: float
    dup_finals_suppressed: int
    response_delay_s: float  # mean server-side delay of results (latency fault)
    stt_threads_after: int
    threads_delta: int
    rss_delta_mb: float
    accounted: bool  # every pushed chunk was sent or counted as dropped
    wall_s: float
    notes: list[str]
    # SIGSTOP rows only.
    detect_s: float | None = None  # freeze -> the session saw the connection dead
    detected_by: str = ""  # "keepalive" or "write-stall watchdog" (or the error, if neither)
    deaf_s: float | None = None  # freeze -> first result after SIGCONT
    words_lost_bound: int | None = None  # words in the audio the 4 s queue could not hold
    finals_after_thaw: int = 0  # finals delivered after SIGCONT: the session transcribes again
    emulator_rc: int | None = None  # the emulator process's exit status (it was stopped)


# -- in-call actions ------------------------------------------------------------------------


def _restart_emulator(ctx: CallContext, down_s: float = 0.0) -> None:
    """Stop the emulator (streams die with UNAVAILABLE) and start a fresh one on the same port.

    The fresh server knows nothing of the call. Its scripted transcripts continue from the
    finals the client has received, as a real recognizer would transcribe the replayed audio.
    ``down_s``: how long the port stays closed (connection refused) before the new one listens.
    """
    old = ctx.emulator
    port = old.port
    old.stop()
    time.sleep(max(0.05, down_s))  # let results already on the wire reach the client
    delivered = sum(1 for r in list(ctx.results) if r.is_final)
    new = SpeechEmulator(port=port, script=list(ctx.script[delivered:]))
    for _ in range(50):
        try:
            new.start()
            break
        except OSError:
            time.sleep(0.02)
    ctx.old_emulators.append(old)
    ctx.emulator = new
    ctx.notes.append(f"restarted after {delivered} finals")


def _abort(code: str) -> Callable[[SpeechEmulator], Any]:
    # after_chunks=25 requests of <= 60 ms: ~1.5 s into the call, inside the first sentence.
    return lambda emu: emu.faults.abort(after_chunks=25, code=code)


def _stall(seconds_wall: float) -> Callable[[SpeechEmulator], Any]:
    return lambda emu: emu.faults.stall(seconds_wall, after_chunks=10)


def _stall_row(seconds: int, fault: str, equivalent: str) -> Scenario:
    """A server stall of ``seconds`` (at 1x) on a small HTTP/2 window, run as a tenth of it at 10x with the
    production queue of 200. Beyond the queue's 4 s, audio is dropped by design: words lost are reported only."""
    lossless = seconds <= 4
    return Scenario(
        f"stall_{seconds}s",
        fault,
        speed=10.0,
        max_queue=PRODUCTION_QUEUE,
        emulator=dict(small_window=True),
        arm=_stall(seconds / 10.0),
        max_words_lost=0 if lossless else None,
        max_duplicates=0 if lossless else None,
        equivalent=equivalent,
    )


# Every status the session retries (all but OK and the non-retriable ones, see ReconnectPolicy).
RETRIABLE = sorted(
    c.name for c in grpc.StatusCode if c is not grpc.StatusCode.OK and not ReconnectPolicy.is_fatal(c) and c.name in FAULT_CODES
)

SCENARIOS: list[Scenario] = [
    Scenario(
        "down_at_start",
        "emulator down (connection refused) for the first 0.5 s of the call",
        arm=lambda emu: emu.go_down(0.5),
        equivalent="0.5 s outage at call start, real time; recovery is gRPC's own reconnect backoff "
        "(1 s, then x1.6), which the 4 s queue absorbs",
    ),
    Scenario(
        "refused_3",
        "the first 3 streams refused with UNAVAILABLE, then up",
        sample="hello_en",
        arm=lambda emu: emu.faults.refuse(3, code="UNAVAILABLE"),
    ),
    *[
        Scenario(
            f"abort_{code}",
            f"stream aborted mid-utterance with {code} (retriable)",
            sample="hello_en",
            arm=_abort(code),
        )
        for code in RETRIABLE
    ],
    Scenario(
        # Like Google for a service account without access: every stream is rejected. (A one-shot
        # mid-call PERMISSION_DENIED is not a stable scenario: grpc.aio may report it as INTERNAL,
        # and the session's status probe then meets a healthy server; see StreamingSTTSession.)
        "abort_PERMISSION_DENIED",
        "every stream rejected with PERMISSION_DENIED (non-retriable)",
        sample="hello_en",
        arm=lambda emu: emu.faults.refuse(1000, code="PERMISSION_DENIED"),
        expect="error",
        max_words_lost=None,
    ),
    _stall_row(
        1,
        "server stops reading for 1 s (small HTTP/2 window: the writer blocks)",
        "0.1 s stall at 10x with the production queue of 200 = a 1 s stall at 1x",
    ),
    _stall_row(
        5,
        "server stops reading for 5 s (small window)",
        "0.5 s stall at 10x, queue 200 = a 5 s stall at 1x: ~1 s beyond the 4 s queue",
    ),
    _stall_row(
        30,
        "server stops reading for 30 s (small window)",
        "3 s stall at 10x, queue 200 = a 30 s stall at 1x: all but the newest 4 s dropped",
    ),
    Scenario(
        "slow_responses",
        "every response delayed 0.5 s (persistent latency)",
        arm=lambda emu: emu.faults.latency(0.5),
    ),
    Scenario(
        "duration_cuts_x3",
        "server cuts every stream at its duration limit (OUT_OF_RANGE), >= 3 times in the call",
        emulator=dict(limits=EmulatorLimits(max_stream_s=0.8)),
        equivalent="0.8 s limit at 8x = a 6.4 s stream limit: 3-4 forced cuts in a 23 s call",
    ),
    Scenario(
        "rotations_x3",
        "proactive rotation before the limit (stream_limit_s), >= 3 times in the call",
        session=dict(stream_limit_s=0.6, rotate_grace_s=0.3),
    ),
    *[
        Scenario(
            f"refused_{secs:g}s_midcall",
            f"connection refused for {secs:g} s mid-call (port closed, streams cut with UNAVAILABLE)",
            at_audio_s=6.0,
            action=lambda ctx, secs=secs: ctx.emulator.go_down(secs),
            equivalent=f"a {secs:g} s outage in wall time (the 4 s queue is wall time too); deaf time should be "
            "~the outage, not gRPC's channel backoff stacked on ours",
        )
        for secs in (2.0, 3.0)
    ],
    Scenario(
        "kill_restart_3_6s",
        "server killed and restarted ~3.6 s later (new server, same port, no state)",
        at_audio_s=6.0,
        action=lambda ctx: _restart_emulator(ctx, 3.6),
        equivalent="3.6 s down in wall time, within the 4 s queue",
    ),
    *[
        Scenario(
            f"late_answers_{secs:g}s",
            f"every response delayed {secs:g} s",
            arm=lambda emu, secs=secs: emu.faults.latency(secs),
        )
        for secs in (0.3, 0.6, 1.0)
    ],
    Scenario(
        "sigstop_20s",
        "emulator process frozen (SIGSTOP) for 20 s mid-call, then SIGCONT; production keep-alive (10 s / 5 s, ping timeout 5 s)",
        repeat=2,
        speed=1.0,
        max_queue=PRODUCTION_QUEUE,
        at_audio_s=6.0,
        freeze_s=20.0,
        max_words_lost=None,
        max_duplicates=None,
        slow=True,
        equivalent="real time: a 20 s freeze, production keep-alive, queue and stall bound (4 s)",
        close_timeout_s=10.0,
    ),
    Scenario(
        "sigstop_20s_default_ping_timeout",
        "the same 20 s freeze with gRPC's default ping timeout (`grpc.http2.ping_timeout_ms=60000`), which production overrides",
        repeat=2,
        speed=1.0,
        max_queue=PRODUCTION_QUEUE,
        at_audio_s=6.0,
        freeze_s=20.0,
        channel_options=(("grpc.http2.ping_timeout_ms", 60_000),),
        max_words_lost=None,
        max_duplicates=None,
        slow=True,
        equivalent="real time; why production sets the ping timeout (see the SIGSTOP section)",
        close_timeout_s=10.0,
    ),
    Scenario(
        "sigstop_20s_x4",
        "the same, time-compressed 4x: frozen 5 s, keep-alive 2.5 s / 1.25 s, ping timeout 1.25 s",
        repeat=2,
        speed=4.0,
        max_queue=PRODUCTION_QUEUE,
        at_audio_s=6.0,
        freeze_s=5.0,
        keepalive_scale=0.25,
        max_words_lost=None,
        max_duplicates=None,
        equivalent="5 s freeze at 4x with keep-alive, stall bound and queue (200 = 1 s of wall time) all scaled by "
        "1/4: a 20 s freeze at 1x in audio and bounds, but 4x the bytes per wall second (see the SIGSTOP section)",
    ),
    Scenario(
        "emulator_restart",
        "emulator process restarted mid-call (new server, same port, no state)",
        at_audio_s=6.0,
        action=_restart_emulator,
    ),
]

BY_ID = {s.id: s for s in SCENARIOS}


# -- running one call ------------------------------------------------------------------------


def _stt_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("rxdrain-stt"))


def _words(texts: list[str]) -> list[str]:
    return " ".join(texts).lower().split()


@dataclass
class _Before:
    """What one call is measured against: the process's threads and RSS, and the wall clock, before it."""

    proc: psutil.Process
    threads: int
    rss: int
    t_start: float

    @classmethod
    def now(cls) -> _Before:
        proc = psutil.Process()
        gc.collect()
        return cls(proc, threading.active_count(), proc.memory_info().rss, time.monotonic())

    def settle(self) -> None:
        """Give the call's threads 3 s to end (gRPC's aio poller ends once the last aio object is collected)."""
        deadline = time.monotonic() + 3.0
        while threading.active_count() > self.threads and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.02)
        gc.collect()


def _session(sc: Scenario, client_factory, address: str, on_result, on_error) -> StreamingSTTSession:
    """The scenario's session: production settings, with the 4 s stall bound and 5 s lead bound in
    compressed wall time, overridden by ``sc.session``."""
    return StreamingSTTSession(
        _spec(),
        client_factory,
        probe_factory=lambda: emulator_client(address, api="v2", asynchronous=False),
        on_result=on_result,
        on_error=on_error,
        max_queue=sc.queue,
        backoff=Backoff(rng=lambda: 0.5),
        **{"write_stall_s": PRODUCTION_QUEUE * 0.02 / sc.speed, "realtime_factor": sc.speed, **sc.session},
        metadata=[(SESSION_METADATA_KEY, str(uuid.uuid4()))],
        telemetry_interval_s=None,
        name=f"fault-{sc.id}",
    )


def _paced_chunks(pcm: bytes, speed: float):
    """``(n, chunk)`` for each 20 ms chunk of ``pcm``, on an absolute schedule at ``speed`` x real time
    (the caller pushes the chunk; the wait for the next one follows)."""
    period = CHUNK / 16000.0 / speed
    next_t = time.perf_counter()
    for n, i in enumerate(range(0, len(pcm), CHUNK)):
        yield n, pcm[i : i + CHUNK]
        next_t += period
        delay = next_t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def _plain(errors: list[STTError]) -> list[STTError]:
    """The errors' messages without their exceptions: a live exception holds its call and channel (and
    threads), so a call's errors are made plain before its leftovers are counted."""
    return [STTError(e.code, e.message, e.retriable, None) for e in errors]


def _tally(sc: Scenario, baseline: _Before, script: tuple[str, ...], pcm: bytes, results: list,
           errors: list[STTError], st, audio_dropped_ms: float, wall: float, streams: int) -> dict[str, Any]:
    """The :class:`Outcome` fields both kinds of call measure alike: words against the script, accounting
    of every pushed chunk, the session's counters, and what the call left behind (``errors``: plain)."""
    finals = [r.text for r in results if r.is_final]
    expected = _words(list(script))
    got = _words(finals)
    matched = sum(b.size for b in difflib.SequenceMatcher(None, expected, got, autojunk=False).get_matching_blocks())
    sent_bytes = st.audio_sent_ms * 16  # 8 kHz PCM16: 16 bytes per ms
    pushes = -(-len(pcm) // CHUNK)
    lost_bytes = (st.drops + st.discarded_on_error) * CHUNK
    accounted = (
        pushes == st.pushed_chunks + st.rejected + st.malformed
        and abs(sent_bytes + lost_bytes - (len(pcm) - st.rejected * CHUNK)) < CHUNK
    )
    baseline.settle()
    return dict(
        scenario=sc,
        errors=errors,
        survived=not errors,
        expected_words=len(expected),
        words_lost=len(expected) - matched,
        duplicates=len(got) - matched,
        finals=finals,
        audio_dropped_ms=audio_dropped_ms,
        stale_dropped_ms=st.stale_dropped_ms,
        write_stalls=st.write_stalls,
        max_lead_ms=st.max_lead_ms,
        reconnects=st.reconnects,
        rotations=st.rotations,
        streams=streams,
        replayed_ms=st.replayed_ms,
        dup_finals_suppressed=st.duplicate_finals_suppressed,
        stt_threads_after=_stt_threads(),
        threads_delta=threading.active_count() - baseline.threads,
        rss_delta_mb=(baseline.proc.memory_info().rss - baseline.rss) / 1e6,
        accounted=accounted,
        wall_s=wall,
    )


def _spec():
    return build_v2_spec(
        sample_rate=8000,
        recognizer=recognizer_path("rxdrain-faults", "global"),
        language_codes=["en-US"],
        model="latest_long",
    )


def warm_up() -> None:
    """One tiny call, so process-wide singletons (gRPC's aio poller thread) exist before counting threads."""
    emu = SpeechEmulator().start()
    try:
        s = StreamingSTTSession(
            _spec(), lambda: emulator_client(emu.address, api="v2", asynchronous=True), telemetry_interval_s=None
        ).start()
        s.push_audio(b"\0" * CHUNK)
        time.sleep(0.1)
        s.close(2)
    finally:
        emu.stop()


def _scaled_channel_options(scale: float) -> list[tuple[str, Any]]:
    """Production's channel options with the keep-alive times multiplied by ``scale`` (1: unchanged)."""
    keep = {"grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.http2.ping_timeout_ms"}
    return [(k, max(1, int(v * scale)) if k in keep else v) for k, v in CHANNEL_OPTIONS]


def _async_client(address: str, options: list[tuple[str, Any]]):
    """An official async v2 client on an insecure loopback channel with ``options`` (see google_clients)."""
    from google.cloud import speech_v2
    from google.cloud.speech_v2.services.speech.transports import SpeechGrpcAsyncIOTransport

    channel = insecure_channel(address, asynchronous=True, options=options)
    return speech_v2.SpeechAsyncClient(transport=SpeechGrpcAsyncIOTransport(channel=channel))


class EmulatorProcess:
    """``rxdrain emulator`` in a child process: start, freeze (SIGSTOP), thaw (SIGCONT), and always stop."""

    def __init__(self, script: tuple[str, ...], *args: str) -> None:
        self._script = tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="rxdrain-fm-", delete=False)
        self._script.write("\n".join(script) + "\n")
        self._script.close()
        self._stderr = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "pipecat_rxdrain.cli", "emulator", "--port", "0", "--control-port", "0",
               "--script", self._script.name, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr)
        self.frozen = False
        self.address = ""
        self.control = ""
        try:
            self._read_addresses(20.0)
        except BaseException:
            self.stop()
            raise

    def _read_addresses(self, timeout: float) -> None:
        # Raw reads: a buffered readline() would hide lines already read from select().
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while not self.address:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self._stderr.seek(0)
                    raise RuntimeError(f"rxdrain emulator did not start: {self._stderr.read().decode()[-500:]}")
                if not sel.select(left):
                    continue
                buf += os.read(fd, 4096)
                *lines, buf = buf.split(b"\n")
                for line in (raw.decode().strip() for raw in lines):
                    if line.startswith("EMULATOR_CONTROL="):
                        self.control = line.split("=", 1)[1]
                    elif line.startswith("SPEECH_EMULATOR_HOST="):
                        self.address = line.split("=", 1)[1]
        finally:
            sel.close()

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.frozen = False

    def streams(self) -> list[dict]:
        """The emulator's per-stream records (``GET /streams`` on its control endpoint)."""
        with urllib.request.urlopen(f"{self.control}/streams", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
                except ProcessLookupError:
                    pass
                self.frozen = False
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()
            Path(self._script.name).unlink(missing_ok=True)


def run_frozen(sc: Scenario) -> Outcome:
    """A call whose emulator process is frozen (SIGSTOP) for ``sc.freeze_s`` mid-call, then thawed.

    Measures when the session noticed the dead connection and by which mechanism, how long
    no result reached the caller, the audio dropped, and the words lost against the words
    in the audio the queue cannot hold during the freeze. Always thaws and stops the emulator.
    """
    assert sc.freeze_s is not None and sc.at_audio_s is not None
    sample = load_sample(sc.sample)
    script = tuple(sample.segments) * sc.repeat
    pcm = sample.pcm16 * sc.repeat
    baseline = _Before.now()

    emu = EmulatorProcess(script)
    # a scenario's own options replace production's of the same name (gRPC would keep the first of a duplicate)
    options = list({**dict(_scaled_channel_options(sc.keepalive_scale)), **dict(sc.channel_options)}.items())
    address = emu.address
    results: list = []
    arrivals: list[float] = []
    errors: list[STTError] = []

    def on_result(r) -> None:
        arrivals.append(time.monotonic())
        results.append(r)

    session: StreamingSTTSession | None = None
    marks: dict[str, Any] = {}
    records: list[dict] = []
    try:
        session = _session(sc, lambda: _async_client(address, options), address, on_result, errors.append).start()
        freeze_at = int(sc.at_audio_s * CHUNKS_PER_S)
        for n, chunk in _paced_chunks(pcm, sc.speed):
            now = time.monotonic()
            if n == freeze_at:
                before = session.stats
                marks["base"] = (before.reconnects, before.write_stalls, before.last_error)
                emu.freeze()
                marks["stop"] = now
            if "stop" in marks and "cont" not in marks:
                if "detect" not in marks:
                    st = session.stats
                    if (st.reconnects, st.write_stalls, st.last_error) != marks["base"]:
                        marks["detect"] = now
                        marks["stalls"] = st.write_stalls - marks["base"][1]
                        marks["error"] = st.last_error or ""
                if now - marks["stop"] >= sc.freeze_s:
                    emu.thaw()
                    marks["cont"] = time.monotonic()
            session.push_audio(chunk)
        session.close(sc.close_timeout_s)
        emu.thaw()
        records = emu.streams()
    finally:
        if session is not None:
            session.close(1.0)
        emu.stop()
    wall = time.monotonic() - baseline.t_start
    if "stop" not in marks or "cont" not in marks:
        raise RuntimeError(f"{sc.id}: the call ended before the freeze was over; make the call longer")

    st = session.stats
    errors = _plain(errors)
    session = None
    after = [a for a in arrivals if a >= marks["cont"]]
    deaf = (after[0] - marks["stop"]) if after else float("inf")
    detect = marks.get("detect")
    err = marks.get("error", "")
    if detect is None:
        by = "not detected during the freeze"
    elif marks.get("stalls"):
        by = "write-stall watchdog"
    elif "connection timed out" in err.lower() or "etimedout" in err.lower():
        # gRPC sets TCP_USER_TIMEOUT to the keep-alive timeout when keep-alive is on (Linux): unacked
        # data older than that ends the connection with ETIMEDOUT, often before the ping's own timeout.
        by = "keepalive (TCP_USER_TIMEOUT)"
    elif "keepalive" in err.lower() or "ping" in err.lower():
        by = "keepalive ping"
    else:
        by = f"other: {err[:80]}"
    # Design bound: the freeze's audio minus what the queue holds is dropped, and its words are lost.
    freeze_audio_s = sc.freeze_s * sc.speed
    words_per_s = len(_words(list(script))) / (len(pcm) / 16000.0)
    bound = round(words_per_s * max(0.0, freeze_audio_s - sc.queue * 0.02))
    notes = [
        f"server saw {len(records)} streams ({sum(1 for r in records if r['ended'] and r['ended']['code'] != 'OK')} "
        "ended by an error or cancel)"
    ]
    if err:
        notes.append(f"error at detection: `{err[:120]}`")
    ends = [f"{r['ended']['code']} ({r['ended']['reason']})" for r in records if r["ended"] and r["ended"]["code"] != "OK"]
    if ends:
        notes.append("server-side stream ends: " + ", ".join(ends))
    if st.last_error and st.last_error != err:
        notes.append(f"last error: `{st.last_error[:120]}`")

    return Outcome(
        **_tally(sc, baseline, script, pcm, results, errors, st, st.dropped_ms + st.discarded_on_error * 20.0, wall,
                 len(records)),
        recovery_s=deaf,
        response_delay_s=0.0,
        notes=notes,
        detect_s=None if detect is None else detect - marks["stop"],
        detected_by=by,
        deaf_s=deaf,
        words_lost_bound=bound,
        finals_after_thaw=sum(1 for r, a in zip(results, arrivals) if r.is_final and a >= marks["cont"]),
        emulator_rc=emu.proc.returncode,
    )


def run_scenario(sc: Scenario) -> Outcome:
    """Play one call through ``sc`` and measure it. Always stops what it started."""
    if sc.freeze_s is not None:
        return run_frozen(sc)
    sample = load_sample(sc.sample)
    script = tuple(sample.segments) * sc.repeat
    pcm = sample.pcm16 * sc.repeat
    baseline = _Before.now()

    emu = SpeechEmulator(script=list(script), **sc.emulator).start()
    address = emu.address
    results: list = []
    errors: list[STTError] = []
    session = _session(
        sc, lambda: emulator_client(address, api="v2", asynchronous=True), address, results.append, errors.append
    )
    ctx = CallContext(emulator=emu, session=session, script=script, results=results)
    action_thread: threading.Thread | None = None
    try:
        if sc.arm is not None:
            sc.arm(emu)
        session.start()
        feed_start = time.monotonic()
        action_at = None if sc.at_audio_s is None else int(sc.at_audio_s * CHUNKS_PER_S)
        for n, chunk in _paced_chunks(pcm, sc.speed):
            if n == action_at and sc.action is not None:
                action_thread = threading.Thread(target=sc.action, args=(ctx,), name="fault-action")
                action_thread.start()
            session.push_audio(chunk)
        if action_thread is not None:
            action_thread.join(10)
        session.close(sc.close_timeout_s)
    finally:
        if action_thread is not None:
            action_thread.join(10)
        session.close(1.0)
        for e in [*ctx.old_emulators, ctx.emulator]:
            e.stop()
    wall = time.monotonic() - baseline.t_start

    streams = [r for e in [*ctx.old_emulators, ctx.emulator] for r in e.streams]
    received = sorted(c.received_at for r in streams for c in r.chunks)
    marks = [feed_start, *received]
    recovery = max((b - a for a, b in zip(marks, marks[1:])), default=0.0)
    delays = [r.sent_at - r.produced_at for s in streams for r in s.results]
    st = session.stats
    errors = _plain(errors)
    ctx.session = session = None  # type: ignore[assignment]
    return Outcome(
        **_tally(sc, baseline, script, pcm, results, errors, st, (st.drops + st.discarded_on_error) * 20.0, wall,
                 len(streams)),
        recovery_s=recovery,
        response_delay_s=(sum(delays) / len(delays)) if delays else 0.0,
        notes=ctx.notes,
    )


# -- the table --------------------------------------------------------------------------------


def _outcome_text(o: Outcome) -> str:
    if o.scenario.expect == "error":
        if len(o.errors) == 1 and not o.errors[0].retriable:
            return f"ends with one clear error: `{o.errors[0].code.name if o.errors[0].code else '?'}`"
        return f"UNEXPECTED: {len(o.errors)} errors"
    return "survives" if o.survived else f"UNEXPECTED error: {o.errors[0].message}"


def _target(value: int | None) -> str:
    return "-" if value is None else f"<= {value}"


def markdown(outcomes: list[Outcome]) -> str:
    lines = [
        "# Fault matrix",
        "",
        "Generated by `scripts/fault_matrix.py` from the scenarios `tests/stt/test_fault_matrix.py` asserts",
        "(regenerate: `.venv/bin/python scripts/fault_matrix.py`). Each row is one simulated call:",
        "a `StreamingSTTSession` (the engine of `GoogleSTTService`) streaming a bundled espeak",
        "sample in 20 ms chunks to the local Speech emulator over real loopback gRPC, with",
        "production settings (queue of 200 chunks = 4 s, replay window 30 s, default backoff",
        "0.25 s doubling to 5 s, 12 attempts) except where a row says otherwise. Audio is pushed",
        "faster than real time; the queue is then 200 x speed so it holds the same 4 s of *wall*",
        "time as production (outages and backoff are wall time), except in the stall rows, where",
        "the stall is compressed instead and the queue stays 200 (see the notes below the table).",
        "The write-stall bound (4 s) and the lead bound (5 s of audio) are scaled the same way.",
        "",
        "Columns: **words lost** / **dup** = words of the expected transcript missing from / added",
        "to the finals delivered (word alignment); **dropped** = audio dropped by the bounded",
        "queue, counted in `stats.drops`; **recovery** = longest wall-clock gap in audio reaching",
        "the server (at the compressed speed); **threads** = threads left after the call minus",
        "before; **RSS** = resident memory after minus before (noisy: includes the emulator).",
        "",
        "| scenario | fault | outcome | words lost (target) | dup (target) | dropped | recovery | streams / reconnects / rotations | replayed | max lead | threads | RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        sc = o.scenario
        lines.append(
            f"| `{sc.id}` | {sc.fault} | {_outcome_text(o)} | {o.words_lost}/{o.expected_words} ({_target(sc.max_words_lost)})"
            f" | {o.duplicates} ({_target(sc.max_duplicates)}) | {o.audio_dropped_ms / 1000:.1f} s"
            f" | {o.recovery_s:.2f} s | {o.streams} / {o.reconnects} / {o.rotations} | {o.replayed_ms / 1000:.1f} s"
            f" | {o.max_lead_ms / 1000:.1f} s | {o.threads_delta:+d} | {o.rss_delta_mb:+.1f} MB |"
        )
    lines += ["", "## Time compression and notes", ""]
    for o in outcomes:
        sc = o.scenario
        extra = []
        extra.append(f"{sc.speed:g}x real time, queue {sc.queue}")
        if sc.equivalent:
            extra.append(sc.equivalent)
        if o.response_delay_s > 0.05:
            extra.append(f"mean response delay {o.response_delay_s:.2f} s")
        if o.write_stalls:
            extra.append(
                f"write-stall watchdog fired {o.write_stalls}x; {o.stale_dropped_ms / 1000:.1f} s of sent, unfinalized "
                "audio older than the bound not replayed"
            )
        if o.dup_finals_suppressed:
            extra.append(f"{o.dup_finals_suppressed} repeated final(s) suppressed by the session")
        extra += o.notes
        extra.append(f"ran in {o.wall_s:.1f} s")
        lines.append(f"- `{sc.id}`: " + "; ".join(extra) + ".")
    lines += [
        "",
        "Reading the stalls: a stalled server stops reading, HTTP/2 flow control blocks the",
        "writer, and `push_audio` keeps taking audio into the bounded queue (it never blocks the",
        "call). A write blocked for 4 s (the write-stall watchdog's bound, the queue's audio time)",
        "cancels the stream: the next one replays only unfinalized audio younger than 4 s and then",
        "the queue, so no audio older than the bound reaches the server, however long the stall;",
        "what the queue could not hold meanwhile is dropped, oldest first, and counted. Lost words",
        "there would be exactly the words inside the dropped audio.",
        "",
        "Reading the outages (`refused_*_midcall`, `kill_restart_3_6s`): *recovery* is the deaf time.",
        "Channels retry the connection every 250 ms..1 s and the session opens its next stream as",
        "soon as the channel is READY again, so the deaf time is the outage plus a fraction of a",
        "second, not gRPC's channel backoff stacked on ours. *max lead* is how far a stream's audio",
        "got ahead of its own wall clock (the replay after a reconnect; bounded by `max_lead_ms`, 5 s).",
        "",
    ]
    frozen = [o for o in outcomes if o.scenario.freeze_s is not None]
    if frozen:
        lines += [
            "## A frozen server (SIGSTOP)",
            "",
            "The `sigstop_*` rows run the emulator as its own process (`rxdrain emulator --port 0",
            "--control-port 0 --script ...`) and freeze it with `SIGSTOP` 6 s (of audio) into the call,",
            "then `SIGCONT`. A frozen peer is the hard case: its kernel still accepts the TCP connection",
            "and buffers what we send, so nothing fails, nothing answers, and writes keep completing",
            "until the HTTP/2 and socket buffers fill. *detected* = wall time from `SIGSTOP` until the",
            "session saw the connection dead (the stream ended and it started reconnecting), and by",
            "what: gRPC keep-alive (our channels: ping every 10 s, 5 s timeout; on Linux gRPC also sets",
            "the socket's TCP_USER_TIMEOUT to the keep-alive timeout, so data unacknowledged that long",
            "ends the connection with ETIMEDOUT) or the write-stall watchdog (a write blocked for 4 s).",
            "*deaf* = `SIGSTOP` until the first result after `SIGCONT` (the *recovery* column above,",
            "for these rows). *dropped* = audio the bounded queue dropped (`stats.drops` x 20 ms =",
            "`stats.dropped_ms`) / sent audio not replayed after a write stall (`stats.stale_dropped_ms`).",
            "*bound* = the words, at the call's mean speech rate, in the audio a 4 s queue cannot hold",
            "during the freeze (freeze minus 4 s): what the design gives up, at most. The emulator is",
            "always thawed (`SIGCONT` before `SIGTERM`) and stopped in a `finally`; *rc* is its exit status.",
            "",
            "| scenario | freeze (wall) | detected | by | deaf | dropped (queue / stale) | words lost (bound) | finals after SIGCONT | threads | rc |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for o in frozen:
            sc = o.scenario
            detect = "no" if o.detect_s is None else f"{o.detect_s:.2f} s"
            lines.append(
                f"| `{sc.id}` | {sc.freeze_s:g} s | {detect} | {o.detected_by} | {o.deaf_s:.2f} s"
                f" | {o.audio_dropped_ms / 1000:.1f} s / {o.stale_dropped_ms / 1000:.1f} s"
                f" | {o.words_lost}/{o.expected_words} ({o.words_lost_bound}) | {o.finals_after_thaw}"
                f" | {o.threads_delta:+d} | {o.emulator_rc} |"
            )
        lines += [
            "",
            "Reading them (gRPC 1.85 on Linux loopback):",
            "",
            "- With production options (`sigstop_20s`) the keep-alive ping, sent 10 s after the last",
            "  byte read, ends the frozen stream ~5 s later, during the freeze; the session's reconnect",
            "  then waits until the thawed server answers.",
            "- `sigstop_20s_default_ping_timeout` shows why production sets `grpc.http2.ping_timeout_ms`:",
            "  this gRPC waits for a keep-alive ping's ack as long as for any ping (default 60 s), not",
            "  the 5 s `keepalive_timeout_ms`; TCP_USER_TIMEOUT (5 s) never trips because the frozen",
            "  peer's kernel keeps acknowledging (at 16 kB/s its buffers do not fill in 20 s); and the",
            "  write-stall watchdog never fires because writes keep completing into gRPC's HTTP/2",
            "  window. Without it the stream ends only after `SIGCONT`, when the thawed server finds it",
            "  idle past its inactivity timeout.",
            "- The 4x row (what the test suite asserts) compresses keep-alive, ping timeout, queue and",
            "  stall bound by 4 but pushes 4x the bytes per wall second; it is detected during the",
            "  freeze, by the keep-alive ping or by TCP_USER_TIMEOUT if that trips first; its test",
            "  asserts that path (detection, reconnect, recovery).",
            "",
            "What all runs share: the caller is deaf for the freeze itself (no server, no results), plus",
            "at most a quarter second after `SIGCONT`; the session transcribes again after `SIGCONT`; no",
            "thread is left and the emulator process exits 0. Whenever the frozen stream ends (during the",
            "freeze or after it), the next stream replays the unfinalized audio the dead connection",
            "swallowed (*replayed* above: 15-23 s), paced by the 5 s lead bound, so the live audio",
            "waits in the 4 s queue meanwhile and its excess is dropped, oldest first, and counted",
            "(`stats.drops` / `stats.dropped_ms`); in `sigstop_20s` all of them *after* `SIGCONT`, while",
            "the replay catches up (the frozen stream took every write). Nothing is stale-dropped (no write stall, so the 4 s replay cut of",
            "the stall case does not apply). Words lost are only those in dropped audio, under the bound.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "fault-matrix.md"))
    ap.add_argument("--only", nargs="*", help="scenario ids to run (default: all)")
    args = ap.parse_args(argv)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    chosen = [BY_ID[i] for i in args.only] if args.only else SCENARIOS
    warm_up()
    outcomes = []
    for sc in chosen:
        o = run_scenario(sc)
        print(
            f"{sc.id:26s} {_outcome_text(o):40s} lost={o.words_lost}/{o.expected_words} dup={o.duplicates} "
            f"dropped={o.audio_dropped_ms / 1000:.1f}s recovery={o.recovery_s:.2f}s streams={o.streams} "
            f"threads={o.threads_delta:+d} rss={o.rss_delta_mb:+.1f}MB ({o.wall_s:.1f}s)",
            flush=True,
        )
        outcomes.append(o)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown(outcomes))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
