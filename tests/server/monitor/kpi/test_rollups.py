"""The monitor's rollups (server.monitor.kpi.rollups) give the KPIs a replay of the raw reads gives.

The raw replay is the reference (its numbers are checked by hand in test_kpi_math.py, test_engine.py and
test_gaps.py); here the same readings reach the rollups in order, late, twice, across a restart, and into
a replica that held them before it had rollups, and every KPI of the day, its hours and its noise periods
must come out the same.
"""

import math
import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from greenmine.server.config import SiteConfig
from greenmine.server.monitor.kpi import periods
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.monitor.kpi.engine import KpiEngine
from greenmine.server.monitor.kpi.store import StoreSource
from greenmine.server.store.replica import SeriesReplica

SH = "Asia/Shanghai"
TZ = ZoneInfo(SH)
D = date(2026, 11, 27)
SITE = SiteConfig(id="s1")
CFG = KpiConfig(rolling_every_s=10**9)


def readings() -> list[list[tuple]]:
    """Groups of one minute's readings (StoredReading tuples) from 12:00 the day before D to 02:00 after it:
    totalizers with a reset, a dip, a zero read, a rollover and a gap; dust and noise with gaps."""
    rnd = random.Random(11)
    t0 = datetime(2026, 11, 26, 12, tzinfo=TZ).timestamp()
    totals = {"r1": 5000.0, "r2": 100.0, "f1": 800.0, "e1": 65000.0, "o1": 10.0}
    metric = {"r1": "water_reused_m3_total", "r2": "water_reused_m3_total", "f1": "water_fresh_m3_total",
              "e1": "energy_kwh_total", "o1": "ore_t_total"}
    groups = []
    for k in range(38 * 60):
        ts = t0 + 60 * k + rnd.uniform(0, 20)
        ms = int(ts * 1000)
        g = []
        for dev, m in metric.items():
            totals[dev] += rnd.uniform(0.5, 2.0)
            v = totals[dev]
            if dev == "e1":
                v = totals[dev] % 65536  # a 16-bit register wraps
            if dev == "r2" and k == 900:
                totals[dev] = v = 3.0  # meter replaced
            if dev == "f1" and k == 1000:
                v = 0.0  # one zero read
            if dev == "f1" and k == 1300:
                v = totals[dev] - 1.5  # one dip
            if dev == "o1" and 1500 <= k < 1540:
                continue  # a 40-minute gap
            g.append(("s1", "gw1", dev, m, ms, v, "m3", "good"))
        if not (700 <= k < 720):
            g.append(("s1", "gw1", "d1", "dust_tsp_mgm3", ms, rnd.uniform(0.2, 1.6), "mg/m3", "good"))
        if k % 7:
            g.append(("s1", "gw1", "n1", "noise_laeq_db", ms, rnd.uniform(38.0, 72.0), "dB", "good"))
        if k == 1200:
            g.append(("s1", "gw1", "n1", "noise_laeq_db", ms + 1, 99.0, "dB", "bad"))  # not counted
        groups.append(g)
    return groups


def engine(path, rolled: bool, cfg: KpiConfig = CFG) -> tuple[KpiEngine, SeriesReplica]:
    replica = SeriesReplica(path)
    eng = KpiEngine(cfg, [SITE], StoreSource(replica))
    if rolled:
        eng.use_rollups(replica)
    return eng, replica


def feed(eng: KpiEngine, replica: SeriesReplica, groups, rebuild: bool = True) -> None:
    """As the monitor does: each group's new readings to the rollups in its transaction; then its tick's replay
    of the meters that got late reads."""
    for g in groups:
        with replica.transaction() as con:
            new = replica.add(g, con)
            if eng.rollups is not None:
                eng.rollups.add(new, con)
    if eng.rollups is not None and rebuild:
        eng.rollups.rebuild_stale()


def values(eng: KpiEngine) -> dict:
    out = {}
    for v in eng.compute_day("s1", D):
        out[(v.kpi, v.subject, v.period_kind, v.period_start)] = (v.value, v.completeness)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    eng, replica = engine(tmp_path_factory.mktemp("raw") / "replica.sqlite", rolled=False)
    feed(eng, replica, readings())
    try:
        ref = values(eng)
        end = periods.day(D, SH).end - 6 * 3600
        rolling = {v.kpi: v.value for v in eng.compute("s1", periods.rolling24h(end))}
        rolling_odd = {v.kpi: v.value for v in eng.compute("s1", periods.rolling24h(end + 400))}
    finally:
        replica.close()
    kinds = {k[2] for k in ref}
    assert kinds == {"day", "hour", "noise_day", "noise_night"} and len(ref) > 50
    assert 40 < ref[("water_reuse_daily", "site", "day", periods.day(D, SH).start)][0] < 80
    return ref, rolling, rolling_odd


def same(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    for k, (v, c) in ref.items():
        gv, gc = got[k]
        assert (gv is None) == (v is None), k
        if v is not None:
            assert gv == pytest.approx(v, rel=1e-9, abs=1e-9), k
        assert gc == pytest.approx(c, abs=1e-12), k


def test_in_order_the_rollups_give_what_the_replay_gives(tmp_path, reference):
    ref, rolling, rolling_odd = reference
    eng, replica = engine(tmp_path / "replica.sqlite", rolled=True)
    assert eng.rollups.usable
    feed(eng, replica, readings())
    same(values(eng), ref)
    # the rolling 24 h on slot edges is exact; between them a slot is shared by time
    end = periods.day(D, SH).end - 6 * 3600
    assert {v.kpi: v.value for v in eng.compute("s1", periods.rolling24h(end))} == pytest.approx(rolling, rel=1e-9)
    odd = {v.kpi: v.value for v in eng.compute("s1", periods.rolling24h(end + 400))}
    assert odd == pytest.approx(rolling_odd, abs=0.05)  # a reuse rate in %
    replica.close()


def test_late_and_redelivered_readings_count_once(tmp_path, reference):
    ref, _, _ = reference
    groups = readings()
    # an outage: 11:00-14:00 of day D arrives after the rest, newest first; some groups are delivered twice
    out = set(range(23 * 60, 26 * 60))
    late = [groups[k] for k in sorted(out, reverse=True)]
    live = [g for k, g in enumerate(groups) if k not in out]
    rnd = random.Random(5)
    twice = [g for g in live if rnd.random() < 0.1]
    eng, replica = engine(tmp_path / "replica.sqlite", rolled=True)
    feed(eng, replica, live[:1500])
    assert eng.rollups.stale() == []
    feed(eng, replica, late[:50] + twice + live[1500:] + late[50:] + twice, rebuild=False)
    assert {m[1] for m in eng.rollups.stale()} == {"r1", "r2", "f1", "e1", "o1"}  # a replay is due
    changed = eng.rollups.rebuild_stale()  # as the monitor's tick does
    assert eng.rollups.stale() == [] and set(changed["s1"]) == {
        "water_reused_m3_total", "water_fresh_m3_total", "energy_kwh_total", "ore_t_total"}
    same(values(eng), ref)
    replica.close()


def test_the_rollups_survive_a_restart_and_a_failed_transaction(tmp_path, reference):
    ref, _, _ = reference
    groups = readings()
    eng, replica = engine(tmp_path / "replica.sqlite", rolled=True)
    feed(eng, replica, groups[:1000])
    with pytest.raises(RuntimeError):
        with replica.transaction() as con:
            eng.rollups.add(replica.add(groups[1000], con), con)
            raise RuntimeError("the group fails after the rollups took it")
    eng.rollups.forget()  # what Monitor.on_messages does when its transaction fails
    replica.close()
    eng, replica = engine(tmp_path / "replica.sqlite", rolled=True)  # the tracker states come from the file
    feed(eng, replica, groups[1000:])
    same(values(eng), ref)
    replica.close()


def test_a_replica_from_before_the_rollups_is_rolled_up_when_opened(tmp_path, reference):
    ref, _, _ = reference
    eng, replica = engine(tmp_path / "replica.sqlite", rolled=False)
    feed(eng, replica, readings())
    replica.close()
    eng, replica = engine(tmp_path / "replica.sqlite", rolled=True)
    same(values(eng), ref)
    eng.rollups.rebuild("s1", periods.day(D, SH).start)  # what `kpi recompute` does: the same again
    same(values(eng), ref)
    replica.close()


def test_an_interval_that_does_not_divide_a_slot_computes_from_raw_reads(tmp_path):
    eng, replica = engine(tmp_path / "replica.sqlite", rolled=True, cfg=KpiConfig(counter_interval_s=7))
    assert not eng.rollups.usable
    t0 = periods.day(D, SH).start
    feed(eng, replica, [[("s1", "gw1", "r1", "water_reused_m3_total", int((t0 + 7 * i) * 1000), 10.0 + i, "m3", "good"),
                         ("s1", "gw1", "f1", "water_fresh_m3_total", int((t0 + 7 * i) * 1000), 10.0 + i / 4, "m3",
                          "good")] for i in range(200)])
    (v,) = [v for v in eng.compute("s1", periods.day(D, SH)) if v.kpi == "water_reuse_daily"]
    assert v.value == pytest.approx(80.0)  # 199 : 49.75
    assert eng.rollups.meters("s1", "water_reused_m3_total", t0, t0 + 86400) == []  # nothing rolled up
    replica.close()


def test_a_day_summed_from_slots_by_hand(tmp_path):
    """Reuse 3 m³ per 15 minutes, fresh 1: 75 %; one fresh meter silent for 3 hours: completeness 87.5 %."""
    eng, replica = engine(tmp_path / "replica.sqlite", rolled=True)
    t0 = periods.day(D, SH).start
    groups = []
    for i in range(24 * 60 + 2):
        ms = int((t0 + 60 * i) * 1000)
        g = [("s1", "gw1", "r1", "water_reused_m3_total", ms, 1000.0 + 0.2 * i, "m3", "good")]
        if not 600 <= i < 780:
            g.append(("s1", "gw1", "f1", "water_fresh_m3_total", ms, 50.0 + i / 15, "m3", "good"))
        groups.append(g)
    feed(eng, replica, groups)
    (v,) = [v for v in eng.compute("s1", periods.day(D, SH)) if v.kpi == "water_reuse_daily"]
    assert v.extra["reused_m3"] == pytest.approx(0.2 * 1440) and v.extra["fresh_m3"] == pytest.approx(1440 / 15)
    assert v.value == pytest.approx(75.0)
    assert v.completeness == pytest.approx(1260 / 1440) and not v.complete
    slots = eng.rollups.meters("s1", "water_reused_m3_total", t0, t0 + 3600)[0].slots
    assert [(s - t0, round(inc, 9), mask.bit_count()) for s, inc, mask in slots] == [
        (0, 3.0, 15), (900, 3.0, 15), (1800, 3.0, 15), (2700, 3.0, 15)]
    assert not math.isnan(v.value)
    replica.close()
