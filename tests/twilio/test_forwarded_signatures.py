"""The webhook and websocket signatures are checked over the public URL a proxy reports (issue 17).

A real ``BotServer`` on loopback (trivial pipeline, no emulator needed: nothing here gets past the
doors into a call), requests with hand-made proxy headers.
"""

from __future__ import annotations

import asyncio
import http.client
import urllib.parse

import pytest
from tests.helpers.waiting import wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from pipecat_rxdrain.twilio.config import ServerConfig
from pipecat_rxdrain.twilio.security import WebhookVerifier
from pipecat_rxdrain.twilio.server import BotServer, create_app

AUTH = "forwarded-test-auth-token-0123456789"
PARAMS = {"CallSid": "CA" + "a" * 32, "AccountSid": "AC" + "b" * 32, "From": "+15005550001"}
SIGNER = WebhookVerifier(AUTH)


@pytest.fixture
async def bot():
    cfg = ServerConfig(port=0, twilio_auth_token=AUTH, workers=1)
    app = create_app(cfg, lambda call: [])
    server = BotServer(cfg, app)
    task = asyncio.create_task(server.serve())
    try:
        assert await wait_until(lambda: server.started or task.done(), timeout=15) and server.started
        yield server, app
    finally:
        await server.shutdown("test")
        await asyncio.wait_for(task, 30)


def post(port: int, headers: dict[str, str], params=PARAMS) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        body = urllib.parse.urlencode(params)
        conn.request("POST", "/twiml", body, {"Content-Type": "application/x-www-form-urlencoded", **headers})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


async def test_the_webhook_signature_is_checked_over_x_forwarded_host_and_proto(bot):
    server, app = bot
    public = "https://bot.example.com/twiml"
    signed = SIGNER.sign(public, PARAMS)
    proxy = {"Host": "rxdrain_bots", "X-Forwarded-Proto": "https", "X-Twilio-Signature": signed}
    status, body = await asyncio.to_thread(post, server.port, {**proxy, "X-Forwarded-Host": "bot.example.com, inner"})
    assert status == 200, body
    assert 'url="wss://bot.example.com/ws"' in body  # the stream URL names the public host too
    # the same signature against Host alone (no forwarded host) is not Twilio's URL
    fresh = {**PARAMS, "CallSid": "CA" + "c" * 32}
    proxy["X-Twilio-Signature"] = SIGNER.sign(public, fresh)
    assert (await asyncio.to_thread(post, server.port, proxy, fresh))[0] == 403


async def test_an_rfc7239_forwarded_header_is_read_like_x_forwarded(bot):
    server, _ = bot
    headers = {"Host": "rxdrain_bots", "Forwarded": 'for=203.0.113.9;proto=https;host="bot.example.com:8443"',
               "X-Twilio-Signature": SIGNER.sign("https://bot.example.com:8443/twiml", PARAMS)}
    status, body = await asyncio.to_thread(post, server.port, headers)
    assert status == 200 and 'url="wss://bot.example.com:8443/ws"' in body, body


@pytest.mark.parametrize("garbage", ["evil.example/x?", "a b", "evil.example:99999", "\u00e9.example"])
async def test_a_malformed_forwarded_host_is_a_counted_403_never_a_crash(bot, garbage):
    server, app = bot
    signed = SIGNER.sign("https://bot.example.com/twiml", PARAMS)
    headers = {"Host": "bot.example.com", "X-Forwarded-Host": garbage, "X-Forwarded-Proto": "https",
               "X-Twilio-Signature": SIGNER.sign(f"https://{garbage}/twiml", PARAMS)}
    if garbage.isascii():  # http.client refuses to send non-ASCII header values: send it as latin-1 bytes
        status, _ = await asyncio.to_thread(post, server.port, headers)
    else:
        headers["X-Forwarded-Host"] = garbage.encode("utf-8").decode("latin-1")
        status, _ = await asyncio.to_thread(post, server.port, headers)
    assert status == 403  # ignored: the check ran over https://bot.example.com (Host), not the signed garbage URL
    assert app.state.doors["forwarded_header_invalid"] >= 1
    # falls back to Host: a signature over Host's URL passes
    headers["X-Twilio-Signature"] = signed
    status, body = await asyncio.to_thread(post, server.port, headers)
    assert status == 200, body


async def test_the_websocket_upgrade_signature_uses_the_forwarded_host(bot):
    server, _ = bot
    url = f"ws://127.0.0.1:{server.port}/ws"
    good = {"X-Forwarded-Host": "bot.example.com", "X-Forwarded-Proto": "https",
            "X-Twilio-Signature": SIGNER.sign("wss://bot.example.com/ws", {})}
    async with connect(url, additional_headers=good, open_timeout=5) as ws:
        await ws.close()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers={**good, "X-Forwarded-Host": "other.example.com"}, open_timeout=5):
            pass
    assert refused.value.response.status_code == 403
