"""Serving an ASGI app with uvicorn on a socket bound up front (shared by the server and the simulators).

    sock = listen("127.0.0.1", 0, "greenmine-web")     # OSError -> ListenError naming the address
    server = uvicorn.Server(config(app))

    # on an asyncio loop that is already running (the simulators' control interface):
    handle = await serve_in_loop(app, "127.0.0.1", 0, name="sim-control")
    handle.port; handle.close(); await handle.wait_closed()

Binding first means a port in use fails where the server is built, and the port
(0: any free one) is known before the first request. Access logs are off and the
`Server:` header is not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import uvicorn


class ListenError(OSError):
    """The address cannot be bound; the message names it."""


def listen(host: str, port: int, name: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenError(f"{name}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def config(app, *, graceful_s: float = 5) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                          timeout_graceful_shutdown=graceful_s, server_header=False)


class _NoSignals(uvicorn.Server):
    """The caller owns the process's signals (uvicorn would take SIGINT/SIGTERM while it serves)."""

    def capture_signals(self):  # uvicorn >= 0.29
        return contextlib.nullcontext()

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


class InLoop:
    """uvicorn serving on the current loop, as a task; `close()` then `await wait_closed()` stops it."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, task: asyncio.Task) -> None:
        self._server, self._sock, self._task = server, sock, task
        self.port: int = sock.getsockname()[1]

    def close(self) -> None:
        self._server.should_exit = True

    async def wait_closed(self) -> None:
        try:
            await self._task
        finally:
            self._sock.close()


async def serve_in_loop(app, host: str, port: int, *, name: str, graceful_s: float = 2) -> InLoop:
    sock = listen(host, port, name)
    server = _NoSignals(config(app, graceful_s=graceful_s))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name=name)
    deadline = time.monotonic() + 10
    while not server.started:  # bound already: this is uvicorn's start-up, a few loop turns
        if task.done() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            if task.done():
                task.result()
            raise ListenError(f"{name}: the HTTP server did not start")
        await asyncio.sleep(0.01)
    return InLoop(server, sock, task)
