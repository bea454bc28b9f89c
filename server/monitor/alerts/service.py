"""The monitor: KPI engine → alert engine → email outbox, as one unit the server runs.

    mon = Monitor.from_config(server_cfg)
    mon.on_messages(batches, statuses)   # a group from the monitor's consumer of the stream (server.monitor.role)
    mon.tick()                 # periodically (cheap; does work every alerts.tick_interval_s of the clock)
    mon.close()

State lives in three SQLite files: the replica of the series the monitor
reads (`server.store.replica`) with the KPIs' rollups of it
(`server.monitor.kpi.rollups`), the KPI store, and the alert state + email
outbox. So a restart continues where it stopped, and nothing depends on which
time-series store ingest writes to. Time comes from the injected clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from greenmine.server.monitor.alerts.config import AlertsConfig
from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.schemas import AgentStatus, TelemetryBatch
from greenmine.server.config import SiteConfig, SmtpConfig
from greenmine.server.ingest.validation import reading_rows
from greenmine.server.store.replica import SeriesReplica
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.monitor.kpi.engine import KpiEngine
from greenmine.server.monitor.kpi.periods import SLOT_S
from greenmine.server.monitor.kpi.store import KpiStore, StoreSource
from greenmine.server.notify.config import NotifyConfig
from greenmine.server.notify.eml import EmlDirTransport
from greenmine.server.notify.outbox import Notifier
from greenmine.server.notify.templates import Templates

log = logging.getLogger(__name__)


def kpi_db_path(cfg) -> Path:
    """The KPI store beside the alert state: alerts.sqlite -> kpi.sqlite, alerts-2.sqlite (an `--instance 2`
    monitor) -> kpi-2.sqlite."""
    alerts_db = cfg.resolve(cfg.alerts.db_path)
    stem = alerts_db.stem
    return alerts_db.with_name(f"kpi{stem[6:] if stem.startswith('alerts') else '-' + stem}.sqlite")


class Monitor:
    def __init__(
        self,
        *,
        sites: list[SiteConfig],
        replica: SeriesReplica,
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
        on_moved=None,
        console_url: str | None = None,
    ) -> None:
        self.clock = clock
        self.alerts_cfg = alerts or AlertsConfig()
        notify = notify or NotifyConfig()
        for p in (Path(kpi_db), Path(alerts_db)):
            p.parent.mkdir(parents=True, exist_ok=True)
        self.kpi_store = KpiStore(kpi_db, on_moved=on_moved)
        self.replica = replica
        self.kpis = KpiEngine(kpi or KpiConfig(), sites, StoreSource(replica), self.kpi_store)
        self.rollups = self.kpis.use_rollups(replica)  # in the replica's file: committed with its readings
        self.alerts = AlertEngine(self.alerts_cfg, sites, open_db(alerts_db, on_moved=on_moved), default_recipients=default_recipients, clock=clock,
                                  kpi_values=self.kpi_store.values)
        if smtp is not None:
            from greenmine.server.notify.smtp import SmtpTransport

            transport = SmtpTransport(smtp, ssl_context=ssl_context)
        else:
            transport = EmlDirTransport(eml_dir or Path(alerts_db).parent / notify.eml_dir)
        if replica.metrics is None:  # keep only what the KPIs and the metric rules read back
            replica.metrics = self.replica_metrics
        self.notifier = Notifier(notify, open_db(alerts_db), transport, templates=Templates(templates_dir, console_url=console_url), clock=clock)
        self._next_run = float("-inf")
        self._slot = None  # the SLOT_S slot of the last run: every KPI period ends on a slot edge

    @classmethod
    def from_config(cls, cfg, *, sites: list[SiteConfig] | None = None, clock: Callable[[], float] = time.time,
                    **kw) -> Monitor:
        """Build from a `server.config.ServerConfig` (its monitor, kpi, alerts, notify and smtp sections), for
        `sites` (default: every configured site). The KPI store sits beside the alert state: alerts.sqlite ->
        kpi.sqlite, alerts-2.sqlite (`server run --instance 2`) -> kpi-2.sqlite."""
        alerts_db = cfg.resolve(cfg.alerts.db_path)
        kpi_db = kpi_db_path(cfg)
        replica = kw.pop("replica", None) or SeriesReplica(cfg.resolve(cfg.monitor.replica_path),
                                                           retention_days=cfg.monitor.replica_retention_days,
                                                           on_moved=kw.get("on_moved"), owner="monitor")
        return cls(
            sites=cfg.sites if sites is None else sites, replica=replica, kpi_db=kw.pop("kpi_db", kpi_db), alerts_db=alerts_db,
            kpi=cfg.kpi, alerts=cfg.alerts, notify=cfg.notify, smtp=cfg.smtp, eml_dir=cfg.resolve(cfg.notify.eml_dir),
            templates_dir=cfg.resolve(cfg.notify.templates_dir) if cfg.notify.templates_dir else None,
            default_recipients=cfg.default_recipients, clock=clock,
            console_url=cfg.web.public_url if getattr(cfg, "web", None) is not None else None, **kw,
        )

    def on_messages(self, batches: list[TelemetryBatch], statuses: list[AgentStatus]) -> None:
        """One group of messages from the monitor's own consumer of the stream (`server.ingest.consumer`),
        committed durably before it returns (the consumer acknowledges them then).

        Redelivered and late readings count once: the replica keeps each reading's identity, KPIs read it,
        and only readings new to it reach the metric rules. The KPI periods of every reading, new or not, are
        marked dirty first (idempotent), so a crash between the two commits cannot leave a reading in the
        replica whose periods were never recomputed."""
        now = self.clock()
        # plain tuples in StoredReading's field order (site, agent, device, metric, ts_ms, value, unit,
        # quality), as the replica takes and returns them
        rows = [t for b in batches for t in reading_rows(b)]
        kpi_metrics = self.kpis.metrics
        counters = self.kpis.counter_metrics
        by_site: dict[str, dict[str, list[float]]] = {}
        spans: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
        seen: dict[tuple[str, str], dict[str, float]] = {}
        for site, agent, device, metric, ts_ms, _value, _unit, quality in rows:
            ts = ts_ms / 1000.0
            if metric in kpi_metrics:
                by_site.setdefault(site, {}).setdefault(metric, []).append(ts)
                if metric in counters and quality == "good":
                    span = spans.setdefault(site, {})
                    lo, hi = span.get((device, metric), (ts, ts))
                    span[(device, metric)] = (min(lo, ts), max(hi, ts))
            devices = seen.get((site, agent))
            if devices is None:
                devices = seen[(site, agent)] = {}
            if ts > devices.get(device, float("-inf")):
                devices[device] = ts
        for site, by_metric in by_site.items():
            self.kpis.note_batch(site, by_metric)
        for site, span in spans.items():  # before the rows are stored: it looks up the reads around them
            self.kpis.note_counter_reads(site, span)
        try:
            with self.replica.transaction() as con:
                new = self.replica.add(rows, con)
                self.rollups.add(new, con)
        except BaseException:
            self.rollups.forget()  # its cache ran ahead of what was rolled back
            raise
        rule_metrics = self.alerts.metric_rule_metrics
        for site, _agent, device, metric, ts_ms, value, unit, _quality in new:
            if metric in rule_metrics:
                self.alerts.observe_metric(site, device, metric, ts_ms / 1000.0, value, unit, now=now)
        if seen:
            self.alerts.observe_seen_many(seen, now=now)
        for st in statuses:
            self.alerts.observe_agent_status(st.site, st.agent, st.state.value == "online", now=now)
            if st.counters:
                self.kpis.note_counters(st.site, st.agent, [(c.device, c.metric, c.width_bits, c.scale)
                                                            for c in st.counters], now)

    @property
    def replica_metrics(self) -> frozenset[str]:
        """The metrics the monitor reads back: what the KPIs and the metric rules need."""
        return frozenset(self.kpis.metrics | self.alerts.metric_rule_metrics)

    def on_agent(self, info, previous=None) -> None:
        """Agent registry listener: `info` has site, agent and state ("online" | "offline")."""
        self.alerts.observe_agent_status(info.site, info.agent, info.state == "online", now=self.clock())

    def on_connection(self, up: bool) -> None:
        """The server's own MQTT link: while it is down, silence is ours, not the devices'."""
        self.alerts.ingest_connected(up, now=self.clock())

    def tick(self, force: bool = False, unlocked: Callable[[], AbstractContextManager] = nullcontext) -> int:
        """Run closed KPI periods, deadman checks, reminders and mail delivery. Returns emails sent.

        Runs every `alerts.tick_interval_s`, and at once when a 15-minute slot edge has passed since the last
        run: every KPI period ends on one, so a closed period is computed within a call of its end.

        `unlocked()`: a context in which the caller lets `on_messages` run while the closed periods are computed
        (the monitor role releases its lock); the rest runs where the caller called it."""
        now = self.clock()
        slot = int(now // SLOT_S)
        if not force and now < self._next_run and slot == self._slot:
            return self.notifier.deliver(now) if self.notifier.has_due(now) else 0
        self._next_run = now + self.alerts_cfg.tick_interval_s
        self._slot = slot
        for site, by_metric in self.rollups.rebuild_stale().items():  # meters that got late reads
            self.kpis.note_batch(site, by_metric)
        due = self.kpis.take_due(now)
        with unlocked():
            values = self.kpis.compute_due(due, now)
        self.kpis.finish_due(due)
        self.alerts.observe_kpis(values, now=now)
        self.alerts.tick(now)
        return self.notifier.run_once(now)

    def close(self) -> None:
        self.replica.close()
        self.kpi_store.close()
        self.alerts.close()
        self.notifier.db.close()
