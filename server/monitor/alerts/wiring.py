"""Attaching KPIs, alerts and email to the server app (`server.app.App`).

    runner = attach(app)      # in App.__init__: registers the writer and agent listeners
    runner.start()            # in App.start
    runner.stop()             # in App.stop, after the writer has flushed

KPIs read stored readings through the SQLite store's query API. With the
InfluxDB sink there is no reader yet: KPIs are then not computed (logged
once at start), while deadman and metric-threshold alerts still work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from greenmine.server.monitor.alerts.runner import MonitorRunner
from greenmine.server.monitor.alerts.service import Monitor
from greenmine.server.monitor.kpi.store import Point, StoreSource

log = logging.getLogger(__name__)


class _NoSource:
    def points(self, site: str, metric: str, start: float, end: float) -> list[Point]:
        return []


def attach(app, clock: Callable[[], float] = time.time) -> MonitorRunner:
    from greenmine.server.config import SqliteStoreConfig

    cfg = app.cfg
    closers = []
    if isinstance(cfg.store, SqliteStoreConfig):
        from greenmine.server.store.sqlite import SqliteReader

        reader = SqliteReader(cfg.resolve(cfg.store.path))
        closers.append(reader.close)
        source = StoreSource(reader)
    else:
        log.warning("KPIs need the SQLite store's query API; with store kind %r only deadman and metric alerts run",
                    cfg.store.kind)
        source = _NoSource()
    monitor = Monitor.from_config(cfg, source, clock=clock)
    runner = MonitorRunner(monitor, closers=closers)
    app.writer.add_listener(runner.on_readings)
    app.agents.add_listener(runner.on_agent)
    return runner
