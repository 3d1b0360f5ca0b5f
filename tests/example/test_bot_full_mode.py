"""Full mode: Gemini + Google TTS cannot talk to Google here, so check it builds the right pipeline;
the offline full mode (``BOT_MODE=offline``: rule-based LLM + espeak-ng) answers a real call end to end,
through our audio path and through the blocking baseline (``BOT_AUDIO_PATH=blocking``).

Async because the Google TTS client opens a (lazy, unused) gRPC aio channel on construction.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
from tests.helpers.bot_harness import get_json, load_bot_module, make_config, running_bot
from tests.helpers.waiting import wait_until

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.testing import fake_service_account_json
from pipecat_rxdrain.twilio.caller import CallerOptions, simulate_call
from pipecat_rxdrain.twilio.config import ConfigError
from pipecat_rxdrain.twilio.media_call import MediaStreamCall
from pipecat_rxdrain.twilio.messages import Start, TwilioStreamParser


def _fake_service_account() -> str:
    return fake_service_account_json("offline-test")


async def test_full_mode_builds_stt_then_user_aggregator_llm_tts_without_network():
    bot = load_bot_module()
    creds = _fake_service_account()
    cfg = bot.BotConfig(google_api_key="offline-key", google_credentials_json=creds, speech_emulator_host="127.0.0.1:9",
                        stt_language="he-IL")
    cfg.validate()
    assert cfg.full_mode and cfg.credentials_problem() is None
    start = Start("MZ" + "1" * 32, "AC" + "1" * 32, "CA" + "1" * 32, ("inbound",), {}, "audio/x-mulaw", 8000, 1, 1)
    call = MediaStreamCall(None, start, TwilioStreamParser(), cfg)
    processors = bot.build_pipeline(cfg, call)
    assert processors[0] is call.transport().input() and call.record.mode == "full"
    names = [type(p).__name__ for p in processors]
    expected = ["RxDrainProcessor", "GoogleSTTService", "TranscriptRecorder", "LLMUserAggregator", "GoogleLLMService",
                "GoogleTTSService", "LLMAssistantAggregator"]
    it = iter(names)
    assert all(any(n == e for n in it) for e in expected), names  # in this order
    rx, stt = processors[1], processors[2]
    assert rx._sink is stt  # noqa: SLF001  RX releases only what our STT can take
    assert "offline-key" not in repr(cfg) and "PRIVATE KEY" not in repr(cfg)


def _call_for(cfg) -> MediaStreamCall:
    start = Start("MZ" + "1" * 32, "AC" + "1" * 32, "CA" + "1" * 32, ("inbound",), {}, "audio/x-mulaw", 8000, 1, 1)
    return MediaStreamCall(None, start, TwilioStreamParser(), cfg)


def _in_order(names: list[str], expected: list[str]) -> bool:
    it = iter(names)
    return all(any(n == e for n in it) for e in expected)


needs_offline = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


@needs_offline
@pytest.mark.parametrize("audio_path, front", [("rxdrain", ["RxDrainProcessor", "GoogleSTTService"]),
                                               ("blocking", ["PacedRxQueue", "BlockingSyncWriter"])])
async def test_offline_mode_puts_the_rule_llm_and_espeak_tts_where_gemini_and_google_tts_go(audio_path, front):
    pytest.importorskip("pipecat_rxdrain.offline")
    bot = load_bot_module()
    cfg = bot.BotConfig(bot_mode="offline", audio_path=audio_path, speech_emulator_host="127.0.0.1:9", stt_language="en-US")
    cfg.validate()
    assert cfg.full_mode and cfg.offline_replies and cfg.credentials_problem() is None
    call = _call_for(cfg)
    processors = bot.build_pipeline(cfg, call)
    assert processors[0] is call.transport().input() and call.record.mode == "offline"
    names = [type(p).__name__ for p in processors]
    assert _in_order(names, [*front, "TranscriptRecorder", "LLMUserAggregator", "RuleBasedLLMService", "EspeakTTSService",
                             "LLMAssistantAggregator"]), names
    assert not {"GoogleLLMService", "GoogleTTSService"} & set(names)
    if audio_path == "blocking":
        assert call.record.rx is processors[1].stats  # /stats shows the baseline's queue


def test_mode_settings_fail_at_start_up_naming_the_setting(monkeypatch):
    bot = load_bot_module()
    with pytest.raises(ConfigError, match="BOT_AUDIO_PATH=blocking .* SPEECH_EMULATOR_HOST"):
        bot.BotConfig(audio_path="blocking", stt_language="en-US", google_credentials_path="/nonexistent.json").validate()
    with pytest.raises(ConfigError, match="BOT_AUDIO_PATH"):
        bot.BotConfig.from_env({"BOT_AUDIO_PATH": "sync"})
    pytest.importorskip("pipecat_rxdrain.offline")
    monkeypatch.setenv("PATH", "/nonexistent")  # no espeak-ng on PATH
    with pytest.raises(ConfigError, match="BOT_MODE=offline: espeak-ng not found"):
        bot.BotConfig(bot_mode="offline", speech_emulator_host="127.0.0.1:9", stt_language="en-US").validate()


@needs_offline
@pytest.mark.parametrize("audio_path", ["rxdrain", "blocking"])
async def test_offline_full_mode_answers_the_caller_with_speech(audio_path):
    """A real call: the caller hears sound back after its first utterance, on both audio paths."""
    pytest.importorskip("pipecat_rxdrain.offline")
    emu = SpeechEmulator(script="hello_en").start()
    try:
        cfg = make_config(speech_emulator_host=emu.address, bot_mode="offline", audio_path=audio_path)
        async with running_bot(cfg) as bot:
            port = bot.port
            opts = CallerOptions(url=f"ws://127.0.0.1:{port}/ws", twiml_url=f"http://127.0.0.1:{port}/twiml",
                                 sample="hello_en", tail_silence_s=2.0, linger_s=4.0)
            summary = await simulate_call(opts)
            await wait_until(lambda: list(bot.app.state.calls.completed), timeout=15)
            call = (await asyncio.to_thread(get_json, f"http://127.0.0.1:{port}/stats"))["completed"][0]
    finally:
        emu.stop()
    assert summary.ok, summary.error
    assert call["mode"] == "offline" and len(call["finals"]) == 2
    # the bot spoke: sound (not only silence) reached the caller, after the caller's first words
    assert summary.sound_received_at and summary.audio_t0 is not None
    assert min(summary.sound_received_at) - summary.audio_t0 > 1.0
    assert summary.received_media_bytes > 8000  # more than a second of 8 kHz mu-law
