"""The pipeline worker MediaStreamCall builds for a real call (bot server + emulator + caller on loopback)."""

from __future__ import annotations

import pytest
from pipecat.pipeline.worker import PipelineWorker

from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call
from pipecat_rxdrain.twilio.server import create_app
from tests.helpers.bot_harness import make_config, running_bot
from tests.helpers.waiting import wait_until


async def test_a_phone_call_runs_without_rtvi(emulator):
    calls = []

    def build_pipeline(call):
        calls.append(call)
        return [call.transport().input()]

    cfg = make_config(speech_emulator_host=emulator.address, require_media_token=False)
    app = create_app(cfg, build_pipeline)
    async with running_bot(cfg, app=app) as server:
        summary = await simulate_call(
            CallerOptions(url=f"ws://127.0.0.1:{server.port}/ws", sample="hello_en", tail_silence_s=0, speed=4.0)
        )
        assert summary.ok, summary.error
        assert await wait_until(lambda: len(app.state.calls.completed) == 1, timeout=10)
    (call,) = calls
    assert isinstance(call.worker, PipelineWorker)
    with pytest.raises(Exception, match="RTVI is not enabled"):
        call.worker.rtvi  # noqa: B018 - the property raises when the worker has no RTVI processor
