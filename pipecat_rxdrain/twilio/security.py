"""The bot's doors: Twilio webhook signatures and per-call media-stream tokens.

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

from ..clock import Clock

TOKEN_PARAMETER = "token"
#: ``<expiry: up to 12 ASCII digits>.<43 base64url chars>``; anything else is malformed (never parsed further).
_TOKEN_RE = re.compile(r"[0-9]{1,12}\.[A-Za-z0-9_-]{43}")


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
