"""``make demo`` / ``rxdrain demo``: the same call through the blocking pattern we started from and through ours.

1. starts two local Google Speech emulators (``TimingProfile.GOOGLE``, one seed: the same answer
   timing for both), scripted with the sample's transcript,
2. starts the example Twilio bot (``examples/twilio_bot/bot.py``, in the wheel as
   ``pipecat_rxdrain.examples.twilio_bot.bot``) twice as subprocesses: ``BOT_AUDIO_PATH=blocking``
   (:mod:`pipecat_rxdrain.baseline`: a paced queue and a synchronous gRPC writer on the event loop)
   and ours (RX back-pressure + our STT). Both answer in the offline full mode (``BOT_MODE=offline``:
   a rule-based LLM and espeak-ng speech, real Pipecat services) when espeak-ng is installed,
3. calls each like Twilio (webhook, then Media Streams) with the same sample and the same network
   stall, printing the bot's ``[RX]``/``[STT]`` telemetry and transcripts as they happen,
4. prints a two-column summary (peak q, drops, time in drain, audio age p50/p99/max, end of speech
   -> final, end of speech -> first reply audio at the caller) and writes a PNG of audio age over
   the call for both paths (skipped, and said so, when matplotlib is not installed).

``--quick`` is a shorter call (the 7.6 s sample) for CI; ``--rx-only`` runs the RX back-pressure demo
(:mod:`pipecat_rxdrain.rx.demo`) instead. Exit code 0 when both calls went through, both bots exited
cleanly, and ours delivered every final with no drops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..emulator import SpeechEmulator, TimingProfile
from ..samples import Sample, load_sample
from ..twilio.caller import CallerOptions, simulate_call
from .measure import Chunk, audio_ages, chunks_of, finals_latency, percentile, reply_latency, speech_ends

BOT_MODULE = "pipecat_rxdrain.examples.twilio_bot.bot"
_SHOWN = re.compile(r"\[(RX|STT|BOT|TWILIO)\]|ERROR|Traceback")
#: (name in the summary, BOT_AUDIO_PATH)
PATHS = (("blocking", "blocking"), ("ours", "rxdrain"))
DEFAULT_PLOT = "rxdrain-demo-audio-age.png"
FIELD_REPLY = "1.6-2.3 s"  # the seed's headline field figure, end of speech -> the bot's answer


@dataclass(frozen=True)
class CallPlan:
    """Which sample the caller plays and where its network stall is (audio seconds)."""

    sample: str
    stall_at_s: float
    stall_s: float


FULL = CallPlan("call_en", 9.0, 3.0)
QUICK = CallPlan("hello_en", 3.6, 2.5)  # --quick, for CI


class _BotProcess:
    """The bot subprocess; its log lines are echoed (filtered) and kept."""

    def __init__(self, name: str, env: dict[str, str], echo: bool) -> None:
        self.name = name
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        self._echo = echo
        self.proc = subprocess.Popen(
            [sys.executable, "-m", BOT_MODULE, "--host", "127.0.0.1", "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, is_stdout: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if is_stdout and line.startswith("BOT_LISTENING="):
                self.url = line.split("=", 1)[1]
                self._ready.set()
                continue
            self.lines.append(line)
            if self._echo and _SHOWN.search(line):
                print(f"  {self.name:>8} | {line}", flush=True)
        if is_stdout:
            self._ready.set()

    def wait_ready(self, timeout: float) -> str:
        if not self._ready.wait(timeout) or self.url is None:
            raise RuntimeError("the bot did not start:\n" + "\n".join(self.lines[-20:]))
        return self.url

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        for t in self._threads:
            t.join(2)
        return code


def _get_json(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read().decode())


def offline_replies_problem() -> str | None:
    """Why the bots cannot answer offline here (no offline services, no espeak-ng), or None."""
    try:
        from ..offline.espeak import EspeakError, find_espeak
    except ImportError as e:
        return f"the offline reply services are not available ({e})"
    try:
        find_espeak()
    except EspeakError as e:
        return str(e)
    return None


@dataclass
class PathResult:
    """One path's call: what the bot reported, what the caller and the emulator saw, and the numbers."""

    name: str
    audio_path: str
    call: dict[str, Any] = field(default_factory=dict)  # the bot's /stats record of the call
    bot_exit: int | None = None
    call_ok: bool = False
    call_error: str | None = None
    frames_held: int = 0
    ages: list[tuple[float, float]] = field(default_factory=list)  # (call time s, audio age s)
    eos_to_final: list[float] = field(default_factory=list)  # seconds, per utterance
    eos_to_reply: list[float | None] = field(default_factory=list)  # seconds, per utterance (None: unanswered)

    @property
    def finals(self) -> list[str]:
        return [f["text"] for f in self.call.get("finals", [])]

    def exact_finals(self, script: tuple[str, ...]) -> int:
        """How many finals say exactly what the caller said (the sample's transcript, case and spacing aside)."""
        return sum(_norm(a) == _norm(b) for a, b in zip(self.finals, script, strict=False))

    @property
    def rx(self) -> dict[str, Any]:
        return self.call.get("rx", {})

    @property
    def drops(self) -> int:
        return int(self.rx.get("drops") or 0) + int(self.call.get("stt", {}).get("drops") or 0)

    def age_ms(self, q: float) -> float:
        return percentile([a for _, a in self.ages], q) * 1e3

    @property
    def age_max_ms(self) -> float:
        return max((a for _, a in self.ages), default=math.nan) * 1e3

    @property
    def replies(self) -> list[float]:
        return [r for r in self.eos_to_reply if r is not None]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


@dataclass
class DemoResult:
    sample: str
    script: tuple[str, ...]
    ends_s: list[float]
    stall: tuple[float, float]
    replies: bool  # the bots answered (offline full mode)
    replies_skipped: str | None
    paths: dict[str, PathResult]
    plot: Path | None = None
    plot_skipped: str | None = None
    exit_code: int = 1

    @property
    def segments(self) -> int:
        return len(self.script)


def _ms(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e3:.0f}"


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {_ms(percentile(values, 50))} / max {_ms(max(values))} ms"


def summary_rows(res: DemoResult) -> list[tuple[str, list[str]]]:
    """The two-column summary: (row name, [one cell per path])."""
    ps = list(res.paths.values())

    def row(name, fn):
        return (name, [fn(p) for p in ps])

    rows = [
        row("peak q (RX queue, frames)", lambda p: "n/a" if p.rx.get("peak_q") is None else str(int(p.rx["peak_q"]))),
        row("drops (RX + STT, frames)", lambda p: str(p.drops)),
        row("audio frames held by the stall", lambda p: str(p.frames_held)),
        row(
            "time in drain",
            lambda p: f"{p.rx['time_in_drain_s']:.3f} s" if "time_in_drain_s" in p.rx else "none (never drains)",
        ),
        row("audio age p50 / p99 / max", lambda p: f"{p.age_ms(50):.0f} / {p.age_ms(99):.0f} / {p.age_max_ms:.0f} ms"),
        row("end of speech -> final", lambda p: _spread(p.eos_to_final)),
        row("finals", lambda p: f"{len(p.finals)} of {res.segments}"),
        row("finals word for word as spoken", lambda p: f"{p.exact_finals(res.script)} of {res.segments}"),
    ]
    if res.replies:
        rows.append(row("end of speech -> reply audio", lambda p: _spread(p.replies)))
        rows.append(row("utterances answered", lambda p: f"{len(p.replies)} of {len(res.ends_s)}"))
    rows.append(row("bot exit code", lambda p: str(p.bot_exit)))
    return rows


def _table(header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    w0 = max(len(k) for k, _ in rows)
    widths = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(header)]
    line = "+" + "-" * (w0 + 2) + "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [
        line,
        "| " + " " * w0 + " | " + " | ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)) + " |",
        line,
    ]
    for k, cells in rows:
        out.append(f"| {k:<{w0}} | " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + " |")
    out.append(line)
    return "\n".join(out)


def _wait_for_call(url: str, token: str, call_sid: str, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = _get_json(f"{url}/stats", token)
        calls = [c for c in stats["completed"] if c["call_sid"] == call_sid]
        if calls:
            return calls[0]
        time.sleep(0.1)
    return None


def run_demo(
    *,
    sample: str = FULL.sample,
    stall_at_s: float = FULL.stall_at_s,
    stall_s: float = FULL.stall_s,
    echo: bool = True,
    timing: str = "google",
    seed: int = 7,
    replies: bool = True,
    plot: str | Path | None = DEFAULT_PLOT,
) -> DemoResult:
    meta = load_sample(sample)
    profile = TimingProfile.parse(timing)
    ends = speech_ends(meta.pcm16, meta.sample_rate)
    problem = offline_replies_problem() if replies else "not asked for (--no-replies)"
    answer = problem is None
    print(
        f"== pipecat-rxdrain demo: {sample}.wav ({meta.duration_s:.1f} s, {meta.language}), "
        f"{stall_s:g} s network stall at {stall_at_s:g} s, emulator timing {profile.value} (seed {seed}) ==",
        flush=True,
    )
    print(
        "the same call through the blocking pattern we started from (pipecat_rxdrain.baseline) and through ours",
        flush=True,
    )
    if answer:
        print("bots answer offline: rule-based LLM + espeak-ng TTS (BOT_MODE=offline), timed at the caller", flush=True)
    else:
        print(f"replies skipped: {problem}; the bots only transcribe", flush=True)
    res = DemoResult(
        sample,
        meta.segments,
        ends,
        (stall_at_s, stall_s),
        answer,
        problem,
        {name: PathResult(name, ap) for name, ap in PATHS},
    )
    emus: dict[str, SpeechEmulator] = {}
    bots: dict[str, _BotProcess] = {}
    token = secrets.token_urlsafe(24)
    try:
        for name, ap in PATHS:
            emus[name] = SpeechEmulator(script=sample, timing=profile, seed=seed).start()
            env = dict(os.environ)
            for var in (
                "TWILIO_AUTH_TOKEN",
                "TWILIO_ACCOUNT_SID",
                "GOOGLE_API_KEY",
                "PUBLIC_HOST",
                "BOT_MODE",
                "TTS_VOICE",
            ):
                env.pop(var, None)
            env.update(
                SPEECH_EMULATOR_HOST=emus[name].address,
                STT_LANGUAGE=meta.language,
                LOG_LEVEL="INFO",
                BOT_MODE="offline" if answer else "transcribe",
                BOT_AUDIO_PATH=ap,
                STATS_TOKEN=token,
                PYTHONUNBUFFERED="1",
                WORKERS="1",  # one process: the demo reads the call's record from its /stats
            )
            bots[name] = _BotProcess(name, env, echo)  # both start at once; the calls run one after the other
        for name, _ap in PATHS:
            _run_one(res.paths[name], bots[name], emus[name], meta, ends, (stall_at_s, stall_s), token)
    finally:
        for bot in bots.values():
            if bot.proc.poll() is None:
                bot.terminate()
        for emu in emus.values():
            emu.stop()
    _report(res, plot)
    return res


def _run_one(
    pr: PathResult,
    bot: _BotProcess,
    emu: SpeechEmulator,
    meta: Sample,
    ends: list[float],
    stall: tuple[float, float],
    token: str,
) -> None:
    """One call through one bot; fills ``pr`` with what the bot, the caller and the emulator saw."""
    stall_at_s, stall_s = stall
    url = bot.wait_ready(timeout=90)
    port = url.rsplit(":", 1)[1]
    print(
        f"\n-- {pr.name}: example bot (BOT_AUDIO_PATH={pr.audio_path}) on {url}, pid {bot.proc.pid}; "
        f"emulator on {emu.address}",
        flush=True,
    )
    opts = CallerOptions(
        url=f"ws://127.0.0.1:{port}/ws",
        twiml_url=f"http://127.0.0.1:{port}/twiml",
        sample=meta.name,
        stall_at_s=stall_at_s,
        stall_s=stall_s,
        tail_silence_s=2.5,
        linger_s=4.0,  # the bot closes the socket first (it plays out its reply and 2 s of silence)
    )
    summary = asyncio.run(simulate_call(opts))
    pr.call_ok, pr.call_error = summary.ok, summary.error
    pr.frames_held = summary.stalls[0]["frames_held"] if summary.stalls else 0
    call = _wait_for_call(url, token, opts.call_sid, timeout=15)
    pr.bot_exit = bot.terminate()
    print(f"-- {pr.name}: bot stopped with SIGTERM, exit code {pr.bot_exit}", flush=True)
    if call is None:
        pr.call_error = pr.call_error or "the bot did not report the call"
        return
    pr.call = call
    t0 = summary.audio_t0
    if t0 is None:
        return
    wall_minus_mono = time.time() - time.monotonic()
    chunks: list[Chunk] = chunks_of(emu.streams)
    pr.ages = audio_ages(chunks, t0, [t - wall_minus_mono for t in call.get("rx", {}).get("drop_times", [])])
    final_times = [f["at"] - wall_minus_mono for f in call.get("finals", [])]
    pr.eos_to_final = finals_latency(final_times, ends, t0)
    pr.eos_to_reply = reply_latency(summary.sound_received_at, ends, t0, final_times)


def _report(res: DemoResult, plot: str | Path | None) -> None:
    for pr in res.paths.values():
        print(f"\n{pr.name} transcripts:")
        for text in pr.finals:
            print(f"  - {text}")
    print("\n" + _table([f"{p.name} ({p.audio_path})" for p in res.paths.values()], summary_rows(res)))
    print(
        "audio age: when the emulator got each 20 ms frame minus when the caller sent it; end of speech: the caller's clock"
    )
    if res.replies:
        print(
            f"the field figure we started from: {FIELD_REPLY} from the caller's end of speech to the bot's answer "
            "(blocking path, Gemini + Google TTS); here the LLM and TTS are local and near-instant, so the gap "
            "between the two columns is the receive path alone"
        )
    if plot is not None:
        from .plot import plot_audio_age, plot_unavailable

        why = plot_unavailable()
        if why is not None:
            res.plot_skipped = why
            print(f"plot skipped: {why}")
        else:
            res.plot = plot_audio_age(
                Path(plot),
                {f"{p.name} ({p.audio_path})": p.ages for p in res.paths.values()},
                stall=res.stall,
                title=f"audio age over the call: {res.sample}.wav, {res.stall[1]:g} s stall at {res.stall[0]:g} s",
            )
            print(f"plot of audio age over time, both paths: {res.plot}")
    ours, blocking = res.paths["ours"], res.paths["blocking"]
    ok = (
        all(p.call_ok and p.bot_exit == 0 for p in res.paths.values())
        and ours.drops == 0
        and len(ours.finals) == res.segments
        and (not res.replies or bool(ours.replies))
    )
    res.exit_code = 0 if ok else 1
    errors = [f"{p.name}: {p.call_error}" for p in (blocking, ours) if p.call_error]
    print("\ndemo " + ("OK" if ok else "FAILED") + (f" ({'; '.join(errors)})" if errors else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--rx-only" in argv:
        argv.remove("--rx-only")
        from ..rx.demo import main as rx_main

        return rx_main(argv)
    p = argparse.ArgumentParser(prog="rxdrain demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--rx-only", action="store_true", help="run only the RX back-pressure demo")
    p.add_argument("--quick", action="store_true", help=f"a shorter call ({QUICK.sample}.wav), for CI")
    p.add_argument("--sample", default=None, help=f"bundled sample (default {FULL.sample}; --quick: {QUICK.sample})")
    p.add_argument("--stall-at", type=float, default=None, help="audio second the network stall starts")
    p.add_argument("--stall-s", type=float, default=None, help="stall length in seconds")
    p.add_argument("--timing", default="google", choices=("google", "fast"), help="the emulator's answer timing")
    p.add_argument("--seed", type=int, default=7, help="the emulator's timing seed (the same for both paths)")
    p.add_argument("--no-replies", action="store_true", help="transcribe only (no offline LLM/TTS)")
    p.add_argument("--plot", default=DEFAULT_PLOT, help=f"where to write the PNG (default ./{DEFAULT_PLOT})")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    p.add_argument("--quiet", action="store_true", help="do not echo the bots' log lines")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    try:
        res = run_demo(
            sample=args.sample or base.sample,
            stall_at_s=base.stall_at_s if args.stall_at is None else args.stall_at,
            stall_s=base.stall_s if args.stall_s is None else args.stall_s,
            echo=not args.quiet,
            timing=args.timing,
            seed=args.seed,
            replies=not args.no_replies,
            plot=None if args.no_plot else args.plot,
        )
    except (RuntimeError, OSError, ValueError) as e:  # FileNotFoundError and URLError are OSErrors
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return res.exit_code
