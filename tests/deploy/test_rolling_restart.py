"""Rolling restart through nginx: one of two bot processes gets SIGTERM with calls in flight.

Two real bot processes (shared MEDIA_TOKEN_SECRET and TWILIO_AUTH_TOKEN) behind the shipped
nginx.conf (TLS); callers POST the signed webhook over https and stream over wss://. Bot A is
terminated while both bots carry calls: its /readyz fails at once, its calls finish on their own
(``stop`` from the caller, never ``SIGTERM``), new calls started after the signal all land on B,
and A exits 0. No call is cut.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request

from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call
from tests.helpers.bot_harness import STATS_TOKEN, BotProcess, clean_env, get_json
from tests.helpers.nginx_proxy import NginxProxy

AUTH = "rolling-test-auth-token-0123456789abcdef"
SECRET = "rolling-test-media-secret-0123456789"
GRACE_S = 20  # longer than a call (hello_en: 7.6 s of audio + 1 s of silence)


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1


def time_until_unready(url: str, limit_s: float = 5.0) -> float | None:
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        if readyz(url) == 503:
            return time.monotonic() - began
        time.sleep(0.005)
    return None


def active(url: str) -> int:
    return len(get_json(f"{url}/stats")["active"])


async def test_sigterm_to_one_of_two_bots_behind_nginx_cuts_no_call(tmp_path, emulator, monkeypatch):
    env = clean_env(tmp_path, SPEECH_EMULATOR_HOST=emulator.address, STT_LANGUAGE="en-US", STATS_TOKEN=STATS_TOKEN,
                    TWILIO_AUTH_TOKEN=AUTH, MEDIA_TOKEN_SECRET=SECRET, SHUTDOWN_GRACE_S=str(GRACE_S))
    a, b = BotProcess(env), BotProcess(env)
    proxy = None
    try:
        await asyncio.gather(asyncio.to_thread(a.wait_ready, 90), asyncio.to_thread(b.wait_ready, 90))
        proxy = NginxProxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        await asyncio.to_thread(proxy.start)
        monkeypatch.setenv("SSL_CERT_FILE", str(proxy.cert))
        twiml_url = f"{proxy.https_url}/twiml"

        def call() -> CallerOptions:
            return CallerOptions(twiml_url=twiml_url, auth_token=AUTH, sample="hello_en", tail_silence_s=1.0)

        first = [asyncio.create_task(simulate_call(call())) for _ in range(4)]
        deadline = time.monotonic() + 15
        while not (await asyncio.to_thread(active, a.url) and await asyncio.to_thread(active, b.url)):
            assert time.monotonic() < deadline, "calls did not spread over both bots"
            await asyncio.sleep(0.1)
        on_a = await asyncio.to_thread(active, a.url)

        a.p.send_signal(signal.SIGTERM)
        unready_after = await asyncio.to_thread(time_until_unready, a.url)
        assert unready_after is not None, "A's /readyz did not fail after SIGTERM"
        assert await asyncio.to_thread(readyz, b.url) == 200

        later = [asyncio.create_task(simulate_call(call())) for _ in range(3)]  # while A drains its calls
        summaries = await asyncio.wait_for(asyncio.gather(*first, *later), 60)
        code_a = await asyncio.to_thread(a.p.wait, GRACE_S + 10)
        b_stats = await asyncio.to_thread(get_json, f"{b.url}/stats")
    finally:
        if proxy is not None:
            await asyncio.to_thread(proxy.stop)
            proxy.cleanup()
        await asyncio.to_thread(a.stop)
        await asyncio.to_thread(b.stop)
    print(f"\nSIGTERM -> A's /readyz 503 after {unready_after * 1000:.0f} ms; A carried {on_a} in-flight call(s)")
    for s in summaries:
        assert s.ok, s.error
        assert s.twiml_status == 200 and s.close_code == 1000, s
    assert code_a == 0, a.log[-3000:]
    ended_on_a = [line for line in a.err if "call ended (" in line]
    assert len(ended_on_a) == on_a >= 1, ended_on_a
    assert all("call ended (stop)" in line for line in ended_on_a), ended_on_a  # finished, not cut
    # every call started after the signal landed on B
    assert len(b_stats["completed"]) == len(first) - on_a + len(later), b_stats["completed"]
    assert all(r["end_reason"] == "stop" for r in b_stats["completed"])
    assert "every call finished within the grace period" in a.log
