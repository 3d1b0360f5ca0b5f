"""examples/deploy/nginx.conf in a real nginx on loopback: TLS, /twiml, the /ws upgrade, the body cap, 2 upstreams."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from tests.helpers.loopback_server import UvicornThread
from tests.helpers.nginx_proxy import NGINX_CONF, NginxProxy, NginxTemplateError, find_nginx, render_config
from websockets.sync.client import connect

FORWARDED = ("x-forwarded-proto", "x-forwarded-host", "x-forwarded-for", "host")


def upstream_app(name: str, seen: list[str]) -> FastAPI:
    """A stand-in bot: /twiml answers what it received, /ws says who it is and echoes."""
    app = FastAPI()
    lock = threading.Lock()

    def note(path: str) -> None:
        with lock:
            seen.append(path)

    @app.post("/twiml")
    async def twiml(request: Request):
        note("/twiml")
        body = await request.body()
        headers = {k: request.headers.get(k) for k in FORWARDED}
        return JSONResponse({"server": name, "headers": headers, "body_len": len(body), "client": request.client.host})

    @app.get("/{path:path}")
    async def anything(path: str):
        note(f"/{path}")
        return {"server": name, "path": path}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        note("/ws")
        await websocket.accept()
        headers = {k: websocket.headers.get(k) for k in FORWARDED}
        await websocket.send_text(json.dumps({"server": name, "headers": headers}))
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await websocket.send_text(f"{name}:{message['text']}")
                else:
                    await websocket.send_bytes(message.get("bytes") or b"")
        except WebSocketDisconnect:
            return

    return app


@pytest.fixture
def stack():
    seen = {"bot-a": [], "bot-b": []}
    with UvicornThread(upstream_app("bot-a", seen["bot-a"])) as a, UvicornThread(upstream_app("bot-b", seen["bot-b"])) as b, \
            NginxProxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as proxy:
        yield proxy, seen
        proxy.stop()
        assert proxy.workers_alive() == []  # master and workers are gone
        assert proxy.process.poll() is not None


def post(proxy: NginxProxy, path: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{proxy.https_url}{path}", data=body, method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15, context=proxy.ssl_context()) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_nginx_is_installed():
    assert find_nginx()  # a missing nginx is a failure with the install command, never a skip


def test_twiml_post_over_https_reaches_a_bot_with_forwarded_headers(stack):
    proxy, seen = stack
    status, body = post(proxy, "/twiml", b"CallSid=CA123&From=%2B15550001")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["body_len"] == len(b"CallSid=CA123&From=%2B15550001")
    host = f"127.0.0.1:{proxy.https_port}"
    # the public host travels in X-Forwarded-Host; Host is the upstream group's name
    assert answer["headers"] == {
        "x-forwarded-proto": "https", "x-forwarded-host": host, "x-forwarded-for": "127.0.0.1", "host": "rxdrain_bots",
    }


def test_websocket_upgrade_over_wss_both_ways(stack):
    proxy, _ = stack
    with connect(f"{proxy.wss_url}/ws", ssl=proxy.ssl_context(), open_timeout=15, close_timeout=2) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["headers"]["x-forwarded-proto"] == "https"
        for i in range(20):
            ws.send(f"media-{i}")
            assert ws.recv(timeout=10) == f"{hello['server']}:media-{i}"
        ws.send(b"\x00\xff" * 100)
        assert ws.recv(timeout=10) == b"\x00\xff" * 100


def test_body_over_the_cap_gets_413_from_nginx(stack):
    proxy, seen = stack
    status, _ = post(proxy, "/twiml", b"x" * (64 * 1024 + 1))
    assert status == 413
    assert seen == {"bot-a": [], "bot-b": []}  # nginx refused it; no bot saw it
    assert post(proxy, "/twiml", b"x" * (64 * 1024))[0] == 200  # the cap itself is allowed


def test_calls_spread_over_both_upstreams(stack):
    proxy, seen = stack
    servers = [json.loads(post(proxy, "/twiml", b"CallSid=CA1")[1])["server"] for _ in range(10)]
    assert servers.count("bot-a") >= 3 and servers.count("bot-b") >= 3, servers
    # two concurrent calls: least_conn puts the second websocket on the other bot
    with connect(f"{proxy.wss_url}/ws", ssl=proxy.ssl_context(), open_timeout=15) as one, \
            connect(f"{proxy.wss_url}/ws", ssl=proxy.ssl_context(), open_timeout=15) as two:
        first, second = json.loads(one.recv(timeout=10))["server"], json.loads(two.recv(timeout=10))["server"]
    assert {first, second} == {"bot-a", "bot-b"}


def test_a_reload_keeps_a_call_running(stack):
    proxy, _ = stack
    with connect(f"{proxy.wss_url}/ws", ssl=proxy.ssl_context(), open_timeout=15) as call:
        server = json.loads(call.recv(timeout=10))["server"]
        old_workers = {w.pid for w in proxy.workers}
        proxy.reload()
        deadline = time.monotonic() + 10
        while not (set(proxy.current_workers()) - old_workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(proxy.current_workers()) - old_workers, "nginx started no new workers"
        for i in range(5):  # the call goes on through its old worker
            call.send(f"after-reload-{i}")
            assert call.recv(timeout=10) == f"{server}:after-reload-{i}"
        with connect(f"{proxy.wss_url}/ws", ssl=proxy.ssl_context(), open_timeout=15) as new_call:
            assert json.loads(new_call.recv(timeout=10))["server"] in ("bot-a", "bot-b")


def test_only_the_bot_paths_are_public(stack):
    proxy, seen = stack
    for path in ("/metrics", "/stats", "/"):
        try:
            urllib.request.urlopen(f"{proxy.https_url}{path}", timeout=5, context=proxy.ssl_context())
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 404, path
    with urllib.request.urlopen(f"{proxy.https_url}/healthz", timeout=5, context=proxy.ssl_context()) as r:
        assert r.status == 200
    assert "/metrics" not in seen["bot-a"] + seen["bot-b"]
    with pytest.raises(urllib.error.HTTPError) as e:  # GET on the webhook is refused
        urllib.request.urlopen(f"{proxy.https_url}/twiml", timeout=5, context=proxy.ssl_context())
    assert e.value.code == 403


def test_plain_http_redirects_to_https(stack):
    proxy, _ = stack

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(f"{proxy.http_url}/twiml", timeout=5)
    assert e.value.code == 301 and e.value.headers["Location"].startswith("https://127.0.0.1")


def test_the_template_keeps_every_line_the_fixture_rewrites(tmp_path):
    text = NGINX_CONF.read_text()
    kwargs = dict(prefix=tmp_path, http_port=1, https_port=2, upstreams=["127.0.0.1:3"], cert=tmp_path / "c", key=tmp_path / "k")
    rendered = render_config(text, **kwargs)
    assert "bot-1:8765" not in rendered and "listen 127.0.0.1:2 ssl;" in rendered
    broken = "\n".join(line for line in text.splitlines() if "test: listen https" not in line)
    with pytest.raises(NginxTemplateError, match="listen https"):
        render_config(broken, **kwargs)
