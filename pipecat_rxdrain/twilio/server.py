"""The Twilio-facing server: webhook, media websocket, stats, health, and its doors.

``create_app(config, build_pipeline)`` is a FastAPI app with:

* ``POST /twiml``: Twilio's voice webhook. The body is read with a cap while it
  streams (413 at ``max_webhook_bytes``, nothing buffered beyond it) and a deadline
  (408 after ``request_timeout_s``), *then* ``X-Twilio-Signature`` is checked (when
  ``TWILIO_AUTH_TOKEN`` is set) over the public URL: ``PUBLIC_HOST``, else the client-side
  entry of ``Forwarded``/``X-Forwarded-Host`` and ``-Proto``, else ``Host``
  (:func:`~pipecat_rxdrain.twilio.security.public_origin`; malformed ones are ignored and
  counted as ``forwarded_header_invalid``), the CallSid must be a Twilio call SID (400), and
  one answer per CallSid is given (a replayed webhook gets 409). The answer is
  ``<Connect><Stream url="wss://HOST/ws">`` with a per-call token ``<Parameter>``.
* ``/ws``: the Media Streams websocket. With ``TWILIO_AUTH_TOKEN`` set, the upgrade's
  ``X-Twilio-Signature`` (over the public ``wss://`` URL) is checked before it is
  accepted (HTTP 403 otherwise). A call slot is reserved against
  ``max_calls`` at accept time (atomically; beyond it: close 1013), ``start`` must
  arrive within ``start_timeout_s`` with valid SIDs and the call's token (else close
  1008), one live stream per CallSid; then :class:`MediaStreamCall` runs
  ``build_pipeline(call)``.
* ``GET /stats``: per-call numbers and the doors' counters, only with
  ``Authorization: Bearer <STATS_TOKEN>`` (404 when no token is configured).
* ``GET /healthz``: 200 ``ok``, or 503 when shutting down or when the recent calls
  all failed (``degraded``: e.g. rejected STT credentials).
* ``GET /readyz``: 200 once the warm-up ran (everything a call needs is loaded), 503
  before that and from the moment shutdown starts, so a balancer stops routing here.
* ``GET|HEAD /metrics``: Prometheus, only with ``Authorization: Bearer <METRICS_TOKEN>``
  (404 when no token is configured); see :mod:`pipecat_rxdrain.metrics`.

Shutdown (SIGTERM) is a rolling restart that cuts no call: readiness fails at once,
new webhooks get 503 (Twilio then requests the number's *fallback* URL; nginx retries
them on another bot first, see ``examples/deploy/nginx.conf``), a media websocket is
refused before its upgrade is accepted (HTTP 503: the proxy can retry it elsewhere),
active calls get ``shutdown_grace_s`` to finish on their own, then the rest are ended
(EndFrame, then cancelled) within :data:`END_WINDOW_S`.

:class:`BotServer` serves it with uvicorn, a cap on pending sockets and a
request deadline (:mod:`.connections`), and ends calls cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import os
import resource
import signal
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from loguru import logger

from ..metrics import MetricsConfigError, MetricsEndpoint, RxdrainMetrics, process_metrics
from .calls import Admission, CallEndReason, CallRegistry
from .config import ConfigError, ServerConfig
from .connections import ConnectionGate, guarded_h11_protocol
from .logs import ThrottledWarnings, loggable
from .loop_lag import LoopLagMonitor
from .media_call import BuildPipeline, MediaStreamCall
from .messages import Rejected, Start, TwilioStreamParser, is_sid
from .security import TOKEN_PARAMETER, MediaTokens, PublicOrigin, WebhookVerifier, public_origin
from .ws_read_ahead import read_ahead_ws_protocol

#: close codes (RFC 6455 / IANA)
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013
#: messages read while waiting for ``start`` (Twilio sends ``connected`` then ``start``)
MAX_MESSAGES_BEFORE_START = 50
#: uvicorn's listen backlog: each accept burst may hold this many descriptors before the gate sees them
LISTEN_BACKLOG = 128
#: descriptors one call holds (websocket, gRPC channel, eventfds) with room to spare, for the fd budget
FDS_PER_CALL = 16
#: after ``shutdown_grace_s``: calls still running are ended (EndFrame), then cancelled, within this
END_WINDOW_S = 5.0

WarmUp = Callable[[], Any]


class _TooLarge(Exception):
    pass


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


async def read_until_start(websocket: WebSocket, parser: TwilioStreamParser, warn) -> Start | None:
    """The ``start`` message (through ``parser``), or ``None`` if the client left or misbehaved first."""
    for _ in range(MAX_MESSAGES_BEFORE_START):
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        raw = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        parsed = parser.feed(raw)
        if isinstance(parsed, Start):
            return parsed
        if isinstance(parsed, Rejected):
            warn(
                f"pre_start_{parsed.reason.value}",
                f"[TWILIO] dropped bad message before start (reason={parsed.reason.value}): {parsed.detail}",
            )
            if parser.start_refused:  # no valid start will follow: free the call slot now
                return None
    return None


def create_app(
    config: ServerConfig,
    build_pipeline: BuildPipeline,
    *,
    gate: ConnectionGate | None = None,
    metrics: RxdrainMetrics | None = None,
    warm_up: WarmUp | None = None,
) -> FastAPI:
    """The FastAPI app. ``app.state.calls`` is the :class:`CallRegistry`, ``app.state.doors`` the door counters.

    ``metrics``: where calls are counted (default: this process's :func:`process_metrics`).
    ``warm_up``: loads what a call needs (models, imports, channels) at start-up, before
    the server listens; a coroutine function runs on the loop, a plain function in a
    thread. ``/readyz`` passes only after it returned; if it raises, start-up fails.
    """
    from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

    config.validate()
    metrics = metrics or process_metrics()
    try:
        metrics_endpoint = MetricsEndpoint(metrics.registry, config.metrics_token)
    except MetricsConfigError as e:
        raise ConfigError(str(e)) from None
    registry = CallRegistry(config.max_calls)
    loop_lag = LoopLagMonitor()
    verifier = WebhookVerifier(config.twilio_auth_token) if config.twilio_auth_token else None
    tokens = MediaTokens(config.media_token_secret, ttl_s=config.media_token_ttl_s)
    warn = ThrottledWarnings()
    gate = gate or ConnectionGate(config.max_pending_connections)
    if verifier is None:
        logger.warning("[BOT] TWILIO_AUTH_TOKEN is not set: webhooks are NOT verified (anyone can POST /twiml)")
    if config.stats_token is None:
        logger.info("[BOT] STATS_TOKEN is not set: /stats is off")
    if config.metrics_token is None:
        logger.info("[BOT] METRICS_TOKEN is not set: /metrics is off")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warm_up is not None:
            began = time.monotonic()
            if inspect.iscoroutinefunction(warm_up):
                await warm_up()
            else:
                await asyncio.to_thread(warm_up)
            logger.info(f"[BOT] warm-up done in {time.monotonic() - began:.2f}s")
        app.state.warm = True
        loop_lag.start()  # from here on the loop serves calls: measure what blocks it
        try:
            yield
            await end_all_calls(registry, "server shutdown", config.shutdown_grace_s)
        finally:
            await loop_lag.stop()

    app = FastAPI(
        title="pipecat-rxdrain Twilio bot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.calls = registry
    app.state.config = config
    app.state.doors = warn.counts
    app.state.gate = gate
    app.state.metrics = metrics
    app.state.warm = False
    app.state.loop_lag = loop_lag
    # An ASGI app: Starlette serves a non-function endpoint as one (its stub only types request handlers).
    app.add_route("/metrics", metrics_endpoint, methods=["GET", "HEAD"])  # type: ignore[arg-type]

    def origin(request) -> PublicOrigin:
        """Scheme and host Twilio called: PUBLIC_HOST, else the proxy's Forwarded / X-Forwarded-*, else Host."""
        found = public_origin(request.headers, request.url.scheme, config.public_host)
        if found.rejected:
            peer = loggable(request.client.host if request.client else "?", 64)
            warn(
                "forwarded_header_invalid",
                f"[BOT] ignored malformed {', '.join(found.rejected)} header(s) (from {peer})",
            )
        return found

    def public_url(request) -> str | None:
        """The URL Twilio called (and signed), or ``None`` when the request names no valid host."""
        return origin(request).url(request.url.path, request.url.query, websocket=request.scope["type"] == "websocket")

    def text(body: str, status: int, **headers: str) -> Response:
        return Response(body + "\n", status_code=status, media_type="text/plain", headers=headers or None)

    @app.post("/twiml")
    async def twiml(request: Request):
        peer = loggable(request.client.host if request.client else "?", 64)
        try:
            body = await asyncio.wait_for(_read_capped(request, config.max_webhook_bytes), config.request_timeout_s)
        except _TooLarge:
            warn(
                "webhook_too_large", f"[BOT] webhook refused: body over {config.max_webhook_bytes} bytes (from {peer})"
            )
            return text("request too large", 413, connection="close")
        except TimeoutError:
            warn(
                "webhook_timeout",
                f"[BOT] webhook refused: body not received within {config.request_timeout_s:g}s (from {peer})",
            )
            return text("request timeout", 408, connection="close")
        # Twilio posts application/x-www-form-urlencoded (parsed here: no python-multipart needed).
        params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        found = origin(request)
        signed_url = found.url(request.url.path, request.url.query)
        if verifier is not None and (
            signed_url is None or not verifier.verify(signed_url, params, request.headers.get("x-twilio-signature"))
        ):
            warn("webhook_bad_signature", f"[BOT] webhook rejected: bad or missing X-Twilio-Signature (from {peer})")
            return text("forbidden", 403)
        if registry.shutting_down:
            return text("shutting down", 503)
        if found.host is None:
            warn("webhook_bad_host", f"[BOT] webhook refused: no valid Host / X-Forwarded-Host (from {peer})")
            return text("missing or malformed Host", 400)
        call_sid = params.get("CallSid", "")
        if not is_sid(call_sid, "CA"):
            warn(
                "webhook_bad_call_sid", f"[BOT] webhook refused: CallSid missing or not a Twilio call SID (from {peer})"
            )
            return text("missing or malformed CallSid", 400)
        token = tokens.issue(call_sid)
        with logger.contextualize(call_sid=call_sid):
            if token is None:
                warn("webhook_replayed", "[BOT] webhook refused: this CallSid was already answered (replay)")
                return text("call already answered", 409)
            response = VoiceResponse()
            connect = Connect()
            stream = Stream(url=f"wss://{found.host}/ws")
            stream.parameter(name=TOKEN_PARAMETER, value=token)
            if params.get("From"):
                stream.parameter(name="from_number", value=params["From"][:64])
            if params.get("To"):
                stream.parameter(name="to_number", value=params["To"][:64])
            connect.append(stream)
            response.append(connect)
            logger.info("[BOT] webhook: answering with <Connect><Stream>")
            registry.counters["webhooks_answered"] += 1
        return Response(str(response), media_type="application/xml")

    @app.get("/stats")
    async def stats(request: Request):
        expected = config.stats_token
        given = request.headers.get("authorization", "")
        if expected is None:
            return Response(status_code=404)
        if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {expected}".encode()):
            warn("stats_unauthorized", "[BOT] /stats refused: missing or wrong bearer token")
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        snapshot = registry.snapshot()
        snapshot["doors"] = dict(warn.counts)
        snapshot["connections"] = gate.stats()
        snapshot["loop"] = loop_lag.stats()
        snapshot["pid"] = os.getpid()  # with WORKERS > 1, which worker answered
        return JSONResponse(snapshot)

    @app.get("/healthz")
    async def healthz():
        health = registry.health()
        return JSONResponse(health, status_code=200 if health["ok"] else 503)

    @app.get("/readyz")
    async def readyz():
        if registry.shutting_down:
            return text("shutting down", 503)
        if not app.state.warm:
            return text("warming up", 503)
        return text("ready", 200)

    @app.websocket("/ws")
    async def media(websocket: WebSocket):
        ws_url = public_url(websocket) if verifier is not None else None
        if verifier is not None and (
            ws_url is None or not verifier.verify(ws_url, {}, websocket.headers.get("x-twilio-signature"))
        ):
            # Twilio signs the upgrade (the wss:// URL of <Stream>, no parameters): refused before accepting.
            peer = loggable(websocket.client.host if websocket.client else "?", 64)
            warn("ws_bad_signature", f"[BOT] media websocket refused: bad or missing X-Twilio-Signature (from {peer})")
            with contextlib.suppress(Exception):
                await websocket.send_denial_response(text("forbidden", 403))
            return
        admission = registry.reserve()  # atomically, before any await: MAX_CALLS holds at accept time
        bound = False
        call: MediaStreamCall | None = None
        try:
            if admission is Admission.SHUTTING_DOWN:
                # Refused before the upgrade (HTTP 503), so a proxy can still send it to another bot.
                warn("ws_shutting_down", "[BOT] media websocket refused (shutting down): HTTP 503")
                await websocket.send_denial_response(text("shutting down", 503))
                return
            await websocket.accept()
            if admission is not Admission.ADMITTED:
                warn(f"ws_{admission.value}", f"[BOT] media websocket refused ({admission.value}): close 1013")
                await websocket.close(code=CLOSE_TRY_AGAIN_LATER)
                return
            parser = TwilioStreamParser(max_message_bytes=config.max_message_bytes)
            try:
                start = await asyncio.wait_for(read_until_start(websocket, parser, warn), config.start_timeout_s)
            except TimeoutError:
                start = None
            if start is None:
                warn("ws_no_start", "[BOT] media websocket closed: no valid start message")
                await websocket.close(code=CLOSE_POLICY)
                return
            with logger.contextualize(call_sid=start.call_sid):
                if config.require_media_token:
                    reason = tokens.check(start.call_sid, start.custom_parameters.get(TOKEN_PARAMETER))
                    if reason is not None:
                        warn(f"ws_token_{reason.replace(' ', '_')}", f"[BOT] media websocket refused: {reason}")
                        await websocket.close(code=CLOSE_POLICY)
                        return
                call = MediaStreamCall(websocket, start, parser, config, metrics=metrics)
                bound = True
                if registry.bind(start.call_sid, call) is Admission.DUPLICATE:
                    call = None
                    warn("ws_duplicate", "[BOT] media websocket refused: call already streaming")
                    await websocket.close(code=CLOSE_POLICY)
                    return
                if websocket.client is not None:
                    gate.admitted(tuple(websocket.client))
                await call.run(build_pipeline)
        except Exception as e:  # the client vanished mid-handshake, or a close raced a disconnect
            logger.debug(f"[BOT] media websocket ended early: {type(e).__name__}")
        finally:
            if admission is Admission.ADMITTED and not bound:
                registry.unreserve()
            if call is not None:
                registry.finish(call.start.call_sid, call.record)

    return app


async def _wait_idle(registry: CallRegistry, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (registry.active or registry.reserved) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def end_all_calls(registry: CallRegistry, reason: str, grace_s: float) -> None:
    """Stop taking calls at once; let active ones finish within ``grace_s``; end, then cancel, the rest.

    ``reason`` (what triggered the shutdown, e.g. ``SIGTERM``) is for the log; the calls ended
    here end with :attr:`CallEndReason.SERVER_SHUTDOWN`.

    Returns within ``grace_s + END_WINDOW_S``.
    """
    registry.shutting_down = True
    if not (registry.active or registry.reserved):
        return
    logger.info(f"[BOT] {reason}: {len(registry.active)} active call(s) have {grace_s:g}s to finish")
    await _wait_idle(registry, grace_s)
    calls = list(registry.active.values())
    if not calls:
        logger.info(f"[BOT] {reason}: every call finished within the grace period")
        return
    logger.warning(f"[BOT] {reason}: ending {len(calls)} call(s) still running after {grace_s:g}s")
    for call in calls:
        with logger.contextualize(call_sid=call.start.call_sid):
            await call.end(CallEndReason.SERVER_SHUTDOWN)
    await _wait_idle(registry, END_WINDOW_S / 2)
    for call in list(registry.active.values()):
        if call.worker is not None:
            await call.worker.cancel()
    await _wait_idle(registry, END_WINDOW_S / 2)


def check_fd_budget(config: ServerConfig) -> None:
    """Make sure the process may open enough descriptors for its calls and pending sockets (raise the soft limit if needed)."""
    need = config.max_pending_connections + LISTEN_BACKLOG + config.max_calls * FDS_PER_CALL + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < need:
            raise ConfigError(
                f"MAX_CALLS={config.max_calls} and MAX_PENDING_CONNECTIONS={config.max_pending_connections} need about "
                f"{need} file descriptors, but the limit is {soft} (ulimit -n): lower them or raise the limit"
            )


class BotServer:
    """uvicorn serving ``app``; SIGTERM/SIGINT end calls cleanly (exit code 0).

    ``await serve()`` runs until ``shutdown()``; ``port`` is the bound port (useful with port 0).
    """

    def __init__(self, config: ServerConfig, app: FastAPI, *, handle_signals: bool = False) -> None:
        import uvicorn

        self.config = config
        self.app = app
        self._handle_signals = handle_signals
        self._accept_errors = ThrottledWarnings()
        gate: ConnectionGate = app.state.gate
        gate.on_evict = lambda n: self._accept_errors(
            "evicted", f"[BOT] too many pending connections (> {gate.max_pending}): closed the oldest"
        )

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # we handle signals ourselves (uvicorn would re-raise them)
                yield

        self._server = _Server(
            uvicorn.Config(
                self.app,
                host=config.host,
                port=config.port,
                http=guarded_h11_protocol(
                    gate,
                    config.request_timeout_s,
                    lambda: self._accept_errors(
                        "request_timeout",
                        f"[BOT] closed a connection: no complete request within {config.request_timeout_s:g}s",
                    ),
                ),
                ws=read_ahead_ws_protocol(),
                ws_max_size=config.ws_max_size,
                ws_ping_interval=None,
                backlog=LISTEN_BACKLOG,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=int(config.shutdown_grace_s + END_WINDOW_S) + 1,
            )
        )

    @property
    def started(self) -> bool:
        return self._server.started

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return sock.getsockname()[1]
        return self.config.port

    def _loop_exception(self, loop, context: dict[str, Any]) -> None:
        # asyncio reports accept() failures (EMFILE) once per attempt, with a traceback: count and throttle them.
        message = str(context.get("message", ""))
        if "accept" in message:
            exc = context.get("exception")
            self._accept_errors("accept_failed", f"[BOT] accept failed: {type(exc).__name__ if exc else message}")
            return
        loop.default_exception_handler(context)

    def _shutdown_on_signal(self, sig: signal.Signals) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        self._signal_shutdown = asyncio.ensure_future(self.shutdown(signal.Signals(sig).name))

    async def serve(self, sockets: list | None = None) -> None:
        """Serve until ``shutdown()`` (``sockets``: bound sockets to listen on instead of ``host:port``)."""
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        if self._handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._shutdown_on_signal, sig)
        try:
            await self._server.serve(sockets=sockets)
        finally:
            loop.set_exception_handler(previous_handler)
            if self._handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def shutdown(self, reason: str = "shutdown") -> None:
        registry: CallRegistry = self.app.state.calls
        if registry.shutting_down and self._server.should_exit:
            return
        logger.info(f"[BOT] {reason}: shutting down")
        await end_all_calls(registry, reason, self.config.shutdown_grace_s)
        self._server.should_exit = True


def serve_forever(config: ServerConfig, app: FastAPI) -> int:
    """Run ``app`` until SIGTERM/SIGINT; prints ``BOT_LISTENING=http://HOST:PORT`` once bound. Returns the exit code."""
    import sys

    from ..google_clients import is_loopback_host

    try:
        check_fd_budget(config)
    except ConfigError as e:
        print(f"bot: configuration error: {e}", file=sys.stderr)
        return 2
    if not is_loopback_host(config.host):
        logger.warning(f"[BOT] listening on {config.host}: make sure a TLS proxy fronts it (Twilio needs wss://)")
    from . import workers

    worker = workers.is_worker()
    if not worker and workers.worker_count(config) > 1:
        return workers.supervise(config, workers.worker_count(config))
    sockets = None
    if worker:
        sockets = [workers.worker_socket(config.host, int(os.environ[workers.WORKER_PORT_ENV]))]
    server = BotServer(config, app, handle_signals=True)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            if worker:
                workers.notify_ready()
            else:
                print(f"BOT_LISTENING=http://{config.host}:{server.port}", flush=True)
        await task

    try:
        asyncio.run(run())
    except SystemExit as e:  # uvicorn exits on bind errors
        return int(e.code or 1)
    except OSError as e:
        print(f"bot: {e}", file=sys.stderr)
        return 1
    logger.info("[BOT] stopped")
    return 0
