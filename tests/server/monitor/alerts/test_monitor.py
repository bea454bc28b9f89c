"""KPIs + alerts + outbox as the monitor role runs them, fed groups of wire messages, with driven time."""

import email
import email.policy
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from greenmine.schemas.status import AgentState, AgentStatus
from greenmine.schemas.telemetry import Reading, TelemetryBatch
from greenmine.server.monitor.alerts.service import Monitor
from greenmine.server.config import SiteConfig
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.store.replica import SeriesReplica

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 27, tzinfo=TZ)


class Clock:
    def __init__(self):
        self.t = T0.timestamp()

    def __call__(self):
        return self.t


def test_reuse_drop_day_ends_in_one_email_per_officer(tmp_path):
    clock = Clock()
    mon = Monitor(sites=[SiteConfig(id="s1", name="金昌某铜矿", recipients=["officer@example.test"])],
                  replica=SeriesReplica(tmp_path / "replica.sqlite"),
                  kpi_db=tmp_path / "kpi.sqlite", alerts_db=tmp_path / "alerts.sqlite", eml_dir=tmp_path / "mail",
                  kpi=KpiConfig(counter_interval_s=300), clock=clock)
    reused, fresh, seq = 1000.0, 100.0, 0
    for minute in range(0, 24 * 60 + 10, 5):  # totals read every 5 min
        ts = T0 + timedelta(minutes=minute)
        clock.t = ts.timestamp()
        # reuse drops at noon: 4.5/0.5 m3 per 5 min before, 2.5/2.5 after -> day = 70 %
        r, f = (4.5, 0.5) if minute < 720 else (2.5, 2.5)
        readings = [Reading(device="reuse1", metric="water_reused_m3_total", ts=ts, value=reused, unit="m3"),
                    Reading(device="fresh1", metric="water_fresh_m3_total", ts=ts, value=fresh, unit="m3")]
        seq += 1
        batch = TelemetryBatch(site="s1", agent="gw1", seq=seq, sent_at=ts, readings=readings)
        mon.on_messages([batch], [])
        if minute % 60 == 0:
            mon.on_messages([batch], [])  # redelivered: counts once
        mon.tick()
        reused += r
        fresh += f
    clock.t += 300
    mon.tick(force=True)
    firing = [a for a in mon.alerts.alerts(("firing",)) if a.rule == "water_reuse_daily"]
    assert len(firing) == 1 and round(firing[0].facts["value"], 1) == 70.0
    files = list((tmp_path / "mail").glob("*.eml"))
    msgs = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]
    reuse_mails = [m for m in msgs if "选矿废水循环利用率(日)" in str(m["Subject"])]
    assert len(reuse_mails) == 1
    assert "70.00 %" in reuse_mails[0].get_content() and "≥ 85 %" in reuse_mails[0].get_content()

    # the agent's will: agent offline alert; a restart of the monitor sends nothing twice
    mon.on_messages([], [AgentStatus(site="s1", agent="gw1", state=AgentState.OFFLINE, ts=datetime.now(timezone.utc))])
    clock.t += 300  # its grace (for_s) over
    mon.tick(force=True)
    n = len(list((tmp_path / "mail").glob("*.eml")))
    mon.close()
    mon2 = Monitor(sites=[SiteConfig(id="s1", recipients=["officer@example.test"])],
                   replica=SeriesReplica(tmp_path / "replica.sqlite"),
                   kpi_db=tmp_path / "kpi.sqlite", alerts_db=tmp_path / "alerts.sqlite", eml_dir=tmp_path / "mail", clock=clock)
    mon2.tick(force=True)
    assert len(list((tmp_path / "mail").glob("*.eml"))) == n
    assert {a.rule for a in mon2.alerts.alerts(("firing",))} >= {"water_reuse_daily", "agent_offline"}
    mon2.close()
