"""The bot's doors: Twilio webhook signatures and per-call media-stream tokens.

No Pipecat import. Secrets never appear in reprs or in exception messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from typing import Callable, Mapping

from ..clock import Clock

TOKEN_PARAMETER = "token"


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
    for, before its expiry, and at most once (a replayed token is refused while
    it would still be valid, so nobody can open a second stream with it).
    Processes behind a load balancer must share ``secret`` (``MEDIA_TOKEN_SECRET``).
    """

    def __init__(self, secret: bytes | str | None = None, *, ttl_s: float = 120.0, clock: Clock | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"token ttl must be > 0 s, got {ttl_s}")
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._secret = secret or secrets.token_bytes(32)
        if len(self._secret) < 16:
            raise ValueError("MEDIA_TOKEN_SECRET must be at least 16 bytes")
        self.ttl_s = float(ttl_s)
        self._clock: Callable[[], float] = clock or time.time  # wall clock: tokens may cross processes
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MediaTokens(secret=<redacted>, ttl_s={self.ttl_s})"

    def _mac(self, call_sid: str, expiry: int) -> str:
        digest = hmac.new(self._secret, f"{call_sid}|{expiry}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def issue(self, call_sid: str) -> str:
        expiry = int(self._clock() + self.ttl_s)
        return f"{expiry}.{self._mac(call_sid, expiry)}"

    def check(self, call_sid: str, token: str | None) -> str | None:
        """``None`` if the token is good (and now used), else a short reason safe to log."""
        if not token or not isinstance(token, str):
            return "missing token"
        expiry_s, _, mac = token.partition(".")
        if not expiry_s.isdigit() or not mac or len(token) > 200:
            return "malformed token"
        expiry = int(expiry_s)
        if not hmac.compare_digest(mac, self._mac(call_sid, expiry)):
            return "invalid token"
        now = self._clock()
        if now > expiry:
            return "expired token"
        with self._lock:
            for old, exp in list(self._used.items()):
                if exp < now:
                    del self._used[old]
            if token in self._used:
                return "token already used"
            self._used[token] = expiry
        return None


def secret_from_env(name: str = "MEDIA_TOKEN_SECRET") -> bytes | None:
    value = os.environ.get(name)
    return value.encode("utf-8") if value else None
