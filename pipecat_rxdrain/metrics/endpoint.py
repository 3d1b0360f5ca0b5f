"""``GET /metrics`` as a plain ASGI app, behind a bearer token.

Mount it on the bot's FastAPI/Starlette app (``app.add_route("/metrics", endpoint)``) or
serve it alone with uvicorn. Without a token the endpoint is off (404), so metrics are
never public by accident; a wrong or missing ``Authorization: Bearer`` gets 401.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .families import MetricsConfigError

TOKEN_ENV = "METRICS_TOKEN"
MIN_TOKEN_BYTES = 16


def _plain(status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> tuple[int, list, bytes]:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    return status, headers + (extra or []), body


class MetricsEndpoint:
    """An ASGI app answering the Prometheus text exposition of ``registry``.

    Guarantees: with no token configured every request gets 404; otherwise only
    ``GET``/``HEAD`` with ``Authorization: Bearer <token>`` (compared in constant time)
    gets the metrics, anything else 401/405. The token never appears in a response or repr.
    """

    def __init__(self, registry: CollectorRegistry, token: str | None) -> None:
        if token is not None and token != "" and len(token.encode()) < MIN_TOKEN_BYTES:
            raise MetricsConfigError(f"{TOKEN_ENV} must be at least {MIN_TOKEN_BYTES} bytes")
        self._registry = registry
        self._expected = f"Bearer {token}".encode() if token else None

    @classmethod
    def from_env(cls, registry: CollectorRegistry, env: Mapping[str, str] | None = None) -> MetricsEndpoint:
        source: Mapping[str, str] = os.environ if env is None else env
        return cls(registry, source.get(TOKEN_ENV) or None)

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def __repr__(self) -> str:
        return f"MetricsEndpoint(enabled={self.enabled})"

    def _authorized(self, scope: dict[str, Any]) -> bool:
        assert self._expected is not None
        given = b""
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                given = value
                break
        return hmac.compare_digest(given, self._expected)

    def respond(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body for one HTTP request scope (the ASGI-free part)."""
        if self._expected is None:
            return _plain(404, "not found\n")
        if scope.get("method") not in ("GET", "HEAD"):
            return _plain(405, "method not allowed\n", [(b"allow", b"GET, HEAD")])
        if not self._authorized(scope):
            return _plain(401, "unauthorized\n", [(b"www-authenticate", b'Bearer realm="metrics"')])
        body = generate_latest(self._registry)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        return 200, headers, body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # websocket/lifespan are not ours to answer
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        status, headers, body = self.respond(scope)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})
