"""The KPI engine over a reading source and the SQLite KPI store."""

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from greenmine.server.config import Limits, SiteConfig
from greenmine.server.monitor.kpi import periods
from greenmine.server.monitor.kpi.config import KpiConfig, MeterConfig
from greenmine.server.monitor.kpi.engine import KpiEngine
from greenmine.server.monitor.kpi.store import KpiStore, MemorySource

TZ = ZoneInfo("Asia/Shanghai")
D = date(2026, 11, 27)
T0 = datetime(2026, 11, 27, tzinfo=TZ).timestamp()


@pytest.fixture
def store(tmp_path):
    s = KpiStore(tmp_path / "kpi.sqlite")
    yield s
    s.close()


def feed_water(src, engine, reused_per_min, fresh_per_min, minutes=24 * 60 + 1, start=T0, glitch_at=None):
    r, f = 5000.0, 300.0
    for i in range(minutes):
        ts = start + 60 * i
        rv = 0.0 if glitch_at == i else r
        src.add("s1", "water_reused_m3_total", "reuse1", ts, rv)
        src.add("s1", "water_fresh_m3_total", "fresh1", ts, f)
        engine.note_data("s1", "water_reused_m3_total", [ts])
        engine.note_data("s1", "water_fresh_m3_total", [ts])
        r += reused_per_min
        f += fresh_per_min


def test_dirty_day_is_computed_once_closed_and_stored(store):
    src = MemorySource()
    eng = KpiEngine(KpiConfig(rolling_every_s=60), [SiteConfig(id="s1")], src, store)
    feed_water(src, eng, 0.8, 0.2, glitch_at=600)  # a zero read mid-day must not matter
    day = periods.day(D, "Asia/Shanghai")
    # the day is still open: only the previous day (touched by the 00:00 read) may be computed
    early = [v for v in eng.run_due(day.end - 1) if v.kpi == "water_reuse_daily"]
    assert all(v.period_label != D.isoformat() and not v.complete for v in early)
    out = eng.run_due(day.end + 120)
    (daily,) = [v for v in out if v.kpi == "water_reuse_daily"]
    assert daily.value == pytest.approx(80.0) and daily.complete and daily.breached is True
    (rolling,) = [v for v in out if v.kpi == "water_reuse_24h"]
    assert rolling.value == pytest.approx(80.0)
    assert store.values("s1", "water_reuse_daily", start=day.start)[0].value == pytest.approx(80.0)
    # nothing dirty any more: a second run computes only the rolling value
    assert {v.kpi for v in eng.run_due(day.end + 180)} == {"water_reuse_24h"}
    assert [e[3] for e in store.counter_events("s1")] == ["zero"]


def test_recompute_past_day_overwrites(store):
    src = MemorySource()
    eng = KpiEngine(KpiConfig(), [SiteConfig(id="s1", limits=Limits(water_reuse_min_pct=75))], src, store)
    feed_water(src, eng, 0.8, 0.2)
    eng.compute_day("s1", D)
    assert store.values("s1", "water_reuse_daily")[0].breached is False
    # a late correction: more fresh water arrived for the same day
    src._data[("s1", "water_fresh_m3_total")] = [
        p.__class__(p.device, p.ts, 300 + (p.ts - T0) / 60 * 0.8) for p in src._data[("s1", "water_fresh_m3_total")]
    ]
    eng.compute(("s1"), periods.day(D, "Asia/Shanghai"))
    (v,) = store.values("s1", "water_reuse_daily")
    assert v.value == pytest.approx(50.0) and v.breached is True


def test_rollover_meter_through_engine(store):
    src = MemorySource()
    cfg = KpiConfig(meters=[MeterConfig(device="m1", metric="energy_kwh_total", width_bits=16, max_rate_per_h=6000)])
    eng = KpiEngine(cfg, [SiteConfig(id="s1")], src, store)
    v = 65536 - 1000.0
    for i in range(24 * 60 + 1):
        src.add("s1", "energy_kwh_total", "m1", T0 + 60 * i, v % 65536)
        v += 1.0
    out = eng.compute("s1", periods.day(D, "Asia/Shanghai"))
    by = {(k.kpi, k.subject): k.value for k in out}
    assert by[("energy_kwh_daily", "m1")] == pytest.approx(1440)
    assert by[("energy_kgce_daily", "site")] == pytest.approx(1440 * 0.1229)


def test_noise_night_and_hours_via_engine(store):
    src = MemorySource()
    eng = KpiEngine(KpiConfig(), [SiteConfig(id="s1", limits=Limits(noise_class=1))], src, store)
    night = periods.noise_night(D, "Asia/Shanghai")
    ts = night.start
    while ts < night.end:
        src.add("s1", "noise_laeq_db", "n1", ts, 47.0)
        eng.note_data("s1", "noise_laeq_db", [ts])
        ts += 60
    out = eng.run_due(night.end)
    (nv,) = [v for v in out if v.kpi == "noise_leq_night"]
    assert nv.value == pytest.approx(47.0) and nv.breached is True and nv.limit == 45
    hours = [v for v in out if v.kpi == "noise_leq_hourly"]
    assert len(hours) == 8 and all(h.limit == 45 for h in hours)


NM_REUSE = "内蒙古自治区绿色矿山建设方案 矿井水综合利用率 ≥ {limit:g}%"
NM_NOISE = "DB15/T 0000-2026 {noise_class}类区 {period} {limit:g} dB(A)"


def test_each_site_cites_its_own_rule_beside_its_limits(store):
    src = MemorySource()
    sites = [SiteConfig(id="s1"), SiteConfig(id="s2", limits=Limits(water_reuse_min_pct=75, water_reuse_standard=NM_REUSE,
                                                                    noise_standard=NM_NOISE))]
    eng = KpiEngine(KpiConfig(), sites, src, store)
    night = periods.noise_night(D, "Asia/Shanghai")
    for site in ("s1", "s2"):
        for i in range(24 * 60 + 1):
            ts = T0 + 60 * i
            src.add(site, "water_reused_m3_total", "reuse1", ts, 5000 + 0.8 * i)
            src.add(site, "water_fresh_m3_total", "fresh1", ts, 300 + 0.2 * i)
        for i in range(8 * 60):
            src.add(site, "noise_laeq_db", "n1", night.start + 60 * i, 47.0)
    day = periods.day(D, "Asia/Shanghai")
    by = {(v.site, v.kpi): v.standard for s in ("s1", "s2") for p in (day, night) for v in eng.compute(s, p)}
    assert by[("s1", "water_reuse_daily")] == "甘肃省绿色矿山建设实施方案 选矿废水循环利用率 ≥ 85%"
    assert by[("s2", "water_reuse_daily")] == "内蒙古自治区绿色矿山建设方案 矿井水综合利用率 ≥ 75%"
    assert by[("s1", "noise_leq_night")] == "GB 12348-2008 2类 夜间 50 dB(A)"
    assert by[("s2", "noise_leq_night")] == "DB15/T 0000-2026 2类区 夜间 50 dB(A)"
    assert by[("s2", "noise_lmax_night")] == "DB15/T 0000-2026 2类区 夜间 50 dB(A) + 10 (频发 Lmax)"


@pytest.mark.parametrize("field, text, message", [
    ("water_reuse_standard", "≥ {limt}%", r"unknown placeholder\(s\) \{limt\}; allowed: \{limit\}"),
    ("noise_standard", "{limit:q}", "Unknown format code"),
    ("dust_standard", "GB {limit}\nBcc: x", "control character"),
    ("energy_intensity_standard", "", "at least 1 character"),
])
def test_a_citation_that_cannot_be_filled_fails_at_load(field, text, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        Limits(**{field: text})


def test_a_period_marked_again_while_it_is_computed_stays_dirty(store):
    """The monitor computes closed periods while its consumer goes on committing: a late reading noted between
    take_due and finish_due keeps its period dirty, so the next run includes it."""
    src = MemorySource()
    eng = KpiEngine(KpiConfig(rolling_every_s=10**9), [SiteConfig(id="s1")], src, store)
    feed_water(src, eng, 0.8, 0.2)
    day = periods.day(D, "Asia/Shanghai")
    now = day.end + 120
    due = eng.take_due(now)
    assert ("s1", day.kind, day.start) in {(s, p.kind, p.start) for s, p, _ in due}
    first = [v for v in eng.compute_due(due, now) if v.kpi == "water_reuse_daily" and v.period_start == day.start]
    assert first[0].value == pytest.approx(80.0)
    # a late read inside the day, noted while the computation ran (before finish_due)
    ts = day.start + 3600 + 30
    src.add("s1", "water_fresh_m3_total", "fresh2", ts, 1.0)
    eng.note_data("s1", "water_fresh_m3_total", [ts])
    eng.finish_due(due)
    again = {(s, p.kind, p.start) for s, p, _ in eng.take_due(now)}
    assert ("s1", day.kind, day.start) in again
    # and with nothing noted meanwhile, finishing clears it
    due = eng.take_due(now)
    eng.compute_due(due, now)
    eng.finish_due(due)
    assert ("s1", day.kind, day.start) not in {(s, p.kind, p.start) for s, p, _ in eng.take_due(now)}


def test_kept_increments_are_pruned_to_the_retention(store):
    """The per-read increments a day's close keeps would grow by a row per meter and read forever."""
    from greenmine.server.monitor.kpi.counters import Increment, IncrementFlag

    incs = [Increment(T0 + 60 * i, T0 + 60 * (i + 1), 1.0, IncrementFlag.OK) for i in range(10)]
    store.put_increments("s1", "energy_kwh_total", [("m1", incs, [])])
    assert len(store.increments("s1", "m1", "energy_kwh_total", T0, T0 + 3600)) == 10
    assert store.prune_increments(T0 + 60 * 4) == 3  # those ending at T0+60, +120, +180
    assert len(store.increments("s1", "m1", "energy_kwh_total", T0, T0 + 3600)) == 7
