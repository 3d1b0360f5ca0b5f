"""Bot configuration from the environment, checked completely at start-up.

A setting is a dataclass field declared with :func:`setting` (its environment
variable, its bounds, whether it is a secret). :func:`load_env` parses the
variables and :func:`check_settings` checks every field against its bounds:
NaN, infinities, out-of-range and (where meaningless) zero values are a
:class:`ConfigError` naming the variable, never a bot that starts and then fails
every call. Secrets are kept out of ``repr`` and out of every message.

:class:`ServerConfig` holds what the Twilio server itself needs (its doors and
its limits); an application subclasses it to add its pipeline's settings (see
``examples/twilio_bot/bot.py``). No Pipecat import.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any

from ..google_clients import is_loopback_host

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A configuration problem, reported at start-up (never mid-call). The message names the setting."""


def setting(
    env: str,
    default: Any,
    *,
    kind: type | None = None,
    min: float | None = None,
    max: float | None = None,
    positive: bool = False,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
) -> Any:
    """A dataclass field read from ``env``. ``positive`` means > 0 (zero is meaningless).

    A ``StrEnum`` default makes the setting that enum: its values are the choices, and
    strings (from the environment or a caller) become members.
    """
    if isinstance(default, StrEnum):
        kind, choices = type(default), tuple(m.value for m in type(default))
    meta = {
        "env": env,
        "kind": kind or type(default),
        "min": min,
        "max": max,
        "positive": positive,
        "choices": choices,
        "secret": secret,
    }
    return field(default=default, repr=not secret, metadata=meta)


def _parse(raw: str, kind: type, var: str) -> Any:
    if issubclass(kind, StrEnum):
        return raw.strip()  # made a member (or refused, naming the choices) by check_settings
    if kind is bool:
        v = raw.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{var}: expected a boolean (true/false), got {raw!r}")
    if kind is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise ConfigError(f"{var}: expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise ConfigError(f"{var}: expected a number, got {raw!r}") from None
    return raw


def load_env(cls: type, env: Mapping[str, str] | None = None, **overrides: Any):
    """``cls`` (a dataclass of :func:`setting` fields) from ``env`` (default ``os.environ``), checked.

    ``overrides`` (e.g. command-line flags) win over the environment; ``None`` means "not given".
    """
    env = dict(os.environ if env is None else env)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        var = f.metadata.get("env")
        if var is None:
            continue
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        kwargs[f.name] = _parse(raw, f.metadata["kind"], var)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    config = cls(**kwargs)
    config.validate()
    return config


def check_settings(config: Any) -> None:
    """Check every :func:`setting` field of ``config`` against its declared kind and bounds."""
    for f in fields(config):
        meta = f.metadata
        if "env" not in meta:
            continue
        var, kind, value = meta["env"], meta["kind"], getattr(config, f.name)
        if value is None:
            if f.default is not None and f.default is not MISSING:
                raise ConfigError(f"{var} must be set")
            continue
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{var}: expected a boolean, got {type(value).__name__}")
            continue
        if kind in (int, float):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (kind is int and not isinstance(value, int))
            ):
                raise ConfigError(f"{var}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{var} must be a finite number, got {value!r}")
            if meta["positive"] and value <= 0:
                raise ConfigError(f"{var} must be > 0, got {value!r}")
            if meta["min"] is not None and value < meta["min"]:
                raise ConfigError(f"{var} must be >= {meta['min']:g}, got {value!r}")
            if meta["max"] is not None and value > meta["max"]:
                raise ConfigError(f"{var} must be <= {meta['max']:g}, got {value!r}")
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{var}: expected a string, got {type(value).__name__}")
        if meta["choices"] is not None and value not in meta["choices"]:
            shown = "<redacted>" if meta["secret"] else repr(value)
            raise ConfigError(f"{var} must be one of {', '.join(meta['choices'])}, got {shown}")
        if issubclass(kind, StrEnum):
            setattr(config, f.name, kind(value))


@dataclass
class ServerConfig:
    """What the Twilio Media Streams server needs: where it listens, its doors, its limits.

    Guarantees: :meth:`validate` (run by :func:`load_env`) rejects every value the
    server could not run with, naming the variable; secrets never appear in ``repr``.
    """

    host: str = setting("BOT_HOST", "127.0.0.1")
    port: int = setting("BOT_PORT", 8765, min=0, max=65535)
    public_host: str | None = setting("PUBLIC_HOST", None, kind=str)  # e.g. bot.example.com
    twilio_account_sid: str | None = setting("TWILIO_ACCOUNT_SID", None, kind=str)
    twilio_auth_token: str | None = setting("TWILIO_AUTH_TOKEN", None, kind=str, secret=True)
    media_token_secret: str | None = setting("MEDIA_TOKEN_SECRET", None, kind=str, secret=True)
    media_token_ttl_s: float = setting("MEDIA_TOKEN_TTL_S", 120.0, positive=True, max=86400)
    require_media_token: bool = setting("REQUIRE_MEDIA_TOKEN", True)
    max_message_bytes: int = setting("MAX_MESSAGE_BYTES", 16 * 1024, positive=True)  # larger: counted drops
    ws_max_size: int = setting("WS_MAX_SIZE", 64 * 1024, positive=True)  # larger: the socket is closed (1009)
    start_timeout_s: float = setting("START_TIMEOUT_S", 10.0, positive=True, max=300)
    media_idle_timeout_s: float = setting("MEDIA_IDLE_TIMEOUT_S", 15.0, positive=True, max=3600)
    max_calls: int = setting("MAX_CALLS", 20, positive=True)
    shutdown_grace_s: float = setting("SHUTDOWN_GRACE_S", 8.0, positive=True, max=600)
    # /stats shows caller transcripts: it needs "Authorization: Bearer <STATS_TOKEN>", and is off (404) without one.
    stats_token: str | None = setting("STATS_TOKEN", None, kind=str, secret=True)
    # /metrics (Prometheus) needs "Authorization: Bearer <METRICS_TOKEN>", and is off (404) without one.
    metrics_token: str | None = setting("METRICS_TOKEN", None, kind=str, secret=True)
    max_webhook_bytes: int = setting("MAX_WEBHOOK_BYTES", 64 * 1024, positive=True, max=16 * 1024 * 1024)
    # a request (headers and body) must arrive within this; an idle pre-start socket is closed after it
    request_timeout_s: float = setting("REQUEST_TIMEOUT_S", 10.0, positive=True, max=300)
    # sockets that are not (yet) a call: HTTP requests, keep-alive, websockets before start. Oldest go first.
    max_pending_connections: int = setting("MAX_PENDING_CONNECTIONS", 256, positive=True, max=100_000)
    log_level: str = setting("LOG_LEVEL", "INFO", choices=LOG_LEVELS)
    # a MetricsFrame with RX and STT numbers each second per call, and Pipecat's own metrics (enable_metrics)
    pipeline_metrics: bool = setting("PIPELINE_METRICS", False)
    # processes serving this port (see pipecat_rxdrain.twilio.workers); 0 (the default) = one per core.
    # Without MEDIA_TOKEN_SECRET the workers of one machine share a random secret their supervisor makes.
    workers: int = setting("WORKERS", 0, min=0, max=256)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any):
        """The settings from ``env`` (default ``os.environ``), checked; see :func:`load_env`."""
        return load_env(cls, env, **overrides)

    def validate(self) -> None:
        if isinstance(self.log_level, str):
            self.log_level = self.log_level.upper()
        check_settings(self)
        if self.ws_max_size < self.max_message_bytes:
            raise ConfigError("WS_MAX_SIZE must be >= MAX_MESSAGE_BYTES")
        if self.public_host and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", self.public_host):
            raise ConfigError(f"PUBLIC_HOST must be a host name like bot.example.com, got {self.public_host!r}")
        if self.media_token_secret is not None and len(self.media_token_secret.encode()) < 16:
            raise ConfigError("MEDIA_TOKEN_SECRET must be at least 16 bytes")
        if self.stats_token is not None and len(self.stats_token.encode()) < 16:
            raise ConfigError("STATS_TOKEN must be at least 16 bytes")
        if self.metrics_token is not None and len(self.metrics_token.encode()) < 16:
            raise ConfigError("METRICS_TOKEN must be at least 16 bytes")


def check_google_credentials(
    *, emulator_host: str | None, credentials_json: str | None, credentials_path: str | None
) -> str | None:
    """``None`` if Speech-to-Text can authenticate (or uses the emulator), else a clear message.

    A service-account key (``GOOGLE_CREDENTIALS_JSON`` or the file named by
    ``GOOGLE_APPLICATION_CREDENTIALS``) is parsed *and loaded* here, so a
    malformed key fails at start-up, not on every call. Messages never quote the key.
    """
    if emulator_host:
        host, _, port = emulator_host.rpartition(":")
        if not port.isdigit() or not is_loopback_host(host):
            return (
                f"SPEECH_EMULATOR_HOST must be a loopback host:port like 127.0.0.1:50051 "
                f"(the emulator channel has no TLS and no credentials), got {emulator_host!r}"
            )
        return None
    if credentials_json:
        try:
            info = json.loads(credentials_json)
        except ValueError:
            return "GOOGLE_CREDENTIALS_JSON is not valid JSON"
        return _check_key_info(info, "GOOGLE_CREDENTIALS_JSON")
    if credentials_path:
        try:
            with open(credentials_path, encoding="utf-8") as f:
                info = json.load(f)
        except OSError as e:
            return f"GOOGLE_APPLICATION_CREDENTIALS: cannot read {credentials_path}: {e.strerror}"
        except ValueError:
            return f"GOOGLE_APPLICATION_CREDENTIALS: {credentials_path} is not a JSON key file"
        return _check_key_info(info, f"GOOGLE_APPLICATION_CREDENTIALS ({credentials_path})")
    try:
        import google.auth
        from google.auth.exceptions import GoogleAuthError

        _, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except GoogleAuthError:
        return (
            "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, "
            "GOOGLE_CREDENTIALS_JSON to its contents, or SPEECH_EMULATOR_HOST=127.0.0.1:PORT for the local emulator"
        )
    if not project:
        return "Google credentials found but no project id (set GOOGLE_CLOUD_PROJECT)"
    return None


def _check_key_info(info: Any, name: str) -> str | None:
    if not isinstance(info, dict) or not info.get("project_id"):
        return f"{name} has no project_id"
    if info.get("type", "service_account") != "service_account":
        return None  # e.g. authorized_user: google-auth loads it on first use
    try:
        from google.oauth2 import service_account

        service_account.Credentials.from_service_account_info(info)
    except Exception as e:
        return f"{name} is not a usable service-account key ({type(e).__name__})"
    return None
