"""Running the Monitor inside the server process.

    runner = MonitorRunner(monitor)
    app.writer.add_listener(runner.on_readings)   # writer thread: only enqueues
    app.agents.add_listener(runner.on_agent)      # ingest thread: only enqueues
    runner.start() ... runner.stop()

All Monitor work happens on the runner's own thread, so KPI recomputation and
SMTP never slow the writer. The queue is bounded (`max_pending` batches) and
its full-policy is `block`: a slow monitor slows the writer (whose spool keeps
the data safe) instead of losing dirty-period marks.
"""

from __future__ import annotations

import logging
import queue
import threading

from greenmine.server.monitor.alerts.api import AlertsApi
from greenmine.server.monitor.alerts.service import Monitor

log = logging.getLogger(__name__)


class MonitorRunner:
    def __init__(self, monitor: Monitor, *, tick_s: float = 1.0, max_pending: int = 1000, closers=()) -> None:
        self.monitor = monitor
        self._closers = list(closers)
        self.tick_s = tick_s
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.api = AlertsApi(monitor.alerts)

    def on_readings(self, readings) -> None:
        self._q.put(("readings", readings))

    def on_agent(self, info, previous=None) -> None:
        self._q.put(("agent", info))

    def on_connection(self, up: bool) -> None:
        self._q.put(("connection", up))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="greenmine-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._q.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.monitor.close()
        for close in self._closers:
            close()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                kind, item = self._q.get(timeout=self.tick_s)
            except queue.Empty:
                kind, item = "tick", None
            try:
                if kind == "readings":
                    self.monitor.on_readings(item)
                elif kind == "agent":
                    self.monitor.on_agent(item)
                elif kind == "connection":
                    self.monitor.on_connection(item)
                if kind != "stop":
                    self.monitor.tick()
                if failing:
                    log.info("monitor: working again")
                    failing = False
            except Exception:
                # keep the server running; the failed step is retried by the next tick (dirty marks persist)
                if not failing:
                    log.exception("monitor: %s failed", kind)
                    failing = True
