"""The web role: the officers' console on `[web] host:port` (127.0.0.1:8470 by default).

    role = WebRole(cfg, metrics=metrics, health=app.health, clock=clock)
    role.start() ... role.stop()

It reads the monitor's KPI store and alert state, the store (or the monitor's
replica) and the spool through `server.web.data.ConsoleData`, and writes only
acknowledgements (to the alert state) and its own users database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from greenmine.server.web.app import WebContext, create_app
from greenmine.server.web.config import web_config
from greenmine.server.web.data import ConsoleData
from greenmine.server.web.server import WebServer
from greenmine.server.web.users import UserDb

log = logging.getLogger(__name__)


class WebRole:
    def __init__(self, cfg, *, metrics=None, health: Callable[[], dict] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.web = web_config(cfg)
        self.console = ConsoleData(cfg, clock=clock)
        try:
            self.users = UserDb(cfg.resolve(self.web.users_db))
            self.ctx = WebContext(cfg, web=self.web, metrics=metrics, health=health, console=self.console,
                                  alerts=self.console.alerts, users=self.users, clock=clock)
            self.server = WebServer(create_app(self.ctx), self.web.host, self.web.port, name="greenmine-web")
        except BaseException:
            self.console.close()
            raise
        self.port = self.server.port

    @property
    def url(self) -> str:
        host = self.web.host if ":" not in self.web.host else f"[{self.web.host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self.server.start()
        log.info("web: console on %s (%d user(s))", self.url, self.users.count())
        if self.users.count() == 0:
            log.warning("web: no users yet: create the first with 'greenmine users add NAME --role operator --config FILE'")

    def stop(self) -> None:
        self.server.stop()
        self.close()

    def close(self) -> None:
        self.console.close()
        self.users.close()
