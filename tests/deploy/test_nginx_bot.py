"""Real calls through examples/deploy/nginx.conf: a real nginx (TLS) in front of two real bots and the emulator."""

from __future__ import annotations

import asyncio
import http.client
import urllib.parse

import pytest
from tests.helpers.bot_harness import make_config, running_bot
from tests.helpers.waiting import wait_until
from tests.helpers.nginx_proxy import NginxProxy
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call
from pipecat_rxdrain.twilio.security import WebhookVerifier

AUTH = "nginx-test-auth-token-0123456789abcdef"
SECRET = "nginx-test-media-secret-0123456789"  # shared by both bots: /twiml and /ws may land on different ones


@pytest.fixture
def emulator():
    emu = SpeechEmulator(script="hello_en").start()
    yield emu
    emu.stop()


def post_through(proxy: NginxProxy, headers: dict[str, str], params: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.https_port, timeout=10, context=proxy.ssl_context())
    try:
        conn.request("POST", "/twiml", urllib.parse.urlencode(params),
                     {"Content-Type": "application/x-www-form-urlencoded", **headers})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def words(texts) -> list[str]:
    return " ".join(texts).lower().split()


async def test_signed_calls_through_tls_proxy_to_two_bots(emulator, monkeypatch):
    cfg = dict(speech_emulator_host=emulator.address, twilio_auth_token=AUTH, media_token_secret=SECRET)
    sample = load_sample("hello_en")
    async with running_bot(make_config(**cfg)) as bot_a, running_bot(make_config(**cfg)) as bot_b:
        proxy = NginxProxy([f"127.0.0.1:{bot_a.port}", f"127.0.0.1:{bot_b.port}"])
        await asyncio.to_thread(proxy.start)
        try:
            monkeypatch.setenv("SSL_CERT_FILE", str(proxy.cert))  # the caller trusts the test certificate
            twiml_url = f"{proxy.https_url}/twiml"
            # No PUBLIC_HOST: the bot must rebuild Twilio's signed https:// URL from X-Forwarded-Proto and
            # X-Forwarded-Host (nginx sends Host: rxdrain_bots, the upstream's name, so Host alone fails).
            calls = [CallerOptions(twiml_url=twiml_url, auth_token=AUTH, sample="hello_en", tail_silence_s=1.0) for _ in range(2)]
            summaries = await asyncio.gather(*(simulate_call(o) for o in calls))
            done = lambda: len(bot_a.app.state.calls.completed) + len(bot_b.app.state.calls.completed) == 2  # noqa: E731
            await wait_until(done, timeout=15)
            unsigned = await simulate_call(CallerOptions(twiml_url=twiml_url, sample="hello_en"))
            # a client's own X-Forwarded-Host is replaced by nginx's: a signature over the proxy's URL passes,
            # one over the URL the client claims does not
            params = {"CallSid": "CA" + "d" * 32, "AccountSid": "AC" + "e" * 32}
            spoof = {"X-Forwarded-Host": "evil.example.com", "X-Forwarded-Proto": "http"}
            signer = WebhookVerifier(AUTH)
            spoofed_ok = await asyncio.to_thread(
                post_through, proxy, {**spoof, "X-Twilio-Signature": signer.sign(twiml_url, params)}, params)
            params2 = {**params, "CallSid": "CA" + "f" * 32}
            spoofed_evil = await asyncio.to_thread(
                post_through, proxy,
                {**spoof, "X-Twilio-Signature": signer.sign("http://evil.example.com/twiml", params2)}, params2)
            # an upgrade without Twilio's signature is refused by the bot behind the proxy, never upgraded
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{proxy.wss_url}/ws", ssl=proxy.ssl_context(), open_timeout=5):
                    pass
            forged_ws = refused.value.response.status_code
        finally:
            await asyncio.to_thread(proxy.stop)
            proxy.cleanup()
        assert proxy.workers_alive() == []
        completed = {
            "a": [r.as_dict() for r in bot_a.app.state.calls.completed],
            "b": [r.as_dict() for r in bot_b.app.state.calls.completed],
        }
    for s in summaries:
        assert s.ok, s.error
        assert s.twiml_status == 200
        assert s.twiml_stream_url == f"wss://127.0.0.1:{proxy.https_port}/ws"  # the proxy's address, not a bot's
        assert s.close_code == 1000
    # two concurrent calls: least_conn gives each bot one websocket
    assert len(completed["a"]) == len(completed["b"]) == 1, completed
    for record in completed["a"] + completed["b"]:
        assert record["end_reason"] == "stop"
        assert words(f["text"] for f in record["finals"]) == words(sample.segments)
        assert record["rx"]["drops"] == 0 and record["twilio"]["dropped_total"] == 0
    assert unsigned.twiml_status == 403  # the signature check still runs behind the proxy
    assert spoofed_ok[0] == 200 and f'url="wss://127.0.0.1:{proxy.https_port}/ws"' in spoofed_ok[1], spoofed_ok
    assert spoofed_evil[0] == 403
    assert forged_ws == 403
