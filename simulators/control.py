"""The control interface of a running simulated site: small HTTP/JSON on 127.0.0.1.

    GET  /state                      clock, scenarios, ports, counters, every device's served values
    GET  /scenarios                  the scenarios that exist, with descriptions
    POST /scenarios   {"scenarios": ["reuse_drop"], "device": null}     replace site (or device) scenarios
    POST /inject      {"device": "crusher-meter", "scenario": "device_offline"}
    POST /clear       {"device": "crusher-meter"}                        back to the configured scenarios
    POST /clock       {"time": "2025-06-02T21:59:00", "speed": 60}       either field may be left out

Every answer is JSON; errors are 400 {"error": "..."} naming the problem (404 for
an unknown endpoint, 413 for a body over 64 KiB). It binds to 127.0.0.1 only: it
is a test and commissioning aid, not an API. A Starlette app served by uvicorn
(`greenmine.asgi.serve_in_loop`) on the site's own asyncio loop, so a request
acts on the site between two Modbus requests, as before.
"""

from __future__ import annotations

import json
from datetime import datetime

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from greenmine.asgi import serve_in_loop

MAX_BODY_BYTES = 64 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _json(status: int, doc: dict) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(doc, ensure_ascii=False, default=str)), status)


async def _body(request: Request) -> dict:
    length = request.headers.get("content-length", "0") or "0"
    try:
        declared = int(length)
    except ValueError:
        raise _BadRequest(400, f"bad request: Content-Length {length!r}") from None
    if declared > MAX_BODY_BYTES:
        raise _BadRequest(413, f"body over {MAX_BODY_BYTES} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _BadRequest(413, f"body over {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(400, f"bad request: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest(400, "bad request: body must be a JSON object")
    return body


def build_app(site) -> Starlette:
    from greenmine.simulators.site import SimError

    def endpoint(fn, *, reads_body: bool = False):
        async def handle(request: Request) -> JSONResponse:
            try:
                body = await _body(request) if reads_body else {}
                return _json(200, fn(body))
            except _BadRequest as exc:
                return _json(exc.status, {"error": exc.message})
            except SimError as exc:
                return _json(400, {"error": str(exc)})

        return handle

    def state(_body: dict) -> dict:
        return site.state()

    def scenarios(_body: dict) -> dict:
        return {n: s.description for n, s in sorted(site.scenarios.items())}

    def set_scenarios(body: dict) -> dict:
        names = body.get("scenarios")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SimError('"scenarios" must be a list of names')
        site.set_scenarios(names, body.get("device"))
        return {"ok": True}

    def inject(body: dict) -> dict:
        site.inject(str(body.get("device")), str(body.get("scenario")))
        return {"ok": True}

    def clear(body: dict) -> dict:
        site.clear(str(body.get("device")))
        return {"ok": True}

    def clock(body: dict) -> dict:
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
        return site.clock.state()

    async def unknown(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            return _json(404, {"error": f"no such endpoint: {request.method} {request.url.path}"})
        return _json(exc.status_code, {"error": str(exc.detail)})

    routes = [
        Route("/state", endpoint(state), methods=["GET"]),
        Route("/scenarios", endpoint(scenarios), methods=["GET"]),
        Route("/scenarios", endpoint(set_scenarios, reads_body=True), methods=["POST"]),
        Route("/inject", endpoint(inject, reads_body=True), methods=["POST"]),
        Route("/clear", endpoint(clear, reads_body=True), methods=["POST"]),
        Route("/clock", endpoint(clock, reads_body=True), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: unknown})


async def start_control(site, port: int):
    """Serve the control interface on 127.0.0.1:port (0: a free port); (handle with close()/wait_closed(), port)."""
    handle = await serve_in_loop(build_app(site), "127.0.0.1", port, name="sim-control")
    return handle, handle.port
