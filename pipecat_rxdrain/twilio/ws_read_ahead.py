"""uvicorn's websocket protocol, reading ahead: reading pauses only once ``ws_max_queue`` messages wait for the app.

uvicorn's ``websockets-sansio`` protocol pauses reading the socket after *every*
message and resumes when the app has taken it. For a Twilio media stream (one
message per 20 ms) that is two ``epoll_ctl`` calls and one socket read per
message, on the event loop that runs the pipelines; each ``epoll_ctl`` releases
the GIL, so any busy thread of the process (gRPC's, the STT writer) takes the
loop's turn there. Measured with 20 streams at 50 messages/s on a 2-core box
(``python -m benchmarks.bench_ws_read``): 171-180 -> 139-144 µs of server CPU per
message, 222-224 -> 174-181 µs with a thread contending for the GIL.

:class:`ReadAheadWebSocketProtocol` keeps reading while fewer than uvicorn's own
``ws_max_queue`` setting (default 32, the bound uvicorn's legacy ``websockets``
protocol applies; the sans-io protocol ignores it) are queued, and pauses like
the original above that. Memory stays bounded: at most ``ws_max_queue``
messages plus what one socket read held.

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
        """uvicorn's sans-io websocket protocol that pauses reading only above ``config.ws_max_queue`` queued messages.

        Guarantees: every message reaches the app once, in order (uvicorn's own
        parsing and queue); reading is paused whenever ``ws_max_queue`` or more
        messages wait for the app, and resumed when the app has taken them all
        (uvicorn's own resume rule); ``read_paused`` is true exactly while reading
        is paused, which uvicorn's close handshake relies on; once the app has
        closed, reading is never paused (the peer's close reply must be read).
        """

        def send_receive_event_to_app(self) -> None:
            paused = self.read_paused
            self.read_paused = True  # the base pauses after every message unless it believes it already has
            try:
                super().send_receive_event_to_app()
            finally:
                self.read_paused = paused
            # After the app closed, the base discards messages; reading must go on to see the peer's close reply.
            if not paused and not self.close_sent and self.queue.qsize() >= self.config.ws_max_queue:
                self.read_paused = True
                self.transport.pause_reading()

else:  # pragma: no cover
    ReadAheadWebSocketProtocol = None  # type: ignore[assignment,misc]


def read_ahead_ws_protocol() -> Any:
    """The ``ws=`` value for ``uvicorn.Config``: :class:`ReadAheadWebSocketProtocol`, else ``"websockets"``."""
    return ReadAheadWebSocketProtocol if ReadAheadWebSocketProtocol is not None else "websockets"
