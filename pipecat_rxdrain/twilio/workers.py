"""One bot process per core: a supervisor starts N workers on one port and drains them all on SIGTERM.

``serve_forever`` with more than one worker (``WORKERS``/``--workers``; 0, the default, = one per core) runs
:func:`supervise`: the supervisor reserves the port, then starts N copies of the same
command line (``sys.orig_argv``) as workers. Each worker binds its own ``SO_REUSEPORT``
socket on that port, so the kernel spreads new connections over the workers; each
runs its own event loop, warm-up, :class:`~pipecat_rxdrain.twilio.calls.CallRegistry`
and ``MAX_CALLS``. Webhook and websocket of one call may land on different workers:
the media token is checked with the shared ``MEDIA_TOKEN_SECRET``. When it is not set,
the supervisor makes one random secret (32 bytes) at start and hands it to its workers in
their environment only (never logged, never written anywhere): the workers of one machine
agree, and a restart invalidates the tokens of webhooks answered before it (they live
``MEDIA_TOKEN_TTL_S``). Several machines behind one balancer still need a shared
``MEDIA_TOKEN_SECRET``. Metrics: ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory when not
set), wiped at start; a worker that exits is marked dead there.

``BOT_LISTENING=...`` is printed once every worker is warm and listening. SIGTERM/SIGINT
is passed to every worker (each drains its calls, see ``server.end_all_calls``); the
supervisor exits 0 when they all did. A worker that dies on its own is started again.
No Pipecat import.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from loguru import logger

from .config import ServerConfig

#: environment of a worker process (set by the supervisor only)
WORKER_PORT_ENV = "RXDRAIN_WORKER_PORT"
WORKER_READY_FD_ENV = "RXDRAIN_WORKER_READY_FD"
#: a worker that takes longer than this to warm up and listen fails the start
WORKER_START_TIMEOUT_S = 120.0


def worker_count(config: ServerConfig) -> int:
    """``WORKERS``, with 0 meaning one per core."""
    return config.workers or (os.cpu_count() or 1)


def is_worker() -> bool:
    return bool(os.environ.get(WORKER_PORT_ENV))


def worker_socket(host: str, port: int) -> socket.socket:
    """A ``SO_REUSEPORT`` TCP socket bound to ``host:port`` (not yet listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def notify_ready() -> None:
    """Tell the supervisor this worker is warm and listening (no-op outside a supervisor)."""
    fd = os.environ.get(WORKER_READY_FD_ENV)
    if fd:
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:
            pass


class _Supervisor:
    def __init__(self, config: ServerConfig, n: int, media_token_secret: str | None = None) -> None:
        self.config, self.n = config, n
        self._media_token_secret = media_token_secret  # generated here: handed to the workers, never logged
        self.stopping = False
        self.children: dict[int, subprocess.Popen] = {}
        self._own_metrics_dir = False
        self.metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

    def _spawn(self, port: int, ready_w: int | None) -> subprocess.Popen:
        env = dict(os.environ)
        env[WORKER_PORT_ENV] = str(port)
        assert self.metrics_dir is not None  # _prepare_metrics_dir ran first
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        if self._media_token_secret is not None:
            env["MEDIA_TOKEN_SECRET"] = self._media_token_secret
        fds: tuple[int, ...] = ()
        if ready_w is not None:
            env[WORKER_READY_FD_ENV] = str(ready_w)
            fds = (ready_w,)
        else:
            env.pop(WORKER_READY_FD_ENV, None)
        child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env, pass_fds=fds)
        self.children[child.pid] = child
        return child

    def _prepare_metrics_dir(self) -> None:
        if self.metrics_dir is None:
            self.metrics_dir = tempfile.mkdtemp(prefix="rxdrain-metrics-")
            self._own_metrics_dir = True
            return
        os.makedirs(self.metrics_dir, exist_ok=True)
        for name in os.listdir(self.metrics_dir):  # last run's files: counters would carry over
            if name.endswith(".db"):
                os.unlink(os.path.join(self.metrics_dir, name))

    def _reap(self, child: subprocess.Popen) -> None:
        from ..metrics import mark_process_dead

        self.children.pop(child.pid, None)
        try:
            mark_process_dead(child.pid, self.metrics_dir)
        except Exception as e:
            logger.warning(f"[BOT] could not mark worker {child.pid} dead in the metrics: {type(e).__name__}")

    def _signal_all(self, sig: int) -> None:
        for child in list(self.children.values()):
            if child.poll() is None:
                child.send_signal(sig)

    def run(self) -> int:
        cfg = self.config
        self._prepare_metrics_dir()
        reserve = worker_socket(cfg.host, cfg.port)  # holds the port; never listens, so it gets no connection
        port = reserve.getsockname()[1]
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not self._start_all(port):
                self.stopping = True
                self._signal_all(signal.SIGTERM)
                self._wait_all(10.0)
                return 1
            logger.info(f"[BOT] {self.n} workers listening on {cfg.host}:{port} (MAX_CALLS={cfg.max_calls} each)")
            print(f"BOT_LISTENING=http://{cfg.host}:{port}", flush=True)
            while not self.stopping:
                time.sleep(0.1)
                for child in list(self.children.values()):
                    code = child.poll()
                    if code is not None and not self.stopping:
                        logger.error(f"[BOT] worker {child.pid} exited with {code}; starting another")
                        self._reap(child)
                        self._spawn(port, None)
            from .server import END_WINDOW_S

            logger.info(f"[BOT] draining {len(self.children)} workers")
            self._signal_all(signal.SIGTERM)
            codes = self._wait_all(cfg.shutdown_grace_s + END_WINDOW_S + 5.0)
            return 0 if all(c == 0 for c in codes) else 1
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            reserve.close()
            if self._own_metrics_dir and self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            logger.info(f"[BOT] {signal.Signals(signum).name}: shutting down all workers")
        self.stopping = True

    def _start_all(self, port: int) -> bool:
        ready_r, ready_w = os.pipe()
        try:
            for _ in range(self.n):
                self._spawn(port, ready_w)
        finally:
            os.close(ready_w)
        ready, deadline = 0, time.monotonic() + WORKER_START_TIMEOUT_S
        try:
            while ready < self.n:
                if self.stopping or time.monotonic() > deadline:
                    return False
                if any(c.poll() is not None for c in self.children.values()):
                    logger.error("[BOT] a worker exited during start-up")
                    return False
                readable, _, _ = select.select([ready_r], [], [], 0.1)
                if readable:
                    got = os.read(ready_r, 64)
                    if not got:
                        return ready >= self.n
                    ready += len(got)
            return True
        finally:
            os.close(ready_r)

    def _wait_all(self, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        codes: list[int] = []
        for child in list(self.children.values()):
            try:
                codes.append(child.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                logger.error(f"[BOT] worker {child.pid} did not stop in time; killing it")
                child.kill()
                codes.append(child.wait(10))
            self._reap(child)
        return codes


def supervise(config: ServerConfig, n: int) -> int:
    """Run ``n`` workers of this same command line on ``config.port`` until SIGTERM/SIGINT; the exit code.

    Without ``MEDIA_TOKEN_SECRET`` (and with ``REQUIRE_MEDIA_TOKEN``) the workers get one random
    secret made here, so a token one worker issued is accepted by the others.
    """
    generated = None
    if config.require_media_token and not config.media_token_secret:
        generated = secrets.token_urlsafe(32)
        logger.info(
            f"[BOT] MEDIA_TOKEN_SECRET is not set: the {n} workers share a random one made at start "
            "(set it when several machines serve one number)"
        )
    return _Supervisor(config, n, generated).run()
