"""One process per core (issue 17): ``WORKERS=2`` serves one port from two worker processes.

The example bot runs as a real supervisor with two workers. Calls (webhook, then websocket, on
separate connections as Twilio makes them) spread over both workers; a token one worker issued
is accepted by the other (no MEDIA_TOKEN_SECRET set: the supervisor hands its workers one random
secret); each worker caps its own active calls at MAX_CALLS (close 1013 beyond it) while the
other still takes calls; /metrics (multiprocess mode) sums the workers; SIGTERM to the supervisor
drains every worker and it exits 0 with no call cut.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from tests.helpers.bot_harness import STATS_TOKEN, BotProcess, clean_env, get_json
from prometheus_client.parser import text_string_to_metric_families

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.samples import sample_path
from pipecat_rxdrain.twilio.audio import wav_to_twilio_frames
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


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


async def test_two_workers_share_the_port_the_tokens_and_drain_together(tmp_path, emulator):
    # No MEDIA_TOKEN_SECRET: the supervisor makes one for its workers. Were each worker to make its own,
    # every call whose webhook and websocket reach different workers (about half) would be refused (1008).
    env = clean_env(tmp_path, SPEECH_EMULATOR_HOST=emulator.address, STT_LANGUAGE="en-US", STATS_TOKEN=STATS_TOKEN,
                    METRICS_TOKEN=METRICS, WORKERS="2", MAX_CALLS=str(CALLS), SHUTDOWN_GRACE_S="20")
    proc = BotProcess(env)
    try:
        await asyncio.to_thread(proc.wait_ready, 120)
        port = proc.port

        def call(frames: list[bytes] | None = None) -> CallerOptions:
            return CallerOptions(twiml_url=f"http://127.0.0.1:{port}/twiml", url=f"ws://127.0.0.1:{port}/ws",
                                 sample=None if frames else "hello_en", frames=frames, tail_silence_s=0.5)

        async def settled(sent: int) -> dict[int, dict]:
            deadline = time.monotonic() + 15
            while True:
                workers = await asyncio.to_thread(per_worker, proc.url)
                if sum(len(w["completed"]) for w in workers.values()) == sent or time.monotonic() > deadline:
                    return workers
                await asyncio.sleep(0.2)

        summaries = await asyncio.wait_for(asyncio.gather(*(simulate_call(call()) for _ in range(CALLS))), 90)
        workers = await settled(CALLS)
        # SO_REUSEPORT hashes each connection to a worker: 8 calls all land on one about once in 128
        # runs. Calling on, one at a time, until both have taken one keeps that chance out of the test.
        while len(summaries) < 3 * CALLS and (len(workers) < 2 or any(not w["completed"] for w in workers.values())):
            print(f"one more call: calls completed per worker {({pid: len(w['completed']) for pid, w in workers.items()})}")
            summaries.append(await asyncio.wait_for(simulate_call(call()), 30))
            workers = await settled(len(summaries))
        sent = len(summaries)
        started_total = await asyncio.to_thread(metric, proc.url, "rxdrain_calls_started_total")
        secrets_seen = {environ_of(pid).get("MEDIA_TOKEN_SECRET") for pid in workers}

        # SIGTERM with calls in flight: every worker lets its calls finish, then the supervisor exits 0
        first_sentence = wav_to_twilio_frames(sample_path("hello_en"))[:175]  # 3.5 s: still talking at the SIGTERM
        late = [asyncio.create_task(simulate_call(call(first_sentence))) for _ in range(2)]
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
    # both workers took calls
    assert all(c["admitted"] >= 1 for c in counters.values()), counters
    assert sum(c["admitted"] for c in counters.values()) == sent
    assert sum(c["webhooks_answered"] for c in counters.values()) == sent
    # All 8 calls streamed: with 8 calls, the odds that none had its webhook and websocket on different
    # workers are 1/256, so a per-worker secret fails this test. The one secret is in both workers'
    # environment, long enough, and in no log line.
    (secret,) = secrets_seen
    assert secret is not None and len(secret) >= 32
    assert secret not in proc.log and secret not in "\n".join(proc.out)
    assert "MEDIA_TOKEN_SECRET is not set: the 2 workers share a random one" in proc.log
    assert "MEDIA_TOKEN_SECRET" not in environ_of(os.getpid())  # made in the supervisor, not inherited
    assert all(r["end_reason"] == "stop" for w in workers.values() for r in w["completed"])
    assert started_total == sent  # /metrics sums both workers' files
    assert code == 0, proc.log[-3000:]
    assert "[BOT] 2 workers listening" in proc.log
    assert proc.log.count("every call finished within the grace period") >= 1


async def test_each_worker_caps_its_own_calls_at_max_calls_while_the_other_takes_calls(tmp_path, emulator):
    """MAX_CALLS=1 with 2 workers: 2 calls at once (one per worker); a third is refused with close 1013 by
    whichever worker it reaches, and both workers refuse. Calls are started one at a time and held open."""
    env = clean_env(tmp_path, SPEECH_EMULATOR_HOST=emulator.address, STT_LANGUAGE="en-US", STATS_TOKEN=STATS_TOKEN,
                    MEDIA_TOKEN_SECRET=SECRET, WORKERS="2", MAX_CALLS="1", SHUTDOWN_GRACE_S="1")
    proc = BotProcess(env)
    held: list[asyncio.Task] = []
    refused = []
    snapshots: list[dict[int, dict]] = []
    try:
        await asyncio.to_thread(proc.wait_ready, 120)
        port = proc.port

        def active(workers: dict[int, dict]) -> int:
            return sum(len(w["active"]) for w in workers.values())

        for _ in range(16):
            task = asyncio.create_task(simulate_call(CallerOptions(
                twiml_url=f"http://127.0.0.1:{port}/twiml", url=f"ws://127.0.0.1:{port}/ws", sample="hello_en",
                tail_silence_s=60.0)))  # held open until the SIGTERM below ends it
            deadline = time.monotonic() + 15
            while True:  # refused (the caller returns) or admitted (one more active call)
                workers = await asyncio.to_thread(per_worker, proc.url)
                snapshots.append(workers)
                if task.done() or active(workers) > len(held) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            if task.done():
                refused.append(task.result())
            else:
                held.append(task)
            full = {pid: w["counters"]["refused_full"] for pid, w in workers.items()}
            if len(held) == 2 and len(full) == 2 and all(n >= 1 for n in full.values()):
                break
        final = await asyncio.to_thread(per_worker, proc.url)
        proc.p.send_signal(signal.SIGTERM)
        ended = await asyncio.wait_for(asyncio.gather(*held), 60)
        code = await asyncio.to_thread(proc.p.wait, 40)
    finally:
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await asyncio.to_thread(proc.stop)
    assert len(final) == 2, final.keys()
    # each worker holds exactly its one call (a cap shared by the workers would have refused the second)
    assert {pid: len(w["active"]) for pid, w in final.items()} == dict.fromkeys(final, 1), final
    assert len(held) == 2 and len(ended) == 2
    # never more than MAX_CALLS on any worker, at any moment observed
    assert all(len(w["active"]) <= 1 for snap in snapshots for w in snap.values())
    # both workers refused calls beyond their cap, the way a full process refuses: accepted, then close 1013
    refused_full = {pid: w["counters"]["refused_full"] for pid, w in final.items()}
    assert all(n >= 1 for n in refused_full.values()), refused_full
    assert refused and all(s.twiml_status == 200 and s.close_code == 1013 and s.frames_sent <= 5 for s in refused), refused
    assert sum(refused_full.values()) == len(refused)
    assert code == 0, proc.log[-3000:]


def test_workers_default_to_one_per_core_and_need_no_secret_in_the_config():
    from tests.helpers.bot_harness import make_config

    from pipecat_rxdrain.twilio.config import ServerConfig
    from pipecat_rxdrain.twilio.workers import worker_count

    default = ServerConfig.from_env({})
    assert default.workers == 0 and worker_count(default) == (os.cpu_count() or 1)
    assert worker_count(make_config(workers=3)) == 3
    # no secret needed in the config: the supervisor makes one for its workers (see the test above)
    assert make_config(workers=2).media_token_secret is None


def test_a_default_start_runs_one_worker_per_core_without_any_secret_set(tmp_path, emulator):
    """No WORKERS, no MEDIA_TOKEN_SECRET: the bot starts (one worker per core here) and stops with exit 0."""
    env = clean_env(tmp_path, SPEECH_EMULATOR_HOST=emulator.address, STT_LANGUAGE="en-US")
    del env["WORKERS"]
    proc = BotProcess(env)
    try:
        proc.wait_ready(120)
        ready = urllib.request.urlopen(f"{proc.url}/readyz", timeout=5).status
    finally:
        code = proc.stop()
    assert ready == 200 and code == 0, proc.log[-3000:]
    cores = os.cpu_count() or 1
    if cores > 1:
        assert f"[BOT] {cores} workers listening" in proc.log
        assert f"MEDIA_TOKEN_SECRET is not set: the {cores} workers share a random one" in proc.log
    assert "configuration error" not in proc.log
