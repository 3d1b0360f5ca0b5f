"""A Twilio phone bot: Pipecat + pipecat-rxdrain + Google Speech-to-Text.

    python examples/twilio_bot/bot.py --host 127.0.0.1 --port 8765

* ``POST /twiml`` – Twilio's voice webhook. Answers ``<Connect><Stream url="wss://HOST/ws">``
  with a per-call ``token`` ``<Parameter>``; checks ``X-Twilio-Signature`` when
  ``TWILIO_AUTH_TOKEN`` is set.
* ``/ws`` – the Media Streams websocket. Reads ``connected``/``start``, checks the
  token, then runs ``transport.input() -> RxDrainProcessor -> GoogleSTTService -> ...``.
* ``GET /stats`` – per-call numbers as JSON, answered to loopback clients only.

Transcribe-only unless LLM/TTS credentials are set (``GOOGLE_API_KEY`` for Gemini and
Google Cloud credentials for TTS): then it answers the caller. Configuration is read
from environment variables (see ``.env.example`` and ``README.md`` next to this file).
``create_app(config)`` builds the app for uvicorn or for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import sys
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from loguru import logger

LOG_FORMAT = "{time:HH:mm:ss.SSS} | {level: <7} | {extra[call_sid]} | {message}"


# --------------------------------------------------------------------------- config


class ConfigError(ValueError):
    """A configuration problem, reported at startup (never mid-call)."""


def _env_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"expected a boolean (true/false), got {value!r}")


@dataclass
class BotConfig:
    """Everything the bot reads from its environment. Secrets are kept out of ``repr``."""

    host: str = "127.0.0.1"
    port: int = 8765
    public_host: str | None = None  # e.g. "bot.example.com"; else the request's Host header
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    media_token_secret: str | None = field(default=None, repr=False)
    media_token_ttl_s: float = 120.0
    require_media_token: bool = True
    stt_language: str = "he-IL"
    stt_location: str = "us-central1"
    stt_model: str | None = None
    stt_api: str = "v2"
    speech_emulator_host: str | None = None
    google_credentials_path: str | None = None
    google_credentials_json: str | None = field(default=None, repr=False)
    google_api_key: str | None = field(default=None, repr=False)
    bot_mode: str = "auto"  # auto | transcribe | full
    llm_model: str | None = None
    tts_voice: str | None = None
    system_prompt: str = "You are a helpful phone assistant. Answer briefly, in the caller's language."
    rx_max_queue: int = 200
    rx_high_watermark: int = 100
    rx_low_watermark: int = 20
    stt_max_queue: int = 200
    stt_batch_ms: float = 60
    stt_debounce_ms: float = 110
    stt_final_timeout_ms: float = 320
    stt_vad_hangover_ms: float = 180
    max_message_bytes: int = 16 * 1024  # soft cap: larger messages are counted drops
    ws_max_size: int = 64 * 1024  # hard cap: the websocket is closed (1009) above this
    start_timeout_s: float = 10.0
    media_idle_timeout_s: float = 15.0
    max_calls: int = 20
    shutdown_grace_s: float = 8.0
    log_level: str = "INFO"

    ENV = {
        "host": "BOT_HOST",
        "port": "BOT_PORT",
        "public_host": "PUBLIC_HOST",
        "twilio_account_sid": "TWILIO_ACCOUNT_SID",
        "twilio_auth_token": "TWILIO_AUTH_TOKEN",
        "media_token_secret": "MEDIA_TOKEN_SECRET",
        "media_token_ttl_s": "MEDIA_TOKEN_TTL_S",
        "require_media_token": "REQUIRE_MEDIA_TOKEN",
        "stt_language": "STT_LANGUAGE",
        "stt_location": "STT_LOCATION",
        "stt_model": "STT_MODEL",
        "stt_api": "STT_API",
        "speech_emulator_host": "SPEECH_EMULATOR_HOST",
        "google_credentials_path": "GOOGLE_APPLICATION_CREDENTIALS",
        "google_credentials_json": "GOOGLE_CREDENTIALS_JSON",
        "google_api_key": "GOOGLE_API_KEY",
        "bot_mode": "BOT_MODE",
        "llm_model": "LLM_MODEL",
        "tts_voice": "TTS_VOICE",
        "system_prompt": "SYSTEM_PROMPT",
        "rx_max_queue": "RX_MAX_QUEUE",
        "rx_high_watermark": "RX_HIGH_WATERMARK",
        "rx_low_watermark": "RX_LOW_WATERMARK",
        "stt_max_queue": "STT_MAX_QUEUE",
        "stt_batch_ms": "STT_BATCH_MS",
        "stt_debounce_ms": "STT_DEBOUNCE_MS",
        "stt_final_timeout_ms": "STT_FINAL_TIMEOUT_MS",
        "stt_vad_hangover_ms": "STT_VAD_HANGOVER_MS",
        "max_message_bytes": "MAX_MESSAGE_BYTES",
        "ws_max_size": "WS_MAX_SIZE",
        "start_timeout_s": "START_TIMEOUT_S",
        "media_idle_timeout_s": "MEDIA_IDLE_TIMEOUT_S",
        "max_calls": "MAX_CALLS",
        "shutdown_grace_s": "SHUTDOWN_GRACE_S",
        "log_level": "LOG_LEVEL",
    }

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "BotConfig":
        env = dict(os.environ if env is None else env)
        kwargs: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cls.ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kind = str(types[name])
            try:
                if kind == "bool":
                    kwargs[name] = _env_bool(raw)
                elif kind == "int":
                    kwargs[name] = int(raw)
                elif kind == "float":
                    kwargs[name] = float(raw)
                else:
                    kwargs[name] = raw
            except ValueError:
                wanted = {"bool": "a boolean (true/false)", "int": "an integer", "float": "a number"}.get(kind, kind)
                raise ConfigError(f"{var}: expected {wanted}, got {raw!r}") from None
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**kwargs)
        config.validate()
        return config

    @property
    def emulator(self) -> bool:
        return bool(self.speech_emulator_host)

    @property
    def _has_llm_tts_credentials(self) -> bool:
        return bool(self.google_api_key) and bool(self.google_credentials_json or self.google_credentials_path)

    @property
    def full_mode(self) -> bool:
        """Answer the caller (Gemini + Google TTS) rather than only transcribe."""
        return self.bot_mode != "transcribe" and self._has_llm_tts_credentials

    def validate(self) -> None:
        from pipecat.transcriptions.language import Language

        try:
            Language(self.stt_language)
        except ValueError:
            raise ConfigError(f"STT_LANGUAGE: unknown language code {self.stt_language!r} (e.g. he-IL, en-US)") from None
        if self.bot_mode not in ("auto", "transcribe", "full"):
            raise ConfigError(f"BOT_MODE must be auto, transcribe or full, got {self.bot_mode!r}")
        if self.stt_api not in ("v1", "v2"):
            raise ConfigError(f"STT_API must be v1 or v2, got {self.stt_api!r}")
        if not (0 <= self.rx_low_watermark < self.rx_high_watermark <= self.rx_max_queue):
            raise ConfigError(
                "RX watermarks need 0 <= RX_LOW_WATERMARK < RX_HIGH_WATERMARK <= RX_MAX_QUEUE, got "
                f"{self.rx_low_watermark}/{self.rx_high_watermark}/{self.rx_max_queue}"
            )
        for name in ("stt_max_queue", "max_message_bytes", "ws_max_size", "max_calls", "port"):
            if getattr(self, name) < (0 if name == "port" else 1):
                raise ConfigError(f"{self.ENV[name]} must be positive, got {getattr(self, name)}")
        if self.ws_max_size < self.max_message_bytes:
            raise ConfigError("WS_MAX_SIZE must be >= MAX_MESSAGE_BYTES")
        if self.public_host and any(c in self.public_host for c in "/?# "):
            raise ConfigError(f"PUBLIC_HOST must be a host name like bot.example.com, got {self.public_host!r}")
        if self.media_token_secret is not None and len(self.media_token_secret.encode()) < 16:
            raise ConfigError("MEDIA_TOKEN_SECRET must be at least 16 bytes")
        if self.bot_mode == "full" and not self._has_llm_tts_credentials:
            raise ConfigError("BOT_MODE=full needs GOOGLE_API_KEY (Gemini) and Google Cloud credentials (TTS)")


def check_google_credentials(config: BotConfig) -> str | None:
    """``None`` if STT can authenticate (or uses the emulator), else a clear message."""
    if config.emulator:
        host, _, port = config.speech_emulator_host.rpartition(":")
        if not port.isdigit() or not _is_loopback(host.strip("[]")):
            return (
                f"SPEECH_EMULATOR_HOST must be a loopback host:port like 127.0.0.1:50051 "
                f"(the emulator channel has no TLS and no credentials), got {config.speech_emulator_host!r}"
            )
        return None
    if config.google_credentials_json:
        try:
            info = json.loads(config.google_credentials_json)
        except ValueError:
            return "GOOGLE_CREDENTIALS_JSON is not valid JSON"
        return None if isinstance(info, dict) and info.get("project_id") else "GOOGLE_CREDENTIALS_JSON has no project_id"
    if config.google_credentials_path:
        try:
            with open(config.google_credentials_path, encoding="utf-8") as f:
                info = json.load(f)
        except OSError as e:
            return f"GOOGLE_APPLICATION_CREDENTIALS: cannot read {config.google_credentials_path}: {e.strerror}"
        except ValueError:
            return f"GOOGLE_APPLICATION_CREDENTIALS: {config.google_credentials_path} is not a JSON key file"
        return None if isinstance(info, dict) and info.get("project_id") else (
            f"GOOGLE_APPLICATION_CREDENTIALS: {config.google_credentials_path} has no project_id"
        )
    try:
        import google.auth
        from google.auth.exceptions import GoogleAuthError

        _, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except GoogleAuthError:
        project = None
        creds_found = False
    else:
        creds_found = True
    if not creds_found:
        return (
            "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, "
            "GOOGLE_CREDENTIALS_JSON to its contents, or SPEECH_EMULATOR_HOST=127.0.0.1:PORT for the local emulator"
        )
    if not project:
        return "Google credentials found but no project id (set GOOGLE_CLOUD_PROJECT)"
    return None


def configure_logging(level: str = "INFO", sink: Any = sys.stderr) -> int:
    """Loguru to ``sink`` with the call SID on every line (``-`` outside calls). Returns the handler id."""
    logger.remove()
    logger.configure(extra={"call_sid": "-"})
    return logger.add(sink, level=level, format=LOG_FORMAT, backtrace=False, diagnose=False)


# --------------------------------------------------------------------------- calls


@dataclass
class CallRecord:
    """One call's numbers for ``/stats`` and the end-of-call summary line."""

    call_sid: str
    stream_sid: str
    mode: str
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    end_reason: str = ""
    finals: list[dict[str, Any]] = field(default_factory=list)
    rx: dict[str, Any] = field(default_factory=dict)
    stt: dict[str, Any] = field(default_factory=dict)
    twilio: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "mode": self.mode,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "finals": list(self.finals),
            "rx": dict(self.rx),
            "stt": dict(self.stt),
            "twilio": dict(self.twilio),
        }


def _make_transcript_logger(record: CallRecord):
    """A pass-through processor: logs each final transcript with its end-of-speech -> final latency."""
    from pipecat.frames.frames import TranscriptionFrame, VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame
    from pipecat.processors.frame_processor import FrameProcessor

    class TranscriptLogger(FrameProcessor):
        def __init__(self) -> None:
            super().__init__(name="TranscriptLogger")
            self._speech_stopped_at: float | None = None
            self._last_vad_id: int | None = None

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, VADUserStoppedSpeakingFrame):
                # VAD frames are broadcast both ways; count each stop once.
                if frame.broadcast_sibling_id is None or frame.broadcast_sibling_id != self._last_vad_id:
                    self._last_vad_id = frame.id
                    # The VAD decides ``stop_secs`` after speech really ended.
                    self._speech_stopped_at = time.monotonic() - float(getattr(frame, "stop_secs", 0.0) or 0.0)
            elif isinstance(frame, VADUserStartedSpeakingFrame):
                self._speech_stopped_at = None
            elif isinstance(frame, TranscriptionFrame):
                now = time.monotonic()
                latency_ms = None if self._speech_stopped_at is None else round((now - self._speech_stopped_at) * 1000.0)
                self._speech_stopped_at = None
                record.finals.append({"text": frame.text, "eos_to_final_ms": latency_ms, "at": time.time()})
                shown = "n/a" if latency_ms is None else f"{latency_ms} ms"
                logger.info(f"[BOT] final transcript (end of speech -> final: {shown}): {frame.text}")
            await self.push_frame(frame, direction)

    return TranscriptLogger()


class CallRegistry:
    """Active and recently finished calls (the last 100)."""

    def __init__(self) -> None:
        self.active: dict[str, "_Call"] = {}
        self.completed: deque[CallRecord] = deque(maxlen=100)
        self.shutting_down = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "active": [c.refresh().as_dict() for c in self.active.values()],
            "completed": [r.as_dict() for r in self.completed],
        }


class _Call:
    """One call's pipeline (built and run inside ``logger.contextualize(call_sid=...)``)."""

    def __init__(self, websocket, start, parser, config: BotConfig, registry: CallRegistry) -> None:
        self.ws, self.start, self.parser, self.config, self.registry = websocket, start, parser, config, registry
        self.record = CallRecord(start.call_sid, start.stream_sid, "full" if config.full_mode else "transcribe")
        self.worker = None
        self.rx = None
        self.stt = None
        self.stt_session = None
        self.serializer = None
        self.transport_input = None
        self._ending = False

    def refresh(self) -> CallRecord:
        if self.rx is not None:
            s = self.rx.stats
            self.record.rx = {
                "mode": s.mode,
                "q": s.q,
                "drops": s.drops,
                "peak_q": s.peak_q,
                "time_in_drain_s": round(s.time_in_drain_s, 3),
                "drain_episodes": s.drain_episodes,
                "frames_in": s.frames_in,
                "frames_out": s.frames_out,
                "write_ms": round(s.write_ms, 2),
            }
        session = self.stt_session or (self.stt.session if self.stt is not None else None)
        if session is not None:
            t = session.stats
            self.record.stt = {
                "state": t.state,
                "q": t.q,
                "drops": t.drops,
                "write_ms_mean": round(t.write_ms_mean, 2),
                "write_ms_max": round(t.write_ms_max, 2),
                "finals": t.finals,
                "reconnects": t.reconnects,
                "last_error": t.last_error,
            }
        if self.serializer is not None:
            self.record.twilio = self.serializer.stats.as_dict()
        return self.record

    def _build(self):
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker
        from pipecat.serializers.twilio import TwilioFrameSerializer
        from pipecat.services.google.stt import GoogleSTTSettings
        from pipecat.transcriptions.language import Language
        from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

        from pipecat_rxdrain.rx.processor import RxDrainParams, RxDrainProcessor
        from pipecat_rxdrain.stt.service import GoogleSTTService
        from pipecat_rxdrain.twilio.serializer import HardenedTwilioFrameSerializer

        cfg = self.config
        hang_up = bool(cfg.twilio_account_sid and cfg.twilio_auth_token)
        self.serializer = HardenedTwilioFrameSerializer(
            self.start.stream_sid,
            self.start.call_sid,
            self.start.account_sid or cfg.twilio_account_sid,
            cfg.twilio_auth_token if hang_up else None,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=hang_up),
            parser=self.parser,
        )
        self.serializer.on_stop = self._on_stop
        transport = FastAPIWebsocketTransport(
            self.ws,
            FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                # transcribe-only: nothing to play, so no trailing silence either
                audio_out_end_silence_secs=2 if self.record.mode == "full" else 0,
                add_wav_header=False,
                serializer=self.serializer,
            ),
        )

        settings = GoogleSTTSettings(languages=[Language(cfg.stt_language)])
        if cfg.stt_model:
            settings.model = cfg.stt_model
        self.stt = GoogleSTTService(
            credentials=cfg.google_credentials_json,
            credentials_path=cfg.google_credentials_path,
            location=cfg.stt_location,
            sample_rate=8000,
            settings=settings,
            max_queue=cfg.stt_max_queue,
            batch_ms=cfg.stt_batch_ms,
            debounce_ms=cfg.stt_debounce_ms,
            final_timeout_ms=cfg.stt_final_timeout_ms,
            vad_hangover_ms=cfg.stt_vad_hangover_ms,
            api=cfg.stt_api,
            endpoint=cfg.speech_emulator_host,
        )

        @self.stt.event_handler("on_connected")
        async def _on_stt_connected(stt):
            self.stt_session = stt.session

        self.rx = RxDrainProcessor(
            params=RxDrainParams(
                max_queue=cfg.rx_max_queue, high_watermark=cfg.rx_high_watermark, low_watermark=cfg.rx_low_watermark
            ),
            sink=self.stt,
        )
        transcripts = _make_transcript_logger(self.record)
        if self.record.mode == "full":
            processors = self._full_pipeline(transport, transcripts)
        else:
            from pipecat.audio.vad.silero import SileroVADAnalyzer
            from pipecat.processors.audio.vad_processor import VADProcessor

            vad = VADProcessor(vad_analyzer=SileroVADAnalyzer(sample_rate=8000))
            processors = [transport.input(), self.rx, self.stt, vad, transcripts, transport.output()]

        self.processors = processors
        self.transport_input = transport.input()
        self.worker = PipelineWorker(
            Pipeline(processors),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
            idle_timeout_secs=None,  # the media idle watchdog and the websocket decide
            cancel_on_idle_timeout=False,
        )

        @transport.event_handler("on_client_disconnected")
        async def _on_disconnected(transport, websocket):
            if self._ending:
                return  # stop/EndFrame already on its way; the watchdog bounds it
            logger.info("[BOT] caller hung up; ending the call")
            self.record.end_reason = self.record.end_reason or "caller disconnected"
            await self.worker.cancel()

    def _full_pipeline(self, transport, transcripts):
        """Gemini + Google TTS. Import-checked only in CI (no network there)."""
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.processors.aggregators.llm_context import LLMContext
        from pipecat.processors.aggregators.llm_response_universal import (
            LLMContextAggregatorPair,
            LLMUserAggregatorParams,
        )
        from pipecat.services.google.llm import GoogleLLMService
        from pipecat.services.google.tts import GoogleTTSService

        cfg = self.config
        llm_kwargs: dict[str, Any] = {"api_key": cfg.google_api_key, "system_instruction": cfg.system_prompt}
        if cfg.llm_model:
            llm_kwargs["model"] = cfg.llm_model
        llm = GoogleLLMService(**llm_kwargs)
        tts_kwargs: dict[str, Any] = {
            "credentials": cfg.google_credentials_json,
            "credentials_path": cfg.google_credentials_path,
            "sample_rate": 8000,
        }
        if cfg.tts_voice:
            tts_kwargs["settings"] = GoogleTTSService.Settings(voice=cfg.tts_voice)
        tts = GoogleTTSService(**tts_kwargs)
        context = LLMContext()
        pair = LLMContextAggregatorPair(
            context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer(sample_rate=8000))
        )
        return [transport.input(), self.rx, self.stt, transcripts, pair.user(), llm, tts, transport.output(), pair.assistant()]

    async def _on_stop(self) -> None:
        """Twilio's ``stop``: end gracefully so queued audio is transcribed before we close."""
        from pipecat.frames.frames import EndFrame

        if not self._ending and self.worker is not None:
            self._ending = True
            self.record.end_reason = "stop"
            await self._drain_transport_input()
            await self.worker.queue_frame(EndFrame())

    async def _drain_transport_input(self, timeout_s: float = 3.0) -> None:
        """Let the input transport hand on the audio it still holds before the call ends.

        Pipecat's input transport cancels its audio task on EndFrame and drops whatever is still
        in its (unbounded) audio queue; after a burst, or on a busy loop, that is the end of the
        caller's last sentence. ``stop`` is Twilio's last message, so nothing new can arrive
        while we wait; the wait is bounded so a wedged pipeline cannot hold the call open.
        """
        queue = getattr(self.transport_input, "_audio_in_queue", None)  # private in Pipecat 1.14
        if queue is None:
            return
        try:
            await asyncio.wait_for(queue.join(), timeout_s)
        except asyncio.TimeoutError:
            logger.warning(f"[BOT] {queue.qsize()} inbound audio frames still queued {timeout_s:.0f}s after stop")

    async def end(self, reason: str) -> None:
        """End the call gracefully (EndFrame), then cancel if that takes too long."""
        from pipecat.frames.frames import EndFrame

        if self.worker is None or self.worker.has_finished():
            return
        if not self._ending:
            self._ending = True
            self.record.end_reason = reason
            await self.worker.queue_frame(EndFrame())

    async def _watchdog(self) -> None:
        """Ends a call whose client went silent (no ``stop``, no close) or whose end hangs."""
        cfg = self.config
        ending_since: float | None = None
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if self._ending:
                ending_since = ending_since or now
                if now - ending_since > cfg.shutdown_grace_s:
                    logger.warning(f"[BOT] call did not end within {cfg.shutdown_grace_s:g}s; cancelling")
                    await self.worker.cancel()
                    return
            elif now - self.serializer.last_message_at > cfg.media_idle_timeout_s:
                logger.warning(f"[BOT] no message from Twilio for {cfg.media_idle_timeout_s:g}s; ending the call")
                self.record.end_reason = "media idle timeout"
                await self.worker.cancel()
                return

    async def run(self) -> None:
        from pipecat.workers.runner import WorkerRunner

        self._build()
        logger.info(
            f"[BOT] call started: stream={self.start.stream_sid} mode={self.record.mode} "
            f"language={self.config.stt_language} stt={'emulator' if self.config.emulator else self.config.stt_location}"
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        watchdog = asyncio.create_task(self._watchdog(), name=f"watchdog-{self.start.call_sid}")
        try:
            await runner.run()
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            self.serializer.log_summary_if_due(force=True)
            self.record.ended_at = time.time()
            self.record.end_reason = self.record.end_reason or "pipeline ended"
            rec = self.refresh()
            logger.info(
                f"[BOT] call ended ({rec.end_reason}): rx peak_q={rec.rx.get('peak_q')} drops={rec.rx.get('drops')} "
                f"drain_s={rec.rx.get('time_in_drain_s')} | stt drops={rec.stt.get('drops')} "
                f"write_ms_mean={rec.stt.get('write_ms_mean')} finals={len(rec.finals)} | "
                f"twilio received={rec.twilio.get('received')} dropped={rec.twilio.get('dropped_total')}"
            )


async def _read_until_start(websocket, parser, limit: int = 50):
    """The ``start`` message (through ``parser``), or ``None`` if the client left / misbehaved first."""
    from pipecat_rxdrain.twilio.messages import Rejected, Start

    for _ in range(limit):
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        raw = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        parsed = parser.feed(raw)
        if isinstance(parsed, Start):
            return parsed
        if isinstance(parsed, Rejected):
            logger.warning(f"[TWILIO] dropped bad message before start (reason={parsed.reason.value}): {parsed.detail}")
    return None


# --------------------------------------------------------------------------- app


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(config: BotConfig | None = None):
    """The FastAPI app. ``app.state.calls`` is the :class:`CallRegistry`."""
    from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

    from pipecat_rxdrain.twilio.messages import TwilioStreamParser
    from pipecat_rxdrain.twilio.security import TOKEN_PARAMETER, MediaTokens, WebhookVerifier

    config = config or BotConfig.from_env()
    config.validate()
    registry = CallRegistry()
    verifier = WebhookVerifier(config.twilio_auth_token) if config.twilio_auth_token else None
    tokens = MediaTokens(config.media_token_secret, ttl_s=config.media_token_ttl_s)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await end_all_calls(registry, "server shutdown", config.shutdown_grace_s)

    app = FastAPI(title="pipecat-rxdrain Twilio bot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.calls = registry
    app.state.config = config

    def public_url(request: Request) -> str:
        if config.public_host:
            query = f"?{request.url.query}" if request.url.query else ""
            return f"https://{config.public_host}{request.url.path}{query}"
        proto = request.headers.get("x-forwarded-proto", request.url.scheme)
        return str(request.url.replace(scheme=proto))

    @app.post("/twiml")
    async def twiml(request: Request):
        body = await request.body()
        if len(body) > 64 * 1024:
            return Response("request too large\n", status_code=413, media_type="text/plain")
        # Twilio posts application/x-www-form-urlencoded (parsed here: no python-multipart needed).
        params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if verifier is not None:
            if not verifier.verify(public_url(request), params, request.headers.get("x-twilio-signature")):
                logger.warning(
                    f"[BOT] webhook rejected: bad or missing X-Twilio-Signature (from {request.client.host if request.client else '?'})"
                )
                return Response("forbidden\n", status_code=403, media_type="text/plain")
        if registry.shutting_down:
            return Response("shutting down\n", status_code=503, media_type="text/plain")
        call_sid = params.get("CallSid", "")
        if not call_sid:
            return Response("missing CallSid\n", status_code=400, media_type="text/plain")
        host = config.public_host or request.headers.get("host", "")
        response = VoiceResponse()
        connect = Connect()
        stream = Stream(url=f"wss://{host}/ws")
        stream.parameter(name=TOKEN_PARAMETER, value=tokens.issue(call_sid))
        if params.get("From"):
            stream.parameter(name="from_number", value=params["From"])
        if params.get("To"):
            stream.parameter(name="to_number", value=params["To"])
        connect.append(stream)
        response.append(connect)
        with logger.contextualize(call_sid=call_sid):
            logger.info("[BOT] webhook: answering with <Connect><Stream>")
        return Response(str(response), media_type="application/xml")

    @app.get("/stats")
    async def stats(request: Request):
        if not _is_loopback(request.client.host if request.client else None):
            return Response(status_code=404)
        return JSONResponse(registry.snapshot())

    @app.get("/healthz")
    async def healthz():
        return {"ok": not registry.shutting_down, "active_calls": len(registry.active)}

    @app.websocket("/ws")
    async def media(websocket: WebSocket):
        if registry.shutting_down or len(registry.active) >= config.max_calls:
            await websocket.close(code=1013)  # try again later
            return
        await websocket.accept()
        parser = TwilioStreamParser(max_message_bytes=config.max_message_bytes)
        try:
            start = await asyncio.wait_for(_read_until_start(websocket, parser), config.start_timeout_s)
        except asyncio.TimeoutError:
            start = None
        except Exception:  # the client vanished mid-handshake
            return
        if start is None:
            logger.warning("[BOT] media websocket closed: no valid start message")
            with contextlib.suppress(Exception):
                await websocket.close(code=1008)
            return
        with logger.contextualize(call_sid=start.call_sid):
            if config.require_media_token:
                reason = tokens.check(start.call_sid, start.custom_parameters.get(TOKEN_PARAMETER))
                if reason is not None:
                    logger.warning(f"[BOT] media websocket refused: {reason}")
                    with contextlib.suppress(Exception):
                        await websocket.close(code=1008)
                    return
            if start.call_sid in registry.active:
                logger.warning("[BOT] media websocket refused: call already streaming")
                with contextlib.suppress(Exception):
                    await websocket.close(code=1008)
                return
            call = _Call(websocket, start, parser, config, registry)
            registry.active[start.call_sid] = call
            try:
                await call.run()
            except Exception as e:
                logger.error(f"[BOT] call failed: {type(e).__name__}: {e}")
            finally:
                registry.active.pop(start.call_sid, None)
                registry.completed.append(call.record)

    return app


async def end_all_calls(registry: CallRegistry, reason: str, grace_s: float) -> None:
    """End every active call gracefully, cancelling what is still running after ``grace_s``."""
    registry.shutting_down = True
    calls = list(registry.active.values())
    if not calls:
        return
    logger.info(f"[BOT] {reason}: ending {len(calls)} active call(s)")
    for call in calls:
        with logger.contextualize(call_sid=call.start.call_sid):
            await call.end(reason)
    deadline = time.monotonic() + grace_s
    while registry.active and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for call in list(registry.active.values()):
        if call.worker is not None:
            await call.worker.cancel()
    deadline = time.monotonic() + 5.0
    while registry.active and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


class BotServer:
    """uvicorn serving ``create_app(config)``; SIGTERM/SIGINT end calls cleanly (exit code 0).

    ``await serve()`` runs until ``shutdown()``; ``port`` is the bound port (useful with port 0).
    """

    def __init__(self, config: BotConfig, *, app=None, handle_signals: bool = False) -> None:
        import uvicorn

        self.config = config
        self.app = app or create_app(config)
        self._handle_signals = handle_signals

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # we handle signals ourselves (uvicorn would re-raise them)
                yield

        self._server = _Server(
            uvicorn.Config(
                self.app,
                host=config.host,
                port=config.port,
                ws="websockets-sansio" if _has_sansio() else "websockets",
                ws_max_size=config.ws_max_size,
                ws_ping_interval=None,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=int(config.shutdown_grace_s) + 5,
            )
        )

    @property
    def started(self) -> bool:
        return self._server.started

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return sock.getsockname()[1]
        return self.config.port

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        if self._handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda s=sig: asyncio.ensure_future(self.shutdown(signal.Signals(s).name)))
        try:
            await self._server.serve()
        finally:
            if self._handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def shutdown(self, reason: str = "shutdown") -> None:
        registry: CallRegistry = self.app.state.calls
        if registry.shutting_down and self._server.should_exit:
            return
        logger.info(f"[BOT] {reason}: shutting down")
        await end_all_calls(registry, reason, self.config.shutdown_grace_s)
        self._server.should_exit = True

    async def wait_started(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("bot server did not start")
            await asyncio.sleep(0.02)


def _has_sansio() -> bool:
    try:
        import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pipecat-rxdrain Twilio example bot")
    p.add_argument("--host", help="bind address (default 127.0.0.1; use 0.0.0.0 only behind a proxy/in a container)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--log-level", help="DEBUG, INFO, ...")
    args = p.parse_args(argv)
    try:
        config = BotConfig.from_env(host=args.host, port=args.port, log_level=args.log_level)
    except ConfigError as e:
        print(f"bot: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    problem = check_google_credentials(config)
    if problem:
        print(f"bot: {problem}", file=sys.stderr)
        return 2
    if not _is_loopback(config.host):
        logger.warning(f"[BOT] listening on {config.host}: make sure a TLS proxy fronts it (Twilio needs wss://)")
    server = BotServer(config, handle_signals=True)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            print(f"BOT_LISTENING=http://{config.host}:{server.port}", flush=True)
        await task

    try:
        asyncio.run(run())
    except SystemExit as e:  # uvicorn exits on bind errors
        return int(e.code or 1)
    except OSError as e:
        print(f"bot: {e}", file=sys.stderr)
        return 1
    logger.info("[BOT] stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
