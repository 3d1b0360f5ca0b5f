"""uvicorn websocket receive cost: its ``websockets-sansio`` protocol vs our ``ReadAheadWebSocketProtocol``.

    python -m benchmarks.bench_ws_read [--streams 20] [--seconds 10] [--rounds 2] [--contend]

Prints numbers; asserts nothing. A uvicorn server (its own process: a FastAPI
websocket endpoint that reads text messages and does nothing else) and a client
process with ``--streams`` websockets, each sending a Twilio ``media`` message
(160-byte payload) every 20 ms on an absolute schedule. Per protocol and round:
the server's CPU per message (``getrusage`` from the first connection to the
last message) and its voluntary / involuntary context switches. ``--contend``
adds a thread to the server that wakes every 2 ms for ~20 µs of Python, as a
busy gRPC or STT writer thread would: it takes the GIL at every point where
the loop releases it (each ``epoll_ctl`` of a read pause or resume).
The rounds alternate the protocols so drift on a shared box hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import threading
import time

from fastapi import WebSocket  # module level: the endpoint's annotation is resolved in these globals

PROTOCOLS = ("uvicorn", "read_ahead")


def _media_message() -> str:
    payload = base64.b64encode(os.urandom(160)).decode()
    return json.dumps({
        "event": "media", "sequenceNumber": "3", "streamSid": "MZ" + "0" * 32,
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload},
    })


def serve(protocol: str, contend: bool) -> None:
    import uvicorn
    from fastapi import FastAPI

    from pipecat_rxdrain.twilio.ws_read_ahead import read_ahead_ws_protocol

    app = FastAPI()
    state = {"messages": 0, "cpu0": None}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        if state["cpu0"] is None:
            r = resource.getrusage(resource.RUSAGE_SELF)
            state["cpu0"] = (r.ru_utime + r.ru_stime, r.ru_nvcsw, r.ru_nivcsw)
        async for _ in websocket.iter_text():
            state["messages"] += 1

    stop = threading.Event()

    def contender() -> None:
        while not stop.wait(0.002):
            x = 0
            for i in range(200):
                x += i

    if contend:
        threading.Thread(target=contender, daemon=True).start()
    ws_impl = read_ahead_ws_protocol() if protocol == "read_ahead" else "websockets-sansio"
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=0, ws=ws_impl, ws_ping_interval=None, log_config=None, access_log=False,
        lifespan="off",
    ))

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"PORT={server.servers[0].sockets[0].getsockname()[1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        r = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, v0, i0 = state["cpu0"] or (0.0, 0, 0)
        print(json.dumps({
            "messages": state["messages"], "cpu_s": r.ru_utime + r.ru_stime - cpu0,
            "voluntary": r.ru_nvcsw - v0, "involuntary": r.ru_nivcsw - i0,
        }), flush=True)
        stop.set()
        server.should_exit = True
        await task

    asyncio.run(main())


def send(port: int, streams: int, seconds: float) -> None:
    import websockets

    message = _media_message()

    async def one(i: int) -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            t0 = time.monotonic() + i * 0.02 / streams
            for k in range(int(seconds * 50)):
                delay = t0 + k * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(message)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(streams)))

    asyncio.run(main())


def measure(protocol: str, streams: int, seconds: float, contend: bool) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_ws_read", "--serve", protocol] + (["--contend"] if contend else [])
    srv = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        if not line.startswith("PORT="):
            raise RuntimeError(f"server did not start: {line!r}")
        port = int(line.strip().split("=")[1])
        subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_ws_read", "--send", str(port), str(streams), str(seconds)],
            check=True, timeout=seconds + 60,
        )
        time.sleep(0.3)  # the last messages reach the app
        srv.stdin.write("stop\n")
        srv.stdin.flush()
        result = json.loads(srv.stdout.readline())
    finally:
        srv.stdin.close()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait(5)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_ws_read", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--contend", action="store_true")
    p.add_argument("--serve", choices=PROTOCOLS, help=argparse.SUPPRESS)
    p.add_argument("--send", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.contend)
        return 0
    if args.send:
        send(int(args.send[0]), int(args.send[1]), float(args.send[2]))
        return 0
    print(f"{args.streams} streams x 50 messages/s for {args.seconds:g} s{', contending thread' if args.contend else ''}")
    print(f"{'round':>5} {'protocol':>10} {'messages':>8} {'CPU µs/msg':>10} {'vol. csw':>8} {'invol. csw':>10}")
    for rnd in range(1, args.rounds + 1):
        for protocol in PROTOCOLS:
            r = measure(protocol, args.streams, args.seconds, args.contend)
            per = r["cpu_s"] / max(1, r["messages"]) * 1e6
            print(f"{rnd:>5} {protocol:>10} {r['messages']:>8} {per:>10.1f} {r['voluntary']:>8} {r['involuntary']:>10}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
