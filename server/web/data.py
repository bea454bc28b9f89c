"""What the console reads, through the same interfaces the roles use.

- KPIs: the monitor's KPI store (`server.monitor.kpi.store.KpiStore`), as the
  monitor computed them per hour, day, month and noise period. Charts read
  these periods, never a month of raw readings.
- Alerts: the monitor's alert state (`AlertEngine` on `[alerts] db_path`).
- Readings (device page, export): the SQLite store's reader when the store is
  SQLite (with its hourly and daily rollups), else the monitor's replica
  (`server.store.replica`), which has the series the KPIs read.
- Health: the ingest spool (agents, queue depth, dead letters) and the HJ 212
  queue files.

Every file is opened by this process (WAL: the roles keep writing), so the
console can run in its own process (`--role web`) or beside the others.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.server.monitor.kpi import noise, periods
from greenmine.server.monitor.kpi.model import KpiValue
from greenmine.server.monitor.kpi.store import KpiStore


@dataclass(frozen=True)
class Light:
    color: str  # red | green | amber | grey
    text: str
    detail: str = ""


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    labels: list[str]
    starts: list[float]  # one slot start per label
    step: str  # day | hour


class ConsoleData:
    def __init__(self, cfg, *, clock: Callable[[], float] = time.time) -> None:
        from greenmine.server.monitor.alerts.service import kpi_db_path

        self.cfg = cfg
        self.clock = clock
        self.sites = {s.id: s for s in cfg.sites}
        self.kpi = KpiStore(kpi_db_path(cfg))
        self.alerts = AlertEngine(cfg.alerts, cfg.sites, open_db(cfg.resolve(cfg.alerts.db_path)),
                                  default_recipients=cfg.default_recipients, clock=clock)
        if cfg.store.kind == "sqlite":
            from greenmine.server.store.sqlite import SqliteReader

            self.readings = SqliteReader(cfg.resolve(cfg.store.path), cfg.store.busy_timeout_ms)
            self.has_rollups = True
        else:
            from greenmine.server.store.replica import SeriesReplica

            self.readings = SeriesReplica(cfg.resolve(cfg.monitor.replica_path),
                                          retention_days=cfg.monitor.replica_retention_days)
            self.has_rollups = False
        self._spool = None
        self._spool_lock = threading.Lock()
        #: KPI periods read recently: (site, kpi, start, end) -> (monotonic time, values). KPI values change when a
        #: period closes (hourly at most), so 20 officers on the overview need not each parse the month again.
        self._cache: dict[tuple, tuple[float, list[KpiValue]]] = {}
        self.cache_s = 10.0

    def close(self) -> None:
        self.kpi.close()
        self.alerts.db.close()
        self.readings.close()
        if self._spool is not None:
            self._spool.close()

    # --- time -------------------------------------------------------------

    def tz(self, site: str) -> str:
        s = self.sites.get(site)
        return s.timezone if s else "Asia/Shanghai"

    def today(self, site: str) -> date:
        return periods.local_date(self.clock(), self.tz(site))

    def fmt(self, ts: float | None, site: str | None = None, tz: str | None = None, seconds: bool = False) -> str:
        if ts is None:
            return "—"
        z = ZoneInfo(tz or self.tz(site or ""))
        return datetime.fromtimestamp(ts, z).strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""))

    def zone_label(self, site: str) -> str:
        tz = self.tz(site)
        return f"{datetime.fromtimestamp(self.clock(), ZoneInfo(tz)).strftime('%Z UTC%z')} {tz}"

    def window(self, site: str, rng: str, end_day: date, step: str) -> Window:
        tz = self.tz(site)
        days = {"day": 1, "week": 7, "month": 30}[rng]
        first = end_day - timedelta(days=days - 1)
        start = periods.day(first, tz).start
        end = periods.day(end_day, tz).end
        labels, starts = [], []
        if step == "day":
            for i in range(days):
                d = first + timedelta(days=i)
                labels.append(d.strftime("%m-%d"))
                starts.append(periods.day(d, tz).start)
        else:
            t = start
            while t < end:
                h = periods.hour(t, tz)
                lt = datetime.fromtimestamp(h.start, ZoneInfo(tz))
                labels.append(lt.strftime("%H:00") if days == 1 else lt.strftime("%m-%d %H"))
                starts.append(h.start)
                t = h.end
        return Window(start, end, labels, starts, step)

    # --- KPIs ------------------------------------------------------------

    def values(self, site: str, kpi: str, start: float, end: float) -> list[KpiValue]:
        key = (site, kpi, start, end)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        vals = self.kpi.values(site, kpi, start, end)
        if len(self._cache) > 5000:
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.cache_s}
        self._cache[key] = (now, vals)
        return vals

    def per_slot(self, w: Window, values: list[KpiValue], pick=max) -> tuple[list[float | None], list[bool], list[KpiValue | None]]:
        """One value per slot of the window (the worst over devices by `pick`), whether it is incomplete,
        and the KpiValue chosen."""
        index = {s: i for i, s in enumerate(w.starts)}
        chosen: list[KpiValue | None] = [None] * len(w.starts)
        for v in values:
            i = index.get(v.period_start)
            if i is None or v.value is None:
                continue
            cur = chosen[i]
            if cur is None or pick(cur.value, v.value) == v.value:
                chosen[i] = v
        return ([c.value if c else None for c in chosen], [bool(c and not c.complete) for c in chosen], chosen)

    def light(self, values: list[KpiValue], fmt: Callable[[list[KpiValue]], str], t) -> Light:
        vals = [v for v in values if v.value is not None]
        if not vals:
            return Light("grey", t("no_data"))
        breached = [v for v in vals if v.breached]
        judged = [v for v in vals if v.breached is not None]
        if breached:
            return Light("red", fmt(vals), t("light_red"))
        if judged:
            return Light("green", fmt(vals), t("light_green"))
        if any(not v.complete for v in vals):
            return Light("amber", fmt(vals), t("light_amber"))
        return Light("grey", fmt(vals), t("light_grey"))

    def overview_row(self, site: str, t) -> dict:
        """The traffic lights of one site for today, yesterday and this month."""
        tz = self.tz(site)
        now = self.clock()
        today = self.today(site)
        d_today = periods.day(today, tz)
        d_yday = periods.day(today - timedelta(days=1), tz)
        m = periods.month(today.year, today.month, tz)
        wins = {"today": (d_today.start, d_today.end), "yesterday": (d_yday.start, d_yday.end), "month": (m.start, m.end)}
        pct = lambda vs: f"{min(v.value for v in vs):.1f} %"  # noqa: E731
        mx = lambda vs: f"{max(v.value for v in vs):.3g} {vs[0].unit}"  # noqa: E731
        row: dict = {}
        # an alert firing now on a KPI of a group makes today's light red, whatever the completeness rule of
        # its rule (a rule may judge incomplete periods, require_complete = false)
        firing = {a.facts.get("kpi") for a in self.alerts.alerts(("firing",), site=site)}
        groups = {"water": ("water_",), "energy": ("energy_intensity",), "dust": ("dust_",), "noise": ("noise_",)}
        for key, (a, b) in wins.items():
            if key == "today":
                water = [v for v in self.values(site, "water_reuse_24h", a - 86400, b) if v.period_end <= now][-1:]
            else:
                water = self.values(site, "water_reuse_daily", a, b)
            energy = self.values(site, "energy_intensity_daily", a, b)
            if key == "month":
                energy = self.values(site, "energy_intensity_monthly", a, b) or energy
            dust = self.values(site, "dust_tsp_hourly", a, b) + self.values(site, "dust_pm10_hourly", a, b)
            noisy = self.values(site, "noise_leq_day", a, b) + self.values(site, "noise_leq_night", a, b)
            if not noisy and key == "today":
                noisy = self.values(site, "noise_leq_hourly", a, b)
            every = water + energy + dust + noisy + self.values(site, "energy_kwh_daily", a, b)
            over = lambda vs: f"{sum(1 for v in vs if v.breached)} {t('exceed_hours')}"  # noqa: E731
            comp = Light("grey", t("no_data"))
            if every:
                mean = sum(v.completeness for v in every) / len(every) * 100
                ok = mean >= self.cfg.kpi.completeness_min_pct
                comp = Light("green" if ok else "amber", f"{mean:.0f} %", t("light_green") if ok else t("light_amber"))
            row[key] = {
                "water": self.light(water, pct, t),
                "energy": self.light(energy, mx, t),
                "dust": self.light(dust, over, t),
                "noise": self.light(noisy, mx, t),
                "complete": comp,
            }
            if key == "today":
                for g, prefixes in groups.items():
                    if any(k and k.startswith(prefixes) for k in firing) and row[key][g].color != "red":
                        row[key][g] = Light("red", row[key][g].text, t("alert_firing"))
        return row

    # --- alerts ------------------------------------------------------------

    def alert_list(self, *, state: str = "open", sites: set[str] | None = None, site: str | None = None,
                   rule: str | None = None, severity: str | None = None, limit: int = 500):
        states = ("pending", "firing") if state in ("open", "acked") else ("pending", "firing", "resolved")
        out = []
        for a in reversed(self.alerts.alerts(states, site=site or None)):
            if sites is not None and a.site not in sites:
                continue
            if state == "open" and a.acked_ts is not None or state == "acked" and a.acked_ts is None:
                continue
            if state == "history" and a.state != "resolved":
                continue
            if rule and a.rule != rule or severity and a.severity != severity:
                continue
            out.append(a)
            if len(out) >= limit:
                break
        return out

    def alert(self, alert_id: int):
        with self.alerts._lock:
            row = self.alerts.db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
        if row is None:
            return None
        from greenmine.server.monitor.alerts.engine import _alert

        return _alert(row)

    # --- readings -----------------------------------------------------------

    def devices(self, site: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        try:
            for _s, dev, metric in self.readings.series(site):
                out.setdefault(dev, []).append(metric)
        except sqlite3.OperationalError:  # the store has no tables yet
            return {}
        return out

    def latest(self, site: str, device: str) -> list[tuple[str, object]]:
        out = []
        for metric in self.devices(site).get(device, []):
            p = self.readings.latest(site, device, metric)
            if p is not None:
                out.append((metric, p))
        return out

    def metric_series(self, site: str, device: str, metric: str, w: Window) -> tuple[list[float | None], list[bool]]:
        """Hourly (or daily) means of one series over the window: from the store's rollups when it has them,
        else from the replica's readings bucketed here."""
        index = {s: i for i, s in enumerate(w.starts)}
        vals: list[float | None] = [None] * len(w.starts)
        bad = [False] * len(w.starts)
        start_ms, end_ms = int(w.start * 1000), int(w.end * 1000)
        if self.has_rollups:
            for r in self.readings.rollups(site, device, metric, w.step, start_ms, end_ms):
                i = index.get(r.start_ms / 1000)
                if i is not None:
                    vals[i] = r.mean
                    bad[i] = r.not_good > 0
            return vals, bad
        sums: dict[int, list[float]] = {}
        starts = w.starts
        import bisect

        for p in self.readings.query_series(site, device, metric, start_ms, end_ms):
            i = bisect.bisect_right(starts, p.ts_ms / 1000) - 1
            if i < 0:
                continue
            if p.quality == "good":
                sums.setdefault(i, []).append(p.value)
            else:
                bad[i] = True
        for i, xs in sums.items():
            vals[i] = sum(xs) / len(xs)
        return vals, bad

    def counter_events(self, site: str, device: str, start: float, end: float) -> list[tuple]:
        return [e for e in self.kpi.counter_events(site) if e[0] == device and start <= e[2] < end]

    def export_readings(self, site: str, start: float, end: float) -> Iterator[tuple]:
        """Every reading of the site in [start, end), a day of one series at a time (never all in memory)."""
        for _s, dev, metric in self.readings.series(site):
            t = start
            while t < end:
                u = min(t + 86400, end)
                for p in self.readings.query_series(site, dev, metric, int(t * 1000), int(u * 1000)):
                    yield (p.ts_ms, dev, metric, p.value, p.unit, p.quality)
                t = u

    def export_kpis(self, site: str, start: float, end: float) -> Iterator[KpiValue]:
        from greenmine.server.monitor.kpi.model import CATALOG

        for kpi in CATALOG:
            yield from self.values(site, kpi, start, end)

    # --- health --------------------------------------------------------------

    def spool(self):
        from greenmine.server.spool.spool import Spool

        path = self.cfg.resolve(self.cfg.ingest.spool_path)
        if self._spool is None and path.exists():
            self._spool = Spool(path, lock=False)
        return self._spool

    def health(self) -> dict:
        with self._spool_lock:
            sp = self.spool()
            if sp is None:
                doc = {"spool": None, "agents": [], "dead_counts": {}, "dead": []}
            else:
                b, r, n = sp.queue.depth()
                doc = {"spool": {"batches": b, "readings": r, "bytes": n, "max_bytes": self.cfg.ingest.spool_max_bytes,
                                 "path": str(sp.path)},
                       "agents": sp.agents.load(), "dead_counts": sp.dead_letters.counts(),
                       "dead": sp.dead_letters.newest(20)}
        doc["hj212"] = []
        for p in self.cfg.hj212:
            path = self.cfg.resolve(str(p.queue_file))
            n, oldest = 0, None
            if path.exists():
                try:
                    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
                    try:
                        n, oldest = con.execute("SELECT count(*), min(created_at) FROM messages").fetchone()
                    finally:
                        con.close()
                except sqlite3.Error:
                    n = None
            doc["hj212"].append({"point": p.name, "site": p.site, "queued": n, "oldest": oldest})
        doc["energy"] = self.energy_status()
        return doc

    def energy_status(self) -> dict | None:
        """The energy-platform uplink's queues, as `greenmine energy status` reads them; None: no [energy] centres.
        {"centres": {name: {...}}, "events": [...], "error": text or None}."""
        energy = getattr(self.cfg, "energy", None)
        if energy is None or not energy.centres:
            return None
        from greenmine.server.uplink.energy.queue import EnergyState
        from greenmine.server.uplink.energy.service import state_paths, status_doc

        centres = [c.name for c in energy.centres]
        path = state_paths(self.cfg)[0]
        if not path.exists():
            return {"centres": {c: None for c in centres}, "events": [],
                    "error": f"no energy state at {path} yet (the energy role has not run)"}
        try:
            state = EnergyState(path)
            try:
                return {**status_doc(state, centres, time.time()), "error": None}  # its times are real
            finally:
                state.close()
        except Exception as exc:  # noqa: BLE001 - a damaged state file is shown, the page still renders
            return {"centres": {c: None for c in centres}, "events": [], "error": f"energy state {path}: {exc}"}

    def agents_offline(self, sites: set[str] | None) -> list:
        with self._spool_lock:
            sp = self.spool()
            rows = sp.agents.load() if sp is not None else []
        return [a for a in rows if a.state != "online" and (sites is None or a.site in sites)]


def noise_limits(site_cfg, w: Window, kpi_cfg) -> list[float | None]:
    """The GB 12348 limit of each hour slot: day or night by the local hour."""
    out = []
    for s in w.starts:
        h = datetime.fromtimestamp(s, ZoneInfo(site_cfg.timezone)).hour
        night = noise.is_night_hour(h, kpi_cfg.noise.day_start_h, kpi_cfg.noise.night_start_h)
        out.append(noise.limit_db(site_cfg.limits.noise_class, night))
    return out
