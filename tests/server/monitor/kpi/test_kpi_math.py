"""KPI math against hand-computed tables (docs/kpi-alerts.md formulas)."""

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from greenmine.server.monitor.kpi import periods
from greenmine.server.monitor.kpi.counters import increments
from greenmine.server.monitor.kpi.dust import TSP, hourly_average
from greenmine.server.monitor.kpi.energy import energy_kpis
from greenmine.server.monitor.kpi.model import MeterData, Sample, sample_stats
from greenmine.server.monitor.kpi.noise import leq, leq_kpis, lmax_night
from greenmine.server.monitor.kpi.water import reuse_rate

SH = "Asia/Shanghai"
TZ = ZoneInfo(SH)
D = date(2026, 11, 27)


def local(h, m=0, d=D):
    return datetime(d.year, d.month, d.day, h, m, tzinfo=TZ).timestamp()


def meter(device, per_hour, skip_hours=(), start=100.0, hours=25, t0=None):
    """A totalizer read hourly from local 00:00 (25 reads close the day at 24:00)."""
    t0 = local(0) if t0 is None else t0
    pts = [(t0 + h * 3600, start + per_hour * h) for h in range(hours) if h not in skip_hours]
    incs, _ = increments(pts)
    return MeterData(device, incs, [t for t, _ in pts])


# --- periods -----------------------------------------------------------------

def test_shanghai_day_starts_at_local_midnight():
    p = periods.day(D, SH)
    assert p.start == datetime(2026, 11, 26, 16, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert p.seconds == 86400


def test_night_spans_midnight():
    n = periods.noise_night(D, SH)
    assert datetime.fromtimestamp(n.start, TZ) == datetime(2026, 11, 27, 22, tzinfo=TZ)
    assert datetime.fromtimestamp(n.end, TZ) == datetime(2026, 11, 28, 6, tzinfo=TZ)
    shifted = periods.noise_night(D, SH, day_start_h=7, night_start_h=23)
    assert shifted.seconds == 8 * 3600 and datetime.fromtimestamp(shifted.start, TZ).hour == 23


# --- water -------------------------------------------------------------------

def test_reuse_daily_two_meters_per_role_summed():
    # reused 60+30 = 90 m3/h, fresh 6+4 = 10 m3/h -> R = 90 %
    v = reuse_rate(
        "s1", periods.day(D, SH),
        [meter("r1", 60), meter("r2", 30)], [meter("f1", 6), meter("f2", 4)],
        interval_s=3600,
    )
    assert v.value == pytest.approx(90.0)
    assert v.extra["reused_m3"] == pytest.approx(2160) and v.extra["fresh_m3"] == pytest.approx(240)
    assert v.completeness == 1.0 and v.complete and v.breached is False


def test_reuse_breach_on_complete_day():
    v = reuse_rate("s1", periods.day(D, SH), [meter("r1", 80)], [meter("f1", 20)], interval_s=3600)
    assert v.value == pytest.approx(80.0) and v.breached is True
    assert "85%" in v.standard


def test_reuse_day_with_missing_data_is_incomplete_and_not_judged():
    # fresh meter silent 10:00-13:00 (4 of 24 hourly reads missing): 20/24 = 83.3 % < 90 %.
    # The increment across the gap still carries the water: R stays 80 %, but it is not judged.
    v = reuse_rate(
        "s1", periods.day(D, SH), [meter("r1", 80)], [meter("f1", 20, skip_hours=(10, 11, 12, 13))], interval_s=3600
    )
    assert v.value == pytest.approx(80.0)
    assert v.completeness == pytest.approx(20 / 24)
    assert v.complete is False and v.breached is None
    assert v.extra["completeness_by_meter"]["r1"] == 1.0


def test_reuse_with_a_role_missing_is_not_judged():
    v = reuse_rate("s1", periods.day(D, SH), [meter("r1", 80)], [], interval_s=3600)
    assert v.completeness == 0 and v.breached is None


def test_reuse_rolling_24h_prorates_increments_at_edges():
    # window from 12:30 to 12:30 next day: half of each edge hour is inside
    end = local(12, 30) + 86400
    r = meter("r1", 90, hours=49)
    f = meter("f1", 10, hours=49)
    v = reuse_rate("s1", periods.rolling24h(end), [r], [f], interval_s=3600)
    assert v.kpi == "water_reuse_24h"
    assert v.extra["reused_m3"] == pytest.approx(90 * 24)
    assert v.value == pytest.approx(90.0)


# --- energy ------------------------------------------------------------------

def test_energy_kwh_kgce_and_intensity_table():
    p = periods.day(D, SH)
    out = energy_kpis(
        "s1", p,
        {"energy_kwh_total": [meter("m1", 100), meter("m2", 50)], "diesel_kg_total": [meter("gen", 1)]},
        [meter("belt", 10)],
        energy_metrics={"energy_kwh_total": "electricity", "diesel_kg_total": "diesel"},
        interval_s=3600, intensity_limit_kgce_t=1.9,
    )
    by = {(k.kpi, k.subject): k for k in out}
    assert by[("energy_kwh_daily", "m1")].value == pytest.approx(2400)
    assert by[("energy_kwh_daily", "m2")].value == pytest.approx(1200)
    assert by[("energy_kwh_daily", "site")].value == pytest.approx(3600)
    # 3600 kWh x 0.1229 + 24 kg x 1.4571 = 442.44 + 34.9704
    assert by[("energy_kgce_daily", "site")].value == pytest.approx(477.4104)
    inten = by[("energy_intensity_daily", "site")]
    assert inten.value == pytest.approx(477.4104 / 240)  # 1.98921 kgce/t
    assert inten.breached is True and inten.unit == "kgce/t"


def test_energy_custom_coefficient_and_month():
    m = periods.month(2026, 11, SH)
    # two days of 100 kWh/h inside November
    out = energy_kpis("s1", m, {"energy_kwh_total": [meter("m1", 100, hours=49)]}, [],
                      kgce_per_unit={"electricity": 0.3}, interval_s=3600)
    by = {(k.kpi, k.subject): k for k in out}
    assert by[("energy_kwh_monthly", "site")].value == pytest.approx(4800)
    assert by[("energy_kgce_monthly", "site")].value == pytest.approx(1440)
    assert by[("energy_kwh_monthly", "site")].complete is False  # 2 of 30 days read


def test_intensity_without_ore_is_none():
    out = energy_kpis("s1", periods.day(D, SH), {"energy_kwh_total": [meter("m1", 100)]},
                      [meter("belt", 0)], interval_s=3600, intensity_limit_kgce_t=2)
    inten = [k for k in out if k.kpi == "energy_intensity_daily"][0]
    assert inten.value is None and inten.breached is None


# --- dust --------------------------------------------------------------------

def test_dust_hourly_average_per_monitor_against_limit():
    h = periods.hour(local(13, 10), SH)
    assert h.label == "2026-11-27T13"
    ss = [Sample("d1", local(13, 0), 0.8), Sample("d1", local(13, 20), 1.2), Sample("d1", local(13, 40), 1.3),
          Sample("d2", local(13, 0), 0.2), Sample("d2", local(13, 20), 0.3), Sample("d2", local(13, 40), 0.4),
          Sample("d1", local(14, 0), 9.9)]
    out = {k.subject: k for k in hourly_average("s1", h, TSP, sample_stats(ss, h.start, h.end, 1200), limit_mgm3=1.0)}
    assert out["d1"].value == pytest.approx(1.1) and out["d1"].breached is True
    assert out["d2"].value == pytest.approx(0.3) and out["d2"].breached is False
    assert "GB 16297-1996" in out["d1"].standard


# --- noise -------------------------------------------------------------------

def test_leq_is_energy_mean_not_arithmetic():
    # (1e5 + 1e6 + 1e7) / 3 = 3.7e6 -> 65.68 dB, while the arithmetic mean is 60
    assert leq([50, 60, 70]) == pytest.approx(65.682, abs=1e-3)
    assert leq([55, 55]) == pytest.approx(55)


def test_night_leq_over_midnight_breaches_though_arithmetic_mean_passes():
    night = periods.noise_night(D, SH)
    levels = [40, 40, 40, 40, 40, 40, 40, 60]  # 22:00 .. 05:00, hourly
    ss = [Sample("n1", night.start + i * 3600, v) for i, v in enumerate(levels)]
    # day-period samples either side must not count
    ss += [Sample("n1", local(21), 80), Sample("n1", local(6, d=date(2026, 11, 28)), 80)]
    (v,) = leq_kpis("s1", night, sample_stats(ss, night.start, night.end, 3600), noise_class=2, night=True)
    # (7 x 1e4 + 1e6) / 8 = 133750 -> 51.26 dB(A) > 50; arithmetic mean 42.5 would pass
    assert v.value == pytest.approx(51.263, abs=1e-3)
    assert v.extra["arithmetic_mean_db"] == pytest.approx(42.5)
    assert v.limit == 50 and v.breached is True and v.complete
    assert v.standard == "GB 12348-2008 2类 夜间 50 dB(A)"


def test_day_leq_class_limits():
    d = periods.noise_day(D, SH)
    ss = [Sample("n1", d.start + i * 3600, 62) for i in range(16)]
    for cls, lim, breached in [(0, 50, True), (2, 60, True), (3, 65, False), (4, 70, False)]:
        (v,) = leq_kpis("s1", d, sample_stats(ss, d.start, d.end, 3600), noise_class=cls, night=False)
        assert (v.limit, v.breached) == (lim, breached)


def test_night_lmax_frequent_and_sporadic():
    night = periods.noise_night(D, SH)
    ss = [Sample("n1", night.start + i * 3600, v) for i, v in enumerate([40, 40, 62, 40, 40, 40, 40, 40])]
    (v,) = lmax_night("s1", night, sample_stats(ss, night.start, night.end, 3600), noise_class=2)
    # class 2 night 50: frequent Lmax limit 60, sporadic 65
    assert v.value == 62 and v.limit == 60 and v.breached is True
    assert v.extra["over_frequent"] is True and v.extra["over_sporadic"] is False
