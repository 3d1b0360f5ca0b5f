"""ReadAheadWebSocketProtocol on a real uvicorn (127.0.0.1) with a real websockets client."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi import FastAPI, WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pipecat_rxdrain.twilio.server import BotServer, create_app
from pipecat_rxdrain.twilio.ws_read_ahead import ReadAheadWebSocketProtocol, read_ahead_ws_protocol
from tests.helpers.bot_harness import make_config
from tests.helpers.loopback_server import UvicornThread


def observed(base):
    """``base`` with its transport's pause/resume counted and the ``read_paused`` flag checked on every message."""

    class Observed(base):
        instances: list = []  # noqa: RUF012 - one class per test
        pauses = 0
        mismatches = 0  # read_paused disagreeing with the transport's real state
        max_queued = 0
        after_close = 0  # messages that arrived after the app closed (the base discards them)

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
            cls = type(self)
            cls.after_close += self.close_sent
            super().send_receive_event_to_app()
            cls.max_queued = max(cls.max_queued, self.queue.qsize())
            if self.read_paused == self.transport.is_reading():
                cls.mismatches += 1

    return Observed


def reading_app(start_after_s: float = 0.0) -> tuple[FastAPI, dict]:
    app, seen = FastAPI(), {"texts": []}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        await asyncio.sleep(start_after_s)
        async for text in websocket.iter_text():
            seen["texts"].append(text)
            if text == "last":
                await websocket.send_text(json.dumps(len(seen["texts"])))

    return app, seen


def send(port: int, n: int, gap_s: float, size: int = 0) -> int:
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, close_timeout=2) as ws:
        for i in range(n):
            ws.send(f"m{i:05d}".ljust(size, "."))
            if gap_s:
                time.sleep(gap_s)
        ws.send("last")
        return json.loads(ws.recv(timeout=10))


def test_the_bot_server_runs_the_read_ahead_protocol():
    cfg = make_config()
    server = BotServer(cfg, create_app(cfg, lambda call: []))
    assert server._server.config.ws is read_ahead_ws_protocol() is ReadAheadWebSocketProtocol
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


def settled_queue(proto, at_least: int, timeout_s: float = 8.0):
    """The one connection's protocol once its queue holds ``at_least`` and stopped growing for 0.2 s (bounded)."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if proto.instances:
            n = proto.instances[0].queue.qsize()
            if n != last:
                last, since = n, time.monotonic()
            elif n >= at_least and time.monotonic() - since >= 0.2:
                return proto.instances[0]
        time.sleep(0.01)
    raise AssertionError(f"queue did not settle: {last} queued, {len(proto.instances)} connection(s)")


@pytest.mark.parametrize("size", [0, 1000])
def test_a_reader_that_falls_behind_pauses_the_socket_and_gets_every_message_in_order(size):
    """Paused at ws_max_queue=8 messages (small messages), or at ws_max_size=4000 bytes (1000-byte messages, ws_max_queue=32)."""
    proto = observed(ReadAheadWebSocketProtocol)
    app, seen = reading_app(start_after_s=3.0)  # the app reads nothing for 3 s
    with UvicornThread(app, ws=proto, ws_max_queue=32 if size else 8, ws_max_size=4000) as server:
        result: dict = {}
        sender = threading.Thread(target=lambda: result.update(n=send(server.port, 400, 0.001, size)), daemon=True)
        sender.start()
        protocol = settled_queue(proto, at_least=4 if size else 8)
        # While the app is not reading, the socket is not read either: far fewer than the 400 sent wait.
        assert protocol.read_paused and not protocol.transport.is_reading()
        assert protocol.queue.qsize() < 200, protocol.queue.qsize()
        if size:
            assert protocol.queue.qsize() < 32  # the byte bound paused it, not the count
        sender.join(20)
        assert not sender.is_alive()
    assert result["n"] == 401
    assert seen["texts"][:-1] == [f"m{i:05d}".ljust(size, ".") for i in range(400)]
    assert proto.pauses >= 1 and proto.mismatches == 0


@pytest.mark.parametrize("paused", [False, True])
def test_the_server_closes_cleanly_whether_or_not_reading_is_paused(paused):
    """uvicorn's close handshake resumes reading only if ``read_paused`` says it was paused.

    Paused: messages still unread in the socket when the app closes reach the protocol after the close
    (``after_close``); it must not pause again for them, or the client's close reply is never read.
    """
    proto = observed(ReadAheadWebSocketProtocol)
    app, go, closed = FastAPI(), threading.Event(), threading.Event()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        await asyncio.to_thread(go.wait, 10)
        await websocket.close(code=4000)
        closed.set()

    with UvicornThread(app, ws=proto, ws_max_queue=4) as server:
        with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, close_timeout=2) as client:
            if paused:
                for i in range(20):
                    client.send(f"m{i}")
                protocol = settled_queue(proto, at_least=4)
                assert protocol.read_paused
                for i in range(20, 40):  # these wait in the socket
                    client.send(f"m{i}")
            else:
                client.send("m0")
            go.set()
            t0 = time.monotonic()
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    client.recv(timeout=8)
            took = time.monotonic() - t0
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000, info.value
        assert closed.wait(5)
        assert took < 5.0  # not uvicorn's 10 s close timeout: the server read the client's close reply
    assert proto.mismatches == 0
    assert (proto.pauses >= 1) is paused
    assert (proto.after_close >= 1) is paused
