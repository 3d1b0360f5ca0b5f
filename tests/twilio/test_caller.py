"""The caller simulator against a tiny local websocket server (real sockets, loopback only)."""

from __future__ import annotations

import base64
import json
import time

import pytest
from websockets.asyncio.server import serve

from pipecat_rxdrain.twilio import caller as caller_mod
from pipecat_rxdrain.twilio.caller import CallerOptions, send_schedule, simulate_call

FRAMES = [bytes([i % 256]) * 160 for i in range(40)]


class FakeTwilioPeer:
    """Records what the caller sends (with arrival times) and talks back like a bot."""

    def __init__(self, reply: bool = True) -> None:
        self.messages: list[tuple[float, dict]] = []
        self.reply = reply
        self.port = 0

    async def handler(self, ws):
        async for raw in ws:
            msg = json.loads(raw)
            self.messages.append((time.monotonic(), msg))
            if self.reply and msg["event"] == "start":
                sid = msg["streamSid"]
                await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}))
                await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "greeting-done"}}))
                await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
            if msg["event"] == "stop":
                await ws.close(1000)

    async def __aenter__(self):
        self._server = await serve(self.handler, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self._server.close()
        await self._server.wait_closed()

    def events(self, name):
        return [m for _, m in self.messages if m["event"] == name]


async def test_twilio_message_shapes_and_recording_of_replies():
    async with FakeTwilioPeer() as peer:
        opts = CallerOptions(url=f"ws://127.0.0.1:{peer.port}/ws", frames=FRAMES, speed=8.0, tail_silence_s=0.0,
                             custom_parameters={"token": "abc"}, linger_s=2.0)
        summary = await simulate_call(opts)
    assert summary.ok, summary.error
    events = [m["event"] for _, m in peer.messages]
    assert events[:2] == ["connected", "start"] and events[-1] == "stop"
    assert peer.messages[0][1] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = peer.events("start")[0]
    assert start["sequenceNumber"] == "1" and start["streamSid"] == opts.stream_sid
    assert start["start"] == {
        "accountSid": opts.account_sid,
        "streamSid": opts.stream_sid,
        "callSid": opts.call_sid,
        "tracks": ["inbound"],
        "customParameters": {"token": "abc"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    media = peer.events("media")
    assert len(media) == 40 == summary.frames_sent
    for i, m in enumerate(media):
        assert set(m) == {"event", "sequenceNumber", "media", "streamSid"}
        assert m["media"]["track"] == "inbound" and m["media"]["chunk"] == str(i + 1) and m["media"]["timestamp"] == str(20 * i)
        assert base64.b64decode(m["media"]["payload"]) == FRAMES[i]
    seqs = [int(m["sequenceNumber"]) for _, m in peer.messages if "sequenceNumber" in m]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # strictly increasing across all events
    marks_back = peer.events("mark")
    assert [m["mark"]["name"] for m in marks_back] == ["greeting-done"]  # echoed like Twilio
    assert summary.received_media == 1 and summary.received_media_bytes == 160
    assert summary.received_marks == ["greeting-done"] and summary.received_clears == 1
    assert summary.stop_sent and summary.close_code == 1000


def test_schedule_with_a_stall_holds_frames_then_bursts():
    opts = CallerOptions(url="ws://x", frames=[b""] * 100, stall_at_s=0.5, stall_s=0.6)
    times, stalls = send_schedule(100, opts)
    burst = [i for i, t in enumerate(times) if abs(t - 1.1) < 1e-9]
    # the 30 frames due in [0.5, 1.1) all go out at 1.1, together with frame 55, due then
    assert burst == list(range(25, 56))
    assert stalls == [{"at_s": 0.5, "duration_s": 0.6, "frames_held": 30}]
    assert times[56] == pytest.approx(1.12) and times[:25] == pytest.approx([i * 0.02 for i in range(25)])


def test_schedule_bunching_and_jitter():
    times, _ = send_schedule(10, CallerOptions(url="ws://x", frames=[b""] * 10, bunch=4))
    assert times == pytest.approx([0.06] * 4 + [0.14] * 4 + [0.18] * 2)
    jittered, _ = send_schedule(500, CallerOptions(url="ws://x", frames=[b""] * 500, jitter_ms=30, seed=1))
    assert all(b >= a for a, b in zip(jittered, jittered[1:]))  # order kept
    lateness = [t - i * 0.02 for i, t in enumerate(jittered)]
    assert all(0 <= x <= 0.030 + 1e-9 for x in lateness) and max(lateness) > 0.02


async def test_a_real_stall_is_a_silent_gap_then_a_burst():
    async with FakeTwilioPeer(reply=False) as peer:
        opts = CallerOptions(url=f"ws://127.0.0.1:{peer.port}/ws", frames=FRAMES, speed=4.0, tail_silence_s=0.0,
                             stall_at_s=0.2, stall_s=0.4)
        summary = await simulate_call(opts)
    assert summary.ok and summary.stalls[0]["frames_held"] == 20
    arrivals = [t for t, m in peer.messages if m["event"] == "media"]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    # the longest silence is at the stall (0.4 s / speed 4 = 0.1 s; sleeps only ever run long)
    assert gaps.index(max(gaps)) == 9 and max(gaps) >= 0.09
    chunks = [int(m["media"]["chunk"]) for m in peer.events("media")]
    assert chunks == list(range(1, 41))  # the burst keeps Twilio's numbering and order


async def test_hang_up_mid_call_sends_no_stop():
    async with FakeTwilioPeer(reply=False) as peer:
        summary = await simulate_call(CallerOptions(url=f"ws://127.0.0.1:{peer.port}/ws", frames=FRAMES, speed=8.0,
                                                    tail_silence_s=0.0, hangup_at_s=0.3))
    assert summary.hung_up and not summary.stop_sent and summary.frames_sent == 15
    assert not peer.events("stop")


async def test_connection_refused_is_reported_not_raised():
    async with FakeTwilioPeer() as peer:
        port = peer.port
    summary = await simulate_call(CallerOptions(url=f"ws://127.0.0.1:{port}/ws", frames=FRAMES, connect_timeout_s=2))
    assert not summary.ok and "cannot connect" in summary.error and summary.frames_sent == 0


def test_cli_validates_arguments(capsys):
    assert caller_mod.main(["--sample", "hello_en"]) == 2
    assert "--url" in capsys.readouterr().err
    assert caller_mod.main(["--url", "ws://127.0.0.1:9/ws", "--sample", "hello_en", "--speed", "0"]) == 2
    assert caller_mod.main(["--url", "ws://127.0.0.1:9/ws", "--sample", "nope"]) == 2
    assert "no bundled sample" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        caller_mod.main([])


def test_parse_twiml():
    url, params = caller_mod.parse_twiml(
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h/ws">'
        '<Parameter name="token" value="t1" /><Parameter name="from_number" value="+1" /></Stream></Connect></Response>'
    )
    assert url == "wss://h/ws" and params == {"token": "t1", "from_number": "+1"}
    with pytest.raises(ValueError):
        caller_mod.parse_twiml("<Response><Say>hi</Say></Response>")


def test_rxdrain_call_with_no_bot_up_says_so_clearly_and_fails(tmp_path):
    """``rxdrain call --twiml-url ...`` with nothing listening: before, a raw URLError traceback."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "pipecat_rxdrain.cli", "call", "--twiml-url", f"http://127.0.0.1:{port}/twiml",
                        "--sample", "hello_en"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "URLError" not in r.stderr
    assert f"cannot reach the webhook at http://127.0.0.1:{port}/twiml" in r.stderr and "is the bot running?" in r.stderr
