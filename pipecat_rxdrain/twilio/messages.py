"""Twilio Media Streams messages: parse and validate untrusted websocket input.

Twilio sends JSON text frames (numeric fields as strings)::

    {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    {"event": "start", "sequenceNumber": "1", "streamSid": "MZ..", "start": {"streamSid": "MZ..",
     "accountSid": "AC..", "callSid": "CA..", "tracks": ["inbound"], "customParameters": {...},
     "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    {"event": "media", "sequenceNumber": "2", "streamSid": "MZ..",
     "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "<base64 of 160 bytes>"}}
    {"event": "dtmf", ...}  {"event": "mark", ...}  {"event": "stop", ...}

:class:`TwilioStreamParser` turns each raw message into one of the dataclasses
below or into a counted drop with a :class:`DropReason`. It never raises on
input (anything unexpected is counted as ``DropReason.INTERNAL``) and it keeps
the books exact: ``received == accepted + sum(dropped.values())``.

No Pipecat import here; the Pipecat serializer is a thin adapter over this.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: 20 ms of 8 kHz mu-law, what Twilio sends per inbound media message.
TWILIO_FRAME_BYTES = 160
#: A media message with a 160-byte payload is ~330 bytes; ``start`` with custom
#: parameters is a few hundred. Anything much larger is not Twilio.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024
#: How far ahead of the last one a ``sequenceNumber``/``chunk`` may jump (60 s of frames). A number
#: further ahead is dropped (``SEQUENCE_JUMP``) and not remembered, so one bogus 19-digit number
#: cannot make every later frame look "out of order".
MAX_SEQUENCE_JUMP = 3000
#: Twilio SIDs: two letters and 32 hex digits. Anything else never reaches a log line or a URL.
# The scanner json.loads runs (same defaults), without loads' whitespace handling around it.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_a2b_base64 = binascii.a2b_base64
_SID_RE = {prefix: re.compile(prefix + r"[0-9a-fA-F]{32}") for prefix in ("CA", "MZ", "AC")}


def is_sid(value: object, prefix: str) -> bool:
    """True if ``value`` is a Twilio SID with ``prefix`` (``CA`` call, ``MZ`` stream, ``AC`` account)."""
    return isinstance(value, str) and len(value) == 34 and _SID_RE[prefix].fullmatch(value) is not None


class DropReason(StrEnum):
    """Why a websocket message was not accepted (each is counted separately)."""

    BINARY = "binary"  # Twilio only sends text frames
    OVERSIZED = "oversized"  # larger than max_message_bytes
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"  # valid JSON but not an object
    MISSING_EVENT = "missing_event"
    UNKNOWN_EVENT = "unknown_event"
    BAD_FIELD = "bad_field"  # a required field missing or of the wrong type
    DUPLICATE_START = "duplicate_start"
    MEDIA_BEFORE_START = "media_before_start"
    AFTER_STOP = "after_stop"
    WRONG_STREAM = "wrong_stream"  # streamSid differs from the one in start
    OTHER_TRACK = "other_track"  # outbound track media (we only transcribe the caller)
    BAD_BASE64 = "bad_base64"
    EMPTY_PAYLOAD = "empty_payload"
    BAD_PAYLOAD_SIZE = "bad_payload_size"
    DUPLICATE_SEQUENCE = "duplicate_sequence"
    OUT_OF_ORDER = "out_of_order"  # sequenceNumber or chunk went backwards
    SEQUENCE_JUMP = "sequence_jump"  # sequenceNumber or chunk more than MAX_SEQUENCE_JUMP ahead
    INPUT_OVERFLOW = "input_overflow"  # valid audio, but the pipeline's input backlog stayed full
    INTERNAL = "internal"  # a bug in this parser; counted, never raised


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    encoding: str
    sample_rate: int
    channels: int
    sequence_number: int | None

    def __repr__(self) -> str:  # custom parameters may hold the per-call token
        return (
            f"Start(stream_sid={self.stream_sid!r}, call_sid={self.call_sid!r}, tracks={self.tracks!r}, "
            f"custom_parameters=<{len(self.custom_parameters)} keys>, encoding={self.encoding!r}, "
            f"sample_rate={self.sample_rate}, channels={self.channels})"
        )


@dataclass(frozen=True)
class Media:
    sequence_number: int | None
    chunk: int | None
    timestamp_ms: int | None
    track: str
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class Dtmf:
    digit: str
    sequence_number: int | None


@dataclass(frozen=True)
class Mark:
    name: str
    sequence_number: int | None


@dataclass(frozen=True)
class Stop:
    account_sid: str
    call_sid: str
    sequence_number: int | None


TwilioMessage = Connected | Start | Media | Dtmf | Mark | Stop


@dataclass(frozen=True)
class Rejected:
    reason: DropReason
    detail: str  # short, safe to log: never contains payloads or parameter values


@dataclass
class ParserStats:
    """Counters of one stream. Invariant: ``received == accepted + sum(dropped.values())``."""

    received: int = 0
    accepted: int = 0
    dropped: Counter = field(default_factory=Counter)  # DropReason -> count
    by_event: Counter = field(default_factory=Counter)  # accepted event -> count
    media_bytes: int = 0
    sequence_gaps: int = 0  # messages Twilio numbered but we never saw (counted, not dropped)
    chunk_gaps: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "dropped_total": self.dropped_total,
            "dropped": {r.value: n for r, n in sorted(self.dropped.items(), key=lambda kv: kv[0].value)},
            "by_event": dict(self.by_event),
            "media_bytes": self.media_bytes,
            "sequence_gaps": self.sequence_gaps,
            "chunk_gaps": self.chunk_gaps,
        }


class _Bad(Exception):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _text(obj: dict, key: str, *, required: bool = True, default: str = "") -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Bad(DropReason.BAD_FIELD, f"missing {key}")
        return default
    if not isinstance(value, str):
        raise _Bad(DropReason.BAD_FIELD, f"{key} is not a string")
    return value


def _int(obj: dict, key: str, *, required: bool = False) -> int | None:
    """Twilio sends numbers as strings; accept both, reject anything else."""
    value = obj.get(key)
    if value is None:
        if required:
            raise _Bad(DropReason.BAD_FIELD, f"missing {key}")
        return None
    if isinstance(value, bool):
        raise _Bad(DropReason.BAD_FIELD, f"{key} is not a number")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().isdigit() and len(value) <= 19:
        n = int(value)
    else:
        raise _Bad(DropReason.BAD_FIELD, f"{key} is not a non-negative integer")
    if n < 0:
        raise _Bad(DropReason.BAD_FIELD, f"{key} is negative")
    return n


def _obj(obj: dict, key: str) -> dict:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise _Bad(DropReason.BAD_FIELD, f"{key} is missing or not an object")
    return value


def _check_order(name: str, n: int | None, last: int | None) -> None:
    """Twilio's counters rule: strictly after ``last`` and at most MAX_SEQUENCE_JUMP ahead; else ``_Bad``."""
    if n is None:
        return
    if last is not None:
        if n == last:
            raise _Bad(DropReason.DUPLICATE_SEQUENCE, f"{name} {n} repeated")
        if n < last:
            raise _Bad(DropReason.OUT_OF_ORDER, f"{name} {n} after {last}")
    if n > (last or 0) + MAX_SEQUENCE_JUMP:
        raise _Bad(DropReason.SEQUENCE_JUMP, f"{name} jumps more than {MAX_SEQUENCE_JUMP} ahead")


def _next_in_order(raw: object, last: int | None) -> int | None:
    """``raw`` as an int if it is a well-formed counter that may follow ``last``; else None (the full parse decides)."""
    if type(raw) is not str or len(raw) > 19 or not raw.isascii() or not raw.isdigit():
        return None
    n = int(raw)
    try:
        _check_order("", n, last)  # the full parse's order rule, one copy of it
    except _Bad:
        return None
    return n


class TwilioStreamParser:
    """Validates one Media Streams connection's messages, in order, with counted drops.

    Guarantees:

    * ``feed`` never raises; it returns a message dataclass or a :class:`Rejected`.
    * ``stats.received == stats.accepted + stats.dropped_total`` after every call.
    * ``media`` is accepted only after one ``start``, before ``stop``, for the
      started stream, on the inbound track, with a valid base64 payload of
      ``frame_bytes`` bytes (``None`` accepts any non-empty size), and with a
      ``sequenceNumber``/``chunk`` greater than any seen before but at most
      :data:`MAX_SEQUENCE_JUMP` ahead (duplicates, replays and wild jumps are
      dropped; gaps are counted but do not drop anything).
    * ``start`` is accepted only with Twilio-shaped SIDs (``callSid`` ``CA…``,
      ``streamSid`` ``MZ…``, ``accountSid`` ``AC…`` or absent), so caller-chosen
      text never reaches a log line as a SID.
    """

    KNOWN_EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        frame_bytes: int | None = TWILIO_FRAME_BYTES,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be > 0, got {max_message_bytes}")
        if frame_bytes is not None and frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be > 0 or None, got {frame_bytes}")
        self.max_message_bytes = max_message_bytes
        self.frame_bytes = frame_bytes
        self.stats = ParserStats()
        self.start: Start | None = None
        self.stopped = False
        # a ``start`` event arrived but was refused (bad SIDs, missing fields): Twilio sends one
        # start per stream, so a server waiting for a valid one can give up at once
        self.start_refused = False
        self._last_seq: int | None = None
        self._last_chunk: int | None = None

    @property
    def started(self) -> bool:
        return self.start is not None

    def feed(self, raw: str | bytes | bytearray) -> TwilioMessage | Rejected:
        self.stats.received += 1
        if self.start is not None and not self.stopped and type(raw) is str:
            media = self._fast_media(raw)
            if media is not None:
                self.stats.accepted += 1
                self.stats.by_event["media"] += 1
                return media
        try:
            message = self._parse(raw)
        except _Bad as bad:
            return self._reject(bad.reason, bad.detail)
        except Exception as e:  # a bug must not crash the call; count it
            return self._reject(DropReason.INTERNAL, f"{type(e).__name__}")
        self.stats.accepted += 1
        self.stats.by_event[type(message).__name__.lower()] += 1
        return message

    # -- internals ------------------------------------------------------------

    def _fast_media(self, raw: str) -> Media | None:
        """The common case, a well-formed in-order inbound ``media`` message, in one pass.

        Accepts only what :meth:`_parse` would accept and with the same effect on the parser's state;
        anything it is not sure of returns ``None`` *before* changing any state, and ``feed`` then
        runs the full parse, which gives the exact drop reason. (Not covered: messages longer than a
        quarter of ``max_message_bytes``, numbers sent as JSON integers, whitespace-padded numbers.)
        """
        if 4 * len(raw) > self.max_message_bytes:  # the UTF-8 size bound needs no encoding below this
            return None
        try:  # json.loads without its whitespace handling: surrounding whitespace takes the full parse
            data, end = _scan_json(raw, 0)
        except (StopIteration, ValueError, RecursionError):
            return None
        if end != len(raw) or type(data) is not dict or data.get("event") != "media":
            return None
        sid = data.get("streamSid")
        if sid is not None and sid != self.start.stream_sid:  # type: ignore[union-attr]  # feed checked start
            return None
        media = data.get("media")
        if type(media) is not dict:
            return None
        track = media.get("track", "inbound")
        if track != "inbound":
            return None
        seq = data.get("sequenceNumber")
        if seq is not None and (seq := _next_in_order(seq, self._last_seq)) is None:
            return None
        chunk = media.get("chunk")
        if chunk is not None and (chunk := _next_in_order(chunk, self._last_chunk)) is None:
            return None
        timestamp = media.get("timestamp")
        if timestamp is not None:
            if type(timestamp) is not str or len(timestamp) > 19 or not timestamp.isascii() or not timestamp.isdigit():
                return None
            timestamp = int(timestamp)
        payload_b64 = media.get("payload")
        if type(payload_b64) is not str or not payload_b64:
            return None
        try:
            payload = _a2b_base64(payload_b64, strict_mode=True)  # what b64decode(validate=True) runs
        except (binascii.Error, ValueError):
            return None
        n = len(payload)
        if not n or (self.frame_bytes is not None and n != self.frame_bytes):
            return None
        stats = self.stats
        if seq is not None:
            last = self._last_seq
            if last is not None and seq > last + 1:
                stats.sequence_gaps += seq - last - 1
            self._last_seq = seq
        if chunk is not None:
            last = self._last_chunk
            if last is not None and chunk > last + 1:
                stats.chunk_gaps += chunk - last - 1
            self._last_chunk = chunk
        stats.media_bytes += n
        return Media(seq, chunk, timestamp, "inbound", payload)

    def _reject(self, reason: DropReason, detail: str) -> Rejected:
        self.stats.dropped[reason] += 1
        return Rejected(reason, detail)

    def _parse(self, raw: str | bytes | bytearray) -> TwilioMessage:
        if isinstance(raw, (bytes, bytearray)):
            if len(raw) > self.max_message_bytes:
                raise _Bad(DropReason.OVERSIZED, f"binary message of {len(raw)} bytes")
            raise _Bad(DropReason.BINARY, f"binary message of {len(raw)} bytes")
        if not isinstance(raw, str):
            raise _Bad(DropReason.NOT_JSON, f"message of type {type(raw).__name__}")
        # len(str) <= len(utf-8 bytes) <= 4 * len(str): cheap bound before encoding.
        if len(raw) > self.max_message_bytes or (
            4 * len(raw) > self.max_message_bytes and len(raw.encode("utf-8", "replace")) > self.max_message_bytes
        ):
            raise _Bad(DropReason.OVERSIZED, f"text message of {len(raw)} chars")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise _Bad(DropReason.NOT_JSON, f"not JSON ({len(raw)} chars)") from None
        if not isinstance(data, dict):
            raise _Bad(DropReason.NOT_OBJECT, f"JSON {type(data).__name__}, not an object")
        event = data.get("event")
        if event is None:
            raise _Bad(DropReason.MISSING_EVENT, "no 'event' field")
        if not isinstance(event, str) or event not in self.KNOWN_EVENTS:
            shown = event if isinstance(event, str) and len(event) <= 32 and event.isprintable() else "<unprintable>"
            raise _Bad(DropReason.UNKNOWN_EVENT, f"unknown event {shown!r}")
        if self.stopped:
            raise _Bad(DropReason.AFTER_STOP, f"{event} after stop")
        if event == "start" and self.start is None:
            try:
                return self._parse_start(data)
            except _Bad:
                self.start_refused = True
                raise
        return getattr(self, f"_parse_{event}")(data)

    def _check_sequence(self, data: dict) -> int | None:
        seq = _int(data, "sequenceNumber")
        _check_order("sequenceNumber", seq, self._last_seq)
        return seq

    def _commit_sequence(self, seq: int | None) -> None:
        if seq is None:
            return
        if self._last_seq is not None and seq > self._last_seq + 1:
            self.stats.sequence_gaps += seq - self._last_seq - 1
        self._last_seq = seq

    def _check_stream(self, data: dict) -> None:
        sid = data.get("streamSid")
        if sid is not None and self.start is not None and sid != self.start.stream_sid:
            raise _Bad(DropReason.WRONG_STREAM, "streamSid differs from start")

    def _parse_connected(self, data: dict) -> Connected:
        if self.started:
            raise _Bad(DropReason.DUPLICATE_START, "connected after start")
        return Connected(_text(data, "protocol", required=False), _text(data, "version", required=False))

    def _parse_start(self, data: dict) -> Start:
        if self.started:
            raise _Bad(DropReason.DUPLICATE_START, "second start")
        seq = self._check_sequence(data)
        start = _obj(data, "start")
        stream_sid = _text(start, "streamSid", required=False) or _text(data, "streamSid")
        call_sid = _text(start, "callSid")
        account_sid = _text(start, "accountSid", required=False)
        if not is_sid(call_sid, "CA"):
            raise _Bad(DropReason.BAD_FIELD, "callSid is not a Twilio call SID")
        if not is_sid(stream_sid, "MZ"):
            raise _Bad(DropReason.BAD_FIELD, "streamSid is not a Twilio stream SID")
        if account_sid and not is_sid(account_sid, "AC"):
            raise _Bad(DropReason.BAD_FIELD, "accountSid is not a Twilio account SID")
        tracks_raw = start.get("tracks", ["inbound"])
        if not isinstance(tracks_raw, list) or not all(isinstance(t, str) for t in tracks_raw):
            raise _Bad(DropReason.BAD_FIELD, "tracks is not a list of strings")
        params_raw = start.get("customParameters") or {}
        if not isinstance(params_raw, dict):
            raise _Bad(DropReason.BAD_FIELD, "customParameters is not an object")
        params = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in params_raw.items()}
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict):
            raise _Bad(DropReason.BAD_FIELD, "mediaFormat is not an object")
        encoding = _text(fmt, "encoding", required=False, default="audio/x-mulaw")
        rate = _int(fmt, "sampleRate") or 8000
        channels = _int(fmt, "channels") or 1
        if encoding != "audio/x-mulaw" or rate != 8000 or channels != 1:
            raise _Bad(DropReason.BAD_FIELD, f"unsupported mediaFormat {encoding!r}/{rate}/{channels}")
        result = Start(stream_sid, account_sid, call_sid, tuple(tracks_raw), params, encoding, rate, channels, seq)
        self._commit_sequence(seq)
        self.start = result
        return result

    def _parse_media(self, data: dict) -> Media:
        if not self.started:
            raise _Bad(DropReason.MEDIA_BEFORE_START, "media before start")
        self._check_stream(data)
        seq = self._check_sequence(data)
        media = _obj(data, "media")
        track = _text(media, "track", required=False, default="inbound")
        if track != "inbound":
            raise _Bad(DropReason.OTHER_TRACK, "media on a non-inbound track")
        chunk = _int(media, "chunk")
        _check_order("chunk", chunk, self._last_chunk)
        timestamp = _int(media, "timestamp")
        payload_b64 = _text(media, "payload")
        if not payload_b64:
            raise _Bad(DropReason.EMPTY_PAYLOAD, "empty payload")
        try:
            payload = _a2b_base64(payload_b64, strict_mode=True)  # = base64.b64decode(validate=True)
        except (binascii.Error, ValueError):
            raise _Bad(DropReason.BAD_BASE64, f"payload is not valid base64 ({len(payload_b64)} chars)") from None
        if not payload:
            raise _Bad(DropReason.EMPTY_PAYLOAD, "empty payload")
        if self.frame_bytes is not None and len(payload) != self.frame_bytes:
            raise _Bad(DropReason.BAD_PAYLOAD_SIZE, f"payload of {len(payload)} bytes, expected {self.frame_bytes}")
        self._commit_sequence(seq)
        if chunk is not None:
            if self._last_chunk is not None and chunk > self._last_chunk + 1:
                self.stats.chunk_gaps += chunk - self._last_chunk - 1
            self._last_chunk = chunk
        self.stats.media_bytes += len(payload)
        return Media(seq, chunk, timestamp, track, payload)

    def _parse_dtmf(self, data: dict) -> Dtmf:
        if not self.started:
            raise _Bad(DropReason.MEDIA_BEFORE_START, "dtmf before start")
        self._check_stream(data)
        seq = self._check_sequence(data)
        digit = _text(_obj(data, "dtmf"), "digit")
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise _Bad(DropReason.BAD_FIELD, "dtmf digit is not a keypad key")
        self._commit_sequence(seq)
        return Dtmf(digit, seq)

    def _parse_mark(self, data: dict) -> Mark:
        if not self.started:
            raise _Bad(DropReason.MEDIA_BEFORE_START, "mark before start")
        self._check_stream(data)
        seq = self._check_sequence(data)
        name = _text(_obj(data, "mark"), "name")
        self._commit_sequence(seq)
        return Mark(name, seq)

    def _parse_stop(self, data: dict) -> Stop:
        self._check_stream(data)
        seq = self._check_sequence(data)
        stop = data.get("stop") or {}
        if not isinstance(stop, dict):
            raise _Bad(DropReason.BAD_FIELD, "stop is not an object")
        result = Stop(_text(stop, "accountSid", required=False), _text(stop, "callSid", required=False), seq)
        self._commit_sequence(seq)
        self.stopped = True
        return result


# -- builders: the exact JSON shapes Twilio sends (used by the caller simulator and tests) --


def connected_message() -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_message(
    *,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    sequence_number: int = 1,
    custom_parameters: dict[str, str] | None = None,
    tracks: tuple[str, ...] = ("inbound",),
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": str(sequence_number),
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": list(tracks),
            "customParameters": dict(custom_parameters or {}),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": stream_sid,
    }


def media_message(
    *, stream_sid: str, sequence_number: int, chunk: int, timestamp_ms: int, payload: bytes
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(sequence_number),
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "streamSid": stream_sid,
    }


def stop_message(*, stream_sid: str, call_sid: str, account_sid: str, sequence_number: int) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": str(sequence_number),
        "stop": {"accountSid": account_sid, "callSid": call_sid},
        "streamSid": stream_sid,
    }
