"""The energy_consistency rule: a month energy KPI against the sum of its day KPIs, through the real monitor
(readings -> KPI engine -> KPI store -> alert engine -> email), with driven time."""

import dataclasses
import email
import email.policy
from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError
from zoneinfo import ZoneInfo

from greenmine.schemas.telemetry import Reading, TelemetryBatch
from greenmine.server.config import SiteConfig
from greenmine.server.monitor.alerts.config import AlertsConfig, EnergyConsistencyRule
from greenmine.server.monitor.alerts.service import Monitor
from greenmine.server.monitor.kpi import periods
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.monitor.kpi.energy import day_month_deviation
from greenmine.server.store.replica import SeriesReplica

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 1, tzinfo=TZ)  # November: 30 days of 24 kWh = 720 kWh
MONTH = periods.month(2026, 11, "Asia/Shanghai")


class Clock:
    def __init__(self):
        self.t = T0.timestamp()

    def __call__(self):
        return self.t


@pytest.fixture
def month_run(tmp_path):
    """A monitor fed hourly reads of one kWh meter (1 kWh an hour) for all of November and just past it."""
    clock = Clock()
    mon = Monitor(sites=[SiteConfig(id="s1", name="某铁矿", recipients=["officer@example.test"])],
                  replica=SeriesReplica(tmp_path / "replica.sqlite"), kpi_db=tmp_path / "kpi.sqlite",
                  alerts_db=tmp_path / "alerts.sqlite", eml_dir=tmp_path / "mail",
                  kpi=KpiConfig(counter_interval_s=3600), clock=clock)
    seq = 0
    for day in range(31):
        readings = [Reading(device="m1", metric="energy_kwh_total", ts=T0 + timedelta(hours=day * 24 + h),
                            value=1000.0 + day * 24 + h, unit="kWh") for h in range(24 if day < 30 else 3)]
        seq += 1
        clock.t = readings[-1].ts.timestamp()
        mon.on_messages([TelemetryBatch(site="s1", agent="gw1", seq=seq, sent_at=readings[-1].ts, readings=readings)], [])
        mon.tick(force=True)
    yield mon, clock, tmp_path / "mail"
    mon.close()


def _rule_alerts(mon, states=("firing", "resolved")):
    return [a for a in mon.alerts.alerts(states) if a.rule == "energy_consistency"]


def _mails(mail_dir):
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in sorted(mail_dir.glob("*.eml"))]


def _skew_days_and_recompute(mon, clock, factor):
    """Each day's site kWh in the KPI store set to 24 kWh * `factor` (so the day sum is 720 * factor), then the
    month recomputed as after late data: marked dirty, the next tick computes it and judges the rules."""
    store = mon.kpi_store
    days = store.values("s1", "energy_kwh_daily", MONTH.start, MONTH.end, subject="site")
    assert len(days) == 30
    store.put_values([dataclasses.replace(d, value=24.0 * factor) for d in days], clock.t)
    store.mark_dirty("s1", [MONTH])
    clock.t += 60
    mon.tick(force=True)


def test_real_month_agrees_with_its_days(month_run):
    mon, _clock, mail_dir = month_run
    (m,) = mon.kpi_store.values("s1", "energy_kwh_monthly", MONTH.start, MONTH.end, subject="site")
    assert m.value == pytest.approx(720.0)
    days = mon.kpi_store.values("s1", "energy_kwh_daily", MONTH.start, MONTH.end, subject="site")
    assert len(days) == 30 and sum(d.value for d in days) == pytest.approx(720.0)
    assert _rule_alerts(mon, ("pending", "firing", "resolved")) == []
    assert not [m for m in _mails(mail_dir) if "不一致" in str(m["Subject"])]


def test_six_percent_fires_with_an_email_and_four_percent_resolves(month_run):
    mon, clock, mail_dir = month_run
    _skew_days_and_recompute(mon, clock, 0.94)  # days 676.8 kWh vs month 720: |720-676.8| / 720 = 6 %
    (a,) = _rule_alerts(mon, ("firing",))
    assert a.subject == "energy_kwh_monthly/site" and a.facts["value"] == 6.0 and a.facts["limit"] == 5.0
    assert a.facts["extra"]["day_sum"] == pytest.approx(676.8) and a.facts["extra"]["days"] == 30
    (mail,) = [m for m in _mails(mail_dir) if "不一致" in str(m["Subject"])]
    body = mail.get_content()
    assert "6.00 %" in body and "676.8" in body and "720" in body and mail["To"] == "officer@example.test"

    _skew_days_and_recompute(mon, clock, 0.96)  # 4 %: within 5 %, resolved
    assert _rule_alerts(mon, ("firing",)) == []
    (r,) = _rule_alerts(mon, ("resolved",))
    assert r.id == a.id and r.facts["value"] == 4.0


def test_four_percent_does_not_fire(month_run):
    mon, clock, _mail = month_run
    _skew_days_and_recompute(mon, clock, 0.96)
    assert _rule_alerts(mon, ("pending", "firing", "resolved")) == []


def test_rule_config_and_the_shared_check():
    assert day_month_deviation(100.0, [47.0, 47.0]) == (6.0, 94.0)
    assert day_month_deviation(0.0, []) == (0.0, 0)
    (r,) = [r for r in AlertsConfig().effective_rules() if r.name == "energy_consistency"]
    assert isinstance(r, EnergyConsistencyRule) and r.tolerance_pct == 5.0
    cfg = AlertsConfig.model_validate({"rules": [{"kind": "energy_consistency", "name": "energy_consistency",
                                                  "tolerance_pct": 2, "series": ["energy_kgce_monthly"]}]})
    (r,) = [r for r in cfg.effective_rules() if r.name == "energy_consistency"]
    assert r.tolerance_pct == 2 and r.series == ["energy_kgce_monthly"]
    with pytest.raises(ValidationError, match="series"):
        AlertsConfig.model_validate({"rules": [{"kind": "energy_consistency", "name": "x", "series": ["energy_intensity_monthly"]}]})
