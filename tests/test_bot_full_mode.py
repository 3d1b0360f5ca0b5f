"""Full mode (Gemini + Google TTS) cannot talk to Google here; check it builds the right pipeline offline.

Async because the Google TTS client opens a (lazy, unused) gRPC aio channel on construction.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot_harness import load_bot_module
from pipecat_rxdrain.twilio.media_call import MediaStreamCall
from pipecat_rxdrain.twilio.messages import Start, TwilioStreamParser


def _fake_service_account() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account", "project_id": "offline-test", "private_key_id": "0", "private_key": pem,
        "client_email": "bot@offline-test.iam.gserviceaccount.com", "client_id": "0",
        "token_uri": "https://oauth2.googleapis.com/token",
    })


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
