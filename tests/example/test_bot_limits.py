"""The bot's limits: its doors hold before authentication, nothing grows without bound,
bad configuration stops the bot at start-up, and a failed call fails loudly.

Every test runs the real example bot (in-process or as a subprocess) on 127.0.0.1 with the real
emulator and real sockets; loops are bounded, processes are stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.samples import sample_path
from pipecat_rxdrain.twilio.audio import wav_to_twilio_frames
from pipecat_rxdrain.twilio.caller import CallerOptions, parse_twiml, simulate_call
from pipecat_rxdrain.twilio.messages import connected_message, media_message, start_message, stop_message
from tests.helpers.bot_harness import (
    BotProcess,
    LogCapture,
    clean_env,
    get_json,
    load_bot_module,
    make_config,
    running_bot,
)
from tests.helpers.http import get_status, post_form_async
from tests.helpers.waiting import wait_until

AUTH = "hardening-auth-token-0123456789abcdef"
STATS = "hardening-stats-token-0123456789"
CALL = "CA" + "a" * 32
ACCT = "AC" + "b" * 32
STREAM = "MZ" + "c" * 32
MB = 1024 * 1024


def _raw_http(port: int, head: bytes, body_chunks, *, timeout: float = 20.0) -> bytes:
    """Send ``head`` then the chunks until the server stops reading; return what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        try:
            return s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            return b""


def _streamed_body(total: int, chunk: int = 256 * 1024):
    block = b"a" * chunk
    for _ in range(total // chunk):
        yield block


# ------------------------------------------------------------------ webhook body size
def test_large_unsigned_webhook_bodies_are_refused_while_streaming_without_buffering(tmp_path):
    """4 concurrent unsigned POST /twiml of 250 MB: 413 each, and the bot's RSS barely moves.

    Before: the body was read whole before the size check (RSS peaked at 1.77 GB). The ceiling:
    measured here, RSS sampled every 20 ms, 79 MB before and 79 MB at peak (+0.0 MB: at most the 64 KiB
    cap plus uvicorn's 64 KiB read buffer per connection is ever held, and the connection is closed at the
    limit); 20 MB leaves room for allocator noise on another machine and is still far below one body.
    """
    bot = BotProcess(clean_env(tmp_path, SPEECH_EMULATOR_HOST="127.0.0.1:9", TWILIO_AUTH_TOKEN=AUTH, STT_LANGUAGE="en-US"))
    try:
        bot.wait_ready()
        base = bot.rss()
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], bot.rss())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        declared = (b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: %d\r\n\r\n" % (250 * MB))
        chunked = (b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")

        def chunked_body(total: int):
            for block in _streamed_body(total):
                yield b"%x\r\n" % len(block) + block + b"\r\n"

        answers: list[bytes] = []
        threads = [threading.Thread(target=lambda h=h, b=b: answers.append(_raw_http(bot.port, h, b)))
                   for h, b in [(declared, _streamed_body(250 * MB)), (declared, _streamed_body(250 * MB)),
                                (chunked, chunked_body(250 * MB)), (chunked, chunked_body(250 * MB))]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        done.set()
        sampler.join(5)
    finally:
        code = bot.stop()
    assert len(answers) == 4 and all(a.startswith(b"HTTP/1.1 413") for a in answers), answers
    growth_mb = (peak[0] - base) / MB
    print(f"4 x 250 MB bodies: bot RSS {base / MB:.0f} MB -> peak {peak[0] / MB:.0f} MB (+{growth_mb:.1f} MB)")
    assert growth_mb < 20, f"bot RSS grew {growth_mb:.1f} MB during 4 x 250 MB bodies"
    assert code == 0 and "Traceback" not in bot.log


# ------------------------------------------------------------------ bad settings at start-up
BAD_ENV = [
    ({"STT_BATCH_MS": "0"}, "STT_BATCH_MS"),
    ({"STT_DEBOUNCE_MS": "-5"}, "STT_DEBOUNCE_MS"),
    ({"GOOGLE_CREDENTIALS_JSON": '{"type": "service_account", "project_id": "p", "private_key": "nope", '
                                 '"client_email": "a@b.iam.gserviceaccount.com", "token_uri": "https://x"}'},
     "GOOGLE_CREDENTIALS_JSON"),
    ({"MEDIA_TOKEN_TTL_S": "nan"}, "MEDIA_TOKEN_TTL_S"),
    ({"MEDIA_TOKEN_TTL_S": "0"}, "MEDIA_TOKEN_TTL_S"),
    ({"START_TIMEOUT_S": "0"}, "START_TIMEOUT_S"),
    ({"MEDIA_IDLE_TIMEOUT_S": "-1"}, "MEDIA_IDLE_TIMEOUT_S"),
    ({"STT_FINAL_TIMEOUT_MS": "nan"}, "STT_FINAL_TIMEOUT_MS"),
    ({"SHUTDOWN_GRACE_S": "inf"}, "SHUTDOWN_GRACE_S"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"BOT_PORT": "70000"}, "BOT_PORT"),
]


@pytest.mark.parametrize("env,name", BAD_ENV, ids=[n for _, n in BAD_ENV])
def test_bad_settings_stop_the_bot_at_startup_with_rc2_and_a_message_naming_them(tmp_path, monkeypatch, capsys, env, name):
    """Before: some started and failed every call (NaN final timeout: 0/5 finals, 88 % CPU), others died with a traceback.

    The bot's ``main`` in this process, in the environment a fresh process would get (a process start per row
    cost ~3 s each); example/test_bot_process.py runs both rc-2 paths as a real ``python -m`` process.
    """
    bot = load_bot_module()
    base = {"SPEECH_EMULATOR_HOST": "127.0.0.1:9"} if name != "GOOGLE_CREDENTIALS_JSON" else {}
    fresh = clean_env(tmp_path, **base, **env)
    for key in [k for k in os.environ if k not in fresh]:
        monkeypatch.delenv(key)
    for key, value in fresh.items():
        monkeypatch.setenv(key, value)

    def started(*_args, **_kwargs):
        raise AssertionError(f"the bot went on to serve with {env}")

    monkeypatch.setattr(bot, "serve_forever", started)
    port = [] if name == "BOT_PORT" else ["--port", "0"]
    assert bot.main(port) == 2
    err = capsys.readouterr().err
    assert name in err
    assert "nope" not in err  # never quote a secret


# ------------------------------------------------------------------ MAX_CALLS
async def _hold_a_call(port: int, n: int, hold_s: float) -> int | None:
    """Connect like Twilio, send start, keep the socket open ``hold_s``; return the close code (None: still open)."""
    call_sid, stream_sid = "CA" + f"{n:032x}", "MZ" + f"{n:032x}"
    async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        start = start_message(stream_sid=stream_sid, call_sid=call_sid, account_sid=ACCT)
        return await _send_then_close_code(ws, [connected_message(), start], hold_s)


async def _send_then_close_code(ws, messages: list[dict], hold_s: float) -> int | None:
    """Sends ``messages``, then waits ``hold_s`` for the bot to close: its close code (None: still open)."""
    try:
        for message in messages:
            await ws.send(json.dumps(message))
        await asyncio.wait_for(ws.recv(), hold_s)
    except ConnectionClosed:
        return ws.close_code
    except TimeoutError:
        return None
    return ws.close_code


async def test_max_calls_holds_for_simultaneous_callers_and_refuses_with_close_1013(emulator):
    """8 simultaneous callers, MAX_CALLS=3: before, all 8 were admitted, and a refusal was an HTTP 403 on the upgrade."""
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False, max_calls=3)
    async with running_bot(cfg) as bot:
        codes = await asyncio.gather(*[_hold_a_call(bot.port, i + 1, 3.0) for i in range(8)])
        registry = bot.app.state.calls
        await wait_until(lambda: not registry.active, timeout=15)
        counters = dict(registry.counters)
    assert sorted(codes, key=str) == [1013] * 5 + [None] * 3, (codes, counters, [r.as_dict() for r in bot.app.state.calls.completed])
    assert counters["admitted"] == 3 and counters["refused_full"] == 5


# ------------------------------------------------------------------ malformed tokens
@pytest.mark.parametrize("token", ["1700000000.\u00e9" + "A" * 42, "\u00b2" * 10 + "." + "A" * 43])
async def test_a_non_ascii_token_is_closed_1008_not_a_traceback(token):
    cfg = make_config(speech_emulator_host="127.0.0.1:9")
    with LogCapture() as logs:
        async with running_bot(cfg) as bot:
            async with connect(f"ws://127.0.0.1:{bot.port}/ws") as ws:
                await ws.send(json.dumps(connected_message()))
                await ws.send(json.dumps(start_message(stream_sid=STREAM, call_sid=CALL, account_sid=ACCT,
                                                       custom_parameters={"token": token})))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                code = ws.close_code
    assert code == 1008
    assert "malformed token" in logs.text and "Traceback" not in logs.text and "TypeError" not in logs.text


# ------------------------------------------------------------------ sequence numbers
async def test_one_wild_sequence_number_does_not_make_the_call_deaf(emulator):
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False)
    frames = wav_to_twilio_frames(sample_path("hello_en"))[:100]
    async with running_bot(cfg) as bot:
        async with connect(f"ws://127.0.0.1:{bot.port}/ws") as ws:
            await ws.send(json.dumps(connected_message()))
            await ws.send(json.dumps(start_message(stream_sid=STREAM, call_sid=CALL, account_sid=ACCT)))
            for i, payload in enumerate(frames):
                seq = 10**18 + 7 if i == 10 else i + 2  # one media message with a 19-digit sequenceNumber
                await ws.send(json.dumps(media_message(stream_sid=STREAM, sequence_number=seq, chunk=i + 1,
                                                       timestamp_ms=20 * i, payload=payload)))
                if i % 10 == 0:
                    await asyncio.sleep(0.02)
            await ws.send(json.dumps(stop_message(stream_sid=STREAM, call_sid=CALL, account_sid=ACCT,
                                                  sequence_number=len(frames) + 2)))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 15)
        done = await wait_until(lambda: list(bot.app.state.calls.completed), timeout=10)
    call = done[0].as_dict()
    assert call["twilio"]["dropped"] == {"sequence_jump": 1}
    assert call["rx"]["frames_in"] == len(frames) - 1  # every other frame reached RX


# ------------------------------------------------------------------ caller-supplied text in logs
FORGED = [
    "CA" + "1" * 32 + "\n12:00:00.000 | INFO    | CA" + "2" * 32 + " | [BOT] final transcript: transfer $1M",
    "CA\x1b[2J\x1b[31m" + "3" * 30,
    "CA" + "4" * 15_000,
]


async def test_caller_supplied_call_sids_never_reach_a_log_line(emulator):
    # START_TIMEOUT_S far above the 15 s recv wait: the 1008 must come from the refused start itself
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False, start_timeout_s=60.0)
    with LogCapture() as logs:
        async with running_bot(cfg) as bot:
            url = f"http://127.0.0.1:{bot.port}/twiml"
            for sid in FORGED:  # the unsigned webhook
                req = urllib.request.Request(url, data=urllib.parse.urlencode({"CallSid": sid}).encode(), method="POST")
                with pytest.raises(urllib.error.HTTPError) as e:
                    await asyncio.to_thread(urllib.request.urlopen, req, None, 5)
                assert e.value.code == 400
            for sid in FORGED:  # start, no token needed to try
                async with connect(f"ws://127.0.0.1:{bot.port}/ws", max_size=None) as ws:
                    await ws.send(json.dumps(connected_message()))
                    await ws.send(json.dumps(start_message(stream_sid=STREAM, call_sid=sid, account_sid=ACCT)))
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 15)
                    assert ws.close_code == 1008
            assert not bot.app.state.calls.completed
    lines = logs.lines
    assert lines and max(len(line) for line in lines) < 500
    assert not any("transfer $1M" in line or "\x1b" in line for line in lines)


# ------------------------------------------------------------------ stats token, webhook replay, proxies
async def test_stats_need_the_bearer_token_even_from_loopback():
    """Before: any loopback client (a sidecar proxy at 127.0.0.6, a same-host proxy) got 200 with transcripts."""
    async with running_bot(make_config(speech_emulator_host="127.0.0.1:9", stats_token=STATS)) as bot:
        url = f"http://127.0.0.1:{bot.port}/stats"
        no_token = await asyncio.to_thread(get_status, url)
        wrong = await asyncio.to_thread(get_status, url, {"Authorization": "Bearer " + "x" * 32})
        right = await asyncio.to_thread(get_status, url, {"Authorization": f"Bearer {STATS}"})
        forwarded = await asyncio.to_thread(get_status, url, {"X-Forwarded-For": "127.0.0.1"})
    async with running_bot(make_config(speech_emulator_host="127.0.0.1:9", stats_token=None)) as bot:
        off = await asyncio.to_thread(get_status, f"http://127.0.0.1:{bot.port}/stats")
    assert (no_token, wrong, right, forwarded, off) == (401, 401, 200, 401, 404)


async def test_a_replayed_signed_webhook_gets_no_second_token_or_stream(emulator):
    cfg = make_config(speech_emulator_host=emulator.address, twilio_auth_token=AUTH, public_host="bot.example.test")
    form = {"CallSid": CALL, "AccountSid": ACCT, "From": "+15005550001"}
    headers = {"X-Twilio-Signature": RequestValidator(AUTH).compute_signature("https://bot.example.test/twiml", form)}
    async with running_bot(cfg) as bot:
        url = f"http://127.0.0.1:{bot.port}/twiml"
        status, body = await post_form_async(url, form, headers)
        await asyncio.sleep(1.0)
        replay_status, _ = await post_form_async(url, form, headers)
        token = parse_twiml(body)[1]["token"]
        first = asyncio.create_task(_stream_with(bot.port, token, hold_s=3.0))
        await wait_until(lambda: bot.app.state.calls.active, timeout=10)
        second = await _stream_with(bot.port, token, hold_s=3.0)
        first_code = await first
    assert (status, replay_status) == (200, 409)
    assert second == 1008 and first_code is None


async def _stream_with(port: int, token: str, hold_s: float) -> int | None:
    upgrade_signature = {"X-Twilio-Signature": RequestValidator(AUTH).compute_signature("wss://bot.example.test/ws", {})}
    async with connect(f"ws://127.0.0.1:{port}/ws", additional_headers=upgrade_signature) as ws:
        start = start_message(stream_sid=STREAM, call_sid=CALL, account_sid=ACCT, custom_parameters={"token": token})
        return await _send_then_close_code(ws, [connected_message(), start], hold_s)


async def test_a_signed_webhook_through_two_proxies_is_accepted():
    """``X-Forwarded-Proto: https, http`` (two proxies): the first entry is the client's scheme. Before: 403."""
    cfg = make_config(speech_emulator_host="127.0.0.1:9", twilio_auth_token=AUTH)
    async with running_bot(cfg) as bot:
        host = f"127.0.0.1:{bot.port}"
        form = {"CallSid": CALL, "AccountSid": ACCT}
        sig = RequestValidator(AUTH).compute_signature(f"https://{host}/twiml", form)
        status, _ = await post_form_async(f"http://{host}/twiml", form,
                                          {"X-Twilio-Signature": sig, "X-Forwarded-Proto": "https, http"})
    assert status == 200


# ------------------------------------------------------------------ media floods
async def _flood(port: int, frames: list[bytes], n: int) -> int | None:
    async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.send(json.dumps(connected_message()))
        await ws.send(json.dumps(start_message(stream_sid=STREAM, call_sid=CALL, account_sid=ACCT)))
        for i in range(n):  # as fast as the socket takes them
            await ws.send(json.dumps(media_message(stream_sid=STREAM, sequence_number=i + 2, chunk=i + 1,
                                                   timestamp_ms=20 * i, payload=frames[i % len(frames)])))
        await ws.send(json.dumps(stop_message(stream_sid=STREAM, call_sid=CALL, account_sid=ACCT, sequence_number=n + 2)))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        return ws.close_code


async def test_a_media_flood_is_bounded_before_rx_counted_and_the_call_still_ends_gracefully(tmp_path):
    """A token holder floods media as fast as it can. Before: frames piled up in Pipecat's unbounded
    transport queue (RSS 50 -> 310 MB for 200k frames), 181,980 were discarded after stop uncounted,
    and the graceful end failed.

    RSS ceiling: measured growth for 20k flooded frames was ~10-20 MB here (the STT, VAD and RX at
    work, plus the bounded backlog of 400 frames); 60 MB leaves room for allocator noise and is still
    far below what an unbounded queue of these frames holding their JSON, base64 and PCM copies costs.
    10k frames (25 times the input bound) keep the suite within its time budget.
    """
    n = 10_000
    frames = wav_to_twilio_frames(sample_path("hello_en"))
    with SpeechEmulator(script="hello_en") as emu:
        bot = BotProcess(clean_env(tmp_path, SPEECH_EMULATOR_HOST=emu.address, STT_LANGUAGE="en-US",
                                   REQUIRE_MEDIA_TOKEN="false", STATS_TOKEN=STATS))
        try:
            bot.wait_ready()
            # warm up: the first call loads the VAD model, the gRPC channel and lazy imports (~90 MB)
            warm = await simulate_call(CallerOptions(url=f"ws://127.0.0.1:{bot.port}/ws", frames=frames[:50],
                                                     speed=10.0, tail_silence_s=0, call_sid="CA" + "e" * 32))
            assert warm.ok, warm.error
            await asyncio.sleep(0.5)
            base = bot.rss()
            peak = [base]

            async def sample():
                while True:
                    peak[0] = max(peak[0], bot.rss())
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            close_code = await asyncio.wait_for(_flood(bot.port, frames, n), 120)
            sampler.cancel()
            stats = None
            for _ in range(100):
                stats = await asyncio.to_thread(get_json, f"{bot.url}/stats", STATS)
                if any(c["call_sid"] == CALL for c in stats["completed"]):
                    break
                await asyncio.sleep(0.1)
        finally:
            code = bot.stop()
    call = next(c for c in stats["completed"] if c["call_sid"] == CALL)
    tw, inp, rx = call["twilio"], call["input"], call["rx"]
    print(f"flood: RSS +{(peak[0] - base) / MB:.1f} MB, input {inp}, rx drops {rx['drops']} peak_q {rx['peak_q']}")
    assert close_code == 1000 and call["end_reason"] == "stop", (close_code, call["end_reason"])
    assert tw["by_event"]["media"] + tw["dropped"].get("input_overflow", 0) == n
    assert inp["peak_in_flight"] <= 400  # the input transport never held more than the bound
    assert inp["sent"] == inp["arrived"] + inp["discarded_at_end"] and rx["frames_in"] == inp["arrived"]
    assert rx["frames_in"] == rx["frames_out"] + rx["drops"] + rx["q"]
    assert inp["discarded_at_end"] == 0  # stop waited for the backlog
    growth_mb = (peak[0] - base) / MB
    assert growth_mb < 60, f"bot RSS grew {growth_mb:.1f} MB during a {n}-frame flood"
    if rx["drops"]:
        assert "[BOT] dropping the oldest caller audio" in bot.log  # a drop storm is a WARNING, once
    assert code == 0 and "Traceback" not in bot.log


# ------------------------------------------------------------------ fail loudly
async def test_a_fatal_stt_error_hangs_up_counts_the_call_and_healthz_reports_degraded(emulator):
    """Before: after a fatal STT error the call stayed up, deaf, until the caller hung up, and
    /healthz said ok while every call failed on bad credentials."""
    emulator.faults.refuse(1000, code="PERMISSION_DENIED")  # every stream: credentials rejected
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False)
    frames = wav_to_twilio_frames(sample_path("hello_en"))
    with LogCapture(level="INFO") as logs:
        async with running_bot(cfg) as bot:
            port = bot.port
            health_before = await asyncio.to_thread(get_status, f"http://127.0.0.1:{port}/healthz")
            summaries = []
            for i in range(3):
                started = time.monotonic()
                summaries.append(await simulate_call(CallerOptions(
                    url=f"ws://127.0.0.1:{port}/ws", frames=frames, speed=1.0, tail_silence_s=0,
                    call_sid="CA" + f"{i + 1:032x}")))
                summaries[-1].duration_s = time.monotonic() - started
            await wait_until(lambda: len(bot.app.state.calls.completed) == 3, timeout=10)
            records = [r.as_dict() for r in bot.app.state.calls.completed]
            health_after = await asyncio.to_thread(get_status, f"http://127.0.0.1:{port}/healthz")
            health = await asyncio.to_thread(_json_or_error, f"http://127.0.0.1:{port}/healthz")
    assert health_before == 200 and health_after == 503 and health["status"] == "degraded" and health["failed_calls"] == 3
    for s, r in zip(summaries, records):
        assert r["outcome"] == "failed" and r["end_reason"] == "failed" and "PERMISSION_DENIED" in r["error"], r
        assert s.frames_sent < s.frames_total  # the bot hung up on the caller, mid-call
        assert s.duration_s < 5.0, s.duration_s  # promptly (the sample is 7.6 s long)
    assert "[BOT] call failed, hanging up" in logs.text


def _json_or_error(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


# ------------------------------------------------------------------ mark names
async def test_mark_names_are_not_kept_for_the_whole_call(emulator):
    """Before: every mark name was kept for the call (10k marks of 15 KB: RSS +160 MB)."""
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False)
    n = 2000
    async with running_bot(cfg) as bot:
        async with connect(f"ws://127.0.0.1:{bot.port}/ws", max_size=None) as ws:
            await ws.send(json.dumps(connected_message()))
            await ws.send(json.dumps(start_message(stream_sid=STREAM, call_sid=CALL, account_sid=ACCT)))
            for i in range(n):
                await ws.send(json.dumps({"event": "mark", "sequenceNumber": str(i + 2), "streamSid": STREAM,
                                          "mark": {"name": f"{i:06d}" + "m" * 15_000}}))
            call = await wait_until(lambda: bot.app.state.calls.active.get(CALL), timeout=10)
            await wait_until(lambda: call.serializer and call.serializer.marks_total == n, timeout=20)
            kept = list(call.serializer.marks_received)
            await ws.send(json.dumps(stop_message(stream_sid=STREAM, call_sid=CALL, account_sid=ACCT, sequence_number=n + 2)))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 15)
        done = await wait_until(lambda: list(bot.app.state.calls.completed), timeout=10)
    assert call.serializer.marks_total == n and done[0].twilio["marks"] == n
    assert len(kept) <= 16 and sum(len(k) for k in kept) <= 16 * 64


# ------------------------------------------------------------------ file descriptors
async def test_idle_and_half_sent_sockets_cannot_starve_real_calls_of_descriptors(tmp_path):
    """1,100 idle sockets and half-sent requests at a 1024 descriptor limit. Before: real calls failed
    (Too many open files) and the log filled with accept tracebacks at 5-6 MB/s."""
    frames = wav_to_twilio_frames(sample_path("hello_en"))[:60]
    held: list[socket.socket] = []
    with SpeechEmulator(script="hello_en") as emu:
        bot = BotProcess(clean_env(tmp_path, SPEECH_EMULATOR_HOST=emu.address, STT_LANGUAGE="en-US",
                                   REQUIRE_MEDIA_TOKEN="false", STATS_TOKEN=STATS, REQUEST_TIMEOUT_S="30"), nofile=1024)
        try:
            bot.wait_ready()

            def open_sockets():
                for i in range(1100):
                    try:
                        s = socket.create_connection(("127.0.0.1", bot.port), timeout=5)
                    except OSError:
                        continue
                    if i % 2:
                        s.sendall(b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Le")  # half-sent request
                    held.append(s)

            await asyncio.to_thread(open_sockets)
            summary = await simulate_call(CallerOptions(url=f"ws://127.0.0.1:{bot.port}/ws", frames=frames,
                                                        speed=2.0, tail_silence_s=0))
            stats = await asyncio.to_thread(get_json, f"{bot.url}/stats", STATS)
        finally:
            for s in held:
                s.close()
            code = bot.stop()
    assert summary.ok, (summary.error, bot.log[-3000:])
    assert stats["connections"]["evicted"] >= 1100 - 256 - 64
    log = bot.log
    assert "Too many open files" not in log and "Traceback" not in log
    assert len(log) < 20_000, f"{len(log)} bytes of log"
    assert code == 0


async def test_startup_warns_when_webhooks_are_not_verified():
    with LogCapture() as logs:
        async with running_bot(make_config(speech_emulator_host="127.0.0.1:9")):
            pass
    assert "TWILIO_AUTH_TOKEN is not set: webhooks are NOT verified" in logs.text
    with LogCapture() as logs:
        async with running_bot(make_config(speech_emulator_host="127.0.0.1:9", twilio_auth_token=AUTH)):
            pass
    assert "webhooks are NOT verified" not in logs.text
