"""Build official Google Speech clients for real Google or for the local emulator.

Emulator convention (like ``PUBSUB_EMULATOR_HOST``): when ``SPEECH_EMULATOR_HOST``
is set (``host:port``), or an explicit endpoint override is given, clients talk
to that address over an **insecure** channel and need no credentials. Only
loopback addresses are accepted for insecure channels, so a typo can never send
unauthenticated audio across a network.

The returned objects are the unmodified ``google-cloud-speech`` clients
(``speech_v1.SpeechClient``, ``speech_v2.SpeechClient`` and their async twins).

Google's own clients ignore ``SPEECH_EMULATOR_HOST``. To point any official client
(your own code, Google's samples) at the emulator, give it an insecure-channel
transport; that one line is the whole recipe (``INSECURE_CHANNEL_RECIPE``)::

    import grpc
    from google.cloud import speech_v1, speech_v2
    from google.cloud.speech_v1.services.speech import transports as t1
    from google.cloud.speech_v2.services.speech import transports as t2
    HOST = "127.0.0.1:50051"
    speech_v1.SpeechClient(transport=t1.SpeechGrpcTransport(channel=grpc.insecure_channel(HOST)))
    speech_v2.SpeechClient(transport=t2.SpeechGrpcTransport(channel=grpc.insecure_channel(HOST)))
    speech_v1.SpeechAsyncClient(transport=t1.SpeechGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(HOST)))
    speech_v2.SpeechAsyncClient(transport=t2.SpeechGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(HOST)))

No credentials are needed (a transport built on a channel never looks them up).
``emulator_client(HOST, api=..., asynchronous=...)`` does the same, plus the
loopback check and our keep-alive options.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import grpc

EMULATOR_ENV = "SPEECH_EMULATOR_HOST"
# gRPC metadata naming the recognition session a stream belongs to (the emulator's scripted
# transcripts are counted per session; our STT service sends one value per call, kept across
# reconnects). The one definition: everything else imports it.
SESSION_METADATA_KEY = "x-rxdrain-session"
Api = Literal["v1", "v2"]


def insecure_channel_recipe(address: str = "127.0.0.1:50051") -> str:
    """The lines that point Google's official clients (sync/async, v1/v2) at the emulator at ``address``."""
    return INSECURE_CHANNEL_RECIPE.replace("127.0.0.1:50051", address)


INSECURE_CHANNEL_RECIPE = """\
import grpc
from google.cloud import speech_v1, speech_v2
from google.cloud.speech_v1.services.speech import transports as t1
from google.cloud.speech_v2.services.speech import transports as t2
HOST = "127.0.0.1:50051"
speech_v1.SpeechClient(transport=t1.SpeechGrpcTransport(channel=grpc.insecure_channel(HOST)))
speech_v2.SpeechClient(transport=t2.SpeechGrpcTransport(channel=grpc.insecure_channel(HOST)))
speech_v1.SpeechAsyncClient(transport=t1.SpeechGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(HOST)))
speech_v2.SpeechAsyncClient(transport=t2.SpeechGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(HOST)))
"""


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IPs (``127.0.0.0/8``, ``::1``, ``[::1]``); False for anything else.

    The one loopback check of the package: insecure channels, the emulator's bind
    address and the bot's local-only endpoints all use it.
    """
    if not host:
        return False
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def emulator_host(override: str | None = None) -> str | None:
    """The emulator address to use: ``override`` if given, else ``$SPEECH_EMULATOR_HOST``, else None."""
    host = override if override else os.environ.get(EMULATOR_ENV, "").strip()
    return host or None


def regional_endpoint(location: str) -> str | None:
    """Google's endpoint for ``location`` (None means the library default, the global endpoint)."""
    if not location or location == "global":
        return None
    return f"{location}-speech.googleapis.com"


def _check_loopback(target: str) -> None:
    if is_loopback_host(target.rsplit(":", 1)[0]):
        return
    raise ValueError(
        f"refusing an insecure (credential-less) Speech channel to {target!r}: "
        "emulator addresses must be loopback (127.0.0.0/8, ::1 or localhost)"
    )


def _check_target(target: str) -> str:
    if ":" not in target or not target.rsplit(":", 1)[1].isdigit():
        raise ValueError(f"emulator address must be host:port, got {target!r}")
    _check_loopback(target)
    return target


# Keep-alive and message-size options shared by every channel we open. Pings let
# a dead peer surface as UNAVAILABLE within seconds instead of hanging.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # gRPC waits for a keep-alive ping's ack for this long (default 60 s), not for keepalive_timeout_ms:
    # without it a frozen server (SIGSTOP) went undetected for a whole 20 s freeze (docs/fault-matrix.md).
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Reconnect timing is ours: gRPC's default channel backoff (1 s, x1.6, up to 120 s) stacked
    # on the session's own turned a 2 s outage into ~6 s of deafness. The channel retries the
    # connection within a second; the session opens its next stream as soon as it is READY.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


@dataclass(frozen=True)
class ClientTarget:
    """Where a client connects: the emulator (insecure loopback) or Google (credentials)."""

    emulator: str | None
    endpoint: str | None

    @property
    def is_emulator(self) -> bool:
        return self.emulator is not None

    def describe(self) -> str:
        if self.emulator:
            return f"emulator at {self.emulator}"
        return f"Google at {self.endpoint or 'speech.googleapis.com'}"


def resolve_target(*, location: str = "global", endpoint: str | None = None) -> ClientTarget:
    """Decide where to connect. ``endpoint`` overrides everything; the emulator env var comes next."""
    if endpoint:
        # An explicit override pointing at loopback is treated as an emulator.
        try:
            _check_loopback(endpoint)
            return ClientTarget(emulator=_check_target(endpoint), endpoint=None)
        except ValueError:
            return ClientTarget(emulator=None, endpoint=endpoint)
    host = emulator_host()
    if host:
        return ClientTarget(emulator=_check_target(host), endpoint=None)
    return ClientTarget(emulator=None, endpoint=regional_endpoint(location))


def insecure_channel(target: str, *, asynchronous: bool = False, options=CHANNEL_OPTIONS):
    _check_target(target)
    opts = list(options)
    if asynchronous:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.insecure_channel(target, options=opts)


def build_speech_client(
    *,
    api: Api = "v2",
    asynchronous: bool = False,
    target: ClientTarget | None = None,
    credentials: Any = None,
    location: str = "global",
    endpoint: str | None = None,
):
    """Return an official Speech client for ``api`` ("v1"/"v2").

    Emulator target: an insecure loopback channel, ``credentials`` ignored.
    Google target: ``credentials`` (google-auth credentials) and the regional
    endpoint for ``location``.
    """
    if api not in ("v1", "v2"):
        raise ValueError(f"api must be 'v1' or 'v2', got {api!r}")
    target = target or resolve_target(location=location, endpoint=endpoint)
    # The v1 and v2 packages mirror each other (same class names), so pick the modules by name.
    speech: ModuleType = importlib.import_module(f"google.cloud.speech_{api}")
    transports: ModuleType = importlib.import_module(f"google.cloud.speech_{api}.services.speech.transports")
    AsyncTransport, SyncTransport = transports.SpeechGrpcAsyncIOTransport, transports.SpeechGrpcTransport
    client_cls = speech.SpeechAsyncClient if asynchronous else speech.SpeechClient
    if target.emulator is not None:
        channel = insecure_channel(target.emulator, asynchronous=asynchronous)
        transport = (AsyncTransport if asynchronous else SyncTransport)(channel=channel)
        return client_cls(transport=transport)
    # Build the channel ourselves so Google's gets the same keep-alive and reconnect options
    # as the emulator's (the library's default channel has gRPC's default reconnect backoff).
    transport_cls = AsyncTransport if asynchronous else SyncTransport
    host = target.endpoint or getattr(client_cls, "DEFAULT_ENDPOINT", None) or "speech.googleapis.com"
    if ":" not in host:
        host += ":443"
    channel = transport_cls.create_channel(
        host,
        credentials=credentials,
        options=[*CHANNEL_OPTIONS, ("grpc.max_send_message_length", -1)],
    )
    return client_cls(transport=transport_cls(host=host, channel=channel))


def emulator_client(address: str | None = None, *, api: Api = "v2", asynchronous: bool = False):
    """Convenience: an official client for the emulator at ``address`` (default ``$SPEECH_EMULATOR_HOST``)."""
    host = emulator_host(address)
    if not host:
        raise ValueError(f"no emulator address: pass one or set {EMULATOR_ENV}=127.0.0.1:<port>")
    return build_speech_client(
        api=api, asynchronous=asynchronous, target=ClientTarget(emulator=_check_target(host), endpoint=None)
    )
