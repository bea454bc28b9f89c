"""Limits are judged on the value rounded as GB/T 8170 rounds reported values (issue 12 item 8).

Through the monitor as the server runs it (wire messages -> replica -> KPIs -> alerts -> .eml), with driven time.
"""

import email
import email.policy
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from greenmine.schemas.telemetry import Reading, TelemetryBatch
from greenmine.server.config import Limits, SiteConfig
from greenmine.server.monitor.alerts.config import AlertsConfig, DeadmanRule, ThresholdRule
from greenmine.server.monitor.alerts.service import Monitor
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.monitor.kpi.noise import leq
from greenmine.server.monitor.kpi.rounding import default_decimals, round_half_even, written_decimals
from greenmine.server.store.replica import SeriesReplica

ROOT = Path(__file__).resolve().parents[4]
TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 27, tzinfo=TZ)
#: 60 one-minute samples whose mean is exactly 1.000 mg/m3 on paper and 1.0000000000000002 in floats
DUST_AT_LIMIT = [1.05, 0.69, 1.22, 0.95, 1.31, 0.78] * 10
#: the shipped deadman rules, quiet between the hours these tests feed
QUIET = [DeadmanRule(name="device_offline", target="device", silence_s=1e9),
         DeadmanRule(name="agent_offline", target="agent", silence_s=1e9)]


class Clock:
    def __init__(self):
        self.t = T0.timestamp()

    def __call__(self):
        return self.t


def monitor(tmp_path, limits=None, kpi=None, alerts=None):
    clock = Clock()
    mon = Monitor(sites=[SiteConfig(id="s1", name="金昌某铜矿", recipients=["officer@example.test"], limits=limits or Limits())],
                  replica=SeriesReplica(tmp_path / "replica.sqlite"), kpi_db=tmp_path / "kpi.sqlite",
                  alerts_db=tmp_path / "alerts.sqlite", eml_dir=tmp_path / "mail", kpi=kpi or KpiConfig(),
                  alerts=alerts or AlertsConfig(reminder_interval_s=0, rules=QUIET), clock=clock)
    return mon, clock


def feed(mon, clock, metric, device, unit, start, values, seq=[0]):
    """One sample a minute from `start`, sent as one batch per hour; the monitor ticks after each."""
    for h in range(0, len(values), 60):
        readings = [Reading(device=device, metric=metric, ts=start + timedelta(minutes=h + i), value=v, unit=unit)
                    for i, v in enumerate(values[h:h + 60])]
        seq[0] += 1
        clock.t = (start + timedelta(minutes=h + len(readings))).timestamp()
        mon.on_messages([TelemetryBatch(site="s1", agent="gw1", seq=seq[0], sent_at=readings[-1].ts, readings=readings)], [])
        mon.tick(force=True)
    clock.t += 120
    mon.tick(force=True)


def mails(tmp_path):
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
            for f in sorted((tmp_path / "mail").glob("*.eml"))]


def kpi(mon, name):
    return mon.kpi_store.values("s1", name)


def test_rounding_is_half_even_on_the_decimal_representation():
    assert sum(DUST_AT_LIMIT) / len(DUST_AT_LIMIT) == 1.0000000000000002
    assert leq([55.0] * 480) == 55.00000000000003
    assert round_half_even(1.0000000000000002, 2) == 1.0 and round_half_even(55.00000000000003, 1) == 55.0
    # "四舍六入五成双": a dropped 5 followed by nothing goes to the even digit, as the printed value reads
    assert [round_half_even(v, 2) for v in (1.005, 1.015, 1.025, 1.0051, 1.006)] == [1.0, 1.02, 1.02, 1.01, 1.01]
    assert [round_half_even(v, 0) for v in (2.5, 3.5, -2.5)] == [2.0, 4.0, -2.0]
    assert round_half_even(55.05, 1) == 55.0 and round_half_even(55.15, 1) == 55.2
    assert [written_decimals(x) for x in (1.0, 55, 85.0, 0.08, 12.25, 1e-05)] == [1, 0, 1, 2, 2, 5]
    assert default_decimals(1.0) == 2 and default_decimals(55) == 1


def test_dust_hour_averaging_exactly_the_limit_does_not_fire(tmp_path):
    mon, clock = monitor(tmp_path)
    feed(mon, clock, "dust_tsp_mgm3", "dust1", "mg/m3", T0 + timedelta(hours=10), DUST_AT_LIMIT)
    (v,) = kpi(mon, "dust_tsp_hourly")
    # the float mean is 1.0 or a hair above, by the order of the summation (slot partial sums, or all at once)
    assert abs(v.raw_value - 1.0) <= 2.3e-16 and v.value == 1.0 and v.decimals == 2 and v.breached is False
    assert [a for a in mon.alerts.alerts() if a.rule == "dust_tsp_hourly"] == [] and mails(tmp_path) == []
    mon.close()


def test_night_of_constant_55_db_against_55_does_not_fire(tmp_path):
    mon, clock = monitor(tmp_path, limits=Limits(noise_class=3))  # class 3 night: 55 dB(A)
    feed(mon, clock, "noise_laeq_db", "n1", "dB", T0 + timedelta(hours=22), [55.0] * 480)
    (v,) = kpi(mon, "noise_leq_night")
    # 55 dB(A) or a hair above, by the order of the energy summation (slot partial sums, or all at once)
    assert v.limit == 55 and abs(v.raw_value - 55.0) <= 3.6e-14 and v.value == 55.0 and v.decimals == 1
    assert v.breached is False
    assert [a.rule for a in mon.alerts.alerts()] == [] and mails(tmp_path) == []
    mon.close()


def test_a_value_just_above_fires_and_the_email_shows_the_judged_value(tmp_path):
    mon, clock = monitor(tmp_path, limits=Limits(noise_class=3))
    feed(mon, clock, "dust_tsp_mgm3", "dust1", "mg/m3", T0 + timedelta(hours=10), [1.0 + 0.006 * (i % 2) for i in range(60)])
    (v,) = kpi(mon, "dust_tsp_hourly")
    assert v.raw_value == pytest.approx(1.003) and v.value == 1.0 and v.breached is False  # 1.003 -> 1.00
    feed(mon, clock, "dust_tsp_mgm3", "dust1", "mg/m3", T0 + timedelta(hours=11), [1.01] * 60)
    feed(mon, clock, "noise_laeq_db", "n1", "dB", T0 + timedelta(hours=22), [55.06] * 480)
    (a_dust,) = [a for a in mon.alerts.alerts(("firing",)) if a.rule == "dust_tsp_hourly"]
    (a_noise,) = [a for a in mon.alerts.alerts(("firing",)) if a.rule == "noise_night_leq"]
    assert a_dust.facts["value"] == 1.01 and a_dust.facts["decimals"] == 2
    assert a_noise.facts["value"] == 55.1 and a_noise.facts["raw_value"] == pytest.approx(55.06)
    bodies = {("TSP" in str(m["Subject"])): m.get_content() for m in mails(tmp_path)}
    assert "测量值:      1.01 mg/m³" in bodies[True] and "≤ 1 mg/m³" in bodies[True]
    assert "测量值:      55.1 dB(A)" in bodies[False] and "≤ 55 dB(A)" in bodies[False]
    mon.close()


def test_judging_decimals_per_kpi_and_per_rule(tmp_path):
    # [kpi] judge_decimals: the dust hour judged at 1 decimal -> 1.04 is 1.0, compliant
    mon, clock = monitor(tmp_path, kpi=KpiConfig(judge_decimals={"dust_tsp_hourly": 1}), alerts=AlertsConfig(
        reminder_interval_s=0, rules=[*QUIET, ThresholdRule(name="power_high", source="metric", series="power_kw",
                                                    comparison=">", limit=800, judge_decimals=0)]))
    feed(mon, clock, "dust_tsp_mgm3", "dust1", "mg/m3", T0 + timedelta(hours=10), [1.04] * 60)
    (v,) = kpi(mon, "dust_tsp_hourly")
    assert v.value == 1.0 and v.decimals == 1 and v.breached is False
    # a metric rule judged at 0 decimals: 800.4 kW is 800, at the limit; 800.6 is 801, over it
    feed(mon, clock, "power_kw", "crusher", "kW", T0 + timedelta(hours=12), [800.4] * 5)
    assert mon.alerts.alerts() == []
    feed(mon, clock, "power_kw", "crusher", "kW", T0 + timedelta(hours=13), [800.6])
    (a,) = mon.alerts.alerts(("firing",))
    assert a.facts["value"] == 801 and "801 kW" in mails(tmp_path)[0].get_content()
    mon.close()

    with pytest.raises(ValidationError, match='judge_decimals "dust_tps_hourly": unknown KPI'):
        KpiConfig(judge_decimals={"dust_tps_hourly": 2})
    with pytest.raises(ValidationError, match="decimals must be 0..9"):
        KpiConfig(judge_decimals={"dust_tsp_hourly": 12})


def test_kpi_show_prints_the_judged_value(tmp_path):
    mon, clock = monitor(tmp_path)
    feed(mon, clock, "dust_tsp_mgm3", "dust1", "mg/m3", T0 + timedelta(hours=10), DUST_AT_LIMIT)
    mon.close()
    cfg = tmp_path / "server.toml"
    cfg.write_text('[[sites]]\nid = "s1"\n[alerts]\ndb_path = "alerts.sqlite"\n', encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "greenmine", "kpi", "show", "--config", str(cfg), "--site", "s1",
                          "--kpi", "dust_tsp_hourly"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1.00 mg/m³" in out.stdout and " ok" in out.stdout and "BREACH" not in out.stdout
