"""The monitor role: its own consumer of the stream → KPIs → alerts → email.

    role = MonitorRole(cfg, clock=clock, sites=None, partition=None)
    role.start() ... role.stop()

How it learns of new data: from the broker, like ingest, on its own
persistent session (`cfg.monitor_client_id`), subscribed to the telemetry and
status of the sites it judges (`server.ingest.consumer`). It keeps the series
it reads in its own replica (`server.store.replica`), so KPIs, KPI alert rules
and their emails are the same whichever store ingest writes to, and a monitor
can run on another host than ingest.

Two threads: the consumer's, which commits each group (replica, dirty KPI
periods, metric rules, agent states) before it is acknowledged; and the tick
thread, which closes KPI periods, runs the deadman and lifecycle checks and
the supervision's overdue-rectification check (`supervision.overdue`), and
delivers email. A lock keeps them from touching the monitor's state at once,
except while the tick computes the KPI periods that closed: the consumer
goes on committing meanwhile, and a period it marks dirty again is computed
again on the next tick (`KpiEngine.take_due`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from greenmine.clock import ClockMode
from greenmine.latch import Latch
from greenmine.schemas import AgentStatus, TelemetryBatch
from greenmine.server.ingest.consumer import StreamConsumer
from greenmine.server.monitor.alerts.service import Monitor
from greenmine.server.monitor.kpi.periods import SLOT_S

log = logging.getLogger(__name__)

#: more sites than this: one wildcard subscription filtered here, instead of two filters per site
_MAX_SITE_FILTERS = 200
_PRUNE_EVERY_S = 3600.0


class MonitorRole:
    def __init__(self, cfg, *, clock: Callable[[], float] = time.time, sites: list[str] | None = None,
                 partition: str | None = None, tick_s: float | None = None, on_moved=None) -> None:
        """`tick_s`: real seconds between ticks; default once a second, and at least twice per
        `alerts.tick_interval_s` of an accelerated clock (a demo or a benchmark), at most 20 times a second."""
        unknown = sorted(set(sites or ()) - {s.id for s in cfg.sites})
        if unknown:
            from greenmine.server.errors import ServerError

            raise ServerError(f"monitor: --sites names sites that are not configured: {', '.join(unknown)}")
        judged = [s for s in cfg.sites if (sites is None or s.id in sites) and cfg.monitor.judges(s.id, partition)]
        self.site_ids = frozenset(s.id for s in judged)
        self.clock = clock
        speed = cfg.clock.speed if cfg.clock.mode is ClockMode.ACCELERATED else 1.0
        if tick_s is None:
            tick_s = min(1.0, max(0.05, cfg.alerts.tick_interval_s / (2 * speed)))
        self.tick_s = tick_s
        self._speed = speed  # simulated seconds per real one, to wake at the next 15-minute edge
        self.monitor = Monitor.from_config(cfg, sites=judged, clock=clock, on_moved=on_moved)
        few = len(self.site_ids) <= _MAX_SITE_FILTERS
        self.consumer = StreamConsumer(
            cfg.mqtt, cfg.wire_limits(), self, client_id=cfg.monitor_client_id, sites=self.site_ids if few else None,
            accept=self.site_ids.__contains__, clock=clock, name="monitor", resolve=cfg.resolve,
        )
        from greenmine.server.supervision.overdue import OverdueWatch

        self.overdue = OverdueWatch(cfg, self.monitor.notifier)  # overdue rectifications -> their officers
        self._lock = threading.Lock()
        self._link: bool | None = None  # the broker link's last change, applied on the tick thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0
        self.ticks = 0

    # --- StreamHandler (the consumer's thread; paho's for on_connection) ----

    def on_messages(self, batches: list[TelemetryBatch], statuses: list[AgentStatus]) -> None:
        with self._lock:
            if self.consumer.waiting >= self.consumer.max_group // 2:
                # half a group more already waits: we are behind the stream, silence may be ours
                self.monitor.alerts.behind(self.clock())
            self.monitor.on_messages(batches, statuses)

    def on_connection(self, up: bool) -> None:
        self._link = up  # paho's thread must not wait for the lock (an SMTP delivery may hold it)

    # --- lifecycle ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.consumer.connected

    def stalled(self) -> list[str]:
        """Its threads that are not running (for the systemd watchdog)."""
        tick = [] if self._thread is not None and self._thread.is_alive() else ["monitor (tick thread)"]
        return tick + self.consumer.stalled()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="greenmine-monitor-tick", daemon=True)
        self._thread.start()
        self.consumer.start()
        log.info("monitor: judging %d site(s) as %s", len(self.site_ids), self.consumer.mqtt.client_id)

    def stop(self) -> None:
        self.consumer.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self.monitor.close()

    @contextlib.contextmanager
    def _unlocked(self):
        """Let the consumer commit while the tick computes closed KPI periods (seconds, at a day's close for many
        sites): the periods it marks again meanwhile stay dirty for the next tick (`KpiEngine.take_due`)."""
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()

    def _wait(self) -> float:
        """Real seconds to the next tick: `tick_s`, or less to wake just after the next 15-minute edge of the
        clock, where KPI periods end (`Monitor.tick` computes them then)."""
        now = self.clock()
        to_edge = ((now // SLOT_S + 1) * SLOT_S - now) / self._speed
        return min(self.tick_s, to_edge + 0.001)

    def _run(self) -> None:
        latch = Latch(log)
        while not self._stop.wait(self._wait()):
            try:
                with self._lock:
                    link, self._link = self._link, None
                    if link is not None:
                        self.monitor.on_connection(link)
                    self.monitor.tick(unlocked=self._unlocked)
                    now = self.clock()
                    if now >= self._next_prune:
                        self._next_prune = now + _PRUNE_EVERY_S
                        self.monitor.replica.prune(int(now * 1000))
                        self.monitor.rollups.prune(now - self.monitor.replica.retention_ms / 1000)
                        self.monitor.kpi_store.prune_increments(now - self.monitor.replica.retention_ms / 1000)
                    self.overdue.tick(now)
                self.ticks += 1
                latch.ok("monitor: working again")
            except Exception as exc:  # noqa: BLE001
                # keep the role running; the failed step is retried by the next tick (dirty marks persist)
                latch.fail("monitor: tick failed: %s", exc, exc_info=True)
