"""Bot + emulator + caller, in-process on loopback: real calls through the example bot."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pipecat_rxdrain.samples import load_sample, sample_path
from pipecat_rxdrain.telemetry import RX_LINE_RE, STT_LINE_RE
from pipecat_rxdrain.twilio.audio import wav_to_twilio_frames
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call
from pipecat_rxdrain.twilio.messages import connected_message, media_message, start_message
from tests.helpers.bot_harness import LogCapture, get_json, make_config, running_bot
from tests.helpers.stt_session import stt_threads
from tests.helpers.waiting import wait_until

AUTH = "call-test-auth-token-0123456789abcdef"
SECRET = "call-test-media-secret-0123456789"
PUBLIC = "bot.example.test"


def words(texts) -> list[str]:
    return " ".join(texts).lower().split()


async def test_signed_call_with_a_network_stall_transcribes_drains_and_recovers(emulator):
    """The headline: webhook (signed) -> token -> /ws, 2.5 s stall mid-utterance, no drops, every word once."""
    cfg = make_config(
        speech_emulator_host=emulator.address, twilio_auth_token=AUTH, media_token_secret=SECRET, public_host=PUBLIC
    )
    sample = load_sample("hello_en")
    frames = wav_to_twilio_frames(sample.path)
    with LogCapture(level="DEBUG") as logs:
        async with running_bot(cfg) as bot:
            port = bot.port
            opts = CallerOptions(
                url=f"ws://127.0.0.1:{port}/ws",
                twiml_url=f"http://127.0.0.1:{port}/twiml",
                auth_token=AUTH,
                signed_url=f"https://{PUBLIC}/twiml",
                sample="hello_en",
                stall_at_s=2.0,
                stall_s=2.5,
                tail_silence_s=1.0,
            )
            summary = await simulate_call(opts)
            await wait_until(lambda: list(bot.app.state.calls.completed), timeout=10)
            stats = (await asyncio.to_thread(get_json, f"http://127.0.0.1:{port}/stats"))["completed"]
            assert not stt_threads()  # the call's STT writer thread was joined
    assert summary.ok, summary.error
    assert summary.twiml_status == 200 and summary.twiml_stream_url == f"wss://{PUBLIC}/ws"
    assert summary.stalls[0]["frames_held"] == 125
    assert summary.received_media == 0 and summary.close_code == 1000  # transcribe-only: the bot never speaks
    call = stats[0]
    assert call["call_sid"] == opts.call_sid and call["end_reason"] == "stop"
    # every word of the sample arrives exactly once, in order
    assert words(f["text"] for f in call["finals"]) == words(sample.segments)
    rx = call["rx"]
    # RX is work-conserving: the STT takes the 125 held frames at once, so they pass inline, no drain
    assert rx["drops"] == 0 and rx["peak_q"] < 100 and rx["drain_episodes"] == 0
    assert rx["frames_in"] == rx["frames_out"] == len(frames) + 50 and rx["q"] == 0
    assert call["stt"]["drops"] == 0 and call["twilio"]["dropped_total"] == 0

    # telemetry: exact line shapes, tagged with the call SID; no drain, no standing queue after the stall
    recs = logs.messages()
    rx_lines = [r for r in recs if r["message"].startswith("[RX]")]
    stt_lines = [r for r in recs if r["message"].startswith("[STT]")]
    assert rx_lines and stt_lines
    assert all(RX_LINE_RE.match(r["message"]) for r in rx_lines)
    assert all(STT_LINE_RE.match(r["message"]) for r in stt_lines)
    assert all(r["call_sid"] == opts.call_sid for r in rx_lines + stt_lines)
    modes = [RX_LINE_RE.match(r["message"])["mode"] for r in rx_lines]
    assert set(modes) == {"normal"}
    assert max(int(RX_LINE_RE.match(r["message"])["q"]) for r in rx_lines) < 100
    assert all(RX_LINE_RE.match(r["message"])["drops"] == "0" for r in rx_lines)
    assert any(f"| {opts.call_sid} | [BOT] final transcript" in line for line in logs.lines)

    # nothing secret or bulky in the logs
    text = logs.text
    assert AUTH not in text and SECRET not in text
    assert "token" not in json.dumps(call)  # /stats never shows custom parameters
    assert not re.search(r"\b\d{10}\.[A-Za-z0-9_-]{43}\b", text)  # no per-call media token (expiry.HMAC) in the logs
    assert not any(base64.b64encode(f).decode()[:40] in text for f in frames[::50])


async def test_bot_survives_callers_hanging_up_mid_utterance_and_frees_threads_and_tasks(emulator):
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False)
    async with running_bot(cfg) as bot:
        port = bot.port
        registry = bot.app.state.calls

        async def hang_up_call():
            summary = await simulate_call(
                CallerOptions(url=f"ws://127.0.0.1:{port}/ws", sample="hello_en", hangup_at_s=1.5, tail_silence_s=0)
            )
            assert summary.hung_up and summary.frames_sent == 75 and not summary.stop_sent
            ended = await wait_until(lambda: not registry.active and len(registry.completed) >= 1, timeout=10)
            assert ended, "the bot did not end the call after the hang-up"
            await wait_until(lambda: not stt_threads(), timeout=5)

        await hang_up_call()  # warms up process-wide singletons (gRPC poller, executors)
        await asyncio.sleep(0.2)
        threads_before = {t.ident for t in threading.enumerate()}
        tasks_before = len(asyncio.all_tasks())
        await hang_up_call()
        await asyncio.sleep(0.2)
        assert not stt_threads()
        assert {t.ident for t in threading.enumerate()} == threads_before
        assert len(asyncio.all_tasks()) == tasks_before
        records = list(registry.completed)
        assert [r.end_reason for r in records] == ["caller disconnected"] * 2
        assert all(r.rx["drops"] == 0 for r in records)
        # and it still takes calls
        ok = await simulate_call(CallerOptions(url=f"ws://127.0.0.1:{port}/ws", frames=wav_to_twilio_frames(sample_path("hello_en"))[:60],
                                               tail_silence_s=0.2, speed=1.0))
        assert ok.ok and ok.stop_sent


async def test_malformed_messages_floods_and_a_silent_client_are_counted_not_fatal(emulator):
    cfg = make_config(speech_emulator_host=emulator.address, media_idle_timeout_s=1.0, require_media_token=False)
    frames = wav_to_twilio_frames(sample_path("hello_en"))
    sid, call_sid = "MZ" + "d" * 32, "CA" + "e" * 32
    with LogCapture(level="INFO") as logs:
        async with running_bot(cfg) as bot:
            port = bot.port
            async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
                await ws.send(json.dumps(connected_message()))
                await ws.send(json.dumps(start_message(stream_sid=sid, call_sid=call_sid, account_sid="AC" + "f" * 32)))
                seq = 1

                def media(i, **over):
                    nonlocal seq
                    seq += 1
                    m = media_message(stream_sid=sid, sequence_number=seq, chunk=i + 1, timestamp_ms=20 * i, payload=frames[i])
                    m["media"].update(over)
                    return json.dumps(m)

                garbage = [
                    "not json", "[1,2]", json.dumps({"no": "event"}), json.dumps({"event": "transfer"}),
                    b"\x00\x01", "y" * 20_000, json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "@@"}}),
                ]
                sent_valid = 0
                for i in range(20):  # 20 good frames at about real time, garbage in between
                    await ws.send(media(i))
                    sent_valid += 1
                    if i < len(garbage):
                        await ws.send(garbage[i])
                    await asyncio.sleep(0.02)
                dup = media(20)
                await ws.send(dup)
                await ws.send(dup)  # duplicate sequenceNumber
                sent_valid += 1
                await ws.send(media(5))  # chunk going backwards
                await ws.send(media(21, payload=base64.b64encode(frames[21][:100]).decode()))  # wrong size
                # a flood: 400 frames at once, far faster than real time
                for i in range(22, 422):
                    await ws.send(media(i % len(frames) if i < len(frames) else 0, chunk=str(i + 1), timestamp=str(20 * i)))
                    sent_valid += 1
                # then silence: no stop, no close; the bot's idle watchdog must end the call
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 15)
            done = await wait_until(lambda: list(bot.app.state.calls.completed), timeout=10)
    call = done[0].as_dict()
    tw = call["twilio"]
    assert call["end_reason"] == "media idle timeout"
    assert tw["dropped"] == {
        "binary": 1, "bad_base64": 1, "bad_payload_size": 1, "duplicate_sequence": 1, "missing_event": 1,
        "not_json": 1, "not_object": 1, "out_of_order": 1, "oversized": 1, "unknown_event": 1,
    }
    assert tw["received"] == tw["accepted"] + tw["dropped_total"]
    assert tw["by_event"]["media"] == sent_valid
    rx = call["rx"]
    assert rx["frames_in"] == sent_valid  # every valid frame reached the RX queue ...
    # ... and the flood went through the bounded queues: the first 2 s (the rate bound's lead) went on at once,
    # the rest either filled RX to its high watermark and drained, or, when the STT's queue still held what went
    # on at once (a writer slow on a loaded machine), RX and the STT together reached max_queue and RX handed
    # the head on to the STT, which drops its oldest beyond that (counted). Either way RX held <= max_queue.
    assert rx["frames_in"] == rx["frames_out"] + rx["drops"] + rx["q"]
    assert rx["peak_q"] <= cfg.rx_max_queue
    drained = rx["peak_q"] >= cfg.rx_high_watermark and rx["drain_episodes"] >= 1
    assert drained or rx["overflow_releases"] > 0, (rx, call["stt"])
    text = logs.text
    assert "reason=oversized" in text and "no message from Twilio" in text
    assert not stt_threads()


async def test_twilio_stop_right_after_a_burst_loses_no_frame(emulator):
    """Twilio's ``stop`` can arrive while the input transport still holds queued audio.

    Pipecat's input transport cancels its audio task on EndFrame and drops what is still in its
    queue, so the bot must let that queue drain (bounded) before ending the pipeline.
    """
    cfg = make_config(speech_emulator_host=emulator.address, media_token_secret=SECRET)
    frames = wav_to_twilio_frames(load_sample("hello_en").path)
    async with running_bot(cfg) as bot:
        opts = CallerOptions(
            url=f"ws://127.0.0.1:{bot.port}/ws",
            twiml_url=f"http://127.0.0.1:{bot.port}/twiml",
            sample="hello_en",
            speed=1000.0,  # the whole call arrives as one burst, then stop
            tail_silence_s=0.0,
        )
        summary = await simulate_call(opts)
        await wait_until(lambda: list(bot.app.state.calls.completed), timeout=15)
        call = (await asyncio.to_thread(get_json, f"http://127.0.0.1:{bot.port}/stats"))["completed"][0]
    assert summary.ok, summary.error
    assert call["end_reason"] == "stop"
    assert call["twilio"]["dropped_total"] == 0
    rx = call["rx"]
    # every frame the serializer accepted reached the RX queue, and all of it was released or counted
    assert rx["frames_in"] == call["twilio"]["by_event"]["media"] == len(frames)
    assert rx["frames_in"] == rx["frames_out"] + rx["drops"] + rx["q"]
