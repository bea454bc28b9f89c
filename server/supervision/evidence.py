"""Evidence from monitoring for one mine and period: the compliance summary the reports use.

Every number comes from the monitor's own state, never from a second rule over the readings:
- KPI values from the KPI store (`server.monitor.kpi.store.KpiStore`, the file `greenmine kpi show` reads),
  judged by the value's own `breached` (its limit, comparison and completeness, as the alerts judge it);
- alerts from the alert state file (`[alerts] db_path`, what `greenmine alerts list` reads).

Counting rules (stated in docs/supervision.md and in every report):
- water: a day is *judged* when its water_reuse_daily value is complete; *compliant* when judged and not
  breached (reuse ≥ the site's floor, 85 % by default);
- dust: an hour is *over* when any boundary monitor's complete TSP 1-hour average is over the limit;
- noise: a day (06-22) or night (22-06) is *over* when any monitor's complete Leq is over its GB 12348 limit;
- energy: kWh and kgce are the monthly KPI values for whole months in the period and the sum of the daily
  values for the rest; intensity is kgce over the ore tonnes of the same values;
- completeness: the mean data completeness of the expected periods (days; hours per monitor), a period with
  no value counting as 0;
- alerts: those that fired in the period; acknowledged, resolved, and the median of fired → resolved.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from greenmine.server.monitor.kpi import periods
from greenmine.server.monitor.kpi.model import KpiValue


def _days(d0: date, d1: date) -> list[date]:
    return [d0 + timedelta(days=i) for i in range((d1 - d0).days + 1)]


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def _round(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(x, n)


@dataclass
class Sources:
    """What evidence reads: the KPI store and the alert state of a server config (either may be absent)."""

    kpi: object | None  # KpiStore
    alerts: object | None  # AlertEngine
    counter_events: bool = True

    @classmethod
    def open(cls, cfg) -> Sources:
        from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
        from greenmine.server.monitor.alerts.service import kpi_db_path
        from greenmine.server.monitor.kpi.store import KpiStore

        kp = kpi_db_path(cfg)
        ap = Path(cfg.resolve(cfg.alerts.db_path))
        kpi = KpiStore(kp) if kp.exists() else None
        alerts = AlertEngine(cfg.alerts, cfg.sites, open_db(ap), default_recipients=cfg.default_recipients) if ap.exists() else None
        return cls(kpi, alerts)

    def close(self) -> None:
        if self.kpi is not None:
            self.kpi.close()
        if self.alerts is not None:
            self.alerts.db.close()


def evidence(cfg, src: Sources, site_id: str, d0: date, d1: date) -> dict:
    """The evidence of site `site_id` for local dates d0..d1 (inclusive)."""
    site = cfg.site(site_id)
    base = {"site": site_id, "from": d0.isoformat(), "to": d1.isoformat(), "days": (d1 - d0).days + 1}
    if site is None:
        return {**base, "monitored": False, "has_data": False, "note": "未接入在线监测 / not monitored"}
    tz = site.timezone
    start = periods.day(d0, tz).start
    end = periods.day(d1, tz).end
    days = _days(d0, d1)

    def vals(kpi: str, subject: str | None = None) -> list[KpiValue]:
        return src.kpi.values(site_id, kpi, start, end, subject=subject) if src.kpi is not None else []

    by_day = lambda vs: {periods.local_date(v.period_start, tz): v for v in vs}  # noqa: E731
    water = by_day(vals("water_reuse_daily", "site"))
    kwh_d = by_day(vals("energy_kwh_daily", "site"))
    kgce_d = by_day(vals("energy_kgce_daily", "site"))
    inten_d = by_day(vals("energy_intensity_daily", "site"))
    tsp = vals("dust_tsp_hourly")
    leq_day = vals("noise_leq_day")
    leq_night = vals("noise_leq_night")
    n_days = len(days)

    # --- water
    judged = [v for v in water.values() if v.breached is not None]
    compliant = [v for v in judged if v.breached is False]
    w = {
        "limit_pct": site.limits.water_reuse_min_pct,
        "days_expected": n_days, "days_with_value": len(water), "days_judged": len(judged),
        "days_compliant": len(compliant), "days_breached": len(judged) - len(compliant),
        "compliance_rate_pct": round(100.0 * len(compliant) / len(judged), 2) if judged else None,
        "reused_m3": _round(sum(v.extra.get("reused_m3", 0.0) for v in water.values()), 3),
        "fresh_m3": _round(sum(v.extra.get("fresh_m3", 0.0) for v in water.values()), 3),
        "completeness_pct": _pct(sum(v.completeness for v in water.values()) / n_days),
    }

    # --- dust: hours over, any monitor
    monitors = sorted({v.subject for v in tsp})
    hours_expected = round((end - start) / 3600) * max(1, len(monitors)) if monitors else round((end - start) / 3600)
    judged_hours = {v.period_start for v in tsp if v.breached is not None}
    over_hours = {v.period_start for v in tsp if v.breached}
    d = {
        "limit_mgm3": site.limits.dust_tsp_limit_mgm3, "monitors": monitors,
        "hours_expected": round((end - start) / 3600), "hours_judged": len(judged_hours), "hours_over": len(over_hours),
        "max_hourly_mgm3": _round(max((v.value for v in tsp if v.value is not None), default=None)),
        "completeness_pct": _pct(sum(v.completeness for v in tsp) / hours_expected) if tsp else 0.0,
    }

    # --- noise
    def periods_over(vs: list[KpiValue]) -> tuple[int, int]:
        j = {v.period_start for v in vs if v.breached is not None}
        o = {v.period_start for v in vs if v.breached}
        return len(j), len(o)

    dj, do = periods_over(leq_day)
    nj, no = periods_over(leq_night)
    noise_monitors = sorted({v.subject for v in leq_day + leq_night + vals("noise_leq_hourly")})
    nmon = max(1, len({v.subject for v in leq_day + leq_night}))
    day_lim = next((v.limit for v in leq_day if v.limit is not None), None)
    night_lim = next((v.limit for v in leq_night if v.limit is not None), None)
    n = {
        "noise_class": site.limits.noise_class, "monitors": noise_monitors, "day_limit_db": day_lim, "night_limit_db": night_lim,
        "days_judged": dj, "days_over": do, "nights_judged": nj, "nights_over": no,
        "completeness_pct": _pct(sum(v.completeness for v in leq_day + leq_night) / (2 * n_days * nmon))
        if leq_day or leq_night else 0.0,
    }

    # --- energy: monthly values for whole months, daily values for the rest
    kwh = kgce = ore = 0.0
    ore_known = False
    covered: set[date] = set()
    m = date(d0.year, d0.month, 1)
    while m <= d1:
        nxt = date(m.year + (m.month == 12), m.month % 12 + 1, 1)
        if m >= d0 and nxt - timedelta(days=1) <= d1:
            p = periods.month(m.year, m.month, tz)
            mk = [v for v in vals("energy_kwh_monthly", "site") if v.period_start == p.start]
            mg = [v for v in vals("energy_kgce_monthly", "site") if v.period_start == p.start]
            mi = [v for v in vals("energy_intensity_monthly", "site") if v.period_start == p.start]
            if mk or mg:
                kwh += sum(v.value or 0.0 for v in mk)
                kgce += sum(v.value or 0.0 for v in mg)
                if mi:
                    ore += mi[0].extra.get("ore_t", 0.0)
                    ore_known = True
                covered |= set(_days(m, nxt - timedelta(days=1)))
        m = nxt
    for day in days:
        if day in covered:
            continue
        kwh += (kwh_d[day].value or 0.0) if day in kwh_d else 0.0
        kgce += (kgce_d[day].value or 0.0) if day in kgce_d else 0.0
        if day in inten_d:
            ore += inten_d[day].extra.get("ore_t", 0.0)
            ore_known = True
    e = {
        "kwh": _round(kwh, 3) if kwh_d or covered else None,
        "kgce": _round(kgce, 3) if kgce_d or covered else None,
        "ore_t": _round(ore, 3) if ore_known else None,
        "intensity_kgce_t": _round(kgce / ore, 4) if ore_known and ore > 0 else None,
        "intensity_limit_kgce_t": site.limits.energy_intensity_max_kgce_t,
        "days_with_value": len(kgce_d),
        "completeness_pct": _pct(sum(v.completeness for v in kgce_d.values()) / n_days),
    }

    # --- alerts
    a = {"raised": 0, "acknowledged": 0, "resolved": 0, "open": 0, "median_resolve_h": None, "by_rule": {}}
    alert_rows: list[dict] = []
    if src.alerts is not None:
        fired = [x for x in src.alerts.alerts(("firing", "resolved"), site=site_id)
                 if x.fired_ts is not None and start <= x.fired_ts < end]
        times = [(x.resolved_ts - x.fired_ts) / 3600.0 for x in fired if x.resolved_ts is not None]
        a = {"raised": len(fired), "acknowledged": sum(1 for x in fired if x.acked_ts is not None),
             "resolved": sum(1 for x in fired if x.state == "resolved"), "open": sum(1 for x in fired if x.state == "firing"),
             "median_resolve_h": round(statistics.median(times), 2) if times else None, "by_rule": {}}
        for x in fired:
            a["by_rule"][x.rule] = a["by_rule"].get(x.rule, 0) + 1
            alert_rows.append({
                "id": x.id, "rule": x.rule, "subject": x.subject, "severity": x.severity, "state": x.state,
                "fired": periods.fmt_local(x.fired_ts, tz), "resolved": periods.fmt_local(x.resolved_ts, tz) if x.resolved_ts else None,
                "acknowledged_by": x.acked_by if x.acked_ts else None,
                "value": x.facts.get("value"), "unit": x.facts.get("unit"), "limit": x.facts.get("limit"),
                "title_zh": x.facts.get("title_zh"),
            })

    events = []
    if src.kpi is not None:
        for dev, metric, ts, kind, prev, new, detail in src.kpi.counter_events(site_id):
            if start <= ts < end:
                events.append({"time": periods.fmt_local(ts, tz), "device": dev, "metric": metric, "kind": kind,
                               "prev": prev, "new": new, "detail": detail})

    # --- the daily table
    dust_by_day: dict[date, list[KpiValue]] = {}
    for v in tsp:
        dust_by_day.setdefault(periods.local_date(v.period_start, tz), []).append(v)
    nd = {periods.local_date(v.period_start, tz): v for v in sorted(leq_day, key=lambda v: v.value or 0)}
    nn = {periods.local_date(v.period_start, tz): v for v in sorted(leq_night, key=lambda v: v.value or 0)}
    daily = []
    for day in days:
        wv = water.get(day)
        dv = dust_by_day.get(day, [])
        daily.append({
            "date": day.isoformat(),
            "reuse_pct": _round(wv.value, 4) if wv else None,
            "reused_m3": _round(wv.extra.get("reused_m3"), 3) if wv else None,
            "fresh_m3": _round(wv.extra.get("fresh_m3"), 3) if wv else None,
            "reuse_completeness_pct": _pct(wv.completeness) if wv else None,
            "reuse_judged": None if wv is None or wv.breached is None else ("breach" if wv.breached else "ok"),
            "kwh": _round(kwh_d[day].value, 3) if day in kwh_d else None,
            "kgce": _round(kgce_d[day].value, 3) if day in kgce_d else None,
            "intensity_kgce_t": _round(inten_d[day].value, 4) if day in inten_d else None,
            "dust_max_hourly_mgm3": _round(max((v.value for v in dv if v.value is not None), default=None)),
            "dust_hours_over": len({v.period_start for v in dv if v.breached}),
            "noise_day_leq_db": _round(nd[day].value, 2) if day in nd else None,
            "noise_night_leq_db": _round(nn[day].value, 2) if day in nn else None,
        })
    has_data = bool(water or kgce_d or tsp or leq_day or leq_night)
    return {**base, "monitored": True, "has_data": has_data, "name": site.name or site_id, "timezone": tz,
            "water": w, "dust": d, "noise": n, "energy": e, "alerts": a, "alert_list": alert_rows,
            "counter_events": events, "daily": daily,
            "incomplete_days": [r["date"] for r in daily if (r["reuse_completeness_pct"] or 0) < cfg.kpi.completeness_min_pct]}
