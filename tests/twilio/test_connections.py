"""pipecat_rxdrain.twilio.connections: the pending-socket cap (oldest first) and the request deadline."""

from __future__ import annotations

import asyncio
import socket
import time

from tests.helpers.bot_harness import make_config, running_bot
from pipecat_rxdrain.twilio.connections import ConnectionGate


class _Transport:
    def __init__(self):
        self.aborted = False
        self.closing = False

    def abort(self):
        self.aborted = self.closing = True

    def is_closing(self):
        return self.closing


def test_the_oldest_pending_connection_makes_room_and_admitted_ones_are_never_touched():
    evictions = []
    gate = ConnectionGate(3, on_evict=evictions.append)
    ts = [_Transport() for _ in range(6)]
    for i, t in enumerate(ts[:3]):
        gate.opened(("127.0.0.1", i), t)
    gate.admitted(("127.0.0.1", 0))  # a call now: not pending
    gate.opened(("127.0.0.1", 3), ts[3])
    assert gate.pending == 3 and not any(t.aborted for t in ts[:4])
    ts[1].closing = True  # went away by itself: pruned, not evicted
    gate.opened(("127.0.0.1", 4), ts[4])
    gate.opened(("127.0.0.1", 5), ts[5])
    assert [t.aborted for t in ts] == [False, False, True, False, False, False]  # only the oldest open one
    assert gate.pending == 3 and gate.evicted == 1 and evictions == [1]


async def test_a_half_sent_request_is_closed_after_request_timeout_s():
    cfg = make_config(speech_emulator_host="127.0.0.1:9", request_timeout_s=1.0)
    async with running_bot(cfg) as bot:
        def half_sent() -> float:
            with socket.create_connection(("127.0.0.1", bot.port), timeout=10) as s:
                s.sendall(b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Le")
                t0 = time.monotonic()
                assert s.recv(100) == b""  # closed by the bot
                return time.monotonic() - t0

        waited = await asyncio.to_thread(half_sent)
        timed_out = bot.app.state.gate.timed_out
    assert 0.5 < waited < 5.0 and timed_out == 1
