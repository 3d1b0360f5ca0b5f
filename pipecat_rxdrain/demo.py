"""``make demo`` / ``rxdrain demo``: the whole fix, end to end, offline, in one command.

1. starts the local Google Speech emulator (scripted with the ``call_en`` transcript),
2. starts the example Twilio bot (``examples/twilio_bot/bot.py``, shipped in the wheel as
   ``pipecat_rxdrain.examples.twilio_bot.bot``) as a subprocess,
   pointed at the emulator, on a free loopback port,
3. calls it like Twilio (webhook, then Media Streams) with ``call_en.wav`` and a
   3 s network stall in the middle, printing the bot's ``[RX]``/``[STT]`` telemetry
   and transcripts as they happen,
4. prints a summary table and stops the bot with SIGTERM (it must exit 0).

``--rx-only`` runs the RX back-pressure demo (:mod:`pipecat_rxdrain.rx.demo`) instead.
Exit code 0 when the call went through with transcripts, no RX drops and a clean bot exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

BOT_MODULE = "pipecat_rxdrain.examples.twilio_bot.bot"
_SHOWN = re.compile(r"\[(RX|STT|BOT|TWILIO)\]|ERROR|Traceback")


class _BotProcess:
    """The bot subprocess; its log lines are echoed (filtered) and kept."""

    def __init__(self, env: dict[str, str], echo: bool) -> None:
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
                print(f"  bot | {line}", flush=True)
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


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 34 + "+"
    out = [line]
    for k, v in rows:
        out.append(f"| {k:<{width}} | {v:<32} |")
    out.append(line)
    return "\n".join(out)


def _rx_recovery(lines: list[str]) -> float | None:
    """Seconds from the first ``[RX] mode=drain`` line to the next ``mode=normal`` line (log timestamps)."""
    stamp = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+)")
    t_drain = None
    for line in lines:
        m = stamp.match(line)
        if not m or "[RX]" not in line:
            continue
        t = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
        if t_drain is None and "mode=drain" in line:
            t_drain = t
        elif t_drain is not None and "mode=normal" in line:
            return max(0.0, t - t_drain)
    return None


def run_demo(*, sample: str = "call_en", stall_at_s: float = 9.0, stall_s: float = 3.0, echo: bool = True) -> int:
    from .emulator import SpeechEmulator
    from .samples import load_sample
    from .twilio.caller import CallerOptions, simulate_call

    meta = load_sample(sample)
    print(f"== pipecat-rxdrain demo: {sample}.wav ({meta.duration_s:.1f} s, {meta.language}), "
          f"{stall_s:g} s network stall at {stall_at_s:g} s ==", flush=True)
    emu = SpeechEmulator(script=sample).start()
    print(f"speech emulator on {emu.address} (scripted with the sample's transcript)", flush=True)
    env = dict(os.environ)
    stats_token = secrets.token_urlsafe(24)
    for var in ("TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "GOOGLE_API_KEY", "PUBLIC_HOST", "BOT_MODE"):
        env.pop(var, None)
    env.update(
        SPEECH_EMULATOR_HOST=emu.address,
        STT_LANGUAGE=meta.language,
        LOG_LEVEL="INFO",
        BOT_MODE="transcribe",
        STATS_TOKEN=stats_token,
        PYTHONUNBUFFERED="1",
    )
    bot = _BotProcess(env, echo)
    exit_code = 1
    try:
        url = bot.wait_ready(timeout=60)
        port = url.rsplit(":", 1)[1]
        print(f"example bot on {url} (subprocess pid {bot.proc.pid})", flush=True)
        opts = CallerOptions(
            url=f"ws://127.0.0.1:{port}/ws",
            twiml_url=f"http://127.0.0.1:{port}/twiml",
            sample=sample,
            stall_at_s=stall_at_s,
            stall_s=stall_s,
            tail_silence_s=1.5,
        )
        print(f"calling: POST /twiml, then /ws; {stall_s:g} s stall at {stall_at_s:g} s ...", flush=True)
        summary = asyncio.run(simulate_call(opts))
        deadline = time.monotonic() + 10
        calls: list[dict] = []
        while time.monotonic() < deadline:
            stats = _get_json(f"{url}/stats", stats_token)
            calls = [c for c in stats["completed"] if c["call_sid"] == opts.call_sid]
            if calls:
                break
            time.sleep(0.1)
        code = bot.terminate()
        print(f"bot stopped with SIGTERM, exit code {code}", flush=True)
        if not calls:
            print("demo FAILED: the bot did not report the call", file=sys.stderr)
            return 1
        call = calls[0]
        rx, stt, tw = call["rx"], call["stt"], call["twilio"]
        latencies = [f["eos_to_final_ms"] for f in call["finals"] if f["eos_to_final_ms"] is not None]
        recovery = _rx_recovery(bot.lines)
        print("\ntranscripts:")
        for f in call["finals"]:
            print(f"  - {f['text']}")
        rows = [
            ("call", f"{summary.frames_sent} frames, {summary.audio_s:.1f} s audio"),
            ("network stall", f"{stall_s:g} s at {stall_at_s:g} s ({summary.stalls[0]['frames_held'] if summary.stalls else 0} frames held)"),
            ("RX peak q", str(rx.get("peak_q"))),
            ("RX time in drain", f"{rx.get('time_in_drain_s', 0):.3f} s ({rx.get('drain_episodes')} episode(s))"),
            ("RX drain -> normal (log)", "n/a" if recovery is None else f"{recovery:.2f} s"),
            ("RX q at end", str(rx.get("q"))),
            ("RX drops", str(rx.get("drops"))),
            ("STT drops", str(stt.get("drops"))),
            ("STT write_ms mean / max", f"{stt.get('write_ms_mean')} / {stt.get('write_ms_max')}"),
            ("finals", f"{len(call['finals'])} (sample has {len(meta.segments)} segments)"),
            (
                "end of speech -> final",
                "n/a" if not latencies else f"median {statistics.median(latencies):.0f} ms, max {max(latencies)} ms",
            ),
            ("bad Twilio messages", str(tw.get("dropped_total"))),
            ("bot exit code", str(code)),
        ]
        print("\n" + _table(rows))
        ok = summary.ok and code == 0 and rx.get("drops") == 0 and bool(call["finals"]) and rx.get("peak_q", 0) > 0
        exit_code = 0 if ok else 1
        print("\ndemo " + ("OK" if ok else "FAILED") + (f" ({summary.error})" if summary.error else ""), flush=True)
        return exit_code
    finally:
        if bot.proc.poll() is None:
            bot.terminate()
        emu.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--rx-only" in argv:
        argv.remove("--rx-only")
        from .rx.demo import main as rx_main

        return rx_main(argv)
    p = argparse.ArgumentParser(prog="rxdrain demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--rx-only", action="store_true", help="run only the RX back-pressure demo")
    p.add_argument("--sample", default="call_en")
    p.add_argument("--stall-at", type=float, default=9.0)
    p.add_argument("--stall-s", type=float, default=3.0)
    p.add_argument("--quiet", action="store_true", help="do not echo the bot's log lines")
    args = p.parse_args(argv)
    try:
        return run_demo(sample=args.sample, stall_at_s=args.stall_at, stall_s=args.stall_s, echo=not args.quiet)
    except (RuntimeError, FileNotFoundError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
