"""The metrics recorder on a real call through the example bot: live RxStats, STTStats and ParserStats,
scraped over HTTP from the bot's own app.

The bot's own wiring (``MediaStreamCall`` starts a recorder per call, observes on each refresh,
ends it with the call) and its own ``/metrics`` route, protected by ``METRICS_TOKEN``.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from tests.helpers.bot_harness import make_config, running_bot
from tests.helpers.waiting import wait_until
from prometheus_client.parser import text_string_to_metric_families

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.metrics import RxdrainMetrics
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call

TOKEN = "bot-metrics-token-0123456789abcdef"


@pytest.fixture
def emulator():
    emu = SpeechEmulator(script="hello_en").start()
    yield emu
    emu.stop()


@pytest.fixture
def wired():
    """The metrics the bot counts into (passed to ``create_app``: every call feeds them)."""
    return RxdrainMetrics()


def scrape(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def value(snap, name, **labels):
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_real_call_with_a_stall_shows_in_metrics(emulator, wired):
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False, metrics_token=TOKEN)
    async with running_bot(cfg, metrics=wired) as bot:
        url = f"http://127.0.0.1:{bot.port}"
        opts = CallerOptions(url=f"ws://127.0.0.1:{bot.port}/ws", sample="hello_en", stall_at_s=1.0, stall_s=2.5)
        call = asyncio.create_task(simulate_call(opts))
        await wait_until(lambda: bot.app.state.calls.active, timeout=10)
        during = None
        while not call.done():  # what a scrape sees mid-call (the call's watchdog refreshes 4x a second)
            during = during or (await asyncio.to_thread(scrape, f"{url}/metrics"))
            await asyncio.sleep(0.2)
        summary = await call
        await wait_until(lambda: list(bot.app.state.calls.completed), timeout=10)
        after = await asyncio.to_thread(scrape, f"{url}/metrics")
        record = bot.app.state.calls.completed[0].as_dict()
    assert summary.ok, summary.error
    assert value(during, "rxdrain_active_calls") == 1
    assert value(after, "rxdrain_active_calls") == 0
    assert value(after, "rxdrain_rx_queue_frames") == 0 and value(after, "rxdrain_stt_queue_chunks") == 0
    assert value(after, "rxdrain_calls_ended_total", reason="stop") == 1
    assert value(after, "rxdrain_rx_frames_in_total") == record["rx"]["frames_in"] == summary.frames_sent
    # (work-conserving RX: a caller-side stall need not enter drain, so only agreement is asserted)
    assert value(after, "rxdrain_rx_drain_episodes_total") == record["rx"]["drain_episodes"]
    assert value(after, "rxdrain_rx_drain_seconds_total") == pytest.approx(record["rx"]["time_in_drain_s"], abs=0.01)
    assert value(after, "rxdrain_rx_dropped_frames_total") == record["rx"]["drops"] == 0
    assert value(after, "rxdrain_stt_dropped_chunks_total") == 0
    assert value(after, "rxdrain_stt_write_seconds_count") >= 1
    timed = [f for f in record["finals"] if f["eos_to_final_ms"] is not None]
    assert value(after, "rxdrain_eos_to_final_seconds_count") == len(timed) >= 1
    assert sum(v for (name, _), v in after.items() if name == "rxdrain_discarded_total") == 0


async def test_metrics_need_the_token_and_are_off_without_one(emulator):
    cfg = make_config(speech_emulator_host=emulator.address, metrics_token=TOKEN)
    async with running_bot(cfg) as bot:
        url = f"http://127.0.0.1:{bot.port}/metrics"
        status = lambda req: _status(req)  # noqa: E731
        assert await asyncio.to_thread(status, urllib.request.Request(url)) == 401
        bad = urllib.request.Request(url, headers={"Authorization": "Bearer " + "x" * 32})
        assert await asyncio.to_thread(status, bad) == 401
        good = await asyncio.to_thread(scrape, url)
        assert value(good, "rxdrain_active_calls") == 0
    async with running_bot(make_config(speech_emulator_host=emulator.address)) as bot:
        assert await asyncio.to_thread(_status, urllib.request.Request(f"http://127.0.0.1:{bot.port}/metrics")) == 404


def _status(request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_metrics_token_shorter_than_16_bytes_is_refused_naming_it():
    from pipecat_rxdrain.twilio.config import ConfigError

    with pytest.raises(ConfigError, match="METRICS_TOKEN must be at least 16 bytes") as e:
        make_config(metrics_token="short-secret")
    assert "short-secret" not in str(e.value)
