"""Sockets that are not (yet) calls: capped per process, oldest first out, timed out.

Every open socket costs a file descriptor, and a process has about a thousand
by default. Before a websocket is an authenticated call it is only a *pending*
connection (an HTTP request, a keep-alive, a websocket before ``start``).
:class:`ConnectionGate` keeps at most ``max_pending`` of them and closes the
**oldest** one when a new one arrives beyond that, so a flood of idle sockets
cannot starve real calls of descriptors, and a real caller arriving after the
flood still gets in. :func:`guarded_h11_protocol` is the uvicorn side: it
registers each connection with the gate and closes a connection whose request
has not fully arrived within ``request_timeout_s`` (half-sent requests).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

Key = Any  # the peer address tuple, as in the ASGI scope's "client"


class ConnectionGate:
    """At most ``max_pending`` pending connections; the oldest is closed to make room.

    Guarantees: after :meth:`opened` returns, at most ``max_pending`` open pending
    transports are tracked; each closed to make room is counted in ``evicted``;
    :meth:`admitted` takes a connection out of the pending set for good (it is a call now).
    """

    def __init__(self, max_pending: int, on_evict: Callable[[int], None] | None = None) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self.evicted = 0
        self.timed_out = 0
        self._pending: OrderedDict[Key, Any] = OrderedDict()
        self.on_evict = on_evict

    @property
    def pending(self) -> int:
        return len(self._pending)

    def opened(self, key: Key, transport: Any) -> None:
        self._pending[key] = transport
        self._pending.move_to_end(key)
        if len(self._pending) <= self.max_pending:
            return
        for k in [k for k, t in self._pending.items() if t.is_closing()]:  # closed meanwhile (e.g. upgraded sockets)
            del self._pending[k]
        while len(self._pending) > self.max_pending:
            _, oldest = self._pending.popitem(last=False)
            oldest.abort()
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(self.evicted)

    def closed(self, key: Key, transport: Any) -> None:
        if self._pending.get(key) is transport:
            del self._pending[key]

    def admitted(self, key: Key) -> None:
        self._pending.pop(key, None)

    def stats(self) -> dict[str, int]:
        return {"pending": self.pending, "evicted": self.evicted, "timed_out": self.timed_out}


def guarded_h11_protocol(gate: ConnectionGate, request_timeout_s: float, on_timeout: Callable[[], None] | None = None):
    """A uvicorn ``H11Protocol`` subclass that reports to ``gate`` and times out slow requests."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._gate_key = self.client or id(transport)
            gate.opened(self._gate_key, transport)
            self._arm()

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(request_timeout_s, self._request_deadline)

        def _request_deadline(self) -> None:
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # closed, or upgraded to a websocket (the app times out its start)
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm()  # headers arrived and the app is serving it (it bounds reading the body)
                return
            # No complete request since the last response (or since connect): an idle or half-sent request.
            gate.timed_out += 1
            if on_timeout is not None:
                on_timeout()
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            gate.closed(getattr(self, "_gate_key", None), self.transport)
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol
