"""Runtime control of a running emulator: a tiny loopback HTTP/JSON endpoint, and the fault-spec parser
shared with the CLI.

Endpoints (JSON bodies and answers)::

    GET  /faults                 armed faults
    GET  /streams                one summary per stream
    POST /faults/<kind>          kind: latency|stall|abort|close|refuse|down|clear; body = its parameters
    POST /reset                  forget records, sessions and faults

e.g. ``curl -XPOST 127.0.0.1:8099/faults/abort -d '{"after_chunks": 50, "code": "UNAVAILABLE"}'``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from .faults import FaultKind, Faults


class Controllable(Protocol):
    """What the control endpoint needs of an emulator (``SpeechEmulator`` is one; no import of it here)."""

    faults: Faults

    @property
    def streams(self) -> list: ...

    def go_down(self, seconds: float, *, wait: bool = ...) -> None: ...

    def reset(self) -> None: ...


FAULT_KINDS = tuple(k.value for k in FaultKind)
_PARAMS: dict[FaultKind, set[str]] = {
    FaultKind.LATENCY: {"seconds"},
    FaultKind.STALL: {"seconds", "after_s", "after_chunks", "times", "session"},
    FaultKind.ABORT: {"after_s", "after_chunks", "code", "details", "times", "session"},
    FaultKind.CLOSE: {"after_s", "after_chunks", "times", "session"},
    FaultKind.REFUSE: {"count", "code", "details"},
    FaultKind.DOWN: {"seconds"},
    FaultKind.CLEAR: set(),
}


# The type each fault parameter takes; a spec or JSON body with anything else is refused naming the field.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "seconds": (int, float),
    "after_s": (int, float),
    "after_chunks": (int,),
    "times": (int, type(None)),
    "count": (int,),
    "session": (str,),
    "code": (str,),
    "details": (str,),
}
_TYPE_WORDS = {
    "seconds": "a number",
    "after_s": "a number",
    "after_chunks": "an integer",
    "times": "an integer or none (persistent)",
    "count": "an integer",
    "session": "a string",
    "code": "a status code name",
    "details": "a string",
}


def fault_kind(kind: FaultKind | str) -> FaultKind:
    """The :class:`FaultKind` named ``kind``; ``ValueError`` listing the kinds otherwise."""
    try:
        return FaultKind(kind)
    except ValueError:
        raise ValueError(f"unknown fault {kind!r}; use one of {', '.join(FAULT_KINDS)}") from None


def check_fault_params(kind: FaultKind | str, params: dict[str, Any]) -> FaultKind:
    """The fault's kind; ``ValueError`` naming the fault and the field if ``params`` do not fit it."""
    kind = fault_kind(kind)
    unknown = set(params) - _PARAMS[kind]
    if unknown:
        raise ValueError(f"fault {kind.value!r} takes {sorted(_PARAMS[kind])}, not {sorted(unknown)}")
    for key, value in params.items():
        types = _FIELD_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"fault {kind.value!r}: {key} must be {_TYPE_WORDS[key]}, got {value!r}")
    if kind in (FaultKind.STALL, FaultKind.DOWN) and "seconds" not in params:
        raise ValueError(f"fault {kind.value!r} needs seconds")
    return kind


def _coerce(value: str) -> Any:
    if value.lower() in ("none", "persistent"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_fault_spec(spec: str) -> tuple[FaultKind, dict[str, Any]]:
    """``"abort:after_chunks=50,code=UNAVAILABLE"`` -> ``("abort", {...})``; ``"latency:1.5"`` works too."""
    name, _, rest = spec.partition(":")
    kind = fault_kind(name.strip().lower())
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:  # bare value: the kind's main parameter
            key, value = ("count" if kind is FaultKind.REFUSE else "seconds"), part
        key = key.strip()
        value = value.strip()
        # free-text fields stay text; the others are numbers (checked below, naming the field)
        params[key] = value if key in ("session", "code", "details") else _coerce(value)
    return check_fault_params(kind, params), params


def apply_fault(emulator: Controllable, kind: FaultKind | str, params: dict[str, Any]) -> dict[str, Any]:
    """Arm fault ``kind`` with ``params`` (as from JSON or a CLI spec). Raises ValueError on bad input."""
    kind = check_fault_params(kind, params)
    params = dict(params)
    f = emulator.faults
    if kind is FaultKind.LATENCY:
        f.latency(float(params.get("seconds", 0)))
        return {"ok": True}
    if kind is FaultKind.CLEAR:
        f.clear()
        return {"ok": True}
    if kind is FaultKind.REFUSE:
        f.refuse(int(params.get("count", 1)), **{k: v for k, v in params.items() if k != "count"})
        return {"ok": True}
    if kind is FaultKind.DOWN:
        emulator.go_down(float(params["seconds"]), wait=False)
        return {"ok": True}
    if kind is FaultKind.STALL:
        return {"ok": True, "id": f.stall(float(params.pop("seconds")), **params)}
    arm = f.abort if kind is FaultKind.ABORT else f.close
    return {"ok": True, "id": arm(**params)}


def stream_summary(record) -> dict[str, Any]:
    end = record.end
    return {
        "id": record.id,
        "api": record.api,
        "peer": record.peer,
        "session": record.session,
        "config": record.config,
        "recognizer": record.recognizer,
        "requests": record.requests,
        "oversize_requests": record.oversize_requests,
        "chunks": len(record.chunks),
        "audio_bytes": record.audio_bytes,
        "finals": record.transcripts,
        "ended": None if end is None else {"code": end.code.name, "details": end.details, "reason": end.reason.value},
    }


class ControlServer:
    """Minimal HTTP/1.1 JSON server on the emulator's loop (one request per connection)."""

    def __init__(self, emulator: Controllable) -> None:
        self.emulator = emulator
        self._server: asyncio.AbstractServer | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._handle(reader), 5.0)
        except Exception as exc:  # malformed request: answer, never crash the emulator
            status, body = 400, {"ok": False, "error": str(exc) or type(exc).__name__}
        data = json.dumps(body).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) < 2:
            raise ValueError("bad request line")
        method, path = request_line[0].upper(), request_line[1].split("?")[0].rstrip("/")
        length = 0
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > 65536:
            raise ValueError("body too large")
        raw = await reader.readexactly(length) if length else b""
        params = json.loads(raw) if raw.strip() else {}
        if not isinstance(params, dict):
            raise ValueError("body must be a JSON object")
        emu = self.emulator
        if method == "GET" and path == "/faults":
            return 200, emu.faults.describe()
        if method == "GET" and path == "/streams":
            return 200, [stream_summary(s) for s in emu.streams]
        if method == "POST" and path == "/reset":
            emu.reset()
            return 200, {"ok": True}
        if method == "POST" and path.startswith("/faults/"):
            return 200, apply_fault(emu, path.removeprefix("/faults/"), params)
        return 404, {"ok": False, "error": f"no route {method} {path}"}
