"""The bot's doors: Twilio webhook signatures, the public URL they are checked against, per-call media tokens.

No Pipecat import. Secrets never appear in reprs or in exception messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from ..clock import Clock

TOKEN_PARAMETER = "token"
#: ``<expiry: up to 12 ASCII digits>.<43 base64url chars>``; anything else is malformed (never parsed further).
_TOKEN_RE = re.compile(r"[0-9]{1,12}\.[A-Za-z0-9_-]{43}")


#: a host name (labels of letters, digits and inner hyphens; ``_`` tolerated for internal names) or an IPv4
#: address, or a bracketed IPv6 address, each with an optional port. Anything else is not a host.
_HOST_RE = re.compile(
    r"(?:(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
    r"|\[[0-9A-Fa-f:.]{2,45}\])(?::([0-9]{1,5}))?"
)
#: one ``name=value`` pair of an RFC 7239 ``Forwarded`` element (value a token or a quoted string)
_FORWARDED_PAIR_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')
_SCHEMES = ("http", "https")


def is_host(value: str) -> bool:
    """True for ``host[:port]`` as it may appear in a URL's authority (at most 255 characters, port <= 65535)."""
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        return False
    m = _HOST_RE.fullmatch(value)
    return m is not None and (m.group(1) is None or int(m.group(1)) <= 65535)


def _first_entry(header: str | None) -> str:
    """The first (client-side) entry of a comma-separated list header, stripped."""
    return (header or "").split(",", 1)[0].strip()


def _forwarded_first(header: str | None) -> dict[str, str] | None:
    """The pairs of the first element of an RFC 7239 ``Forwarded`` header; ``None`` if absent or malformed."""
    if not header:
        return None
    pairs: dict[str, str] = {}
    pos = 0
    while pos < len(header):
        m = _FORWARDED_PAIR_RE.match(header, pos)
        if m is None:
            return None
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        pairs[m.group(1).lower()] = value
        pos = m.end()
        if pos < len(header) and header[pos] == ";":
            pos += 1
        elif pos < len(header) and header[pos] == ",":
            break  # the next element is the next proxy's: only the first is the client's
        elif pos < len(header):
            return None
    return pairs


class ForwardedSource(StrEnum):
    """Where :func:`public_origin` took the host from."""

    PUBLIC_HOST = "public_host"
    FORWARDED = "forwarded"
    X_FORWARDED = "x_forwarded"
    HOST = "host"


@dataclass(frozen=True)
class PublicOrigin:
    """The scheme and host a client (Twilio) used to reach the bot, as a proxy in front reported them.

    ``rejected`` names the forwarded headers that were present but not a host/scheme (they were ignored).
    """

    scheme: str  # "http" or "https"
    host: str | None  # None: no valid host anywhere (the signature check then fails)
    host_source: ForwardedSource
    rejected: tuple[str, ...] = ()

    def url(self, path: str, query: str = "", *, websocket: bool = False) -> str | None:
        """The public URL of ``path`` (``ws``/``wss`` for a websocket), or ``None`` without a valid host."""
        if self.host is None:
            return None
        scheme = {"http": "ws", "https": "wss"}[self.scheme] if websocket else self.scheme
        return f"{scheme}://{self.host}{path}{'?' + query if query else ''}"


def public_origin(headers: Mapping[str, str], scheme: str, public_host: str | None = None) -> PublicOrigin:
    """The origin Twilio called, from the request's ``headers`` (lower-case names) and its own ``scheme``.

    Host: ``public_host`` (``PUBLIC_HOST``) if set; else the ``host=`` of the first element of
    ``Forwarded`` (RFC 7239); else the first (client-side) entry of ``X-Forwarded-Host``; else
    ``Host``. Scheme: ``https`` with ``public_host``; else ``proto=`` of the first ``Forwarded``
    element; else the first entry of ``X-Forwarded-Proto``; else ``scheme``. A forwarded value
    that is not a host (or not ``http``/``https``) is ignored, named in ``rejected``, and the
    next source is used: the signature check then runs against that URL (and fails for a URL
    Twilio did not sign). Never raises on any header value.

    Trust: any peer may send these headers. They only choose which URL the signature is checked
    against (the HMAC still needs the auth token), so a forged one can at most replay a genuine
    signature made for another public URL of the same Twilio account: set ``PUBLIC_HOST`` to pin it.
    """
    rejected: list[str] = []
    forwarded = None
    raw_forwarded = headers.get("forwarded")
    if raw_forwarded:
        forwarded = _forwarded_first(raw_forwarded)
        if forwarded is None:
            rejected.append("forwarded")
            forwarded = {}
    forwarded = forwarded or {}

    if public_host:
        return PublicOrigin("https", public_host, ForwardedSource.PUBLIC_HOST, tuple(rejected))

    proto = None
    if "proto" in forwarded:
        if forwarded["proto"].lower() in _SCHEMES:
            proto = forwarded["proto"].lower()
        else:
            rejected.append("forwarded proto")
    if proto is None and headers.get("x-forwarded-proto"):
        first = _first_entry(headers.get("x-forwarded-proto")).lower()
        if first in _SCHEMES:
            proto = first
        else:
            rejected.append("x-forwarded-proto")
    if proto is None:
        proto = scheme if scheme in _SCHEMES else {"ws": "http", "wss": "https"}.get(scheme, "http")

    host, source = None, ForwardedSource.HOST
    if "host" in forwarded:
        if is_host(forwarded["host"]):
            host, source = forwarded["host"], ForwardedSource.FORWARDED
        else:
            rejected.append("forwarded host")
    if host is None and headers.get("x-forwarded-host"):
        first = _first_entry(headers.get("x-forwarded-host"))
        if is_host(first):
            host, source = first, ForwardedSource.X_FORWARDED
        else:
            rejected.append("x-forwarded-host")
    if host is None:
        own = (headers.get("host") or "").strip()
        host = own if is_host(own) else None
    return PublicOrigin(proto, host, source, tuple(rejected))


class WebhookVerifier:
    """Checks ``X-Twilio-Signature`` with the ``twilio`` library's ``RequestValidator``.

    Guarantees: ``verify`` is False for a missing signature, a forged one, and a
    genuine signature replayed against any URL other than ``url`` (Twilio signs
    the full public URL plus the sorted POST parameters).
    """

    def __init__(self, auth_token: str) -> None:
        if not auth_token:
            raise ValueError("an auth token is required to verify Twilio webhooks")
        from twilio.request_validator import RequestValidator

        self._validator = RequestValidator(auth_token)

    def __repr__(self) -> str:
        return "WebhookVerifier(auth_token=<redacted>)"

    def verify(self, url: str, params: Mapping[str, str], signature: str | None) -> bool:
        if not signature:
            return False
        try:
            return bool(self._validator.validate(url, dict(params), signature))
        except Exception:
            return False

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """The signature Twilio would send (for the caller simulator and tests)."""
        return self._validator.compute_signature(url, dict(params))


class MediaTokens:
    """Per-call tokens for the media websocket: issued by ``/twiml``, checked on ``start``.

    A token is ``<expiry>.<HMAC-SHA256(secret, call_sid|expiry)>`` (base64url).
    Guarantees: ``check`` accepts a token only for the call SID it was issued
    for, before its expiry, and at most one stream per call SID (a replayed token,
    or a second token from a replayed webhook, is refused while it would still be
    valid, so nobody can open a second stream for a call). ``issue`` answers one
    webhook per call SID per ``ttl_s`` (a replayed signed webhook gets ``None``).
    Malformed tokens (any shape but ``_TOKEN_RE``, non-ASCII included) are refused
    without parsing. Memory is bounded: at most ``max_tracked`` call SIDs are remembered.
    Processes behind a load balancer must share ``secret`` (``MEDIA_TOKEN_SECRET``);
    replay tracking is per process.
    """

    def __init__(
        self,
        secret: bytes | str | None = None,
        *,
        ttl_s: float = 120.0,
        clock: Clock | None = None,
        max_tracked: int = 100_000,
    ) -> None:
        if not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
            raise ValueError(f"token ttl must be a finite number > 0 s, got {ttl_s}")
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._secret = secret or secrets.token_bytes(32)
        if len(self._secret) < 16:
            raise ValueError("MEDIA_TOKEN_SECRET must be at least 16 bytes")
        self.ttl_s = float(ttl_s)
        self._clock: Callable[[], float] = clock or time.time  # wall clock: tokens may cross processes
        self._max_tracked = max_tracked
        self._issued: OrderedDict[str, float] = OrderedDict()  # call SID -> expiry of its webhook answer
        self._streamed: OrderedDict[str, float] = OrderedDict()  # call SID -> expiry of its (used) token
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MediaTokens(secret=<redacted>, ttl_s={self.ttl_s})"

    def _mac(self, call_sid: str, expiry: int) -> str:
        digest = hmac.new(self._secret, f"{call_sid}|{expiry}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def _remember(self, table: OrderedDict[str, float], call_sid: str, expiry: float, now: float) -> bool:
        """Record ``call_sid`` until ``expiry``; False if it is already recorded and not expired."""
        while table:
            oldest, exp = next(iter(table.items()))
            if exp >= now and len(table) < self._max_tracked:
                break
            table.popitem(last=False)
        if call_sid in table:
            return False
        table[call_sid] = expiry
        return True

    def issue(self, call_sid: str) -> str | None:
        """A token for ``call_sid``, or ``None`` if one was already issued for it within ``ttl_s`` (a replay)."""
        now = self._clock()
        expiry = int(now + self.ttl_s)
        with self._lock:
            if not self._remember(self._issued, call_sid, expiry, now):
                return None
        return f"{expiry}.{self._mac(call_sid, expiry)}"

    def check(self, call_sid: str, token: str | None) -> str | None:
        """``None`` if the token is good (and now used), else a short reason safe to log."""
        if not token or not isinstance(token, str):
            return "missing token"
        if len(token) > 64 or not _TOKEN_RE.fullmatch(token):
            return "malformed token"
        expiry_s, _, mac = token.partition(".")
        expiry = int(expiry_s)
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(call_sid, expiry).encode("ascii")):
            return "invalid token"
        now = self._clock()
        if now > expiry:
            return "expired token"
        with self._lock:
            if not self._remember(self._streamed, call_sid, expiry, now):
                return "call already streamed"
        return None
