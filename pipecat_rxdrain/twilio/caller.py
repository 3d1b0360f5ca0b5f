"""``rxdrain call``: a simulated Twilio caller for a bot's Media Streams websocket.

It connects like Twilio does and streams a WAV as ``connected``/``start``/
``media``/``stop`` messages in Twilio's exact JSON shapes, one 160-byte mu-law
frame per 20 ms on an absolute schedule (no drift), optionally with network
faults:

* ``--stall-at S --stall-s D``: nothing is sent for D s from audio time S; the
  frames held meanwhile then arrive as one burst (what Twilio does after a hiccup).
* ``--bunch N``: frames go out in clumps of N. ``--jitter-ms J``: each frame is
  late by a random 0..J ms (order kept).
* ``--speed X``: compress time (X times real time) for tests.

With ``--twiml-url`` it first POSTs the voice webhook like Twilio (signed with
``--auth-token``), reads ``<Connect><Stream>`` and its ``<Parameter>``s from the
TwiML, and sends those as ``start.customParameters``. It records what the bot
sends back (media, mark, clear) and prints a JSON summary.

No Pipecat import: this is a light client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .audio import FRAME_MS, silence_frames, wav_to_twilio_frames
from .messages import connected_message, media_message, start_message, stop_message

FRAME_S = FRAME_MS / 1000.0
_MULAW_SILENCE = b"\xff\x7f"  # mu-law +0 and -0


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class CallerOptions:
    """What to send, where, and which faults to inject. Times are audio seconds unless noted."""

    url: str | None = None  # ws://127.0.0.1:8765/ws (overrides the TwiML's wss:// URL)
    wav: str | None = None
    sample: str | None = None
    frames: list[bytes] | None = field(default=None, repr=False)  # pre-built 160-byte mu-law frames
    twiml_url: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    signed_url: str | None = None  # the public URL Twilio signs (default: twiml_url)
    call_sid: str = field(default_factory=lambda: _sid("CA"))
    account_sid: str = field(default_factory=lambda: _sid("AC"))
    stream_sid: str = field(default_factory=lambda: _sid("MZ"))
    from_number: str = "+15005550001"
    to_number: str = "+15005550002"
    custom_parameters: dict[str, str] = field(default_factory=dict, repr=False)
    stall_at_s: float | None = None
    stall_s: float = 0.0
    bunch: int = 1
    jitter_ms: float = 0.0
    seed: int = 0
    speed: float = 1.0
    tail_silence_s: float = 1.0  # silence after the audio, so the last words can be finalized
    hangup_at_s: float | None = None  # hang up abruptly (no stop) at this audio time
    send_stop: bool = True
    linger_s: float = 2.0  # wall seconds to wait for the bot after stop before closing
    connect_timeout_s: float = 10.0
    echo_marks: bool = True  # Twilio echoes a mark once the audio before it has played

    def validate(self) -> None:
        if not (self.url or self.twiml_url):
            raise ValueError("give --url (the bot's ws:// media URL) and/or --twiml-url")
        if sum(x is not None for x in (self.wav, self.sample, self.frames)) != 1:
            raise ValueError("give exactly one of --wav, --sample (or frames=)")
        if self.speed <= 0:
            raise ValueError(f"--speed must be > 0, got {self.speed}")
        if self.bunch < 1:
            raise ValueError(f"--bunch must be >= 1, got {self.bunch}")
        if self.jitter_ms < 0 or self.stall_s < 0 or self.tail_silence_s < 0:
            raise ValueError("--jitter-ms, --stall-s and --tail-silence-s must be >= 0")
        if self.stall_at_s is not None and self.stall_at_s < 0:
            raise ValueError("--stall-at must be >= 0")


@dataclass
class CallSummary:
    call_sid: str
    stream_sid: str
    frames_total: int = 0
    frames_sent: int = 0
    audio_s: float = 0.0
    duration_s: float = 0.0  # wall clock
    speed: float = 1.0
    stalls: list[dict[str, Any]] = field(default_factory=list)
    bunch: int = 1
    jitter_ms: float = 0.0
    max_late_ms: float = 0.0  # worst lateness of a send vs its schedule (wall ms)
    stop_sent: bool = False
    hung_up: bool = False
    twiml_status: int | None = None
    twiml_stream_url: str | None = None
    received_media: int = 0
    received_media_bytes: int = 0
    received_marks: list[str] = field(default_factory=list)
    received_clears: int = 0
    received_other: int = 0
    close_code: int | None = None
    close_reason: str = ""
    error: str | None = None
    # time.monotonic() of the schedule's zero (frame i is spoken at audio_t0 + i * 20 ms), and of each
    # bot media message that carried sound (not all mu-law silence), in arrival order
    audio_t0: float | None = None
    sound_received_at: list[float] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sound_received"] = len(d.pop("sound_received_at"))  # the count; the times stay on the object
        return d


def _load_frames(opts: CallerOptions) -> list[bytes]:
    if opts.frames is not None:
        frames = list(opts.frames)
    elif opts.sample is not None:
        from ..samples import sample_path

        frames = wav_to_twilio_frames(sample_path(opts.sample))
    else:
        assert opts.wav is not None  # CallerOptions checks that exactly one of wav/sample/frames is given
        frames = wav_to_twilio_frames(Path(opts.wav))
    return frames + silence_frames(opts.tail_silence_s)


def send_schedule(n: int, opts: CallerOptions) -> tuple[list[float], list[dict[str, Any]]]:
    """Audio-time offsets (s) at which each frame goes out, and the stalls applied.

    Non-decreasing; frame i is never sent before its audio exists (``i * 20 ms``)
    except inside a bunch, which waits for its last frame.
    """
    rng = random.Random(opts.seed)
    times: list[float] = []
    held = 0
    stall = None if opts.stall_at_s is None or opts.stall_s <= 0 else (opts.stall_at_s, opts.stall_at_s + opts.stall_s)
    for i in range(n):
        group_last = (i // opts.bunch) * opts.bunch + opts.bunch - 1
        t = min(group_last, n - 1) * FRAME_S
        if opts.jitter_ms:
            t += rng.uniform(0.0, opts.jitter_ms) / 1000.0
        if stall is not None and stall[0] - 1e-9 <= t < stall[1] - 1e-9:
            t = stall[1]
            held += 1
        if times and t < times[-1]:
            t = times[-1]
        times.append(t)
    stalls = []
    if stall is not None:
        stalls.append({"at_s": opts.stall_at_s, "duration_s": opts.stall_s, "frames_held": held})
    return times, stalls


def _post_webhook(opts: CallerOptions, twiml_url: str) -> tuple[int, str]:
    params = {
        "CallSid": opts.call_sid,
        "AccountSid": opts.account_sid,
        "From": opts.from_number,
        "To": opts.to_number,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if opts.auth_token:
        from twilio.request_validator import RequestValidator

        headers["X-Twilio-Signature"] = RequestValidator(opts.auth_token).compute_signature(
            opts.signed_url or twiml_url, params
        )
    body = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(twiml_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=opts.connect_timeout_s) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, OSError) as e:  # no bot there, DNS, timeout: a clear message, not a traceback
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"cannot reach the webhook at {twiml_url}: {reason} (is the bot running?)") from None


def parse_twiml(xml_text: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream url>`` and its ``<Parameter>``s from a TwiML document."""
    root = ET.fromstring(xml_text)
    stream = root.find("./Connect/Stream")
    url = None if stream is None else stream.get("url")
    if stream is None or not url:
        raise ValueError("TwiML has no <Connect><Stream url=...>")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return url, params


class _Receiver:
    def __init__(self, ws, summary: CallSummary, opts: CallerOptions, send_lock: asyncio.Lock, seq) -> None:
        self.ws, self.summary, self.opts, self.lock, self.seq = ws, summary, opts, send_lock, seq

    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                self._record(raw)
                if self.opts.echo_marks and self.summary.received_marks and self._last_was_mark:
                    await self._echo_mark(self.summary.received_marks[-1])
        except ConnectionClosed:
            pass

    _last_was_mark = False

    def _record(self, raw) -> None:
        self._last_was_mark = False
        try:
            msg = json.loads(raw)
            event = msg.get("event")
        except Exception:
            self.summary.received_other += 1
            return
        if event == "media":
            self.summary.received_media += 1
            try:
                payload = base64.b64decode(msg["media"]["payload"])
                self.summary.received_media_bytes += len(payload)
                if payload.strip(_MULAW_SILENCE):
                    self.summary.sound_received_at.append(time.monotonic())
            except Exception:
                self.summary.received_other += 1
        elif event == "mark":
            self.summary.received_marks.append(str((msg.get("mark") or {}).get("name", "")))
            self._last_was_mark = True
        elif event == "clear":
            self.summary.received_clears += 1
        else:
            self.summary.received_other += 1

    async def _echo_mark(self, name: str) -> None:
        from websockets.exceptions import ConnectionClosed

        msg = {
            "event": "mark",
            "sequenceNumber": str(self.seq()),
            "streamSid": self.opts.stream_sid,
            "mark": {"name": name},
        }
        try:
            async with self.lock:
                await self.ws.send(json.dumps(msg))
        except ConnectionClosed:
            pass


async def simulate_call(opts: CallerOptions) -> CallSummary:
    """Run one simulated call; never raises for network or HTTP failures (see ``summary.error``)."""
    opts.validate()
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    summary = CallSummary(opts.call_sid, opts.stream_sid, speed=opts.speed, bunch=opts.bunch, jitter_ms=opts.jitter_ms)
    frames = _load_frames(opts)
    summary.frames_total = len(frames)
    custom = dict(opts.custom_parameters)
    ws_url = opts.url

    if opts.twiml_url:
        try:
            status, body = await asyncio.to_thread(_post_webhook, opts, opts.twiml_url)
        except ConnectionError as e:
            summary.error = str(e)
            return summary
        summary.twiml_status = status
        if status != 200:
            summary.error = f"webhook answered HTTP {status}"
            return summary
        try:
            stream_url, params = parse_twiml(body)
        except (ET.ParseError, ValueError) as e:
            summary.error = f"bad TwiML: {e}"
            return summary
        summary.twiml_stream_url = stream_url
        custom = {**params, **custom}
        ws_url = ws_url or stream_url

    assert ws_url  # CallerOptions requires url and/or twiml_url, and a TwiML answer names a stream url
    times, summary.stalls = send_schedule(len(frames), opts)
    if opts.hangup_at_s is not None:
        keep = int(opts.hangup_at_s / FRAME_S)
        frames, times = frames[:keep], times[:keep]

    seq_counter = iter(range(1, 1 << 62))

    def next_seq() -> int:
        return next(seq_counter)

    started = time.monotonic()
    try:
        ws_headers = {}
        if opts.auth_token:  # Twilio signs the upgrade: the <Stream> URL it was given, no parameters
            from twilio.request_validator import RequestValidator

            ws_headers["X-Twilio-Signature"] = RequestValidator(opts.auth_token).compute_signature(
                summary.twiml_stream_url or ws_url, {}
            )
        async with connect(
            ws_url, open_timeout=opts.connect_timeout_s, max_size=2**20, compression=None, additional_headers=ws_headers
        ) as ws:
            lock = asyncio.Lock()
            receiver = _Receiver(ws, summary, opts, lock, next_seq)
            recv_task = asyncio.create_task(receiver.run())
            try:
                async with lock:
                    await ws.send(json.dumps(connected_message()))
                    await ws.send(
                        json.dumps(
                            start_message(
                                stream_sid=opts.stream_sid,
                                call_sid=opts.call_sid,
                                account_sid=opts.account_sid,
                                sequence_number=next_seq(),
                                custom_parameters=custom,
                            )
                        )
                    )
                t0 = summary.audio_t0 = time.monotonic()
                for i, (frame, due) in enumerate(zip(frames, times, strict=True)):
                    wall_due = t0 + due / opts.speed
                    delay = wall_due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    summary.max_late_ms = max(summary.max_late_ms, (time.monotonic() - wall_due) * 1000.0)
                    msg = media_message(
                        stream_sid=opts.stream_sid,
                        sequence_number=next_seq(),
                        chunk=i + 1,
                        timestamp_ms=int(round(i * FRAME_MS)),
                        payload=frame,
                    )
                    async with lock:
                        await ws.send(json.dumps(msg))
                    summary.frames_sent += 1
                if opts.hangup_at_s is not None:
                    summary.hung_up = True
                elif opts.send_stop:
                    async with lock:
                        await ws.send(
                            json.dumps(
                                stop_message(
                                    stream_sid=opts.stream_sid,
                                    call_sid=opts.call_sid,
                                    account_sid=opts.account_sid,
                                    sequence_number=next_seq(),
                                )
                            )
                        )
                    summary.stop_sent = True
                    # Twilio hangs up right after stop; give the bot a moment to answer/close first.
                    try:
                        await asyncio.wait_for(asyncio.shield(recv_task), timeout=opts.linger_s)
                    except TimeoutError:
                        pass
            except ConnectionClosed:
                pass
            finally:
                await ws.close()
                recv_task.cancel()
                await asyncio.gather(recv_task, return_exceptions=True)
            summary.close_code = ws.close_code
            summary.close_reason = ws.close_reason or ""
    except ConnectionClosed as e:
        summary.close_code = e.rcvd.code if e.rcvd else None
    except (TimeoutError, OSError) as e:
        summary.error = f"cannot connect to {ws_url}: {type(e).__name__}: {e}"
    except Exception as e:  # websockets.InvalidStatus, InvalidURI, ...
        summary.error = f"{type(e).__name__}: {e}"
    summary.duration_s = round(time.monotonic() - started, 3)
    summary.audio_s = round(summary.frames_sent * FRAME_S, 3)
    summary.max_late_ms = round(summary.max_late_ms, 2)
    if summary.error is None and summary.frames_sent < len(frames):
        summary.error = (
            f"connection closed after {summary.frames_sent} of {len(frames)} frames (code {summary.close_code})"
        )
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rxdrain call", description="Call a bot's Twilio Media Streams websocket from a WAV file."
    )
    p.add_argument("--url", help="the bot's media websocket, e.g. ws://127.0.0.1:8765/ws")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", help="a WAV file (any rate, 8/16/24/32-bit, any channels)")
    src.add_argument("--sample", help="a bundled sample: hello_en, call_en, shalom_he")
    p.add_argument("--twiml-url", help="POST the voice webhook here first, e.g. http://127.0.0.1:8765/twiml")
    p.add_argument("--auth-token", help="sign the webhook like Twilio (X-Twilio-Signature)")
    p.add_argument("--signed-url", help="the public URL to sign (default: --twiml-url)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="extra start.customParameters")
    p.add_argument("--stall-at", type=float, dest="stall_at_s", help="audio second at which the network stalls")
    p.add_argument("--stall-s", type=float, default=0.0, help="stall length in seconds (held frames then burst)")
    p.add_argument("--bunch", type=int, default=1, help="send frames in clumps of N")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="random extra delay per frame, 0..J ms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=1.0, help="time compression (2 = twice real time)")
    p.add_argument("--tail-silence-s", type=float, default=1.0)
    p.add_argument(
        "--hangup-at", type=float, dest="hangup_at_s", help="hang up abruptly (no stop) at this audio second"
    )
    p.add_argument("--linger-s", type=float, default=2.0)
    p.add_argument("--call-sid")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"rxdrain call: --param needs NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        params[name] = value
    opts = CallerOptions(
        url=args.url,
        wav=args.wav,
        sample=args.sample,
        twiml_url=args.twiml_url,
        auth_token=args.auth_token,
        signed_url=args.signed_url,
        custom_parameters=params,
        stall_at_s=args.stall_at_s,
        stall_s=args.stall_s,
        bunch=args.bunch,
        jitter_ms=args.jitter_ms,
        seed=args.seed,
        speed=args.speed,
        tail_silence_s=args.tail_silence_s,
        hangup_at_s=args.hangup_at_s,
        linger_s=args.linger_s,
    )
    if args.call_sid:
        opts.call_sid = args.call_sid
    try:
        opts.validate()
        summary = asyncio.run(simulate_call(opts))
    except (ValueError, FileNotFoundError) as e:
        print(f"rxdrain call: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict(), indent=2))
    if not summary.ok:
        print(f"rxdrain call: {summary.error}", file=sys.stderr)
    return 0 if summary.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
