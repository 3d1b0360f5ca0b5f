"""Reconnect timing is ours: the channels we build carry our reconnect/keep-alive options, Google's too."""

from __future__ import annotations

import asyncio

import pytest

from pipecat_rxdrain.google_clients import CHANNEL_OPTIONS, build_speech_client


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
