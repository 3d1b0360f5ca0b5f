"""The example bot's doors: webhook signatures, per-call media tokens, loopback-only stats, no secrets in logs."""

from __future__ import annotations

import asyncio
import json

import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pipecat_rxdrain.twilio.caller import parse_twiml
from pipecat_rxdrain.google_clients import is_loopback_host as is_loopback
from pipecat_rxdrain.twilio.config import ConfigError
from pipecat_rxdrain.twilio.messages import connected_message, start_message
from tests.helpers.bot_harness import LogCapture, get_json, load_bot_module, make_config, running_bot
from tests.helpers.http import post_form_async

AUTH = "test-auth-token-d00r5-0123456789abcdef"
SECRET = "media-token-secret-d00r5-0123456789"
PUBLIC = "bot.example.test"
FORM = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32, "From": "+15005550001", "To": "+15005550002"}


def signed(url: str, params: dict, token: str = AUTH) -> dict:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}


def ws_signed() -> dict:
    """What Twilio sends on the media websocket's upgrade: a signature over the public wss:// URL."""
    return signed(f"wss://{PUBLIC}/ws", {})


@pytest.fixture
def doors_config():
    return make_config(
        twilio_auth_token=AUTH, media_token_secret=SECRET, public_host=PUBLIC,
        speech_emulator_host="127.0.0.1:9", start_timeout_s=1.0,
    )


async def test_webhook_signature_rejects_forged_unsigned_and_other_url_and_accepts_a_good_one(doors_config):
    with LogCapture() as logs:
        async with running_bot(doors_config) as bot:
            url = f"http://127.0.0.1:{bot.port}/twiml"
            public_url = f"https://{PUBLIC}/twiml"
            assert (await post_form_async(url, FORM))[0] == 403  # unsigned
            assert (await post_form_async(url, FORM, {"X-Twilio-Signature": "Zm9yZ2VkIHNpZ25hdHVyZQ=="}))[0] == 403  # forged
            assert (await post_form_async(url, FORM, signed(public_url, FORM, "wrong-token-0123456789")))[0] == 403
            # a genuine signature for another URL, replayed here
            assert (await post_form_async(url, FORM, signed("https://other.example.test/twiml", FORM)))[0] == 403
            assert (await post_form_async(url, FORM, signed(url, FORM)))[0] == 403  # signed for the private URL, not the public one
            tampered = {**FORM, "From": "+19999999999"}
            assert (await post_form_async(url, tampered, signed(public_url, FORM)))[0] == 403
            status, body = await post_form_async(url, FORM, signed(public_url, FORM))
            assert status == 200
    stream_url, params = parse_twiml(body)
    assert stream_url == f"wss://{PUBLIC}/ws"  # always wss://, public host, no query string
    assert "?" not in stream_url
    assert set(params) == {"token", "from_number", "to_number"} and params["from_number"] == FORM["From"]
    text = logs.text
    assert "webhook rejected" in text
    for secret in (AUTH, SECRET, params["token"]):
        assert secret not in text


async def test_without_public_host_the_stream_url_uses_the_host_header_and_no_signature_is_needed():
    cfg = make_config(speech_emulator_host="127.0.0.1:9")
    async with running_bot(cfg) as bot:
        port = bot.port
        status, body = await post_form_async(f"http://127.0.0.1:{port}/twiml", FORM)
        missing_sid = await post_form_async(f"http://127.0.0.1:{port}/twiml", {"From": "+1"})
        replayed = await post_form_async(f"http://127.0.0.1:{port}/twiml", FORM)
    assert status == 200
    assert parse_twiml(body)[0] == f"wss://127.0.0.1:{port}/ws"
    assert missing_sid[0] == 400
    assert replayed[0] == 409  # one answer per CallSid


async def _ws_attempt(port: int, custom: dict | None, call_sid: str = FORM["CallSid"], send_start: bool = True):
    """Open /ws like Twilio, send connected+start; return the close code the bot answers with."""
    async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, additional_headers=ws_signed()) as ws:
        await ws.send(json.dumps(connected_message()))
        if send_start:
            await ws.send(json.dumps(start_message(stream_sid="MZ" + "3" * 32, call_sid=call_sid, account_sid=FORM["AccountSid"],
                                                   custom_parameters=custom or {})))
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            pass
        return ws.close_code


async def test_media_websocket_requires_the_per_call_token(doors_config):
    with LogCapture() as logs:
        async with running_bot(doors_config) as bot:
            port = bot.port
            _, body = await post_form_async(f"http://127.0.0.1:{port}/twiml", FORM, signed(f"https://{PUBLIC}/twiml", FORM))
            token = parse_twiml(body)[1]["token"]
            assert await _ws_attempt(port, None) == 1008  # no token
            assert await _ws_attempt(port, {"token": "123.abc"}) == 1008  # guessed, malformed
            assert await _ws_attempt(port, {"token": "9999999999." + "A" * 43}) == 1008  # well-formed, wrong MAC
            assert await _ws_attempt(port, {"token": token}, call_sid="CA" + "9" * 32) == 1008  # another call's token
            assert await _ws_attempt(port, {"token": token}, send_start=False) == 1008  # no start within the timeout
            # garbage before start is counted and logged, then refused for the missing start
            async with connect(f"ws://127.0.0.1:{port}/ws", additional_headers=ws_signed()) as ws:
                for raw in ["nope", json.dumps({"event": "media"}), b"\x00"]:
                    await ws.send(raw)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1008
            assert bot.app.state.calls.active == {} and list(bot.app.state.calls.completed) == []  # no pipeline ran
    text = logs.text
    assert "media websocket refused: missing token" in text and "media websocket refused: invalid token" in text
    assert "media websocket refused: malformed token" in text
    assert "reason=not_json" in text and "reason=media_before_start" in text
    assert token not in text and SECRET not in text and AUTH not in text


async def test_media_websocket_upgrade_needs_twilios_signature_before_it_is_accepted(doors_config):
    from websockets.exceptions import InvalidStatus

    async def refused(headers: dict) -> int:
        with pytest.raises(InvalidStatus) as e:
            async with connect(f"ws://127.0.0.1:{bot.port}/ws", open_timeout=5, additional_headers=headers):
                pass
        return e.value.response.status_code

    with LogCapture() as logs:
        async with running_bot(doors_config) as bot:
            assert await refused({}) == 403  # unsigned: never upgraded
            assert await refused({"X-Twilio-Signature": "Zm9yZ2VkIHNpZ25hdHVyZQ=="}) == 403  # forged
            assert await refused(signed(f"ws://127.0.0.1:{bot.port}/ws", {})) == 403  # the private URL, not the public one
            assert await refused(signed(f"wss://{PUBLIC}/ws", {}, "wrong-token-0123456789")) == 403
            assert await _ws_attempt(bot.port, None) == 1008  # signed: accepted, then refused for the missing token
            assert bot.app.state.calls.reserved == 0 and bot.app.state.calls.active == {}
    assert "media websocket refused: bad or missing X-Twilio-Signature" in logs.text
    assert AUTH not in logs.text


async def test_oversized_websocket_frames_are_capped(doors_config):
    async with running_bot(doors_config) as bot:
        async with connect(f"ws://127.0.0.1:{bot.port}/ws", max_size=None, additional_headers=ws_signed()) as ws:
            await ws.send("x" * (doors_config.ws_max_size + 1))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1009  # message too big: the hard cap, before any parsing


async def test_stats_answer_with_the_bearer_token_and_the_bot_binds_loopback_by_default():
    bot_mod = load_bot_module()
    assert bot_mod.BotConfig().host == "127.0.0.1"
    assert bot_mod.BotConfig.from_env({}).host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1")
    assert not is_loopback("10.1.2.3") and not is_loopback(None)
    cfg = make_config(speech_emulator_host="127.0.0.1:9")
    async with running_bot(cfg) as bot:
        stats = await asyncio.to_thread(get_json, f"http://127.0.0.1:{bot.port}/stats")
    assert stats["active"] == [] and stats["completed"] == []


def test_config_errors_are_clear_and_early():
    bot_mod = load_bot_module()
    bad = [
        ({"RX_LOW_WATERMARK": "150"}, "RX watermarks"),
        ({"RX_MAX_QUEUE": "lots"}, "RX_MAX_QUEUE"),
        ({"STT_LANGUAGE": "xx-NOPE"}, "STT_LANGUAGE"),
        ({"BOT_MODE": "chatty"}, "BOT_MODE"),
        ({"BOT_MODE": "full"}, "GOOGLE_API_KEY"),
        ({"REQUIRE_MEDIA_TOKEN": "maybe"}, "boolean"),
        ({"MEDIA_TOKEN_SECRET": "short"}, "16 bytes"),
        ({"PUBLIC_HOST": "https://x.example/"}, "PUBLIC_HOST"),
    ]
    for env, match in bad:
        with pytest.raises(ConfigError, match=match):
            bot_mod.BotConfig.from_env(env)
    cfg = bot_mod.BotConfig.from_env({"TWILIO_AUTH_TOKEN": AUTH, "GOOGLE_API_KEY": "k3y-0123", "MEDIA_TOKEN_SECRET": SECRET})
    assert AUTH not in repr(cfg) and "k3y-0123" not in repr(cfg) and SECRET not in repr(cfg)
    assert bot_mod.BotConfig(speech_emulator_host="10.0.0.5:1").credentials_problem() is not None
    assert "not valid JSON" in bot_mod.BotConfig(google_credentials_json="{").credentials_problem()
    assert "cannot read" in bot_mod.BotConfig(google_credentials_path="/nonexistent/key.json").credentials_problem()
