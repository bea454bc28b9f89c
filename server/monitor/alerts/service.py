"""The monitor: KPI engine → alert engine → email outbox, as one unit the server runs.

    mon = Monitor.from_config(server_cfg, source)   # source: a kpi.store.ReadingSource over the store
    mon.on_readings(readings)  # post-write hook: the StoredReadings of each write the store took
    mon.on_batch(batch)        # the same for one TelemetryBatch (tools, tests)
    mon.on_status(status)      # agent birth / will messages
    mon.tick()                 # periodically (cheap; does work every alerts.tick_interval_s of the clock)
    mon.close()

State lives in two SQLite files (KPI store; alert state + outbox), so a
restart continues where it stopped. Time comes from the injected clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from greenmine.server.monitor.alerts.config import AlertsConfig
from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.server.config import SiteConfig, SmtpConfig
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.monitor.kpi.engine import KpiEngine
from greenmine.server.monitor.kpi.store import KpiStore, ReadingSource
from greenmine.server.notify.config import NotifyConfig
from greenmine.server.notify.eml import EmlDirTransport
from greenmine.server.notify.outbox import Notifier
from greenmine.server.notify.templates import Templates

log = logging.getLogger(__name__)


class Monitor:
    def __init__(
        self,
        *,
        sites: list[SiteConfig],
        source: ReadingSource,
        kpi_db: str | Path,
        alerts_db: str | Path,
        kpi: KpiConfig | None = None,
        alerts: AlertsConfig | None = None,
        notify: NotifyConfig | None = None,
        smtp: SmtpConfig | None = None,
        eml_dir: str | Path | None = None,
        templates_dir: str | Path | None = None,
        default_recipients: list[str] | None = None,
        clock: Callable[[], float] = time.time,
        ssl_context=None,
    ) -> None:
        self.clock = clock
        self.alerts_cfg = alerts or AlertsConfig()
        notify = notify or NotifyConfig()
        for p in (Path(kpi_db), Path(alerts_db)):
            p.parent.mkdir(parents=True, exist_ok=True)
        self.kpi_store = KpiStore(kpi_db)
        self.kpis = KpiEngine(kpi or KpiConfig(), sites, source, self.kpi_store)
        self.alerts = AlertEngine(self.alerts_cfg, sites, open_db(alerts_db), default_recipients=default_recipients, clock=clock)
        if smtp is not None:
            from greenmine.server.notify.smtp import SmtpTransport

            transport = SmtpTransport(smtp, ssl_context=ssl_context)
        else:
            transport = EmlDirTransport(eml_dir or Path(alerts_db).parent / notify.eml_dir)
        self.notifier = Notifier(notify, open_db(alerts_db), transport, templates=Templates(templates_dir), clock=clock)
        self._next_run = float("-inf")

    @classmethod
    def from_config(cls, cfg, source: ReadingSource, *, clock: Callable[[], float] = time.time, **kw) -> Monitor:
        """Build from a `server.config.ServerConfig` (its kpi, alerts, notify and smtp sections)."""
        kpi_db = cfg.resolve(cfg.alerts.db_path).with_name("kpi.sqlite")
        return cls(
            sites=cfg.sites, source=source, kpi_db=kw.pop("kpi_db", kpi_db), alerts_db=cfg.resolve(cfg.alerts.db_path),
            kpi=cfg.kpi, alerts=cfg.alerts, notify=cfg.notify, smtp=cfg.smtp, eml_dir=cfg.resolve(cfg.notify.eml_dir),
            templates_dir=cfg.resolve(cfg.notify.templates_dir) if cfg.notify.templates_dir else None,
            default_recipients=cfg.default_recipients, clock=clock, **kw,
        )

    def on_batch(self, batch) -> None:
        """A schemas.telemetry.TelemetryBatch already committed to the store (tools and tests): its rows go the
        writer's way, through `on_readings`."""
        self.on_readings([
            (batch.site, batch.agent, r.device, r.metric, round(r.ts.timestamp() * 1000), r.value, r.unit,
             getattr(r.quality, "value", r.quality))
            for r in batch.readings
        ])

    def on_readings(self, readings) -> None:
        """Post-write hook for the store writer: a sequence of stored readings, any sites and agents, as
        StoredReadings or plain tuples in their field order (site, agent, device, metric, ts_ms, value, unit, quality).
        The KPI engine and the alerts get a few entries per device: agents heard from, each device's latest good
        timestamp, the (site, metric, ts) of KPI inputs, and the readings of metrics with a threshold rule."""
        now = self.clock()
        alerts = self.alerts
        kpi_metrics, rule_metrics = self.kpis.metrics, alerts.metric_rule_metrics
        seen: dict[tuple[str, str], dict[str, float]] = {}  # heard from, even with no good reading
        kpi_ts: dict[str, dict[str, set[int]]] = {}
        for site, agent, device, metric, ts_ms, value, unit, quality in readings:
            devices = seen.setdefault((site, agent), {})
            if quality != "good":
                continue
            ts = ts_ms / 1000.0
            if ts > devices.get(device, float("-inf")):
                devices[device] = ts
            if metric in rule_metrics:
                alerts.observe_metric(site, device, metric, ts, value, unit, now=now)
            if metric in kpi_metrics:
                kpi_ts.setdefault(site, {}).setdefault(metric, set()).add(ts_ms)
        for site, by_metric in kpi_ts.items():
            self.kpis.note_batch(site, {metric: [ms / 1000.0 for ms in sorted(t)] for metric, t in by_metric.items()})
        alerts.observe_seen_many(seen, now=now)

    def on_agent(self, info, previous=None) -> None:
        """Agent registry listener: `info` has site, agent and state ("online" | "offline")."""
        self.alerts.observe_agent_status(info.site, info.agent, info.state == "online", now=self.clock())

    def on_connection(self, up: bool) -> None:
        """The server's own MQTT link: while it is down, silence is ours, not the devices'."""
        self.alerts.ingest_connected(up, now=self.clock())

    def on_status(self, status) -> None:
        """An agent's retained status: `online` birth or `offline` will (schemas.status.AgentStatus)."""
        self.alerts.observe_agent_status(status.site, status.agent, getattr(status.state, "value", status.state) == "online",
                                         now=self.clock())

    def tick(self, force: bool = False) -> int:
        """Run closed KPI periods, deadman checks, reminders and mail delivery. Returns emails sent."""
        now = self.clock()
        if not force and now < self._next_run:
            return self.notifier.deliver(now) if self.notifier.has_due(now) else 0
        self._next_run = now + self.alerts_cfg.tick_interval_s
        values = self.kpis.run_due(now)
        self.alerts.observe_kpis(values, now=now)
        self.alerts.tick(now)
        return self.notifier.run_once(now)

    def close(self) -> None:
        self.kpi_store.close()
        self.alerts.db.close()
        self.notifier.db.close()
