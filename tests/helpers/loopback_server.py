"""An ASGI app served by a real uvicorn on 127.0.0.1 in a thread, stopped (bounded) on exit."""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn


class UvicornThread:
    """``with UvicornThread(app) as server: server.port`` — a free loopback port, joined on exit."""

    def __init__(
        self, app, *, host: str = "127.0.0.1", start_timeout_s: float = 10.0, ws="websockets-sansio", ws_max_queue: int = 32,
        ws_max_size: int = 16 * 1024 * 1024,
    ) -> None:
        self._config = uvicorn.Config(
            app, host=host, port=0, log_config=None, access_log=False, lifespan="off", ws=ws,
            ws_max_queue=ws_max_queue, ws_max_size=ws_max_size, ws_ping_interval=None, timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(self._config)
        self._server.install_signal_handlers = lambda: None  # uvicorn < 0.29
        self._thread = threading.Thread(target=self._run, name="uvicorn-test", daemon=True)
        self._start_timeout_s = start_timeout_s
        self.host = host

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._server.serve())
        finally:
            loop.close()

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return sock.getsockname()[1]
        raise RuntimeError("uvicorn is not listening")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> UvicornThread:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(2.0)
        assert not self._thread.is_alive(), "uvicorn thread did not stop"

    def __exit__(self, *exc) -> None:
        self.stop()
