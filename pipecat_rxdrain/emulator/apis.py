"""The two wire dialects the emulator speaks: Speech v1 and v2 StreamingRecognize.

Each adapter validates the first request's config the way Google does and builds
responses with the official ``google-cloud-speech`` message classes.

Error codes and texts (sources: ``google-stt-twilio-facts.md`` §4 and public user reports):

* config missing / sent twice / audio before config: ``INVALID_ARGUMENT``,
  ``Malordered Data Received. Send exactly one config, followed by audio data.``
  (text as seen in user reports of the real service; the v2 text is a best guess).
* bad encoding / sample rate: ``INVALID_ARGUMENT`` ``Invalid recognition 'config': bad encoding..`` /
  ``... bad sample rate hertz.`` (v1 texts from user reports; v2 reuses them — best guess).
* per-request audio above the limit: ``INVALID_ARGUMENT`` (code is a best guess; the
  quotas pages say only "Each request in the stream is limited to 25 KB of audio",
  older v2 pages "Exceeding this limit will throw an error").
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.cloud.speech_v1.types import cloud_speech as v1
from google.cloud.speech_v2.types import cloud_speech as v2

from .records import EndReason, ResultKind

MALORDERED = "Malordered Data Received. Send exactly one config, followed by audio data."
MIN_RATE, MAX_RATE = 8000, 48000
MAX_CHANNELS = 8
_RECOGNIZER_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/recognizers/[^/]+$")


class StreamError(Exception):
    """Ends the stream with ``code``/``details`` (recorded with ``reason``)."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: EndReason = EndReason.INVALID_ARGUMENT) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason


def invalid(details: str) -> StreamError:
    return StreamError(grpc.StatusCode.INVALID_ARGUMENT, details)


@dataclass
class StreamConfig:
    """What the first request asked for, normalised across v1 and v2."""

    encoding: str  # "LINEAR16" | "MULAW" | "ALAW" | "AUTO" (v2 auto_decoding_config: WAV header expected)
    sample_rate: int
    channels: int
    language: str
    interim_results: bool
    voice_activity_events: bool
    single_utterance: bool = False
    recognizer: str = ""
    as_dict: dict[str, Any] | None = None
    word_time_offsets: bool = False
    max_alternatives: int = 1  # 0 and 1 both mean one, as in Google's API
    # voice_activity_timeout (honoured with voice activity events on, as Google documents):
    # close the stream when no speech has begun this long into the audio / after the last speech.
    speech_start_timeout_s: float | None = None
    speech_end_timeout_s: float | None = None


def _duration_s(d) -> float | None:
    """A protobuf Duration field as seconds; None when unset or zero."""
    if d is None:
        return None
    seconds = d.total_seconds() if isinstance(d, timedelta) else float(d.seconds) + d.nanos / 1e9
    return seconds if seconds > 0 else None


def _timeouts(sc) -> tuple[float | None, float | None]:
    if not sc.voice_activity_timeout:
        return None, None
    vat = sc.voice_activity_timeout
    return _duration_s(vat.speech_start_timeout), _duration_s(vat.speech_end_timeout)


def check_rate_channels(rate: int, channels: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise invalid(
            f"Invalid recognition 'config': bad sample rate hertz. (got {rate}; {MIN_RATE}-{MAX_RATE} supported)"
        )
    if not 0 <= channels <= MAX_CHANNELS:
        raise invalid(f"Invalid recognition 'config': audio_channel_count must be 1-{MAX_CHANNELS} (got {channels})")


def parse_wav_header(data: bytes) -> tuple[str, int, int, int]:
    """(encoding, sample_rate, channels, header_length) of a RIFF/WAVE header at the start of ``data``."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise invalid(
            "Audio can not be decoded: auto_decoding_config needs a self-describing header (WAV); "
            "use explicit_decoding_config for headerless LINEAR16/MULAW/ALAW"
        )
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
        elif cid == b"data":
            if fmt is None:
                break
            tag, channels, rate, _, _, bits = fmt
            encoding = {(1, 16): "LINEAR16", (7, 8): "MULAW", (6, 8): "ALAW"}.get((tag, bits))
            if encoding is None:
                raise invalid(f"Audio can not be decoded: WAV format {tag}/{bits} bit not supported by the emulator")
            return encoding, rate, channels, pos + 8
        pos += 8 + size + (size & 1)
    raise invalid("Audio can not be decoded: the WAV header must be complete in the first audio request")


@dataclass(frozen=True)
class Word:
    """One word of a final with its audio offsets (seconds since the stream start)."""

    word: str
    start_s: float
    end_s: float


class _Api:
    """What v1 and v2 share; subclasses name their message module and the fields that differ."""

    # set by each version
    name: str  # "v1" | "v2"
    types: Any  # the cloud_speech types module of this version
    audio_field: str  # "audio_content" (v1) | "audio" (v2)
    offset_word: str  # how the version spells its offset fields: "time" (v1) | "offset" (v2)
    inactivity: tuple[grpc.StatusCode, str]
    # derived from the above (``__init_subclass__``)
    service: str  # "google.cloud.speech.v1.Speech" | "google.cloud.speech.v2.Speech"
    request_cls: Any
    response_cls: Any
    end_field: str  # result end offset: "result_end_time" | "result_end_offset"
    event_time_field: str  # "speech_event_time" | "speech_event_offset"
    word_fields: tuple[str, str]  # ("start_time", "end_time") | ("start_offset", "end_offset")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.service = f"google.cloud.speech.{cls.name}.Speech"
        cls.request_cls = cls.types.StreamingRecognizeRequest
        cls.response_cls = cls.types.StreamingRecognizeResponse
        w = cls.offset_word
        cls.end_field, cls.event_time_field = f"result_end_{w}", f"speech_event_{w}"
        cls.word_fields = (f"start_{w}", f"end_{w}")

    @classmethod
    def parse_config(cls, request) -> StreamConfig:
        """The stream's config from its first request (``INVALID_ARGUMENT`` if it is not a config or is wrong)."""
        if cls.kind(request) != "streaming_config":
            raise invalid(MALORDERED)
        return cls.config_from(request)

    @classmethod
    def config_from(cls, request) -> StreamConfig:
        raise NotImplementedError

    @classmethod
    def kind(cls, request) -> str | None:
        return type(request).pb(request).WhichOneof("streaming_request")

    @classmethod
    def audio(cls, request) -> bytes:
        return getattr(request, cls.audio_field)

    @classmethod
    def result(
        cls,
        transcript: str,
        *,
        is_final: bool,
        stability: float,
        end_s: float,
        language: str,
        words: Sequence[Word] = (),
        alternatives: Sequence[str] = (),
        billed_s: float | None = None,
        request_id: str = "",
    ):
        """One response carrying one result: the transcript, then ``alternatives`` (finals only)."""
        t = cls.types
        start_f, end_f = cls.word_fields
        alts = [
            t.SpeechRecognitionAlternative(
                transcript=transcript,
                confidence=0.92 if is_final else 0.0,
                words=[
                    t.WordInfo(
                        word=w.word, **{start_f: timedelta(seconds=w.start_s), end_f: timedelta(seconds=w.end_s)}
                    )
                    for w in words
                ],
            )
        ]
        for i, alt in enumerate(alternatives if is_final else ()):
            alts.append(t.SpeechRecognitionAlternative(transcript=alt, confidence=max(0.1, 0.8 - 0.1 * i)))
        res = t.StreamingRecognitionResult(
            alternatives=alts,
            is_final=is_final,
            stability=0.0 if is_final else stability,
            language_code=language.lower(),
            **{cls.end_field: timedelta(seconds=end_s)},
        )
        response = t.StreamingRecognizeResponse(results=[res])
        cls.add_billing(response, billed_s, request_id, is_final)
        return response

    @classmethod
    def add_billing(cls, response, billed_s: float | None, request_id: str, is_final: bool) -> None:
        raise NotImplementedError

    @classmethod
    def event(cls, kind: ResultKind, offset_s: float):
        R = cls.types.StreamingRecognizeResponse
        T = R.SpeechEventType
        etype = {
            ResultKind.SPEECH_BEGIN: T.SPEECH_ACTIVITY_BEGIN,
            ResultKind.SPEECH_END: T.SPEECH_ACTIVITY_END,
            ResultKind.END_OF_SINGLE_UTTERANCE: T.END_OF_SINGLE_UTTERANCE,
        }[kind]
        return R(speech_event_type=etype, **{cls.event_time_field: timedelta(seconds=offset_s)})


class V1Api(_Api):
    name = "v1"
    types = v1
    audio_field = "audio_content"
    offset_word = "time"
    # facts §4: v1 idle error (googleapis/python-speech#489, twilio/media-streams#72)
    inactivity = (
        grpc.StatusCode.OUT_OF_RANGE,
        "Audio Timeout Error: Long duration elapsed without audio. Audio should be sent close to real time.",
    )

    @classmethod
    def add_billing(cls, response, billed_s: float | None, request_id: str, is_final: bool) -> None:
        # Google documents total_billed_time as set on the stream's last response; the emulator
        # puts the running total on every final (it cannot know which response is the last).
        if billed_s is not None and is_final:
            response.total_billed_time = timedelta(seconds=billed_s)

    @classmethod
    def config_from(cls, request) -> StreamConfig:
        sc = request.streaming_config
        cfg = sc.config
        enc = v1.RecognitionConfig.AudioEncoding(cfg.encoding).name
        if enc not in ("LINEAR16", "MULAW"):
            raise invalid(
                f"Invalid recognition 'config': bad encoding.. ({enc} is not supported by the emulator; "
                "use LINEAR16 or MULAW)"
            )
        check_rate_channels(cfg.sample_rate_hertz, cfg.audio_channel_count)
        if not cfg.language_code:
            raise invalid("Invalid recognition 'config': language_code is required.")
        start_t, end_t = _timeouts(sc)
        return StreamConfig(
            encoding=enc,
            sample_rate=cfg.sample_rate_hertz,
            channels=max(1, cfg.audio_channel_count),
            language=cfg.language_code,
            interim_results=sc.interim_results,
            voice_activity_events=sc.enable_voice_activity_events,
            single_utterance=sc.single_utterance,
            as_dict=type(sc).to_dict(sc),
            word_time_offsets=cfg.enable_word_time_offsets,
            max_alternatives=max(1, cfg.max_alternatives),
            speech_start_timeout_s=start_t,
            speech_end_timeout_s=end_t,
        )


class V2Api(_Api):
    name = "v2"
    types = v2
    audio_field = "audio"
    offset_word = "offset"
    # facts §4: v2 idle error is 409 Aborted (pipecat #2180, PR #2001)
    inactivity = (grpc.StatusCode.ABORTED, "Stream timed out after receiving no more client requests.")

    @classmethod
    def add_billing(cls, response, billed_s: float | None, request_id: str, is_final: bool) -> None:
        response.metadata = v2.RecognitionResponseMetadata(
            request_id=request_id,
            total_billed_duration=timedelta(seconds=billed_s or 0),
        )

    @classmethod
    def config_from(cls, request) -> StreamConfig:
        if not _RECOGNIZER_RE.match(request.recognizer or ""):
            raise invalid(
                f"Invalid resource field value in the request: recognizer {request.recognizer!r} "
                "(expected projects/{project}/locations/{location}/recognizers/{recognizer})"
            )
        sc = request.streaming_config
        cfg = sc.config
        which = type(cfg).pb(cfg).WhichOneof("decoding_config")
        if which == "explicit_decoding_config":
            d = cfg.explicit_decoding_config
            enc = v2.ExplicitDecodingConfig.AudioEncoding(d.encoding).name
            if enc not in ("LINEAR16", "MULAW", "ALAW"):
                raise invalid(
                    f"Invalid recognition 'config': bad encoding.. ({enc} is not supported by the "
                    "emulator; use LINEAR16, MULAW or ALAW)"
                )
            check_rate_channels(d.sample_rate_hertz, d.audio_channel_count)
            rate, channels = d.sample_rate_hertz, max(1, d.audio_channel_count)
        elif which == "auto_decoding_config":
            enc, rate, channels = "AUTO", 0, 1
        else:
            raise invalid(
                "Invalid recognition 'config': one of auto_decoding_config or explicit_decoding_config is required."
            )
        if not cfg.language_codes or not all(cfg.language_codes):
            raise invalid("Invalid recognition 'config': language_codes is required.")
        feats = sc.streaming_features
        start_t, end_t = _timeouts(feats)
        return StreamConfig(
            encoding=enc,
            sample_rate=rate,
            channels=channels,
            language=cfg.language_codes[0],
            interim_results=feats.interim_results,
            voice_activity_events=feats.enable_voice_activity_events,
            recognizer=request.recognizer,
            as_dict=type(sc).to_dict(sc),
            word_time_offsets=cfg.features.enable_word_time_offsets,
            max_alternatives=max(1, cfg.features.max_alternatives),
            speech_start_timeout_s=start_t,
            speech_end_timeout_s=end_t,
        )


APIS = {"v1": V1Api, "v2": V2Api}
