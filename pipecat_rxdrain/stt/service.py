"""Drop-in replacement for ``pipecat.services.google.stt.GoogleSTTService`` whose audio path never blocks.

Swap the import and nothing else::

    # from pipecat.services.google.stt import GoogleSTTService
    from pipecat_rxdrain.stt.service import GoogleSTTService

Same constructor, ``InputParams``, ``Settings`` and defaults as the stock
service of pipecat-ai 1.14, plus keyword-only extras (queue size, batching,
turn timing, API version, endpoint override). Audio goes to a
:class:`~pipecat_rxdrain.stt.session.StreamingSTTSession` (bounded drop-oldest
queue + its own I/O thread); ``run_stt`` never awaits the network.

Emulator mode: with ``SPEECH_EMULATOR_HOST=127.0.0.1:PORT`` set (or a loopback
``endpoint=``) the service talks to the local emulator over an insecure
loopback channel and needs no credentials. Everywhere else credentials are
required and handled exactly like the stock service (same errors).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.auth import default
from google.auth.exceptions import GoogleAuthError, MalformedError
from google.oauth2 import service_account
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.google.stt import GoogleSTTService as _StockGoogleSTTService
from pipecat.services.google.stt import GoogleSTTSettings, language_to_google_stt_language
from pipecat.services.stt_latency import GOOGLE_TTFS_P99
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.utils.deprecation import deprecated, warn_deprecated
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt
from pipecat.utils.types import NOT_GIVEN, assert_given, is_given

from ..clock import Clock, monotonic
from ..google_clients import build_speech_client, resolve_target
from ..units import FRAME_UNIT_MS
from .backoff import Backoff
from .params import STTSessionParams
from .recognition_config import (
    StreamSpec,
    build_v1_spec,
    build_v2_spec,
    model_supports_adaptation,
    normalize_speech_adaptation,
    recognizer_path,
)
from .session import StreamingSTTSession, STTError, STTResult, STTStats, status_of
from .turns import TurnCounters, TurnEmit, TurnTimer

if TYPE_CHECKING:
    from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler

_DEFAULTS = STTSessionParams()  # the session defaults, written once (params.py)

EMULATOR_PROJECT_ID = "rxdrain-emulator"
# LINEAR16 sample rates Google Speech accepts.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 48000
# A BCP-47 tag as Google takes them ("en-US", "iw-IL", "cmn-Hans-CN", "es-419").
_LANGUAGE_TAG_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
from ..google_clients import SESSION_METADATA_KEY as _SESSION_METADATA_KEY  # noqa: E402  (the one definition)

_CATEGORIES = {
    grpc.StatusCode.UNAUTHENTICATED: ErrorCategory.AUTHENTICATION,
    grpc.StatusCode.PERMISSION_DENIED: ErrorCategory.AUTHORIZATION,
    grpc.StatusCode.INVALID_ARGUMENT: ErrorCategory.INVALID_REQUEST,
    grpc.StatusCode.NOT_FOUND: ErrorCategory.INVALID_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: ErrorCategory.INVALID_REQUEST,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorCategory.QUOTA,
    grpc.StatusCode.UNAVAILABLE: ErrorCategory.CONNECTIVITY,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorCategory.CONNECTIVITY,
    grpc.StatusCode.INTERNAL: ErrorCategory.SERVER,
}


class GoogleSTTService(STTService):
    """Google Cloud Speech-to-Text (v2 by default, v1 optional) with a never-blocking audio path.

    Guarantees on top of the stock service: ``run_stt`` only appends to a
    bounded drop-oldest queue (``max_queue`` chunks, drops counted); a
    dedicated thread writes to gRPC in batches of at most ``batch_ms`` (a
    backlog over half the queue in requests up to 25 KB, never ahead of real time);
    streams rotate before Google's limit and reconnect with backoff, replaying
    unfinalized audio so no word is lost or repeated; a non-retriable error is
    reported once (``push_error``, permanent categories make the service
    unusable) instead of a retry storm; ``can_accept_audio()`` implements the
    :class:`~pipecat_rxdrain.rx.sink.AudioSink` protocol for ``RxDrainProcessor``.

    Turn timing (see :mod:`pipecat_rxdrain.stt.turns`): interims are coalesced
    to one per ``debounce_ms``; after a VAD stop, ``vad_hangover_ms`` plus
    ``final_timeout_ms`` without Google's final emits the newest interim as
    the final, but only if that interim heard the end of speech; the words
    Google's late final adds are delivered as one more final, so an early
    final never costs words. ``None``/``0`` switches each off.
    """

    Settings = GoogleSTTSettings
    InputParams = _StockGoogleSTTService.InputParams
    _settings: GoogleSTTSettings

    STREAMING_LIMIT = 240000  # ms, like the stock service (Google's hard cut is 305 s)

    def __init__(
        self,
        *,
        credentials: str | None = None,
        credentials_path: str | None = None,
        location: str = "global",
        sample_rate: int | None = None,
        params: InputParams | None = None,  # type: ignore[valid-type]
        settings: GoogleSTTSettings | None = None,
        ttfs_p99_latency: float | None = GOOGLE_TTFS_P99,
        # --- pipecat-rxdrain extras (keyword-only) ---
        max_queue: int = _DEFAULTS.max_queue,
        batch_ms: float = _DEFAULTS.batch_ms,
        debounce_ms: float | None = 110,
        final_timeout_ms: float | None = 320,
        vad_hangover_ms: float | None = 180,
        api: str = "v2",
        endpoint: str | None = None,
        stream_limit_s: float = STREAMING_LIMIT / 1000.0,
        rotate_grace_s: float = _DEFAULTS.rotate_grace_s,
        max_replay_ms: float = _DEFAULTS.max_replay_ms,
        close_timeout_s: float = _DEFAULTS.close_timeout_s,
        backoff: Backoff | None = None,
        max_consecutive_failures: int = _DEFAULTS.max_consecutive_failures,
        telemetry_interval_s: float | None = _DEFAULTS.telemetry_interval_s,
        clock: Clock = monotonic,
        session_params: STTSessionParams | None = None,
        **kwargs,
    ):
        """Same arguments as the stock service, then the rxdrain extras.

        Args:
            credentials / credentials_path / location / sample_rate / params /
                settings / ttfs_p99_latency: exactly as ``pipecat.services.google.stt.GoogleSTTService``.
            max_queue: Audio held while gRPC is slow, in 20 ms frames of audio whatever the chunk size
                (200 = 4 s); the oldest is dropped (and counted) beyond it.
            batch_ms: Most audio per request while a write is in flight (an idle writer sends at once;
                a backlog over half of ``max_queue`` goes in requests up to 25 KB, never ahead of real time).
            debounce_ms: At most one InterimTranscriptionFrame per this many ms (newest text). None/0: off.
            final_timeout_ms: After the VAD stop (+ hangover), how long to wait for Google's final
                before emitting the newest interim as the final. None/0: no early finals.
            vad_hangover_ms: Grace after the VAD stop before the final timeout starts. None/0: none.
            api: "v2" (default, like stock) or "v1" (classic ``phone_call`` / ``latest_*`` models).
            endpoint: Endpoint override; a loopback ``host:port`` means the emulator (insecure, no credentials).
            stream_limit_s / rotate_grace_s: Proactive stream rotation (after a final or in silence,
                at the latest ``stream_limit_s + rotate_grace_s``; Google cuts at 305 s).
            max_replay_ms: Bound on the unfinalized audio replayed into a new stream.
            close_timeout_s: Bound on flushing queued audio at EndFrame.
            backoff / max_consecutive_failures: Reconnect policy for retriable errors.
            telemetry_interval_s: Period of the ``[STT] q= drops= write_ms=`` line (None: off).
            clock: Time source for turn timing.
            session_params: All session settings at once (``STTSessionParams``: also ``write_stall_s``,
                ``max_lead_ms``, ...); the keyword settings above that differ from their defaults override it.
        """
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be 'v1' or 'v2', got {api!r}")
        # Bad configuration fails here, at construction, never mid-call.
        overrides = dict(
            max_queue=max_queue,
            batch_ms=batch_ms,
            stream_limit_s=stream_limit_s,
            rotate_grace_s=rotate_grace_s,
            max_replay_ms=max_replay_ms,
            max_consecutive_failures=max_consecutive_failures,
            close_timeout_s=close_timeout_s,
            telemetry_interval_s=telemetry_interval_s,
        )
        if session_params is not None:
            overrides = {k: v for k, v in overrides.items() if v != getattr(_DEFAULTS, k)}
        self._session_params = STTSessionParams.build(session_params, **overrides)
        _check_sample_rate(sample_rate, "sample_rate")
        default_settings = self.Settings(
            language=None,
            languages=[Language.EN_US],
            language_codes=None,
            model="latest_long",
            use_separate_recognition_per_channel=False,
            enable_automatic_punctuation=True,
            enable_spoken_punctuation=False,
            enable_spoken_emojis=False,
            profanity_filter=False,
            enable_word_time_offsets=False,
            enable_word_confidence=False,
            enable_interim_results=True,
            enable_voice_activity_events=False,
            adaptation=None,
            denoiser_config=None,
        )
        if params is not None:
            self._warn_init_param_moved_to_settings("params")
            if not settings:
                default_settings.languages = list(params.language_list)
                default_settings.model = params.model
                default_settings.use_separate_recognition_per_channel = bool(
                    params.use_separate_recognition_per_channel
                )
                default_settings.enable_automatic_punctuation = bool(params.enable_automatic_punctuation)
                default_settings.enable_spoken_punctuation = bool(params.enable_spoken_punctuation)
                default_settings.enable_spoken_emojis = bool(params.enable_spoken_emojis)
                default_settings.profanity_filter = bool(params.profanity_filter)
                default_settings.enable_word_time_offsets = bool(params.enable_word_time_offsets)
                default_settings.enable_word_confidence = bool(params.enable_word_confidence)
                default_settings.enable_interim_results = bool(params.enable_interim_results)
                default_settings.enable_voice_activity_events = bool(params.enable_voice_activity_events)
                default_settings.adaptation = params.adaptation
        if settings is not None:
            default_settings.apply_update(settings)
        if is_given(default_settings.adaptation) and default_settings.adaptation is not None:
            default_settings.adaptation = normalize_speech_adaptation(default_settings.adaptation)

        super().__init__(
            sample_rate=sample_rate, ttfs_p99_latency=ttfs_p99_latency, settings=default_settings, **kwargs
        )

        self._location = location
        self._api = api
        self._target = resolve_target(location=location, endpoint=endpoint)
        self._close_timeout_s = self._session_params.close_timeout_s
        self._backoff = backoff
        self._clock = clock
        self._turn_args: dict[str, Any] = dict(
            debounce_ms=debounce_ms, vad_hangover_ms=vad_hangover_ms, final_timeout_ms=final_timeout_ms
        )
        self._turns = TurnTimer(clock=clock, **self._turn_args)
        self._check_languages()

        self._session: StreamingSTTSession | None = None
        self._events: asyncio.Queue | None = None
        self._events_task: asyncio.Task | None = None
        self._segment_open = False
        self.final_stats: STTStats | None = None
        self.audio_rejected = 0  # chunks that arrived while no session could take them (e.g. after EndFrame)
        self.audio_malformed = 0  # frames refused: not whole samples, or a format that cannot be converted
        self.audio_empty = 0  # zero-length audio frames (nothing to send; counted, not logged per frame)
        self.audio_converted = 0  # frames resampled and/or down-mixed to the configured format
        self._resampler: BaseAudioResampler | None = None  # created on the first off-format frame
        self._format_warned: set[str] = set()

        # Credentials: exactly the stock behaviour outside emulator mode. Only the
        # google-auth credentials object is kept (its repr holds no secret).
        self._credentials = None
        self._project_id: str | None = None
        if self._target.is_emulator:
            self._project_id = _project_from(credentials, credentials_path) or EMULATOR_PROJECT_ID
            logger.debug(f"{self}: Speech {api} via {self._target.describe()} (insecure loopback, no credentials)")
            return
        creds = None
        adc_error: str | None = None
        if credentials:
            json_account_info = _load_service_account(credentials, "credentials")
            self._project_id = json_account_info.get("project_id")
            creds = _service_account_credentials(json_account_info, "credentials")
        elif credentials_path:
            try:
                with open(credentials_path) as f:
                    raw = f.read()
            except OSError as e:
                # The stock service lets open() raise: same type (FileNotFoundError, ...), naming the setting.
                raise type(e)(e.errno, f"credentials_path cannot be read: {e.strerror}", credentials_path) from None
            json_account_info = _load_service_account(raw, f"credentials_path {credentials_path!r}")
            self._project_id = json_account_info.get("project_id")
            creds = _service_account_credentials(json_account_info, f"credentials_path {credentials_path!r}")
        else:
            try:
                creds, project_id = default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
                self._project_id = project_id
            except GoogleAuthError as e:
                if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
                    adc_error = str(e)  # e.g. "File /x.json was not found." (a path, no secret)
        if not creds:
            if adc_error:
                raise ValueError(f"No valid credentials provided. (GOOGLE_APPLICATION_CREDENTIALS: {adc_error})")
            raise ValueError("No valid credentials provided.")
        if not self._project_id:
            raise ValueError("Project ID not found in credentials")
        self._credentials = creds

    # ----------------------------------------------------------- stock API
    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str:
        return language_to_google_stt_language(language) or "en-US"

    def _check_languages(self) -> None:
        """Unknown or malformed languages are a construction error, not a mid-call INVALID_ARGUMENT."""
        try:
            codes = self._get_language_codes()
        except Exception as e:
            raise ValueError(f"unknown language in GoogleSTTService settings: {e}") from None
        bad = [c for c in codes if not isinstance(c, str) or not _LANGUAGE_TAG_RE.match(c)]
        if bad:
            raise ValueError(f"unknown language code(s) {bad!r}: expected BCP-47 tags such as 'en-US' or 'he-IL'")

    def _get_language_codes(self) -> list[str]:
        languages = assert_given(self._settings.languages)
        if languages:
            return [self.language_to_service_language(lang) for lang in languages]
        language_codes = assert_given(self._settings.language_codes)
        if language_codes:
            return list(language_codes)
        return ["en-US"]

    # Pipecat's settings pattern: each service narrows the delta to its own Settings class (stock does too).
    async def _update_settings(self, delta: GoogleSTTSettings) -> dict[str, Any]:  # type: ignore[override]
        """Apply a settings delta; any change restarts the stream with the new config (unfinalized audio replayed)."""
        if is_given(delta.language):
            delta.languages = [cast(Language, delta.language)]
            delta.language = NOT_GIVEN
        if is_given(delta.language_codes):
            warn_deprecated(
                "`GoogleSTTService.Settings.language_codes` is deprecated since 0.0.104 and "
                "will be removed in 2.0.0. Use `GoogleSTTService.Settings.languages` "
                "(`list[Language]`) instead.",
                stacklevel=2,
            )
        if is_given(delta.adaptation) and delta.adaptation is not None:
            delta.adaptation = normalize_speech_adaptation(delta.adaptation)
        changed = await super()._update_settings(delta)
        if changed and self._session is not None:
            logger.debug(f"{self}: settings changed ({', '.join(changed)}); restarting the stream")
            self._session.update_spec(self._build_spec())
        return changed

    @deprecated(
        "`GoogleSTTService.set_languages` is deprecated since 0.0.104 and will be removed in "
        "2.0.0. Use `STTUpdateSettingsFrame` instead."
    )
    async def set_languages(self, languages: list[Language]):
        """Deprecated on stock since 0.0.104 (use ``STTUpdateSettingsFrame``); kept for drop-in code."""
        logger.debug(f"Switching STT languages to: {languages}")
        await self._update_settings(self.Settings(languages=list(languages)))

    @deprecated(
        "`GoogleSTTService.update_options` is deprecated since 0.0.104 and will be removed in "
        "2.0.0. Use `STTUpdateSettingsFrame` instead."
    )
    async def update_options(
        self,
        *,
        languages: list[Language] | None = None,
        model: str | None = None,
        enable_automatic_punctuation: bool | None = None,
        enable_spoken_punctuation: bool | None = None,
        enable_spoken_emojis: bool | None = None,
        profanity_filter: bool | None = None,
        enable_word_time_offsets: bool | None = None,
        enable_word_confidence: bool | None = None,
        enable_interim_results: bool | None = None,
        enable_voice_activity_events: bool | None = None,
        adaptation: Any = NOT_GIVEN,
        location: str | None = None,
    ) -> None:
        """Deprecated on stock since 0.0.104 (use ``STTUpdateSettingsFrame``); kept for drop-in code.

        Same arguments and effect as stock: ``None`` leaves an option alone; any
        change restarts the stream (unfinalized audio replayed). ``location``
        changes the recognizer path of the next stream, as on stock (the
        endpoint chosen at construction stays).
        """
        delta = self.Settings()
        options = dict(
            model=model,
            enable_automatic_punctuation=enable_automatic_punctuation,
            enable_spoken_punctuation=enable_spoken_punctuation,
            enable_spoken_emojis=enable_spoken_emojis,
            profanity_filter=profanity_filter,
            enable_word_time_offsets=enable_word_time_offsets,
            enable_word_confidence=enable_word_confidence,
            enable_interim_results=enable_interim_results,
            enable_voice_activity_events=enable_voice_activity_events,
        )
        if languages is not None:
            delta.languages = list(languages)
        for name, value in options.items():
            if value is not None:
                setattr(delta, name, value)
        if is_given(adaptation):
            delta.adaptation = adaptation
        relocated = location is not None and location != self._location
        if location is not None:
            logger.debug(f"Updating location to: {location}")
            self._location = location
        changed = await self._update_settings(delta)
        if relocated and not changed and self._session is not None:
            self._session.update_spec(self._build_spec())

    # ------------------------------------------------------------ sink API
    def can_accept_audio(self) -> bool:
        """AudioSink protocol: True while the next 20 ms of audio would be queued without dropping anything."""
        session = self._session
        if session is None or not session.accepting:
            return True  # nothing to wait for; audio is counted in audio_rejected
        return session.can_accept()

    def audio_backlog(self) -> float:
        """AudioSink (optional): audio queued here and not yet handed to gRPC, in 20 ms-frame equivalents."""
        session = self._session
        return session.backlog_frames() if session is not None else 0.0

    @property
    def session_params(self) -> STTSessionParams:
        """The validated session settings every session of this service runs with."""
        return self._session_params

    @property
    def session(self) -> StreamingSTTSession | None:
        return self._session

    @property
    def stats(self) -> STTStats | None:
        """The live session's counters (q, drops, write_ms, reconnects, replayed_ms, last_error, ...), else the last session's."""
        return self._session.stats if self._session is not None else self.final_stats

    @property
    def turn_counters(self) -> TurnCounters:
        """A copy of the turn timer's counters for the current (or last) session: early finals, held, catch-ups, ..."""
        return dataclasses.replace(self._turns.counters)

    # ----------------------------------------------------------- lifecycle
    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self._connect()

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        await self._disconnect(flush=True)

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._disconnect(flush=False)

    async def cleanup(self):
        await super().cleanup()
        await self._disconnect(flush=False)

    async def _connect(self):
        if self._session is not None:
            return
        loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        events = self._events

        def post(kind: str, item: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, item))
            except RuntimeError:  # the pipeline's loop is gone
                pass

        target, api, creds = self._target, self._api, self._credentials
        metadata = ((_SESSION_METADATA_KEY, str(uuid.uuid4())),) if target.is_emulator else ()
        self._turns = TurnTimer(clock=self._clock, **self._turn_args)
        self._session = StreamingSTTSession(
            self._build_spec(),
            lambda: build_speech_client(api=api, asynchronous=True, target=target, credentials=creds),
            probe_factory=lambda: build_speech_client(api=api, asynchronous=False, target=target, credentials=creds),
            on_result=lambda r: post("result", r),
            on_error=lambda e: post("error", e),
            params=self._session_params,
            backoff=self._backoff,
            metadata=metadata,
            name=self.name,
        ).start()
        self._events_task = self.create_task(self._event_loop(), name=f"{self.name}::stt_events")
        await self._call_event_handler("on_connected")

    async def _disconnect(self, *, flush: bool):
        session, self._session = self._session, None
        if session is not None:
            timeout = self._close_timeout_s if flush else 0.0
            session.close(timeout, wait=False)
            deadline = asyncio.get_running_loop().time() + timeout + 3.0
            while not session.closed and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            session.close(0.5)  # joins the (already finished) thread
            self.final_stats = session.stats
        if self._events_task is not None:
            if flush and self._events is not None:
                # Let the event task finish everything queued (a final may be mid-emit right
                # now: cancelling it there would lose that final), then stop it.
                await asyncio.sleep(0)  # results the I/O thread posted just before it ended
                self._events.put_nowait(("stop", None))
                await asyncio.wait({self._events_task}, timeout=self._close_timeout_s + 2.0)
            await self.cancel_task(self._events_task)
            self._events_task = None
            if session is not None:
                await self._call_event_handler("on_disconnected")

    # --------------------------------------------------------------- audio
    async def process_audio_frame(self, frame: InputAudioRawFrame, direction: FrameDirection):
        """Check the frame's format before it reaches Google: never send garbage.

        Zero-length frames are counted (``audio_empty``) and skipped. A frame
        that is not whole samples is refused (``audio_malformed``). A frame at
        another sample rate or with several channels is resampled / down-mixed
        to the configured mono format (``audio_converted``). Each case is
        logged once per service, not per frame.
        """
        if not frame.audio:
            self.audio_empty += 1
            return
        channels = frame.num_channels or 1
        if channels < 1 or len(frame.audio) % (2 * channels):
            self.audio_malformed += 1
            self._warn_format(
                "malformed",
                f"{self}: refused an audio frame of {len(frame.audio)} bytes with {channels} channel(s): "
                "not whole 16-bit samples (counted in audio_malformed)",
            )
            return
        rate = frame.sample_rate or self.sample_rate
        if channels != 1 or (rate != self.sample_rate and self.sample_rate > 0):
            if not MIN_SAMPLE_RATE // 2 <= rate <= 192000:
                self.audio_malformed += 1
                self._warn_format("rate", f"{self}: refused audio at {rate} Hz (counted in audio_malformed)")
                return
            audio = frame.audio
            if channels != 1:
                audio = _downmix(audio, channels)
            if rate != self.sample_rate:
                if self._resampler is None:
                    from pipecat.audio.utils import create_stream_resampler

                    self._resampler = create_stream_resampler()
                audio = await self._resampler.resample(audio, rate, self.sample_rate)
            self.audio_converted += 1
            self._warn_format(
                f"convert:{rate}:{channels}",
                f"{self}: audio arrives at {rate} Hz x {channels} channel(s); converting to "
                f"{self.sample_rate} Hz mono for Google (counted in audio_converted)",
            )
            if not audio:
                return  # the resampler is still filling its filter
            frame = InputAudioRawFrame(audio=audio, sample_rate=self.sample_rate, num_channels=1)
        await super().process_audio_frame(frame, direction)

    def _warn_format(self, key: str, message: str) -> None:
        if key not in self._format_warned:
            self._format_warned.add(key)
            logger.warning(message)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Hand audio to the session (never awaits the network) and yield None."""
        session = self._session
        if session is None or not session.push_audio(audio):
            self.audio_rejected += 1
        yield None

    # ----------------------------------------------------- VAD / turn timing
    async def _handle_vad_user_started_speaking(self, frame: VADUserStartedSpeakingFrame):
        await super()._handle_vad_user_started_speaking(frame)
        if self._events is not None:
            self._events.put_nowait(("vad_started", None))

    async def _handle_vad_user_stopped_speaking(self, frame: VADUserStoppedSpeakingFrame):
        await super()._handle_vad_user_stopped_speaking(frame)
        if self._events is not None:
            self._events.put_nowait(("vad_stopped", self._speech_end_ms(frame)))

    def _speech_end_ms(self, frame: VADUserStoppedSpeakingFrame) -> float | None:
        """Where the speech ended in the session's audio time (the TurnTimer's gate), or None.

        Every byte of audio before this frame has been handed to the session: the
        VAD runs downstream of us on the audio we passed through. The session's
        clock counts audio sent plus audio queued (dropped audio is in neither),
        and the VAD decided ``stop_secs`` after the speech really ended.
        """
        session = self._session
        if session is None:
            return None
        position = session.stats.audio_sent_ms + session.backlog_frames() * FRAME_UNIT_MS
        return max(0.0, position - 1000.0 * float(frame.stop_secs or 0.0))

    async def _event_loop(self):
        assert self._events is not None
        while True:
            deadline = self._turns.next_deadline()
            try:
                if deadline is None:
                    item = await self._events.get()
                else:
                    item = await asyncio.wait_for(self._events.get(), max(0.0, deadline - self._clock()))
            except TimeoutError:
                await self._emit(self._turns.poll())
                continue
            if item[0] == "stop":
                return
            await self._handle_event(*item)

    async def _handle_event(self, kind: str, item: Any):
        if kind == "result":
            r = cast(STTResult, item)
            emits = (
                self._turns.final(r.text, r)
                if r.is_final
                else self._turns.interim(r.text, r, end_ms=r.end_ms, stability=r.stability)
            )
            await self._emit(emits)
        elif kind == "vad_started":
            await self._emit(self._turns.vad_started())
        elif kind == "vad_stopped":
            await self._emit(self._turns.vad_stopped(speech_end_ms=item))
        elif kind == "error":
            err = cast(STTError, item)
            exc = err.exception if isinstance(err.exception, Exception) else RuntimeError(err.message)
            await self.push_error(error_msg=err.message, exception=exc)

    async def _emit(self, emits: list[TurnEmit]):
        for e in emits:
            language = cast(Language, self._get_language_codes()[0])
            raw = e.payload.raw if isinstance(e.payload, STTResult) else None
            if e.final:
                await self.emit_stt_usage_metrics()
                await self.push_frame(
                    TranscriptionFrame(e.text, self._user_id, time_now_iso8601(), language, result=raw, finalized=True)
                )
                await self._handle_transcription(e.text, is_final=True, language=language)
                if self._segment_open:
                    await self.stop_processing_metrics()
                    self._segment_open = False
            else:
                if not self._segment_open:
                    await self.start_processing_metrics()
                    self._segment_open = True
                await self.push_frame(
                    InterimTranscriptionFrame(e.text, self._user_id, time_now_iso8601(), language, result=raw)
                )

    @traced_stt
    async def _handle_transcription(self, transcript: str, is_final: bool, language: str | None = None):
        pass

    def _classify_error(self, exception: Exception) -> ErrorCategory | None:
        code = status_of(exception)
        if code is not None:
            return _CATEGORIES.get(code, ErrorCategory.UNKNOWN)
        return super()._classify_error(exception)

    # -------------------------------------------------------------- config
    def _build_spec(self) -> StreamSpec:
        s = self._settings
        features = dict(
            enable_automatic_punctuation=s.enable_automatic_punctuation,
            enable_spoken_punctuation=s.enable_spoken_punctuation,
            enable_spoken_emojis=s.enable_spoken_emojis,
            profanity_filter=s.profanity_filter,
            enable_word_time_offsets=s.enable_word_time_offsets,
            enable_word_confidence=s.enable_word_confidence,
        )
        model = assert_given(s.model)
        codes = self._get_language_codes()
        if self._api == "v1":
            return build_v1_spec(
                sample_rate=self.sample_rate,
                language_codes=codes,
                model=model,
                interim_results=bool(s.enable_interim_results),
                voice_activity_events=bool(s.enable_voice_activity_events),
                features=features,
            )
        adaptation = None
        if is_given(s.adaptation) and s.adaptation is not None:
            if model_supports_adaptation(model):
                adaptation = normalize_speech_adaptation(s.adaptation)
            else:
                logger.warning("Google STT model '{}' rejects adaptation; transcribing without it.", model)
        denoiser = None
        if is_given(s.denoiser_config) and s.denoiser_config is not None:
            from google.cloud.speech_v2.types import cloud_speech

            dc = s.denoiser_config
            denoiser = dc if isinstance(dc, cloud_speech.DenoiserConfig) else cloud_speech.DenoiserConfig(dc)
        return build_v2_spec(
            sample_rate=self.sample_rate,
            recognizer=recognizer_path(cast(str, self._project_id), self._location),
            language_codes=codes,
            model=model,
            interim_results=bool(s.enable_interim_results),
            voice_activity_events=bool(s.enable_voice_activity_events),
            features=features,
            adaptation=adaptation,
            denoiser_config=denoiser,
        )


def _project_from(credentials: str | None, credentials_path: str | None) -> str | None:
    """The project id in a service-account JSON (emulator mode only; nothing else is read)."""
    try:
        if credentials:
            return json.loads(credentials).get("project_id")
        if credentials_path:
            with open(credentials_path) as f:
                return json.load(f).get("project_id")
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _check_sample_rate(rate: int | None, name: str) -> None:
    if rate is not None and not (MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
        raise ValueError(
            f"{name} must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz for Google STT, got {rate}"
        )


def _load_service_account(text: str, what: str) -> dict:
    """Parse service-account JSON: the stock service's error type, a message that never quotes the content.

    Not JSON: ``json.JSONDecodeError`` like stock, with its position but without
    ``doc`` (which would hold the key). Not a JSON object: ``MalformedError``
    (stock crashes with an AttributeError there; this is a ValueError like
    every other bad key).
    """
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:
        err = json.JSONDecodeError(f"{what}: not valid JSON ({e.msg})", e.doc, e.pos)
        err.doc = ""  # never keep the (secret) text on the exception
        raise err from None
    if not isinstance(info, dict):
        raise MalformedError(f"{what}: expected a JSON object (a service-account key file)")
    return info


def _service_account_credentials(info: dict, what: str):
    """google-auth's credentials: the same exception type as stock for a bad key, a message with no secret."""
    try:
        return service_account.Credentials.from_service_account_info(info)
    except (ValueError, KeyError, TypeError) as e:
        # google-auth says e.g. "missing fields token_uri, client_email" (names only), but some of its
        # errors quote the value ("5 could not be converted to bytes") and a PEM parser error might:
        # only the exception type goes with those.
        reason = str(e) if "missing fields" in str(e) else type(e).__name__
        message = f"{what}: not a usable service-account key ({reason})"
        try:
            err = type(e)(message)
        except Exception:  # an exception type that does not take a message: still a ValueError
            err = MalformedError(message)
        raise err from None


def _downmix(pcm16: bytes, channels: int) -> bytes:
    import numpy as np

    samples = np.frombuffer(pcm16, dtype="<i2").reshape(-1, channels).astype(np.int32)
    return samples.mean(axis=1).round().astype("<i2").tobytes()
