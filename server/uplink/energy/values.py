"""The values of the configured data items for one period, from the KPI engine's code.

    values = ItemValues(engine)
    records = values.records(enterprise, stat, period)

Day and month values are the KPI engine's KPIs for that period (`engine.compute`, the
same code and configuration the monitor runs: `energy_kwh_daily` per meter and per site,
`energy_kgce_daily`, ...). Real-time values (15, 30 or 60 minutes) are `energy_kpis`
over that slot, from the same per-meter counter increments of the slot's local day
(`engine.meters`) that the day KPI sums, prorated at the slot edges the same way
(`periods.allocate`): so the 15-minute kWh of a day add up to the day's kWh, and to
what `greenmine kpi show` prints.
Ore and water totals are the same increments, allocated to the period. Nothing here
reads a raw total.
"""

from __future__ import annotations

from greenmine.server.monitor.kpi import periods, water
from greenmine.server.monitor.kpi.energy import energy_kpis
from greenmine.server.monitor.kpi.engine import KpiEngine
from greenmine.server.monitor.kpi.model import KpiValue, MeterData
from greenmine.server.monitor.kpi.periods import Period
from greenmine.server.uplink.energy.config import EnterpriseConfig, Source, StatType
from greenmine.server.uplink.energy.queue import Record

_SUFFIX = {StatType.REALTIME: "slot", StatType.DAY: "daily", StatType.MONTH: "monthly"}  # year: the service sums months


class ItemValues:
    def __init__(self, engine: KpiEngine) -> None:
        self.engine = engine
        self._batch = False
        self._cache: dict[tuple[str, str, float], list[MeterData]] = {}

    def span(self, on: bool) -> None:
        """While on (one batch of periods), each real-time slot's day of meter reads is replayed once, not once
        per slot (a catch-up of many slots after downtime)."""
        self._batch = on
        self._cache.clear()

    def meters(self, site: str, metric: str, period: Period) -> list[MeterData]:
        """Per-meter increments for `period`. A real-time slot gets the increments of its whole local day (what the
        day KPI replays, read up to now), so its share of an increment that spans the slot's edges (a late or
        skipped read) is the same share the day KPI counts, and the day's slots add up to the day."""
        if period.kind != "slot":
            return self.engine.meters(site, metric, period)
        tz = self.engine.sites[site].timezone
        d = periods.day(periods.local_date(period.start, tz), tz)
        key = (site, metric, d.start)
        if not self._batch or key not in self._cache:
            # kind "slot-day": the engine stores increments only for its own "day" computations
            self._cache[key] = self.engine.meters(site, metric, Period("slot-day", d.start, d.end, d.label))
        return self._cache[key]

    def _counter(self, meters: list[MeterData], period: Period) -> tuple[float, float] | None:
        if not meters:
            return None
        interval = self.engine.cfg.counter_interval_s
        total = sum(m.used(period.start, period.end) for m in meters)
        return total, min(m.completeness(period.start, period.end, interval) for m in meters)

    def kpis(self, site: str, stat: StatType, period: Period) -> list[KpiValue]:
        eng = self.engine
        if stat is StatType.REALTIME:
            cfg = eng.cfg
            by_metric = {m: ms for m in cfg.energy_metrics if (ms := self.meters(site, m, period))}
            return energy_kpis(site, period, by_metric, [], kgce_per_unit=cfg.kgce_per_unit,
                               energy_metrics=cfg.energy_metrics, interval_s=cfg.counter_interval_s,
                               completeness_min_pct=cfg.completeness_min_pct)
        return eng.compute(site, period)

    def records(self, ent: EnterpriseConfig, stat: StatType, period: Period) -> tuple[list[Record], list[str]]:
        """The records of every item of `ent` that reports `stat`, and what could not be produced (no data)."""
        items = [i for i in ent.items if stat in i.stat_types]
        if not items:
            return [], []
        site = ent.site
        suffix = _SUFFIX[stat]
        kpis = {(v.kpi, v.subject): v for v in self.kpis(site, stat, period)}
        min_pct = self.engine.cfg.completeness_min_pct
        out: list[Record] = []
        missing: list[str] = []
        counters: dict[str, tuple[float, float] | None] = {}
        for it in items:
            got: tuple[float, float] | None = None
            if it.source in (Source.METER_KWH, Source.SITE_KWH, Source.SITE_KGCE, Source.KPI):
                name, subject = {
                    Source.METER_KWH: (f"energy_kwh_{suffix}", it.device),
                    Source.SITE_KWH: (f"energy_kwh_{suffix}", "site"),
                    Source.SITE_KGCE: (f"energy_kgce_{suffix}", "site"),
                    Source.KPI: (f"{it.kpi}_{suffix}", it.subject),
                }[it.source]
                v = kpis.get((name, subject))
                if v is not None and v.value is not None:
                    got = (v.value, v.completeness)
            else:
                metric = {Source.ORE_T: self.engine.cfg.ore_metric, Source.WATER_FRESH_M3: water.FRESH,
                          Source.WATER_REUSED_M3: water.REUSED}[it.source]
                if metric not in counters:
                    counters[metric] = self._counter(self.meters(site, metric, period), period)
                got = counters[metric]
            if got is None:
                if it.source is Source.KPI:
                    missing.append(it.code)
                    continue
                got = (0.0, 0.0)  # a meter that sent nothing in the period: zero, and incomplete
            value, comp = got
            out.append(Record(site=site, code=it.code, stat_type=stat.code, period_start=period.start,
                              period_end=period.end, value=round(value * it.scale, it.decimals),
                              complete=comp * 100.0 >= min_pct - 1e-9, completeness=comp,
                              input_type=it.input_type, scope=it.scope))
        return out, missing
