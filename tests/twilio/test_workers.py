"""One process per core (issue 17): ``WORKERS=2`` serves one port from two worker processes.

The example bot runs as a real supervisor with two workers. Calls (webhook, then websocket, on
separate connections as Twilio makes them) spread over both workers; a token one worker issued
is accepted by the other (the shared MEDIA_TOKEN_SECRET); each worker counts its own MAX_CALLS;
/metrics (multiprocess mode) sums the workers; SIGTERM to the supervisor drains every worker
and it exits 0 with no call cut.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request

import pytest
from tests.helpers.bot_harness import STATS_TOKEN, BotProcess, clean_env, get_json
from prometheus_client.parser import text_string_to_metric_families

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call

SECRET = "workers-test-media-secret-0123456789"
METRICS = "workers-test-metrics-token-0123456789"
CALLS = 8


@pytest.fixture
def emulator():
    emu = SpeechEmulator(script="hello_en").start()
    yield emu
    emu.stop()


def per_worker(url: str, tries: int = 200) -> dict[int, dict]:
    """/stats of every worker: fresh connections land on either (SO_REUSEPORT hashing)."""
    seen: dict[int, dict] = {}
    for _ in range(tries):
        stats = get_json(f"{url}/stats")
        seen[stats["pid"]] = stats
        if len(seen) == 2 and _ > 20:
            break
    return seen


def metric(url: str, name: str) -> float:
    req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


async def test_two_workers_share_the_port_the_tokens_and_drain_together(tmp_path, emulator):
    env = clean_env(tmp_path, SPEECH_EMULATOR_HOST=emulator.address, STT_LANGUAGE="en-US", STATS_TOKEN=STATS_TOKEN,
                    MEDIA_TOKEN_SECRET=SECRET, METRICS_TOKEN=METRICS, WORKERS="2", MAX_CALLS=str(CALLS),
                    SHUTDOWN_GRACE_S="20")
    proc = BotProcess(env)
    try:
        await asyncio.to_thread(proc.wait_ready, 120)
        port = proc.port

        def call() -> CallerOptions:
            return CallerOptions(twiml_url=f"http://127.0.0.1:{port}/twiml", url=f"ws://127.0.0.1:{port}/ws",
                                 sample="hello_en", tail_silence_s=0.5)

        summaries = await asyncio.wait_for(asyncio.gather(*(simulate_call(call()) for _ in range(CALLS))), 90)
        deadline = time.monotonic() + 15
        while True:
            workers = await asyncio.to_thread(per_worker, proc.url)
            if sum(len(w["completed"]) for w in workers.values()) == CALLS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        started_total = await asyncio.to_thread(metric, proc.url, "rxdrain_calls_started_total")

        # SIGTERM with calls in flight: every worker lets its calls finish, then the supervisor exits 0
        late = [asyncio.create_task(simulate_call(call())) for _ in range(2)]
        await asyncio.sleep(2.0)
        proc.p.send_signal(signal.SIGTERM)
        late_summaries = await asyncio.wait_for(asyncio.gather(*late), 60)
        code = await asyncio.to_thread(proc.p.wait, 40)
    finally:
        await asyncio.to_thread(proc.stop)
    for s in summaries + late_summaries:
        assert s.ok, s.error
        assert s.twiml_status == 200 and s.close_code == 1000, s
    assert len(workers) == 2, workers.keys()
    counters = {pid: w["counters"] for pid, w in workers.items()}
    # both workers took calls (8 calls: all on one worker has odds 1/128)
    assert all(c["admitted"] >= 1 for c in counters.values()), counters
    assert sum(c["admitted"] for c in counters.values()) == CALLS
    assert sum(c["webhooks_answered"] for c in counters.values()) == CALLS
    # Equal per-worker counts do not show that no token crossed workers, so this test does not assert a crossing;
    # that a token issued under MEDIA_TOKEN_SECRET verifies in any other instance with it is
    # tests/test_twilio_security.py::test_tokens_from_another_secret_are_refused_and_shared_secrets_interoperate.
    assert all(r["end_reason"] == "stop" for w in workers.values() for r in w["completed"])
    assert started_total == CALLS  # /metrics sums both workers' files
    assert code == 0, proc.log[-3000:]
    assert "[BOT] 2 workers listening" in proc.log
    assert proc.log.count("every call finished within the grace period") >= 1


def test_workers_need_a_shared_media_token_secret():
    from tests.helpers.bot_harness import make_config

    from pipecat_rxdrain.twilio.config import ConfigError

    with pytest.raises(ConfigError, match="MEDIA_TOKEN_SECRET"):
        make_config(workers=2)
    assert make_config(workers=2, media_token_secret=SECRET).workers == 2
