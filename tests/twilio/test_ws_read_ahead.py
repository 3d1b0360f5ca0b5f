"""ReadAheadWebSocketProtocol on a real uvicorn (127.0.0.1) with a real websockets client."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi import FastAPI, WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.sync.client import connect

from pipecat_rxdrain.twilio.ws_read_ahead import ReadAheadWebSocketProtocol, read_ahead_ws_protocol
from tests.helpers.loopback_server import UvicornThread


def observed(base):
    """``base`` with its transport's pause/resume counted and the ``read_paused`` flag checked on every message."""

    class Observed(base):
        instances: list = []
        pauses = 0
        mismatches = 0  # read_paused disagreeing with the transport's real state
        max_queued = 0

        def connection_made(self, transport) -> None:
            cls = type(self)
            cls.instances.append(self)
            pause = transport.pause_reading

            def counted_pause() -> None:
                cls.pauses += 1
                pause()

            transport.pause_reading = counted_pause
            super().connection_made(transport)

        def send_receive_event_to_app(self) -> None:
            super().send_receive_event_to_app()
            cls = type(self)
            cls.max_queued = max(cls.max_queued, self.queue.qsize())
            if self.read_paused == self.transport.is_reading():
                cls.mismatches += 1

    Observed.instances = []
    return Observed


def reading_app(start_after_s: float = 0.0) -> tuple[FastAPI, dict]:
    app, seen = FastAPI(), {"texts": [], "done": threading.Event()}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        await asyncio.sleep(start_after_s)
        try:
            async for text in websocket.iter_text():
                seen["texts"].append(text)
                if text == "last":
                    await websocket.send_text(json.dumps(len(seen["texts"])))
        finally:
            seen["done"].set()

    return app, seen


def send(port: int, n: int, gap_s: float) -> int:
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, close_timeout=2) as ws:
        for i in range(n):
            ws.send(f"m{i:05d}")
            if gap_s:
                time.sleep(gap_s)
        ws.send("last")
        return json.loads(ws.recv(timeout=10))


def test_the_bot_server_and_any_uvicorn_app_get_the_read_ahead_protocol():
    assert read_ahead_ws_protocol() is ReadAheadWebSocketProtocol
    assert issubclass(ReadAheadWebSocketProtocol, WebSocketsSansIOProtocol)


def test_reading_pauses_only_above_ws_max_queue_not_after_every_message():
    """Messages spaced like a media stream: uvicorn's protocol pauses on nearly each one, ours never (the app keeps up)."""
    counts = {}
    for name, base in (("uvicorn", WebSocketsSansIOProtocol), ("read_ahead", ReadAheadWebSocketProtocol)):
        proto = observed(base)
        app, seen = reading_app()
        with UvicornThread(app, ws=proto) as server:
            assert send(server.port, 200, gap_s=0.002) == 201
            assert seen["texts"][:-1] == [f"m{i:05d}" for i in range(200)]
        counts[name] = proto.pauses
        assert proto.mismatches == 0
    assert counts["uvicorn"] >= 100, counts  # the cost this protocol removes (fails if uvicorn stops pausing per message)
    assert counts["read_ahead"] <= 5, counts


def test_a_reader_that_falls_behind_pauses_the_socket_and_gets_every_message_in_order():
    proto = observed(ReadAheadWebSocketProtocol)
    app, seen = reading_app(start_after_s=1.0)  # the app reads nothing for 1 s
    with UvicornThread(app, ws=proto, ws_max_queue=8) as server:
        result: dict = {}
        sender = threading.Thread(target=lambda: result.update(n=send(server.port, 400, gap_s=0.001)), daemon=True)
        sender.start()
        deadline = time.monotonic() + 0.8
        while not proto.instances and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(max(0.0, deadline - time.monotonic()))
        (protocol,) = proto.instances
        # While the app is not reading: the socket is not read either, and only about ws_max_queue messages wait.
        assert protocol.read_paused and not protocol.transport.is_reading()
        assert 8 <= protocol.queue.qsize() <= 8 + 50, protocol.queue.qsize()
        sender.join(15)
        assert not sender.is_alive()
    assert result["n"] == 401
    assert seen["texts"][:-1] == [f"m{i:05d}" for i in range(400)]
    assert proto.pauses >= 1 and proto.mismatches == 0


@pytest.mark.parametrize("paused", [False, True])
def test_the_server_closes_cleanly_whether_or_not_reading_is_paused(paused):
    """uvicorn's close handshake resumes reading only if ``read_paused`` says it was paused."""
    proto = observed(ReadAheadWebSocketProtocol)
    app, closed = FastAPI(), threading.Event()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        await asyncio.sleep(0.5)  # the client's messages pile up (over ws_max_queue=4 if paused)
        await websocket.close(code=4000)
        closed.set()

    with UvicornThread(app, ws=proto, ws_max_queue=4) as server:
        with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, close_timeout=2) as client:
            for i in range(20 if paused else 2):
                client.send(f"m{i}")
            t0 = time.monotonic()
            with pytest.raises(Exception) as info:
                while True:
                    client.recv(timeout=5)
            took = time.monotonic() - t0
        assert getattr(info.value, "rcvd", None) is not None and info.value.rcvd.code == 4000, info.value
        assert closed.wait(5)
        assert took < 3.0  # not uvicorn's close timeout: the server read the client's close reply
        (protocol,) = proto.instances
        assert protocol.read_paused is False or protocol.transport.is_closing()
    assert proto.mismatches == 0
    assert (proto.pauses >= 1) is paused
