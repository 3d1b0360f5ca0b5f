"""The metrics recorder on a real call through the example bot: live RxStats, SttStats and ParserStats,
scraped over HTTP from the bot's own app.

bot.py does not feed the recorder yet; ``wired`` below does what the wiring in bot.py will do
(one recorder per call, ``observe`` on each ``refresh``, ``end`` when the call is over), so the
field mapping is checked against the objects a real call produces.
"""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from bot_harness import load_bot_module, make_config, running_bot, wait_until
from prometheus_client.parser import text_string_to_metric_families

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.metrics import MetricsEndpoint, RxdrainMetrics
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call

TOKEN = "bot-metrics-token-0123456789abcdef"


@pytest.fixture
def emulator():
    emu = SpeechEmulator(script="hello_en").start()
    yield emu
    emu.stop()


@pytest.fixture
def wired(monkeypatch):
    """Metrics fed from every call of the example bot, as bot.py's wiring will do it."""
    bot = load_bot_module()
    call_class = getattr(bot, "_Call", None)
    assert call_class is not None and hasattr(call_class, "refresh"), "bot.py changed: use its own metrics wiring here"
    metrics = RxdrainMetrics()
    original_refresh = call_class.refresh

    def refresh(self):
        record = original_refresh(self)
        recorder = self.__dict__.get("_test_metrics")
        if recorder is None:
            recorder = self.__dict__["_test_metrics"] = metrics.start_call()
        session = self.stt_session or (self.stt.session if self.stt is not None else None)
        recorder.observe(
            rx=self.rx.stats if self.rx is not None else None,
            stt=session.stats if session is not None else None,
            twilio=self.serializer.stats if self.serializer is not None else None,
            finals=record.finals,
        )
        if record.ended_at is not None:
            recorder.end(record.end_reason)
        return record

    monkeypatch.setattr(call_class, "refresh", refresh)
    return metrics


def scrape(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def value(snap, name, **labels):
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_real_call_with_a_stall_shows_in_metrics(emulator, wired):
    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False)
    async with running_bot(cfg) as bot:
        bot.app.add_route("/metrics", MetricsEndpoint(wired.registry, TOKEN), methods=["GET", "HEAD"])
        url = f"http://127.0.0.1:{bot.port}"
        opts = CallerOptions(url=f"ws://127.0.0.1:{bot.port}/ws", sample="hello_en", stall_at_s=1.0, stall_s=2.5)
        call = asyncio.create_task(simulate_call(opts))
        await wait_until(lambda: bot.app.state.calls.active, timeout=10)
        during = None
        while not call.done():  # what a scrape sees mid-call, after /stats (= refresh) ran
            await asyncio.to_thread(urllib.request.urlopen, f"{url}/stats", None, 5)
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
    assert value(after, "rxdrain_rx_drain_episodes_total") == record["rx"]["drain_episodes"] >= 1  # the stall
    assert value(after, "rxdrain_rx_drain_seconds_total") == pytest.approx(record["rx"]["time_in_drain_s"], abs=0.01)
    assert value(after, "rxdrain_rx_dropped_frames_total") == record["rx"]["drops"] == 0
    assert value(after, "rxdrain_stt_dropped_chunks_total") == 0
    assert value(after, "rxdrain_stt_write_seconds_count") >= 1
    timed = [f for f in record["finals"] if f["eos_to_final_ms"] is not None]
    assert value(after, "rxdrain_eos_to_final_seconds_count") == len(timed) >= 1
    assert sum(v for (name, _), v in after.items() if name == "rxdrain_discarded_total") == 0
