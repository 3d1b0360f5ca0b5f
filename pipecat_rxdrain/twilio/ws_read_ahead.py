"""uvicorn's websocket protocol, reading ahead: reading pauses only once ``ws_max_queue`` messages wait for the app.

uvicorn's ``websockets-sansio`` protocol pauses reading the socket after *every*
message and resumes when the app has taken it. For a Twilio media stream (one
message per 20 ms) that is two ``epoll_ctl`` calls per message on the event loop
that runs the pipelines (asyncio's default selector loop); each releases the GIL,
so any busy thread of the process (gRPC's, the STT writer) takes the loop's turn
there. Measured with 20 streams at 50 messages/s on a 2-core box
(``python -m benchmarks.bench_ws_read``): 171-180 -> 139-144 µs of server CPU per
message, 222-224 -> 174-181 µs with a thread contending for the GIL.

:class:`ReadAheadWebSocketProtocol` keeps reading until uvicorn's own
``ws_max_queue`` setting (default 32, the bound uvicorn's legacy ``websockets``
protocol applies; the sans-io protocol ignores it) messages, or ``ws_max_size``
bytes of them, wait for the app, and pauses like the original from there. So an
app that falls behind holds at most ``ws_max_size`` bytes (one largest message)
more than with uvicorn's protocol: about one ``ws_max_size`` plus one largest
message plus one socket read's worth of messages.

Use it with any uvicorn app: ``uvicorn.Config(app, ws=read_ahead_ws_protocol())``
(the bundled bot does). Where uvicorn has no sans-io protocol,
:func:`read_ahead_ws_protocol` returns ``"websockets"``, uvicorn's legacy one.
"""

from __future__ import annotations

from typing import Any

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - uvicorn without the sans-io protocol
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]


if WebSocketsSansIOProtocol is not None:

    class ReadAheadWebSocketProtocol(WebSocketsSansIOProtocol):
        """uvicorn's sans-io protocol, pausing reading only at ``ws_max_queue`` messages or ``ws_max_size`` bytes queued.

        Guarantees: every message reaches the app once, in order (uvicorn's own
        parsing and queue); reading is paused whenever ``ws_max_queue`` or more
        messages, or ``ws_max_size`` or more bytes of them, wait for the app, and
        resumed when the app has taken them all (uvicorn's own resume rule);
        ``read_paused`` is true whenever reading is paused, which uvicorn's close
        handshake relies on; once the app has closed, this class never pauses
        reading (the peer's close reply must be read).
        """

        _queued_bytes = 0

        def send_receive_event_to_app(self) -> None:
            size, queued = sum(len(f) for f in self.frames), self.queue.qsize()
            paused = self.read_paused
            self.read_paused = True  # the base pauses after every message unless it believes it already has
            try:
                super().send_receive_event_to_app()
            finally:
                # A uvicorn that pauses elsewhere too must still find the flag set, or it would never resume.
                self.read_paused = paused or not self.transport.is_reading()
            if self.close_sent:  # the base discards messages now; reading must go on to see the peer's close reply
                return
            if self.queue.qsize() > queued:
                self._queued_bytes += size
            if not self.read_paused and (
                # ws_max_queue=None/0 would mean no count bound elsewhere; here it means uvicorn's own rule.
                self.queue.qsize() >= (self.config.ws_max_queue or 1) or self._queued_bytes >= self.config.ws_max_size
            ):
                self.read_paused = True
                self.transport.pause_reading()

        async def receive(self):
            message = await super().receive()
            if self.queue.empty():
                self._queued_bytes = 0  # also undoes any drift between UTF-8 bytes in and characters out
            elif message.get("type") == "websocket.receive":
                data = message.get("text") if message.get("bytes") is None else message["bytes"]
                self._queued_bytes = max(0, self._queued_bytes - len(data or ""))
            return message

else:  # pragma: no cover
    ReadAheadWebSocketProtocol = None  # type: ignore[assignment,misc]


def read_ahead_ws_protocol() -> Any:
    """The ``ws=`` value for ``uvicorn.Config``: :class:`ReadAheadWebSocketProtocol`, else ``"websockets"``."""
    return ReadAheadWebSocketProtocol if ReadAheadWebSocketProtocol is not None else "websockets"
