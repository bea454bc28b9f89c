"""uvicorn in a thread: the server's HTTP endpoints keep App.start()/stop() as they are.

    srv = WebServer(asgi_app, "127.0.0.1", 0, name="greenmine-web")
    srv.start(); srv.port; ...; srv.stop()

The socket is bound (`greenmine.asgi.listen`) in the constructor, so a port in use fails at build time
and `port` is known (port 0: any free port) before start.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import uvicorn

from greenmine import asgi
from greenmine.server.errors import ServerError

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, app, host: str, port: int, *, name: str = "greenmine-web") -> None:
        try:
            self._sock = asgi.listen(host, port, name)
        except asgi.ListenError as exc:
            raise ServerError(str(exc)) from None
        self.host = host
        self.port = self._sock.getsockname()[1]
        self.name = name
        self._server = uvicorn.Server(asgi.config(app))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        except Exception:  # noqa: BLE001
            log.exception("%s: the HTTP server stopped", self.name)
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    @property
    def alive(self) -> bool:
        """Its thread is running (for the systemd watchdog)."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(15)
        self._sock.close()
