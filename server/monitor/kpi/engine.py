"""The KPI engine: reads stored readings, computes every KPI of a site for a
local calendar period, stores the results, and returns them for the alerts.

    engine = KpiEngine(kpi_cfg, sites, source, store)
    engine.use_rollups(replica)                    # the monitor: periods summed from its rollups
    engine.note_data(site, metric, [ts, ...])      # after each committed batch
    values = engine.run_due(now)                   # closed dirty periods + rolling 24 h
                                                   # (or take_due / compute_due / finish_due, see run_due)
    engine.compute(site, period)                   # recompute any past period

Where the periods' numbers come from: the monitor's rollups (`rollups.py`,
per meter and 15-minute slot, built from the stream) when `use_rollups` was
called and the configured intervals fit a slot; otherwise (`kpi recompute`
without a monitor, the energy uplink, intervals that do not divide 15
minutes) a replay of the raw reads through `source`. Both give the same
values for calendar periods (tests/server/monitor/kpi/test_rollups.py).

The engine holds no state of its own besides the store, so several server
processes may run it for different sites.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from datetime import date, datetime
from zoneinfo import ZoneInfo

from greenmine.server.config import SiteConfig
from greenmine.server.monitor.kpi import dust, noise, periods, water
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.monitor.kpi.counters import CounterTracker
from greenmine.server.monitor.kpi.energy import energy_kpis
from greenmine.server.monitor.kpi.model import KpiValue, MeterData, Sample, SampleStats, sample_stats
from greenmine.server.monitor.kpi.periods import SLOT_S, Period
from greenmine.server.monitor.kpi.rounding import judged
from greenmine.server.monitor.kpi.store import KpiStore, Point, ReadingSource

log = logging.getLogger(__name__)


class KpiEngine:
    def __init__(self, cfg: KpiConfig, sites: list[SiteConfig], source: ReadingSource, store: KpiStore | None = None) -> None:
        self.cfg = cfg
        self.sites = {s.id: s for s in sites}
        self.source = source
        self.store = store
        self._next_rolling = float("-inf")
        self._marked: set[tuple[str, str, float]] = set()  # recently marked dirty, to skip repeat writes
        #: (site, device, metric) -> the latest good counter read this process has passed on, so a read that
        #: continues the series needs no look-up of the read before it (see note_counter_reads)
        self._last_read: dict[tuple[str, str, str], float] = {}
        #: the metrics any KPI reads; readings of other metrics touch no period
        self._counters = frozenset(self._counter_metrics())
        self._noisy = frozenset({noise.LAEQ, cfg.noise.lmax_metric})
        self._hourly = frozenset({dust.TSP, dust.PM10, *self._noisy})
        self.metrics = frozenset({*self._counters, dust.TSP, dust.PM10, noise.LAEQ, cfg.noise.lmax_metric})
        #: (site, device, metric) -> (width_bits, scale) the agents reported; loaded from the store on first use
        self._widths: dict[tuple[str, str, str], tuple[int, float]] | None = None
        self._disagreed: set[tuple[str, str, str]] = set()
        self.rollups = None  # see use_rollups

    def use_rollups(self, replica):
        """Compute from rollups kept in `replica`'s file (`rollups.Rollups`), which the caller feeds with the
        readings new to the replica. Returns them; their `usable` is False (raw replay) when the counter or
        sample interval does not divide a 15-minute slot into at most 62 parts."""
        from greenmine.server.monitor.kpi.rollups import Rollups

        cfg = self.cfg
        self.rollups = Rollups(replica, counters=self._counters, samples=(dust.TSP, dust.PM10, *self._noisy),
                               spec=self.counter_spec, counter_interval_s=cfg.counter_interval_s,
                               sample_interval_s=cfg.sample_interval_s, lookback_s=cfg.counter_lookback_s)
        if not self.rollups.usable:
            log.info("kpi: counter_interval_s %g / sample_interval_s %g do not divide 900 s into at most 62 "
                     "intervals: periods are computed from raw reads", cfg.counter_interval_s, cfg.sample_interval_s)
        return self.rollups

    @property
    def _rolled(self) -> bool:
        return self.rollups is not None and self.rollups.usable

    # --- counter widths from the agents' status -------------------------------

    def _reported(self) -> dict[tuple[str, str, str], tuple[int, float]]:
        if self._widths is None:
            self._widths = self.store.counter_widths() if self.store is not None else {}
        return self._widths

    def note_counters(self, site_id: str, agent: str, widths: Iterable[tuple[str, str, int, float]], now: float) -> None:
        """The totals an agent's status announced, (device, metric, width_bits, scale); stored when new or changed,
        so a restart and `kpi recompute` know them too."""
        known = self._reported()
        changed = [w for w in widths if w[1] in self._counters and known.get((site_id, w[0], w[1])) != (w[2], w[3])]
        if not changed:
            return
        if self.store is not None:
            self.store.put_counter_widths(site_id, agent, changed, now)
        for device, metric, bits, scale in changed:
            known[(site_id, device, metric)] = (bits, scale)
            log.info("site %s meter %s %s: %d-bit total (scale %g), as agent %s reports it", site_id, device, metric,
                     bits, scale, agent)

    def counter_spec(self, site_id: str, device: str, metric: str):
        """The counter rules' spec: [[kpi.meters]], with the width the agent reported where the config gives none."""
        reported = self._reported().get((site_id, device, metric))
        meter = self.cfg.meter(site_id, device, metric)
        key = (site_id, device, metric)
        if (reported and meter and meter.width_bits and (meter.width_bits, meter.scale) != reported
                and key not in self._disagreed):
            self._disagreed.add(key)
            log.warning("site %s meter %s %s: kpi.meters says %d bits x %g, the agent's profile %d bits x %g; "
                        "using kpi.meters", site_id, device, metric, meter.width_bits, meter.scale, *reported)
        return self.cfg.counter_spec(site_id, device, metric, reported=reported)

    # --- which periods a reading touches ------------------------------------

    def _counter_metrics(self) -> set[str]:
        from greenmine.server.monitor.kpi.vocabulary import counter_metrics

        return counter_metrics(self.cfg)

    def periods_for(self, site: SiteConfig, metric: str, ts: float) -> list[Period]:
        tz = site.timezone
        d = periods.local_date(ts, tz)
        out: list[Period] = []
        if metric in self._counters:
            # a read just after midnight still closes the previous day's last interval
            edge = periods.local_date(ts - self.cfg.counter_interval_s, tz)
            for dd in {d, edge}:
                out.append(periods.day(dd, tz))
                out.append(periods.month(dd.year, dd.month, tz))
        if metric in (dust.TSP, dust.PM10, noise.LAEQ, self.cfg.noise.lmax_metric):
            out.append(periods.hour(ts, tz))
        if metric in (noise.LAEQ, self.cfg.noise.lmax_metric):
            out.append(self._noise_period(ts, tz))
        return out

    def _noise_period(self, ts: float, tz: str) -> Period:
        n = self.cfg.noise
        lt = datetime.fromtimestamp(ts, ZoneInfo(tz))
        if not noise.is_night_hour(lt.hour, n.day_start_h, n.night_start_h):
            return periods.noise_day(lt.date(), tz, n.day_start_h, n.night_start_h)
        night_date = lt.date() if lt.hour >= n.night_start_h else date.fromordinal(lt.date().toordinal() - 1)
        return periods.noise_night(night_date, tz, n.day_start_h, n.night_start_h)

    def note_data(self, site_id: str, metric: str, timestamps: Iterable[float]) -> None:
        """Mark the periods touched by newly stored readings as dirty (persisted)."""
        self.note_batch(site_id, {metric: list(timestamps)})

    def note_batch(self, site_id: str, by_metric: dict[str, list[float]]) -> None:
        """Like note_data for several metrics at once: one write, none if all were marked already."""
        site = self.sites.get(site_id)
        if site is None or self.store is None:
            return
        ps: dict[tuple[str, str, float], Period] = {}
        done: set[tuple] = set()
        edge = self.cfg.counter_interval_s
        for metric, timestamps in by_metric.items():
            if metric not in self.metrics:
                continue
            # metrics of one kind (all totalizers; dust; noise) touch the same periods at a given time
            kind = (metric in self._counters, metric in self._hourly, metric in self._noisy)
            for ts in timestamps:
                # timestamps in one SLOT_S slot whose counter edges `ts - counter_interval_s` share a slot
                # too touch the same periods: one periods_for per slot, not per timestamp
                slot = (kind, ts // SLOT_S, (ts - edge) // SLOT_S)
                if slot in done:
                    continue
                done.add(slot)
                for p in self.periods_for(site, metric, ts):
                    key = (site_id, p.kind, p.start)
                    if key not in self._marked:
                        ps[key] = p
        if ps:
            self.store.mark_dirty(site_id, ps.values())
            if len(self._marked) > 10_000:
                self._marked.clear()
            self._marked.update(ps)

    @property
    def counter_metrics(self) -> frozenset[str]:
        """The cumulative metrics (totalizers) the KPIs read increments of."""
        return self._counters

    def note_counter_reads(self, site_id: str, spans: dict[tuple[str, str], tuple[float, float]]) -> None:
        """Good totalizer reads arrived, (device, metric) -> (first ts, last ts), before they are stored.

        The increment from the read before to the first new one (and, for a late read, from the last new one
        to the read after it) is shared out over every period it spans in proportion to time. So when that
        span crosses midnight or a month end (a reading gap, a backlog re-sent after an outage), every day
        and month it touches is marked dirty again, including ones already computed. Spans are bounded by
        `counter_lookback_s`, as the computation's look-back is."""
        site = self.sites.get(site_id)
        if site is None or self.store is None:
            return
        tz = site.timezone
        ps: dict[tuple[str, str, float], Period] = {}
        if len(self._last_read) > 100_000:
            self._last_read.clear()
        for (device, metric), (first, last) in spans.items():
            if metric not in self._counters:
                continue
            key = (site_id, device, metric)
            known = self._last_read.get(key)
            if known is not None and first > known:
                prev, nxt = known, None  # continues the series: nothing stored after it
            else:
                prev, nxt = self.source.neighbours(site_id, device, metric, first, last)
            if nxt is None:
                self._last_read[key] = max(last, known if known is not None else last)
            lo = max(prev if prev is not None else first, first - self.cfg.counter_lookback_s)
            hi = min(nxt if nxt is not None else last, last + self.cfg.counter_lookback_s)
            d, d_end = periods.local_date(lo, tz), periods.local_date(hi, tz)
            while d <= d_end:
                for p in (periods.day(d, tz), periods.month(d.year, d.month, tz)):
                    if (site_id, p.kind, p.start) not in self._marked:
                        ps[(site_id, p.kind, p.start)] = p
                d = date.fromordinal(d.toordinal() + 1)
        if ps:
            self.store.mark_dirty(site_id, ps.values())
            self._marked.update(ps)

    def run_due(self, now: float) -> list[KpiValue]:
        """Compute every dirty period that has closed, plus each site's rolling 24 h reuse (every rolling_every_s)."""
        due = self.take_due(now)
        out = self.compute_due(due, now)
        self.finish_due(due)
        return out

    def take_due(self, now: float) -> list[tuple[str, Period, int]]:
        """The closed dirty periods to compute now. Call where no new readings are being noted (the monitor
        role holds its lock); `compute_due` may then run beside `note_batch` / `note_counter_reads`, and a
        period they mark again meanwhile stays dirty (`finish_due` clears only the mark it took)."""
        due = self.store.dirty_closed(now) if self.store is not None else []
        for site_id, p, _gen in due:
            self._marked.discard((site_id, p.kind, p.start))  # a reading for it now writes a new mark
        return due

    def compute_due(self, due: list[tuple[str, Period, int]], now: float) -> list[KpiValue]:
        """Compute `due` (and the rolling 24 h when it is time); their values are stored in one commit."""
        out: list[KpiValue] = []
        for site_id, p, _gen in due:
            if site_id in self.sites:
                out += self.compute(site_id, p, now=now, store=False)
        if now >= self._next_rolling:
            self._next_rolling = now + self.cfg.rolling_every_s
            for site_id in self.sites:
                out += self.compute(site_id, periods.rolling24h(now), now=now, store=False)
        if self.store is not None and out:
            self.store.put_values(out, now)
        return out

    def finish_due(self, due: list[tuple[str, Period, int]]) -> None:
        for site_id, p, gen in due:
            self.store.clear_dirty(site_id, p, gen)

    # --- computing ----------------------------------------------------------

    def compute(self, site_id: str, period: Period, now: float | None = None, store: bool = True) -> list[KpiValue]:
        """Every KPI of `site_id` over `period`, stored (unless `store` is False) and returned."""
        site = self.sites[site_id]
        cfg = self.cfg
        common = dict(completeness_min_pct=cfg.completeness_min_pct)
        out: list[KpiValue] = []
        if period.kind in ("day", "rolling24h"):
            reused = self._meters(site_id, water.REUSED, period)
            fresh = self._meters(site_id, water.FRESH, period)
            if reused or fresh:
                out.append(water.reuse_rate(site_id, period, reused, fresh, interval_s=cfg.counter_interval_s,
                                            limit_pct=site.limits.water_reuse_min_pct,
                                            standard=site.limits.water_reuse_standard, **common))
        if period.kind in ("day", "month"):
            by_metric = {m: ms for m in cfg.energy_metrics if (ms := self._meters(site_id, m, period))}
            ore = self._meters(site_id, cfg.ore_metric, period)
            out += energy_kpis(site_id, period, by_metric, ore, kgce_per_unit=cfg.kgce_per_unit,
                               energy_metrics=cfg.energy_metrics, interval_s=cfg.counter_interval_s,
                               intensity_limit_kgce_t=site.limits.energy_intensity_max_kgce_t,
                               intensity_standard=site.limits.energy_intensity_standard, **common)
        if period.kind == "hour":
            for metric, limit in ((dust.TSP, site.limits.dust_tsp_limit_mgm3), (dust.PM10, cfg.dust_pm10_limit_mgm3)):
                out += dust.hourly_average(site_id, period, metric, self._stats(site_id, metric, period),
                                           limit_mgm3=limit, standard=site.limits.dust_standard, **common)
            lt = datetime.fromtimestamp(period.start, ZoneInfo(site.timezone))
            night = noise.is_night_hour(lt.hour, cfg.noise.day_start_h, cfg.noise.night_start_h)
            out += noise.leq_kpis(site_id, period, self._stats(site_id, noise.LAEQ, period),
                                  noise_class=site.limits.noise_class, night=night,
                                  standard=site.limits.noise_standard, **common)
        if period.kind in ("noise_day", "noise_night"):
            night = period.kind == "noise_night"
            out += noise.leq_kpis(site_id, period, self._stats(site_id, noise.LAEQ, period),
                                  noise_class=site.limits.noise_class, night=night,
                                  standard=site.limits.noise_standard, **common)
            if night:
                out += noise.lmax_night(site_id, period, self._stats(site_id, cfg.noise.lmax_metric, period),
                                        noise_class=site.limits.noise_class, standard=site.limits.noise_standard,
                                        frequent_over_db=cfg.noise.lmax_frequent_over_db,
                                        sporadic_over_db=cfg.noise.lmax_sporadic_over_db, **common)
        out = [self._judged(v) for v in out]
        if store and self.store is not None and out:
            self.store.put_values(out, now if now is not None else period.end)
        return out

    def _judged(self, v: KpiValue) -> KpiValue:
        """The value rounded as it is judged against its limit (GB/T 8170); the computed one kept as raw_value."""
        if v.value is None or v.limit is None:
            return v
        value, decimals = judged(v.value, v.limit, self.cfg.judge_decimals.get(v.kpi))
        return dataclasses.replace(v, value=value, raw_value=v.value, decimals=decimals)

    def compute_day(self, site_id: str, d: date) -> list[KpiValue]:
        """Recompute every KPI of one local date (day, its noise day and night, its hours)."""
        tz = self.sites[site_id].timezone
        n = self.cfg.noise
        out = self.compute(site_id, periods.day(d, tz))
        out += self.compute(site_id, periods.noise_day(d, tz, n.day_start_h, n.night_start_h))
        out += self.compute(site_id, periods.noise_night(d, tz, n.day_start_h, n.night_start_h))
        p = periods.day(d, tz)
        t = p.start
        while t < p.end:
            h = periods.hour(t, tz)
            out += self.compute(site_id, h)
            t = h.end
        return out

    def _good(self, site_id: str, metric: str, start: float, end: float) -> list[Point]:
        return [p for p in self.source.points(site_id, metric, start, end) if p.quality == "good"]

    def _stats(self, site_id: str, metric: str, period: Period) -> list[SampleStats]:
        if self._rolled:
            return self.rollups.sample_stats(site_id, metric, period.start, period.end)
        samples = [Sample(p.device, p.ts, p.value) for p in self._good(site_id, metric, period.start, period.end)]
        return sample_stats(samples, period.start, period.end, self.cfg.sample_interval_s)

    def meters(self, site_id: str, metric: str, period: Period) -> list[MeterData]:
        """The per-meter increments of `metric` over any `period` by the counter rules above: for the energy
        uplink's 15-minute values, so they are made by the same rule as the day and month KPIs."""
        return self._meters(site_id, metric, period)

    def _meters(self, site_id: str, metric: str, period: Period) -> list[MeterData]:
        """Increments per device, from the rollups or replaying reads from before the period to find the
        counter baseline."""
        if self._rolled:
            return self.rollups.meters(site_id, metric, period.start, period.end)
        start = period.start - self.cfg.counter_lookback_s
        end = period.end + 2 * self.cfg.counter_interval_s  # the read closing the last interval, and the next
        by_dev: dict[str, list[Point]] = {}
        for p in self._good(site_id, metric, start, end):
            by_dev.setdefault(p.device, []).append(p)
        # after a reading gap the read closing the period's last interval comes later (a gap from 23:00 to
        # 01:00 is closed by the 01:00 read): look further ahead, up to the look-back, for the first two
        short = [d for d, pts in by_dev.items() if sum(p.ts >= period.end for p in pts) < 2]
        if short:
            later: dict[str, list[Point]] = {}
            for p in self._good(site_id, metric, end, period.end + max(self.cfg.counter_lookback_s, end - period.end)):
                if p.device in short:
                    later.setdefault(p.device, []).append(p)
            for dev, pts in later.items():
                have = sum(p.ts >= period.end for p in by_dev[dev])
                by_dev[dev] += sorted(pts, key=lambda p: p.ts)[:2 - have]
        out = []
        kept = []  # the increments series is kept per closed day; rolling and monthly runs only read
        for dev, pts in sorted(by_dev.items()):
            pts.sort(key=lambda p: p.ts)
            tr = CounterTracker(self.counter_spec(site_id, dev, metric))
            incs, events = [], []
            for p in pts:
                i, e = tr.feed(p.ts, p.value)
                incs += i
                events += e
            if self.store is not None and period.kind == "day":
                kept.append((dev, [i for i in incs if period.start < i.end_ts <= period.end],
                             [e for e in events if period.start <= e.ts < period.end]))
            for e in events:
                if period.start <= e.ts < period.end:
                    log.debug("site %s meter %s %s: %s %g -> %g (%s)", site_id, dev, metric, e.kind.value, e.prev, e.new, e.detail)
            out.append(MeterData(dev, incs, [p.ts for p in pts if period.start <= p.ts < period.end]))
        if kept:
            self.store.put_increments(site_id, metric, kept)
        return out
