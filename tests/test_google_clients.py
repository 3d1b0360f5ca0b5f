"""The shared client builder: emulator vs Google routing, the loopback-only guard, and our channel options
(reconnect timing is ours, on Google's channels too)."""

import asyncio

import pytest

from pipecat_rxdrain.google_clients import (
    CHANNEL_OPTIONS,
    EMULATOR_ENV,
    ClientTarget,
    build_speech_client,
    emulator_client,
    regional_endpoint,
    resolve_target,
)


def test_regional_endpoint():
    assert regional_endpoint("global") is None
    assert regional_endpoint("us-central1") == "us-central1-speech.googleapis.com"


def test_env_var_selects_emulator(monkeypatch):
    monkeypatch.setenv(EMULATOR_ENV, "127.0.0.1:50051")
    target = resolve_target(location="us-central1")
    assert target.is_emulator and target.emulator == "127.0.0.1:50051"


def test_without_env_var_google_regional(monkeypatch):
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    target = resolve_target(location="us-central1")
    assert not target.is_emulator
    assert target.endpoint == "us-central1-speech.googleapis.com"


def test_loopback_endpoint_override_is_emulator(monkeypatch):
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    assert resolve_target(endpoint="localhost:1234").emulator == "localhost:1234"
    assert resolve_target(endpoint="[::1]:1234").emulator == "[::1]:1234"
    # A non-loopback override is a (secure) Google-style endpoint, never an insecure channel.
    target = resolve_target(endpoint="eu-speech.googleapis.com")
    assert not target.is_emulator and target.endpoint == "eu-speech.googleapis.com"


@pytest.mark.parametrize("bad", ["10.0.0.5:50051", "192.168.1.2:1", "8.8.8.8:443", "example.com:50051"])
def test_insecure_channel_refuses_non_loopback(monkeypatch, bad):
    monkeypatch.setenv(EMULATOR_ENV, bad)
    with pytest.raises(ValueError, match="loopback"):
        resolve_target()


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:port"])
def test_emulator_address_needs_port(bad):
    with pytest.raises(ValueError, match="host:port"):
        emulator_client(bad)


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_emulator_clients_are_official_and_need_no_credentials(monkeypatch, api, asynchronous):
    # No ADC on this machine: building must not consult google.auth at all.
    # (async so that a grpc.aio channel has a running loop to bind to)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    client = build_speech_client(api=api, asynchronous=asynchronous, target=ClientTarget("127.0.0.1:9", None))
    assert type(client).__module__.startswith(f"google.cloud.speech_{api}")
    if asynchronous:
        await client.transport.close()
    else:
        client.transport.close()


def test_bad_api_rejected():
    with pytest.raises(ValueError, match="api must be"):
        build_speech_client(api="v3", target=ClientTarget("127.0.0.1:9", None))


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", True), ("127.5.6.7", True), ("::1", True), ("[::1]", True), ("localhost", True),
        ("LOCALHOST", True), (" 127.0.0.1 ", True),
        ("0.0.0.0", False), ("10.0.0.1", False), ("::", False), ("example.com", False), ("localhost.evil.com", False),
        ("", False), (None, False), ("127.0.0.1:50051", False),
    ],
)
def test_is_loopback_host(host, expected):
    from pipecat_rxdrain.google_clients import is_loopback_host

    assert is_loopback_host(host) is expected


def test_the_session_key_is_one_constant():
    from pipecat_rxdrain import emulator, google_clients

    assert emulator.SESSION_METADATA_KEY is google_clients.SESSION_METADATA_KEY == "x-rxdrain-session"


def test_insecure_channel_recipe_names_the_address():
    from pipecat_rxdrain.google_clients import insecure_channel_recipe

    text = insecure_channel_recipe("127.0.0.1:9999")
    assert 'HOST = "127.0.0.1:9999"' in text and "50051" not in text
    compile(text, "<recipe>", "exec")  # it is valid Python


def test_channel_options_own_the_reconnect_timing():
    opts = dict(CHANNEL_OPTIONS)
    # gRPC's defaults (1 s initial, up to 120 s) stacked on the session's backoff: ~6 s deaf for a 2 s outage.
    assert opts["grpc.initial_reconnect_backoff_ms"] <= 250 and opts["grpc.max_reconnect_backoff_ms"] <= 1000
    assert opts["grpc.keepalive_time_ms"] <= 10_000
    # a keep-alive ping is given up on after ping_timeout_ms (gRPC default 60 s), so that bounds detection too
    assert opts["grpc.http2.ping_timeout_ms"] <= opts["grpc.keepalive_timeout_ms"]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_google_clients_are_built_on_our_channel_without_connecting(monkeypatch, asynchronous):
    """Building connects nowhere (gRPC channels connect lazily), so this needs no network."""
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.delenv("SPEECH_EMULATOR_HOST", raising=False)

    def build():
        return build_speech_client(api="v2", asynchronous=asynchronous, credentials=AnonymousCredentials(),
                                   location="us-central1")

    if asynchronous:
        async def main():
            client = build()
            assert type(client).__name__ == "SpeechAsyncClient"
            assert client.transport._host == "us-central1-speech.googleapis.com:443"
            await client.transport.grpc_channel.close()

        asyncio.run(main())
    else:
        client = build()
        assert type(client).__name__ == "SpeechClient"
        assert client.transport._host == "us-central1-speech.googleapis.com:443"
        client.transport.grpc_channel.close()
