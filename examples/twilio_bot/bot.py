"""A Twilio phone bot: Pipecat + pipecat-rxdrain + Google Speech-to-Text.

    python examples/twilio_bot/bot.py --host 127.0.0.1 --port 8765
    python -m pipecat_rxdrain.examples.twilio_bot.bot          # the same file, from an installed wheel

This file is the pipeline and its configuration. The Twilio plumbing (webhook
signature, per-call media token, the Media Streams handshake, call slots,
bounded input, /stats, /healthz, clean shutdown) is ``pipecat_rxdrain.twilio``.

Transcribe-only unless LLM/TTS credentials are set (``GOOGLE_API_KEY`` for Gemini and
Google Cloud credentials for TTS): then it answers the caller. ``BOT_MODE=offline`` answers
with no account and no network: a rule-based LLM service and espeak-ng speech
(``pipecat_rxdrain.offline``), real Pipecat services in the same places in the pipeline.
``BOT_AUDIO_PATH=blocking`` swaps RX back-pressure + our STT for the blocking pattern the
project started from (``pipecat_rxdrain.baseline``, emulator only) so ``rxdrain demo`` can run
the same call through both. Every setting is an environment variable (see ``.env.example``
next to this file), checked at start-up.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipecat_rxdrain.twilio.config import ConfigError, ServerConfig, check_google_credentials, setting
from pipecat_rxdrain.twilio.logs import configure_logging
from pipecat_rxdrain.twilio.media_call import MediaStreamCall
from pipecat_rxdrain.twilio.server import create_app as create_server_app
from pipecat_rxdrain.twilio.server import serve_forever


class BotMode(StrEnum):
    AUTO = "auto"  # full if LLM/TTS credentials are set, else transcribe
    TRANSCRIBE = "transcribe"
    FULL = "full"  # Gemini + Google TTS
    OFFLINE = "offline"  # rule-based replies + espeak-ng, no network


class AudioPath(StrEnum):
    RXDRAIN = "rxdrain"
    BLOCKING = "blocking"  # the baseline we replace (emulator only)


@dataclass
class BotConfig(ServerConfig):
    """The server's settings plus this bot's pipeline: STT, RX back-pressure, optional LLM/TTS."""

    stt_language: str = setting("STT_LANGUAGE", "he-IL")
    stt_location: str = setting("STT_LOCATION", "us-central1")
    stt_model: str | None = setting("STT_MODEL", None, kind=str)
    stt_api: str = setting("STT_API", "v2", choices=("v1", "v2"))
    speech_emulator_host: str | None = setting("SPEECH_EMULATOR_HOST", None, kind=str)
    google_credentials_path: str | None = setting("GOOGLE_APPLICATION_CREDENTIALS", None, kind=str)
    google_credentials_json: str | None = setting("GOOGLE_CREDENTIALS_JSON", None, kind=str, secret=True)
    google_api_key: str | None = setting("GOOGLE_API_KEY", None, kind=str, secret=True)
    bot_mode: BotMode = setting("BOT_MODE", BotMode.AUTO)
    audio_path: AudioPath = setting("BOT_AUDIO_PATH", AudioPath.RXDRAIN)
    llm_model: str | None = setting("LLM_MODEL", None, kind=str)
    tts_voice: str | None = setting("TTS_VOICE", None, kind=str)  # offline mode: an espeak-ng voice (default en-us)
    system_prompt: str = setting(
        "SYSTEM_PROMPT", "You are a helpful phone assistant. Answer briefly, in the caller's language."
    )
    rx_max_queue: int = setting("RX_MAX_QUEUE", 200, positive=True, max=50_000)
    rx_high_watermark: int = setting("RX_HIGH_WATERMARK", 100, positive=True)
    rx_low_watermark: int = setting("RX_LOW_WATERMARK", 20, min=0)
    stt_max_queue: int = setting("STT_MAX_QUEUE", 200, positive=True, max=50_000)
    stt_batch_ms: float = setting("STT_BATCH_MS", 60.0, positive=True, max=1000)
    stt_debounce_ms: float = setting("STT_DEBOUNCE_MS", 110.0, min=0, max=5000)  # 0 = off
    stt_final_timeout_ms: float = setting("STT_FINAL_TIMEOUT_MS", 320.0, min=0, max=10_000)  # 0 = off
    stt_vad_hangover_ms: float = setting("STT_VAD_HANGOVER_MS", 180.0, min=0, max=10_000)

    @property
    def emulator(self) -> bool:
        return bool(self.speech_emulator_host)

    @property
    def offline_replies(self) -> bool:
        """Answer with the offline services (rule-based LLM + espeak-ng) rather than Gemini + Google TTS."""
        return self.bot_mode == BotMode.OFFLINE

    @property
    def full_mode(self) -> bool:
        """Answer the caller (Gemini + Google TTS, or the offline services) rather than only transcribe."""
        return self.offline_replies or (self.bot_mode != BotMode.TRANSCRIBE and self._has_llm_tts_credentials)

    @property
    def _has_llm_tts_credentials(self) -> bool:
        return bool(self.google_api_key) and bool(self.google_credentials_json or self.google_credentials_path)

    def validate(self) -> None:
        from pipecat.transcriptions.language import Language

        super().validate()
        try:
            Language(self.stt_language)
        except ValueError:
            raise ConfigError(
                f"STT_LANGUAGE: unknown language code {self.stt_language!r} (e.g. he-IL, en-US)"
            ) from None
        if not (self.rx_low_watermark < self.rx_high_watermark <= self.rx_max_queue):
            raise ConfigError(
                "RX watermarks need 0 <= RX_LOW_WATERMARK < RX_HIGH_WATERMARK <= RX_MAX_QUEUE, got "
                f"{self.rx_low_watermark}/{self.rx_high_watermark}/{self.rx_max_queue}"
            )
        if self.bot_mode == BotMode.FULL and not self._has_llm_tts_credentials:
            raise ConfigError("BOT_MODE=full needs GOOGLE_API_KEY (Gemini) and Google Cloud credentials (TTS)")
        if self.offline_replies:
            try:
                from pipecat_rxdrain.offline.espeak import EspeakError, find_espeak
            except ImportError as e:
                raise ConfigError(f"BOT_MODE=offline needs the pipecat_rxdrain.offline services ({e})") from None
            try:
                find_espeak()
            except EspeakError as e:
                raise ConfigError(f"BOT_MODE=offline: {e}") from None
        if self.audio_path == AudioPath.BLOCKING and not self.speech_emulator_host:
            raise ConfigError(
                "BOT_AUDIO_PATH=blocking (the baseline we replace) runs only against the emulator: set SPEECH_EMULATOR_HOST"
            )

    def credentials_problem(self) -> str | None:
        return check_google_credentials(
            emulator_host=self.speech_emulator_host,
            credentials_json=self.google_credentials_json,
            credentials_path=self.google_credentials_path,
        )


def make_stt(cfg: BotConfig):
    """The config -> STT service mapping, in one place."""
    from pipecat.services.google.stt import GoogleSTTSettings
    from pipecat.transcriptions.language import Language

    from pipecat_rxdrain.stt.service import GoogleSTTService

    settings = GoogleSTTSettings(languages=[Language(cfg.stt_language)])
    if cfg.stt_model:
        settings.model = cfg.stt_model
    return GoogleSTTService(
        credentials=cfg.google_credentials_json,
        credentials_path=cfg.google_credentials_path,
        location=cfg.stt_location,
        sample_rate=8000,
        settings=settings,
        max_queue=cfg.stt_max_queue,
        batch_ms=cfg.stt_batch_ms,
        debounce_ms=cfg.stt_debounce_ms or None,
        final_timeout_ms=cfg.stt_final_timeout_ms or None,
        vad_hangover_ms=cfg.stt_vad_hangover_ms or None,
        api=cfg.stt_api,
        endpoint=cfg.speech_emulator_host,
    )


def make_audio_path(cfg: BotConfig, call: MediaStreamCall) -> list:
    """The processors from transport input to the first transcript: RX back-pressure -> our STT, or
    (``BOT_AUDIO_PATH=blocking``) the blocking baseline we replace: a paced queue -> a synchronous gRPC writer."""
    if cfg.audio_path == AudioPath.BLOCKING:
        from pipecat_rxdrain.baseline import BlockingSyncWriter, PacedRxQueue

        assert cfg.speech_emulator_host, "validate() requires SPEECH_EMULATOR_HOST for BOT_AUDIO_PATH=blocking"
        paced = PacedRxQueue(max_queue=cfg.rx_max_queue)
        call.record.rx = paced.stats  # kept up to date in place: /stats shows its q, peak_q, drops
        return [paced, BlockingSyncWriter(cfg.speech_emulator_host, sample_rate=8000, language=cfg.stt_language)]

    from pipecat_rxdrain.rx.processor import RxDrainParams, RxDrainProcessor

    stt = make_stt(cfg)
    rx = RxDrainProcessor(
        params=RxDrainParams(
            max_queue=cfg.rx_max_queue, high_watermark=cfg.rx_high_watermark, low_watermark=cfg.rx_low_watermark
        ),
        sink=stt,  # RX releases only what the STT queue can take
    )
    return [rx, stt]


def make_llm_tts(cfg: BotConfig) -> tuple[Any, Any]:
    """The reply services: offline (rule-based LLM + espeak-ng) or Gemini + Google TTS."""
    if cfg.offline_replies:
        from pipecat_rxdrain.offline import EspeakTTSService, RuleBasedLLMService

        return RuleBasedLLMService(), EspeakTTSService(voice=cfg.tts_voice or "en-us")

    from pipecat.services.google.llm import GoogleLLMService
    from pipecat.services.google.tts import GoogleTTSService

    llm_settings = GoogleLLMService.Settings(system_instruction=cfg.system_prompt)
    if cfg.llm_model:
        llm_settings.model = cfg.llm_model
    tts_kwargs: dict[str, Any] = {
        "credentials": cfg.google_credentials_json,
        "credentials_path": cfg.google_credentials_path,
        "sample_rate": 8000,
    }
    if cfg.tts_voice:
        tts_kwargs["settings"] = GoogleTTSService.Settings(voice=cfg.tts_voice)
    assert cfg.google_api_key, "validate() requires GOOGLE_API_KEY for the full mode"
    return GoogleLLMService(api_key=cfg.google_api_key, settings=llm_settings), GoogleTTSService(**tts_kwargs)


def build_pipeline(cfg: BotConfig, call: MediaStreamCall) -> list:
    """transport in -> RX back-pressure -> STT -> (VAD | user turn -> LLM -> TTS) -> transport out."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer

    from pipecat_rxdrain.twilio.transcripts import TranscriptRecorder

    full = cfg.full_mode
    call.record.mode = ("offline" if cfg.offline_replies else "full") if full else "transcribe"
    # transcribe-only: nothing to play, so no trailing silence either
    transport = call.transport(audio_out_end_silence_secs=2 if full else 0)
    front = make_audio_path(cfg, call)
    transcripts = TranscriptRecorder(call.record)
    vad = SileroVADAnalyzer(sample_rate=8000)
    if not full:
        from pipecat.processors.audio.vad_processor import VADProcessor

        return [transport.input(), *front, VADProcessor(vad_analyzer=vad), transcripts, transport.output()]

    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams

    user_params = LLMUserAggregatorParams(vad_analyzer=vad)
    if cfg.offline_replies:
        from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import SpeechTimeoutUserTurnStopStrategy
        from pipecat.turns.user_turn_strategies import UserTurnStrategies

        # The turn ends on VAD stop + Pipecat's speech timeout + a transcript, so the STT's final is on the
        # critical path of end of speech -> reply, which is what the offline mode is for measuring.
        user_params.user_turn_strategies = UserTurnStrategies(stop=[SpeechTimeoutUserTurnStopStrategy()])
    pair = LLMContextAggregatorPair(LLMContext(), user_params=user_params)
    llm, tts = make_llm_tts(cfg)
    return [transport.input(), *front, transcripts, pair.user(), llm, tts, transport.output(), pair.assistant()]


def warm_up(cfg: BotConfig) -> None:
    """Load what the first call needs before the first webhook is answered (runs in a thread at start-up).

    Without it the first call imports Pipecat's services, the Speech client and
    onnxruntime and loads Silero on its way in: 1.5-2.6 s late, starting in drain.
    """
    import grpc
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.pipeline.pipeline import Pipeline  # noqa: F401
    from pipecat.pipeline.worker import PipelineWorker  # noqa: F401
    from pipecat.processors.audio.vad_processor import VADProcessor  # noqa: F401
    from pipecat.workers.runner import WorkerRunner  # noqa: F401

    import pipecat_rxdrain.rx.processor
    import pipecat_rxdrain.twilio.transcripts  # noqa: F401

    SileroVADAnalyzer(sample_rate=8000)  # imports onnxruntime, maps the model file
    make_stt(cfg)  # imports the Speech client and its protos
    # gRPC's core (and, for Google, its TLS roots) initialise on the first channel.
    if cfg.speech_emulator_host:
        grpc.insecure_channel(cfg.speech_emulator_host).close()
    else:
        grpc.ssl_channel_credentials()
    if cfg.full_mode:
        import pipecat.services.google.llm
        import pipecat.services.google.tts  # noqa: F401


def create_app(cfg: BotConfig, *, metrics=None):
    """The bot's app (``metrics``: an ``RxdrainMetrics`` to count into; default: the process's)."""
    return create_server_app(cfg, lambda call: build_pipeline(cfg, call), metrics=metrics, warm_up=lambda: warm_up(cfg))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pipecat-rxdrain Twilio example bot")
    p.add_argument("--host", help="bind address (default 127.0.0.1; use 0.0.0.0 only behind a proxy/in a container)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--log-level", help="DEBUG, INFO, ...")
    p.add_argument("--workers", type=int, help="processes on this port (default WORKERS, else 0 = one per core)")
    args = p.parse_args(argv)
    try:
        cfg = BotConfig.from_env(host=args.host, port=args.port, log_level=args.log_level, workers=args.workers)
    except ConfigError as e:
        print(f"bot: configuration error: {e}", file=sys.stderr)
        return 2
    problem = cfg.credentials_problem()
    if problem:
        print(f"bot: {problem}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level)
    return serve_forever(cfg, create_app(cfg))


if __name__ == "__main__":
    sys.exit(main())
