"""The alert engine: rule evaluation and the alert lifecycle, persisted in SQLite.

Lifecycle per key (rule, site, subject)::

    (none) --breach--> pending --breach lasts for_s--> firing --clear (with hysteresis)--> resolved
                          \\--no breach--> (dropped)        \\--ack--> firing, acknowledged (no reminders)

Notifications are *events* written in the same SQLite transaction as the state
change that causes them (`alert_events`), so a crash can neither lose one nor
produce one twice; `server.notify` turns undispatched events into emails.

Against email storms:
- hysteresis: a firing alert clears only `clear_hysteresis` past the limit;
- min re-notify: a key sends a *firing* email at most once per
  `min_renotify_s`. A re-breach inside that window waits; if it resolves before
  the window ends, nobody is told (the officer already knows this key flaps).
  Resolution emails go out at once, for alerts whose firing email was sent;
- reminders for unacknowledged firing alerts every `reminder_interval_s`.

Time comes from an injectable clock (`clock()` → epoch seconds); nothing sleeps.
KPI observations are judged at their period end, so replays are deterministic.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from greenmine.server.monitor.alerts import maintenance
from greenmine.server.monitor.alerts.config import AlertsConfig, DeadmanRule, EnergyConsistencyRule, ThresholdRule
from greenmine.server.config import SiteConfig
from greenmine.server.monitor.kpi.energy import daily_of, day_month_deviation
from greenmine.server.monitor.kpi.model import KpiValue, info
from greenmine.server.monitor.kpi.periods import fmt_local
from greenmine.server.monitor.kpi.rounding import default_decimals, round_half_even
from greenmine.sqlite import MovedAside, open_or_move_aside, transaction

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, site TEXT NOT NULL, subject TEXT NOT NULL,
    state TEXT NOT NULL, severity TEXT NOT NULL, opened_ts REAL NOT NULL, fired_ts REAL, resolved_ts REAL,
    facts TEXT NOT NULL, acked_ts REAL, acked_by TEXT, notified INTEGER NOT NULL DEFAULT 0,
    notified_ts REAL, reminder_ts REAL);
CREATE INDEX IF NOT EXISTS alerts_key ON alerts (rule, site, subject, state);
CREATE TABLE IF NOT EXISTS alert_keys (
    rule TEXT NOT NULL, site TEXT NOT NULL, subject TEXT NOT NULL, last_eval_ts REAL, last_fire_notice_ts REAL,
    PRIMARY KEY (rule, site, subject));
CREATE TABLE IF NOT EXISTS alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id INTEGER NOT NULL, kind TEXT NOT NULL, created_ts REAL NOT NULL,
    site TEXT NOT NULL, severity TEXT NOT NULL, recipients TEXT NOT NULL, facts TEXT NOT NULL,
    dispatched INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS seen (
    site TEXT NOT NULL, target TEXT NOT NULL, name TEXT NOT NULL, last_ts REAL NOT NULL,
    reported_offline INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (site, target, name));
"""

_CMP = {
    "<": lambda v, lim: v < lim,
    "<=": lambda v, lim: v <= lim,
    ">": lambda v, lim: v > lim,
    ">=": lambda v, lim: v >= lim,
}


@dataclass(frozen=True)
class Alert:
    id: int
    rule: str
    site: str
    subject: str
    state: str  # pending | firing | resolved
    severity: str
    opened_ts: float
    fired_ts: float | None
    resolved_ts: float | None
    facts: dict
    acked_ts: float | None
    acked_by: str | None
    notified: int  # 0 not yet, 1 firing email queued, 2 resolution queued, 3 closed quietly
    notified_ts: float | None = None
    reminder_ts: float | None = None


@dataclass(frozen=True)
class AlertEvent:
    id: int
    alert_id: int
    kind: str  # firing | resolved | reminder
    created_ts: float
    site: str
    severity: str
    recipients: list[str]
    facts: dict


def open_db(path: str | Path, *, on_moved: Callable[[MovedAside], None] | None = None) -> sqlite3.Connection:
    """The alert state file (shared with the email outbox). Raises greenmine.sqlite.StateError.
    Checked at open: a damaged or empty file is moved aside (logged at error, `on_moved`) and started afresh."""
    con, _ = open_or_move_aside(path, "alerts", log=log, on_moved=on_moved, synchronous="full")
    return con


class AlertEngine:
    def __init__(
        self,
        cfg: AlertsConfig,
        sites: list[SiteConfig],
        db: sqlite3.Connection,
        *,
        default_recipients: list[str] | None = None,
        clock: Callable[[], float] = time.time,
        kpi_values: Callable[..., list[KpiValue]] | None = None,
    ) -> None:
        self.cfg = cfg
        #: the KPI store's `values(site, kpi, start, end, subject=)`, for energy_consistency rules (the day values
        #: of a month); None: those rules judge nothing
        self.kpi_values = kpi_values
        self.rules = cfg.effective_rules()
        self._metric_rules: dict[str, list[ThresholdRule]] = {}
        for r in self.rules:
            if isinstance(r, ThresholdRule) and r.source == "metric":
                self._metric_rules.setdefault(r.series, []).append(r)
        #: metrics that some metric-threshold rule watches (readings of others need no look)
        self.metric_rule_metrics = frozenset(self._metric_rules)
        self.sites = {s.id: s for s in sites}
        self.default_recipients = list(default_recipients or [])
        self.db = db
        self.clock = clock
        self._lock = threading.RLock()
        self._seen_buf: dict[tuple[str, str, str], float] = {}  # observe_seen_many, until the next tick writes it
        # Deadman silence is counted from the later of the last data and this moment, so a restart
        # (or our own broker outage) does not declare every device offline before data can arrive.
        self._grace_from = clock()
        self._ingest_up = True
        db.executescript(_SCHEMA)
        db.executescript(maintenance.SCHEMA)
        self._windows: list[maintenance.Window] | None = None
        self._data_version = None
        with self._tx() as tx:
            maintenance.sync_config(tx, list(cfg.maintenance), clock())

    # --- transactions -------------------------------------------------------

    def _tx(self):
        """A write transaction under the engine's lock; nested, a savepoint (a tick or a batch of KPI values
        judges all its keys in one durable commit, one fsync, not one per key)."""
        return transaction(self.db, "alert state", lock=self._lock)

    # --- inputs -------------------------------------------------------------

    def observe_kpis(self, values: list[KpiValue], now: float | None = None) -> None:
        now = self.clock() if now is None else now
        with self._tx():  # one commit for the whole batch (a day's close judges every site at once)
            for v in values:
                for rule in self.rules:
                    if (isinstance(rule, ThresholdRule) and rule.source == "kpi" and rule.series == v.kpi
                            and self._applies(rule, v.site, v.subject)):
                        self._judge(rule, v.site, v.subject, v.value, v.period_end, now, kpi=v)
                    elif (isinstance(rule, EnergyConsistencyRule) and v.period_kind == "month" and v.kpi in rule.series
                          and self._applies(rule, v.site, v.subject)):
                        self._judge_consistency(rule, v, now)
        self._notify(now)

    def _judge_consistency(self, rule: EnergyConsistencyRule, month: KpiValue, now: float) -> None:
        """A month energy KPI, just computed (or recomputed), against the sum of its day values in the KPI store
        (`kpi.energy.day_month_deviation`, the check the energy uplink makes before sending)."""
        if self.kpi_values is None or month.value is None:
            return
        day_kpi = daily_of(month.kpi)
        days = [d for d in self.kpi_values(month.site, day_kpi, month.period_start, month.period_end,
                                           subject=month.subject) if d.value is not None]
        if not days:
            return  # no day values to compare with (the month of a freshly started monitor, say)
        dev, total = day_month_deviation(month.value, (d.value for d in days))
        dev = round_half_even(dev, 2)
        breached = dev > rule.tolerance_pct
        s = self.sites.get(month.site)
        tz = s.timezone if s else "Asia/Shanghai"
        i = info(month.kpi)
        subject = f"{month.kpi}/{month.subject}"  # a key per KPI: the site's kWh and kgce are separate alerts
        facts = {
            "kind": "energy_consistency", "rule": rule.name, "site_id": month.site,
            "site_name": s.name if s and s.name else month.site, "subject": subject,
            "title_zh": f"月度能耗与日数据之和不一致: {i.title_zh} ({month.subject})",
            "title_en": f"month energy does not match the sum of its days: {i.title_en} ({month.subject})",
            "kpi": month.kpi, "value": dev, "unit": "%", "limit": rule.tolerance_pct, "comparison": ">",
            "decimals": 2, "standard": "重点用能单位能耗在线监测: 日/月数据一致性 (day sums against month totals)",
            "period_label": month.period_label, "period_start_local": fmt_local(month.period_start, tz),
            "period_end_local": fmt_local(month.period_end, tz), "devices": list(month.devices),
            "completeness_pct": round(month.completeness * 100, 1),
            "resolves_zh": "月合计与日数据之和的差不超过容差", "resolves_en": "the month total within the tolerance of its day sum",
            "extra": {"month_value": month.value, "day_sum": total, "days": len(days), "day_kpi": day_kpi,
                      "kpi_unit": month.unit},
            "timezone": tz, "hysteresis": 0.0,
        }
        if breached:
            log.warning("alert %s site %s: %s %s: month %g vs the sum of %d days %g (%.2f %% > %g %%)", rule.name,
                        month.site, month.kpi, month.period_label, month.value, len(days), total, dev, rule.tolerance_pct)
        with self._tx() as db:
            key = db.execute("SELECT last_eval_ts FROM alert_keys WHERE rule=? AND site=? AND subject=?",
                             (rule.name, month.site, subject)).fetchone()
            if key and key[0] is not None and month.period_end < key[0]:
                return  # an older month recomputed after a newer one: it must not move the state back
            db.execute("INSERT INTO alert_keys (rule, site, subject, last_eval_ts) VALUES (?,?,?,?) "
                       "ON CONFLICT DO UPDATE SET last_eval_ts=excluded.last_eval_ts",
                       (rule.name, month.site, subject, month.period_end))
            self._transition(db, rule, month.site, subject, breached, not breached, month.period_end, 0.0, facts,
                             (month.period_start, month.period_end))

    def observe_metric(self, site: str, device: str, metric: str, ts: float, value: float, unit: str = "",
                       now: float | None = None) -> None:
        """A raw reading, for threshold rules with source = metric."""
        rules = [r for r in self._metric_rules.get(metric, ()) if self._applies(r, site, device)]
        if not rules:
            return
        now = self.clock() if now is None else now
        with self._tx():
            for rule in rules:
                self._judge(rule, site, device, value, ts, now, unit=unit)
        self._notify(now)

    def observe_seen_many(self, groups: dict[tuple[str, str], dict[str, float]], now: float | None = None) -> None:
        """Batches arrived: (site, agent) -> {device: latest good reading ts}.

        Kept in memory and written by the next `tick` (in its transaction, before the deadman reads them) or
        agent status: the consumer commits no extra transaction per group. A crash loses at most one tick's
        worth of "last seen", which the next batch of each device restores; deadman silences are minutes."""
        if not groups:
            return
        now = self.clock() if now is None else now
        with self._lock:
            buf = self._seen_buf
            for (site, agent), devices in groups.items():
                buf[(site, "agent", agent)] = now
                for d, ts in devices.items():
                    key = (site, "device", d)
                    t = min(ts, now)
                    if t > buf.get(key, float("-inf")):
                        buf[key] = t

    def flush_seen(self) -> None:
        """Write what observe_seen_many kept (inside the caller's transaction, or its own)."""
        with self._lock:
            buf, self._seen_buf = self._seen_buf, {}
        if not buf:
            return
        try:
            with self._tx() as db:
                db.executemany(
                    "INSERT INTO seen VALUES (?,?,?,?,0) ON CONFLICT DO UPDATE SET last_ts=max(last_ts, excluded.last_ts), "
                    "reported_offline=0", [(*k, t) for k, t in buf.items() if k[1] == "agent"])
                db.executemany(
                    "INSERT INTO seen VALUES (?,?,?,?,0) ON CONFLICT DO UPDATE SET last_ts=max(last_ts, excluded.last_ts)",
                    [(*k, t) for k, t in buf.items() if k[1] == "device"])
        except BaseException:
            with self._lock:  # not written: keep them for the next try, newer values first
                for k, t in buf.items():
                    if t > self._seen_buf.get(k, float("-inf")):
                        self._seen_buf[k] = t
            raise

    def close(self) -> None:
        """Write what is kept in memory, then close the database."""
        try:
            self.flush_seen()
        finally:
            self.db.close()

    def observe_agent_status(self, site: str, agent: str, online: bool, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.flush_seen()  # a status applies after the batches before it
        with self._tx() as db:
            db.execute(
                "INSERT INTO seen VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET reported_offline=excluded.reported_offline, "
                "last_ts=CASE WHEN excluded.reported_offline=0 THEN excluded.last_ts ELSE last_ts END",
                (site, "agent", agent, now, 0 if online else 1))
        self.tick(now)

    def behind(self, now: float | None = None) -> None:
        """We are draining a backlog of the stream: a device's silence may be ours. Silence counts from now
        on (as after a restart), so a monitor that fell behind does not declare every device offline."""
        now = self.clock() if now is None else now
        self._grace_from = max(self._grace_from, now)

    def ingest_connected(self, up: bool, now: float | None = None) -> None:
        """Our own link to the broker went down/up: deadman checks pause, and restart their grace on recovery."""
        now = self.clock() if now is None else now
        if up and not self._ingest_up:
            self._grace_from = now
        self._ingest_up = up

    def tick(self, now: float | None = None) -> None:
        """Deadman checks, delayed notifications and reminders. Call periodically."""
        now = self.clock() if now is None else now
        deadman = [r for r in self.rules if isinstance(r, DeadmanRule)]
        with self._tx():  # what was seen since the last tick, and every verdict of this one, in one commit
            self.flush_seen()
            if deadman and self._ingest_up:
                # only a breach or an open alert can change state: SQLite picks those rows (silent for at least
                # the shortest rule's silence, reported offline, or with an alert open), so a tick does not walk
                # every quiet device in Python; the verdicts below are exact. One commit: a site going dark is
                # thousands of devices.
                cutoff = now - min(r.silence_s for r in deadman)
                seen = self.db.execute(
                    "SELECT site, target, name, last_ts, reported_offline FROM seen WHERE reported_offline!=0 OR "
                    "last_ts<=? OR (site, name) IN (SELECT site, subject FROM alerts WHERE state IN ('pending','firing'))",
                    (cutoff,)).fetchall()
                if seen:
                    open_keys = {tuple(r) for r in self.db.execute(
                        "SELECT rule, site, subject FROM alerts WHERE state IN ('pending','firing')")}
                    self._deadman_verdicts(deadman, seen, open_keys, now)
        self._notify(now)

    def _deadman_verdicts(self, deadman: list[DeadmanRule], seen: list, open_keys: set, now: float) -> None:
        for site, target, name, last_ts, offline in seen:
            for rule in deadman:
                if rule.target == target and self._applies(rule, site, name):
                    silent = now - last_ts
                    # grace delays new verdicts only; an alert already firing clears only on real data
                    by_silence = now - max(last_ts, self._grace_from) >= rule.silence_s
                    breached = by_silence or bool(offline)
                    if not breached and (rule.name, site, name) not in open_keys:
                        continue
                    cleared = silent < rule.silence_s and not offline
                    # a reported offline (a will, a graceful stop) fires only if it lasts for_s: a restart or a
                    # broker blip is followed by an online status within that grace, and the pending alert drops
                    self._judge_deadman(rule, site, name, breached, cleared, last_ts, silent, bool(offline), now,
                                        for_s=0.0 if by_silence else rule.for_s)

    # --- acknowledgement and queries ---------------------------------------

    def ack(self, alert_id: int, by: str = "", now: float | None = None) -> bool:
        """Acknowledge a pending or firing alert: no more reminders. False if no such open alert."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            cur = db.execute("UPDATE alerts SET acked_ts=?, acked_by=? WHERE id=? AND state!='resolved' AND acked_ts IS NULL",
                             (now, by, alert_id))
            ok = cur.rowcount == 1
        if ok:
            log.info("alert %d acknowledged by %s", alert_id, by or "?")
        return ok

    def alerts(self, states: tuple[str, ...] = ("pending", "firing", "resolved"), site: str | None = None) -> list[Alert]:
        q = f"SELECT * FROM alerts WHERE state IN ({','.join('?' * len(states))})"
        args: list = list(states)
        if site:
            q += " AND site=?"
            args.append(site)
        with self._lock:
            rows = self.db.execute(q + " ORDER BY id", args).fetchall()
        return [_alert(r) for r in rows]

    def events(self, undispatched_only: bool = False) -> list[AlertEvent]:
        q = "SELECT id, alert_id, kind, created_ts, site, severity, recipients, facts FROM alert_events"
        with self._lock:
            rows = self.db.execute(q + (" WHERE dispatched=0" if undispatched_only else "") + " ORDER BY id").fetchall()
        return [AlertEvent(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7])) for r in rows]

    # --- maintenance windows -------------------------------------------------

    def add_maintenance(self, site: str, device: str | None, from_ts: float, to_ts: float, reason: str,
                        now: float | None = None) -> int:
        """A window from the CLI; its id. Raises ValueError for an empty range or reason."""
        with self._tx() as db:
            wid = maintenance.add(db, site, device, from_ts, to_ts, reason, self.clock() if now is None else now)
        self._windows = None
        log.info("maintenance window %d: site %s%s, %s", wid, site, f" device {device}" if device else "", reason)
        return wid

    def remove_maintenance(self, window_id: int) -> str:
        """"removed", "config" (defined in the config file, not removed here) or "missing"."""
        with self._tx() as db:
            out = maintenance.remove(db, window_id)
        self._windows = None
        return out

    def maintenance_windows(self, *, site: str | None = None, include_past: bool = False,
                            now: float | None = None) -> list[maintenance.Window]:
        now = self.clock() if now is None else now
        with self._lock:
            ws = maintenance.load(self.db)
        return [w for w in ws if (site is None or w.site == site) and (include_past or w.to_ts > now)]

    def _current_windows(self, db) -> list[maintenance.Window]:
        # another process (greenmine alerts maintenance add) may have changed the table: data_version tells
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if self._windows is None or version != self._data_version:
            self._windows, self._data_version = maintenance.load(db), version
        return self._windows

    def _holding(self, db, site: str, subject: str, facts: dict, span: tuple[float, float]) -> dict | None:
        """The window (as the facts record it) that holds an observation of this alert, if any."""
        subjects = (subject, *(facts.get("devices") or ()))
        for w in self._current_windows(db):
            if w.covers(site, subjects, *span):
                return w.facts(facts.get("timezone") or "Asia/Shanghai")
        return None

    # --- the state machine --------------------------------------------------

    def _applies(self, rule, site: str, subject: str) -> bool:
        return (not rule.sites or site in rule.sites) and (not rule.devices or subject in rule.devices)

    def _open(self, db, rule: str, site: str, subject: str):
        return db.execute("SELECT * FROM alerts WHERE rule=? AND site=? AND subject=? AND state IN ('pending','firing') "
                          "ORDER BY id DESC LIMIT 1", (rule, site, subject)).fetchone()

    def _judge(self, rule: ThresholdRule, site: str, subject: str, value: float | None, obs_ts: float, now: float,
               kpi: KpiValue | None = None, unit: str = "") -> None:
        if value is None or (kpi is not None and rule.require_complete and not kpi.complete):
            return
        limit = rule.limit if rule.limit is not None else (kpi.limit if kpi else None)
        cmp = rule.comparison or (kpi.comparison if kpi else None)
        if limit is None or cmp is None:
            return
        # judged on the value rounded as GB/T 8170 rounds reported values (server.monitor.kpi.rounding)
        raw = kpi.raw_value if kpi is not None and kpi.raw_value is not None else value
        decimals = rule.judge_decimals
        if decimals is None:
            decimals = kpi.decimals if kpi is not None and rule.limit is None and kpi.decimals is not None \
                else default_decimals(limit)
        value = round_half_even(raw, decimals)
        breached = _CMP[cmp](value, limit)
        h = rule.clear_hysteresis
        cleared = (value >= round_half_even(limit + h, decimals) if cmp in ("<", "<=")
                   else value <= round_half_even(limit - h, decimals))
        facts = self._facts(rule, site, subject, value, limit, cmp, obs_ts, kpi, unit)
        facts.update(raw_value=raw, decimals=decimals)
        with self._tx() as db:
            key = db.execute("SELECT last_eval_ts FROM alert_keys WHERE rule=? AND site=? AND subject=?",
                             (rule.name, site, subject)).fetchone()
            if key and key[0] is not None and obs_ts < key[0]:
                return  # an older period replayed after a newer one: it must not move the state back
            db.execute("INSERT INTO alert_keys (rule, site, subject, last_eval_ts) VALUES (?,?,?,?) "
                       "ON CONFLICT DO UPDATE SET last_eval_ts=excluded.last_eval_ts", (rule.name, site, subject, obs_ts))
            span = (kpi.period_start, kpi.period_end) if kpi is not None else (obs_ts, obs_ts)
            self._transition(db, rule, site, subject, breached, cleared, obs_ts, rule.for_s, facts, span)

    def _judge_deadman(self, rule: DeadmanRule, site, name, breached, cleared, last_ts, silent, offline, now,
                       for_s: float = 0.0) -> None:
        s = self.sites.get(site)
        tz = s.timezone if s else "Asia/Shanghai"
        what = ("数据采集终端(agent)离线", "agent offline") if rule.target == "agent" else ("设备离线", "device offline")
        facts = {
            "kind": "deadman", "rule": rule.name, "site_id": site, "site_name": s.name if s and s.name else site,
            "subject": name, "title_zh": f"{what[0]}: {name}", "title_en": f"{what[1]}: {name}",
            "value": round(silent), "unit": "s", "limit": rule.silence_s, "comparison": ">=",
            "standard": "", "period_label": "", "devices": [name], "completeness_pct": None,
            "last_seen_local": fmt_local(last_ts, tz), "reported_offline": offline, "timezone": tz,
            "resolves_zh": f"{name} 重新上报有效数据", "resolves_en": f"valid data from {name} again",
        }
        # judged by the clock: a silence breach starts when the silence reaches the limit
        since = now if offline else last_ts + rule.silence_s
        with self._tx() as db:
            self._transition(db, rule, site, name, breached, cleared, min(since, now) if breached else now, for_s, facts,
                             (now, now))

    def _transition(self, db, rule, site, subject, breached, cleared, obs_ts, for_s, facts, span) -> None:
        row = self._open(db, rule.name, site, subject)
        sev = rule.severity.value
        if row is None:
            if not breached:
                return
            state = "firing" if for_s <= 0 else "pending"
            facts = {**facts, "since_ts": obs_ts}
            held = self._holding(db, site, subject, facts, span)
            if held is not None:  # begins inside a maintenance window: recorded, not emailed
                facts["held"] = held
                log.info("alert %s site %s %s: held by maintenance window %d (%s)", rule.name, site, subject,
                         held["id"], held["reason"])
            cur = db.execute(
                "INSERT INTO alerts (rule, site, subject, state, severity, opened_ts, fired_ts, facts) VALUES (?,?,?,?,?,?,?,?)",
                (rule.name, site, subject, state, sev, obs_ts, obs_ts if state == "firing" else None, json.dumps(facts, ensure_ascii=False)))
            log.info("alert %d %s site %s %s: %s", cur.lastrowid, rule.name, site, subject, state)
            return
        a = _alert(row)
        facts = {**facts, "since_ts": a.facts.get("since_ts", a.opened_ts),
                 "worst": _worse(a.facts.get("worst", a.facts.get("value")), facts.get("value"), facts.get("comparison"))}
        for k in ("held", "held_was"):
            if k in a.facts:
                facts[k] = a.facts[k]
        if a.notified == 0 and breached:
            # not emailed yet: held while its observations fall in a window; one after the window releases it
            held = self._holding(db, site, subject, facts, span)
            if held is not None:
                facts["held"] = held
            elif "held" in facts:
                facts["held_was"] = facts.pop("held")
                log.info("alert %d %s site %s %s: breach outlasted maintenance window %d, released", a.id, rule.name,
                         site, subject, facts["held_was"]["id"])
        if a.state == "pending":
            if not breached:
                db.execute("DELETE FROM alerts WHERE id=?", (a.id,))
                log.info("alert %d %s site %s %s: pending dropped", a.id, rule.name, site, subject)
            elif obs_ts - a.opened_ts >= for_s:
                db.execute("UPDATE alerts SET state='firing', fired_ts=?, facts=? WHERE id=?",
                           (obs_ts, json.dumps(facts, ensure_ascii=False), a.id))
                log.info("alert %d %s site %s %s: firing", a.id, rule.name, site, subject)
            else:
                db.execute("UPDATE alerts SET facts=? WHERE id=?", (json.dumps(facts, ensure_ascii=False), a.id))
            return
        # firing
        if cleared:
            facts["resolved_ts"] = obs_ts
            db.execute("UPDATE alerts SET state='resolved', resolved_ts=?, facts=? WHERE id=?",
                       (obs_ts, json.dumps(facts, ensure_ascii=False), a.id))
            log.info("alert %d %s site %s %s: resolved", a.id, rule.name, site, subject)
        else:
            db.execute("UPDATE alerts SET facts=? WHERE id=?", (json.dumps(facts, ensure_ascii=False), a.id))

    def _notify(self, now: float) -> None:
        """Turn due state changes into events: firing (rate-limited per key), resolved, reminders."""
        rules = {r.name: r for r in self.rules}
        with self._tx() as db:
            rows = db.execute(
                "SELECT a.*, k.last_fire_notice_ts FROM alerts a LEFT JOIN alert_keys k "
                "ON k.rule=a.rule AND k.site=a.site AND k.subject=a.subject "
                "WHERE (a.state='firing') OR (a.state='resolved' AND a.notified=1)").fetchall()
            for row in rows:
                a = _alert(row[:-1])
                last_fire = row[-1]
                rule = rules.get(a.rule)
                recipients = self._recipients(rule, a.site)
                if a.state == "firing" and a.notified == 0:
                    if "held" in a.facts:
                        continue  # held by a maintenance window: no email unless the breach outlasts it
                    if last_fire is not None and now - last_fire < self.cfg.min_renotify_s:
                        continue  # inside the re-notify window: wait
                    self._event(db, a, "firing", now, recipients)
                    db.execute("UPDATE alerts SET notified=1, notified_ts=? WHERE id=?", (now, a.id))
                    db.execute("INSERT INTO alert_keys (rule, site, subject, last_fire_notice_ts) VALUES (?,?,?,?) "
                               "ON CONFLICT DO UPDATE SET last_fire_notice_ts=excluded.last_fire_notice_ts",
                               (a.rule, a.site, a.subject, now))
                elif a.state == "resolved":
                    self._event(db, a, "resolved", now, recipients)
                    db.execute("UPDATE alerts SET notified=2 WHERE id=?", (a.id,))
                elif a.state == "firing" and a.acked_ts is None and self.cfg.reminder_interval_s > 0:
                    last = max(x for x in (a.notified_ts, a.reminder_ts, a.fired_ts) if x is not None)
                    if now - last >= self.cfg.reminder_interval_s and self._holding(db, a.site, a.subject, a.facts,
                                                                                    (now, now)) is None:
                        self._event(db, a, "reminder", now, recipients)
                        db.execute("UPDATE alerts SET reminder_ts=? WHERE id=?", (now, a.id))
            # resolved before its firing email went out: closed quietly (flapping inside the window)
            db.execute("UPDATE alerts SET notified=3 WHERE state='resolved' AND notified=0")

    def _event(self, db, a: Alert, kind: str, now: float, recipients: list[str]) -> None:
        facts = {**a.facts, "alert_id": a.id, "severity": a.severity, "state": a.state,
                 "fired_ts": a.fired_ts, "resolved_ts": a.resolved_ts, "acked_by": a.acked_by}
        db.execute("INSERT INTO alert_events (alert_id, kind, created_ts, site, severity, recipients, facts) VALUES (?,?,?,?,?,?,?)",
                   (a.id, kind, now, a.site, a.severity, json.dumps(recipients), json.dumps(facts, ensure_ascii=False)))
        log.info("alert %d %s site %s %s: %s notice queued for %d recipient(s)", a.id, a.rule, a.site, a.subject, kind, len(recipients))

    def _recipients(self, rule, site_id: str) -> list[str]:
        s = self.sites.get(site_id)
        base = (s.recipients if s and s.recipients else self.default_recipients)
        out: list[str] = []
        for r in [*base, *(rule.recipients if rule else [])]:
            if r not in out:
                out.append(r)
        return out

    def _facts(self, rule, site, subject, value, limit, cmp, obs_ts, kpi: KpiValue | None, unit: str) -> dict:
        s = self.sites.get(site)
        tz = s.timezone if s else "Asia/Shanghai"
        if kpi is not None:
            i = info(kpi.kpi)
            return {
                "kind": "threshold", "rule": rule.name, "site_id": site, "site_name": s.name if s and s.name else site,
                "subject": subject, "title_zh": i.title_zh, "title_en": i.title_en, "kpi": kpi.kpi,
                "value": value, "unit": kpi.unit, "limit": limit, "comparison": cmp, "standard": kpi.standard,
                "period_label": kpi.period_label, "period_start_local": fmt_local(kpi.period_start, tz),
                "period_end_local": fmt_local(kpi.period_end, tz), "devices": list(kpi.devices),
                "completeness_pct": round(kpi.completeness * 100, 1), "resolves_zh": i.resolves_zh,
                "resolves_en": i.resolves_en, "extra": kpi.extra, "timezone": tz, "hysteresis": rule.clear_hysteresis,
            }
        return {
            "kind": "threshold", "rule": rule.name, "site_id": site, "site_name": s.name if s and s.name else site,
            "subject": subject, "title_zh": f"{rule.title_zh or rule.series}: {subject}",
            "title_en": f"{rule.title_en or rule.series}: {subject}", "kpi": rule.series,
            "value": value, "unit": unit, "limit": limit, "comparison": cmp, "standard": "",
            "period_label": fmt_local(obs_ts, tz), "devices": [subject], "completeness_pct": None,
            "resolves_zh": "数值回到限值以内", "resolves_en": "the value back within the limit", "timezone": tz,
            "hysteresis": rule.clear_hysteresis,
        }


def _worse(a, b, cmp):
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b) if cmp in ("<", "<=") else max(a, b)


def _alert(r) -> Alert:
    return Alert(
        id=r[0], rule=r[1], site=r[2], subject=r[3], state=r[4], severity=r[5], opened_ts=r[6], fired_ts=r[7],
        resolved_ts=r[8], facts=json.loads(r[9]), acked_ts=r[10], acked_by=r[11], notified=r[12],
        notified_ts=r[13], reminder_ts=r[14],
    )
