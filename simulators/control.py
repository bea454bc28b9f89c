"""The control interface of a running simulated site: small HTTP/JSON on 127.0.0.1.

    GET  /state                      clock, scenarios, ports, counters, every device's served values
    GET  /scenarios                  the scenarios that exist, with descriptions
    POST /scenarios   {"scenarios": ["reuse_drop"], "device": null}     replace site (or device) scenarios
    POST /inject      {"device": "crusher-meter", "scenario": "device_offline"}
    POST /clear       {"device": "crusher-meter"}                        back to the configured scenarios
    POST /clock       {"time": "2025-06-02T21:59:00", "speed": 60}       either field may be left out

Every answer is JSON; errors are 400 {"error": "..."} naming the problem. It
binds to 127.0.0.1 only: it is a test and commissioning aid, not an API.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

MAX_BODY_BYTES = 64 * 1024


def _handle(site, method: str, path: str, body: dict) -> tuple[int, dict]:
    from greenmine.simulators.site import SimError

    try:
        if method == "GET" and path == "/state":
            return 200, site.state()
        if method == "GET" and path == "/scenarios":
            return 200, {n: s.description for n, s in sorted(site.scenarios.items())}
        if method == "POST" and path == "/scenarios":
            names = body.get("scenarios")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise SimError('"scenarios" must be a list of names')
            site.set_scenarios(names, body.get("device"))
            return 200, {"ok": True}
        if method == "POST" and path == "/inject":
            site.inject(str(body.get("device")), str(body.get("scenario")))
            return 200, {"ok": True}
        if method == "POST" and path == "/clear":
            site.clear(str(body.get("device")))
            return 200, {"ok": True}
        if method == "POST" and path == "/clock":
            if "time" in body:
                try:
                    when = datetime.fromisoformat(str(body["time"]))
                except ValueError:
                    raise SimError(f'"time": not an ISO 8601 time: {body["time"]!r}') from None
                site.set_clock(when)
            if "speed" in body:
                speed = body["speed"]
                if not isinstance(speed, (int, float)) or speed < 0:
                    raise SimError('"speed" must be a number >= 0 (0 freezes the clock)')
                site.clock.set_speed(float(speed))
            return 200, site.clock.state()
        return 404, {"error": f"no such endpoint: {method} {path}"}
    except SimError as exc:
        return 400, {"error": str(exc)}


async def _serve(site, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    status, doc = 400, {"error": "bad request"}
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            status, doc = 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
        else:
            raw = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            status, doc = _handle(site, method.upper(), path.split("?", 1)[0], body)
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError) as exc:
        status, doc = 400, {"error": f"bad request: {exc}"}
    payload = json.dumps(doc, ensure_ascii=False, default=str).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}.get(status, "Error")
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        f"Connection: close\r\n\r\n".encode() + payload
    )
    try:
        await writer.drain()
    finally:
        writer.close()


async def start_control(site, port: int) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(lambda r, w: _serve(site, r, w), "127.0.0.1", port)
    return server, server.sockets[0].getsockname()[1]
