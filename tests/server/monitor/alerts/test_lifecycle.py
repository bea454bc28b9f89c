"""Alert lifecycle with driven time: timing, hysteresis, re-notify, reminders, restart."""

import pytest
from pydantic import ValidationError

from greenmine.server.monitor.alerts.config import AlertsConfig, DeadmanRule, ThresholdRule
from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.server.config import SiteConfig
from greenmine.server.monitor.kpi.model import KpiValue

DAY = 86400.0
T0 = 1_795_708_800.0  # 2026-11-27 00:00 Asia/Shanghai

SITE = SiteConfig(id="s1", name="金昌某铜矿", recipients=["officer@example.test"])


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def reuse(day_index, value, complete=True):
    start = T0 + day_index * DAY
    return KpiValue(
        site="s1", kpi="water_reuse_daily", subject="site", period_kind="day", period_start=start,
        period_end=start + DAY, period_label=f"day{day_index}", value=value, unit="%",
        completeness=1.0 if complete else 0.5, complete=complete, devices=("reuse1", "fresh1"),
        limit=85.0, comparison="<", standard="甘肃省绿色矿山建设实施方案 选矿废水循环利用率 ≥ 85%",
    )


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "alerts.sqlite"


def make(db_path, clock, **cfg):
    db = open_db(db_path)
    return AlertEngine(AlertsConfig(**cfg), [SITE], db, clock=clock)


def kinds(engine):
    return [(e.kind, e.facts["rule"]) for e in engine.events()]


def test_daily_reuse_fires_holds_inside_hysteresis_and_resolves(db_path):
    clock = Clock(T0 + DAY + 60)
    eng = make(db_path, clock, reminder_interval_s=0)
    eng.observe_kpis([reuse(0, 80.0)])
    (a,) = eng.alerts(("firing",))
    assert a.rule == "water_reuse_daily" and a.severity == "critical"
    (ev,) = eng.events()
    assert ev.kind == "firing" and ev.recipients == ["officer@example.test"]
    assert ev.facts["value"] == 80.0 and ev.facts["limit"] == 85.0 and ev.facts["completeness_pct"] == 100.0
    clock.t += DAY
    eng.observe_kpis([reuse(1, 85.5)])  # above the limit but inside the 1 % hysteresis: still firing
    assert [a.state for a in eng.alerts()] == ["firing"]
    clock.t += DAY
    eng.observe_kpis([reuse(2, 86.5)])
    (a,) = eng.alerts()
    assert a.state == "resolved" and a.facts["worst"] == 80.0
    assert kinds(eng) == [("firing", "water_reuse_daily"), ("resolved", "water_reuse_daily")]
    eng.db.close()


def test_incomplete_day_is_not_judged(db_path):
    eng = make(db_path, Clock(T0 + DAY))
    eng.observe_kpis([reuse(0, 10.0, complete=False)])
    assert eng.alerts() == [] and eng.events() == []
    eng.db.close()


def test_older_period_replayed_does_not_move_state_back(db_path):
    clock = Clock(T0 + 3 * DAY)
    eng = make(db_path, clock)
    eng.observe_kpis([reuse(1, 80.0)])
    eng.observe_kpis([reuse(0, 95.0)])  # late recompute of an earlier day
    assert [a.state for a in eng.alerts()] == ["firing"]
    eng.db.close()


def test_for_duration_pending_then_firing_and_pending_dropped(db_path):
    rule = ThresholdRule(name="power_high", source="metric", series="power_kw", comparison=">", limit=100, for_s=300)
    clock = Clock()
    eng = make(db_path, clock, rules=[rule], default_rules=False)
    eng.observe_metric("s1", "m1", "power_kw", T0, 150, "kW")
    eng.observe_metric("s1", "m1", "power_kw", T0 + 200, 150, "kW")
    assert [a.state for a in eng.alerts()] == ["pending"] and eng.events() == []
    eng.observe_metric("s1", "m1", "power_kw", T0 + 250, 90, "kW")  # breach broken before 300 s
    assert eng.alerts() == []
    for t in (400, 600, 700):
        clock.t = T0 + t
        eng.observe_metric("s1", "m1", "power_kw", T0 + t, 150, "kW")
    (a,) = eng.alerts()
    assert a.state == "firing" and a.fired_ts == T0 + 700
    assert kinds(eng) == [("firing", "power_high")]
    eng.db.close()


def test_flapping_signal_does_not_storm(db_path):
    rule = ThresholdRule(name="power_high", source="metric", series="power_kw", comparison=">", limit=100, clear_hysteresis=5)
    clock = Clock()
    eng = make(db_path, clock, rules=[rule], default_rules=False, min_renotify_s=1800)

    def obs(dt, v):
        clock.t = T0 + dt
        eng.observe_metric("s1", "m1", "power_kw", clock.t, v)

    obs(0, 120)    # fires: email
    obs(60, 98)    # inside hysteresis (needs <= 95): nothing
    obs(120, 101)
    obs(180, 90)   # clears: resolution email
    for i in range(20):  # flaps every minute for 20 minutes
        obs(240 + 60 * i, 120 if i % 2 == 0 else 90)
    assert kinds(eng) == [("firing", "power_high"), ("resolved", "power_high")]
    obs(1500, 130)  # breach again and stays
    clock.t = T0 + 1799
    eng.tick()
    assert len(eng.events()) == 2
    clock.t = T0 + 1800  # re-notify window over: one firing email for the lasting breach
    eng.tick()
    assert kinds(eng) == [("firing", "power_high"), ("resolved", "power_high"), ("firing", "power_high")]
    eng.db.close()


def test_reminders_until_acknowledged(db_path):
    clock = Clock(T0 + DAY)
    eng = make(db_path, clock, reminder_interval_s=3600)
    eng.observe_kpis([reuse(0, 70.0)])
    clock.t += 3599
    eng.tick()
    assert [e.kind for e in eng.events()] == ["firing"]
    clock.t += 1
    eng.tick()
    clock.t += 10
    eng.tick()
    assert [e.kind for e in eng.events()] == ["firing", "reminder"]
    (a,) = eng.alerts()
    assert eng.ack(a.id, by="wang") is True
    assert eng.ack(a.id, by="wang") is False  # already acknowledged
    clock.t += 10 * 3600
    eng.tick()
    assert [e.kind for e in eng.events()] == ["firing", "reminder"]
    assert eng.alerts()[0].acked_by == "wang"
    eng.db.close()


def test_restart_keeps_state_and_sends_nothing_twice(db_path):
    clock = Clock(T0 + DAY)
    eng = make(db_path, clock, min_renotify_s=1800)
    eng.observe_kpis([reuse(0, 70.0)])
    eng.observe_kpis([reuse(1, 90.0)])  # resolved
    eng.observe_kpis([reuse(2, 70.0)])  # fires again inside the re-notify window: waits
    assert [e.kind for e in eng.events()] == ["firing", "resolved"]
    eng.db.close()

    eng2 = make(db_path, clock, min_renotify_s=1800)  # "restart"
    eng2.tick()
    assert [e.kind for e in eng2.events()] == ["firing", "resolved"]
    assert [a.state for a in eng2.alerts()] == ["resolved", "firing"]
    clock.t += 1800
    eng2.tick()
    eng2.tick()
    assert [e.kind for e in eng2.events()] == ["firing", "resolved", "firing"]
    eng2.db.close()

    eng3 = make(db_path, clock, min_renotify_s=1800)
    eng3.observe_kpis([reuse(2, 70.0)])  # the same observation again after restart
    eng3.tick()
    assert len(eng3.events()) == 3
    eng3.db.close()


def test_device_deadman_and_agent_offline(db_path):
    clock = Clock()
    eng = make(db_path, clock)
    eng.observe_seen_many({("s1", "gw1"): {"flow1": T0, "noise1": T0}})
    clock.t = T0 + 299
    eng.tick()
    assert eng.alerts() == []
    clock.t = T0 + 300
    eng.observe_seen_many({("s1", "gw1"): {"noise1": T0 + 300}})  # agent and noise1 alive, flow1 silent
    eng.tick()
    (a,) = eng.alerts(("firing",))
    assert (a.rule, a.subject) == ("device_offline", "flow1")
    clock.t = T0 + 400
    eng.observe_seen_many({("s1", "gw1"): {"flow1": T0 + 400, "noise1": T0 + 400}})
    eng.tick()
    assert [a.state for a in eng.alerts()] == ["resolved"]
    # the agent's will: pending for its grace (for_s = 300), then firing; resolved by its next message
    clock.t = T0 + 350
    eng.observe_agent_status("s1", "gw1", online=False)
    assert [(a.rule, a.state) for a in eng.alerts(("pending", "firing"))] == [("agent_offline", "pending")]
    clock.t = T0 + 650  # before the devices' silence: only the agent's grace is over
    eng.tick()
    firing = eng.alerts(("firing",))
    assert [(a.rule, a.subject, a.severity) for a in firing] == [("agent_offline", "gw1", "critical")]
    clock.t = T0 + 660
    eng.observe_agent_status("s1", "gw1", online=True)
    assert eng.alerts(("firing",)) == []
    assert [e.kind for e in eng.events()] == ["firing", "resolved", "firing", "resolved"]
    eng.db.close()


def test_default_rule_set_and_config_validation():
    names = {r.name for r in AlertsConfig().effective_rules()}
    assert {"water_reuse_daily", "dust_tsp_hourly", "noise_night_leq", "noise_day_leq", "energy_intensity_daily",
            "device_offline", "agent_offline"} <= names
    cfg = AlertsConfig.model_validate({"rules": [{"kind": "deadman", "name": "device_offline", "target": "device", "silence_s": 60}]})
    (dm,) = [r for r in cfg.effective_rules() if r.name == "device_offline"]
    assert isinstance(dm, DeadmanRule) and dm.silence_s == 60
    with pytest.raises(ValidationError, match="duplicate rule name"):
        AlertsConfig.model_validate({"rules": [{"kind": "deadman", "name": "x", "target": "agent"}] * 2})
    with pytest.raises(ValidationError):
        AlertsConfig.model_validate({"rules": [{"kind": "bogus", "name": "x"}]})


def test_rule_device_filter(db_path):
    rule = ThresholdRule(name="crusher", source="metric", series="power_kw", comparison=">", limit=800,
                         devices=["crusher-meter"])
    eng = make(db_path, Clock(), rules=[rule], default_rules=False)
    eng.observe_metric("s1", "mill-meter", "power_kw", T0, 1900)
    assert eng.alerts() == []
    eng.observe_metric("s1", "crusher-meter", "power_kw", T0, 900)
    assert [(a.rule, a.subject) for a in eng.alerts()] == [("crusher", "crusher-meter")]
    eng.db.close()


def test_restart_and_own_outage_do_not_declare_devices_offline(db_path):
    clock = Clock()
    eng = make(db_path, clock)
    eng.observe_seen_many({("s1", "gw1"): {"flow1": T0}})
    eng.close()  # a stop writes what the engine kept in memory
    clock.t = T0 + 3600  # the server was down for an hour
    eng = make(db_path, clock)
    eng.tick()
    assert eng.alerts() == []  # grace: silence counts from the restart
    clock.t += 299
    eng.tick()
    assert eng.alerts() == []
    eng.ingest_connected(False)  # our broker link drops: no deadman verdicts meanwhile
    clock.t += 600
    eng.tick()
    assert eng.alerts() == []
    eng.ingest_connected(True)
    clock.t += 300  # still silent 300 s after we are back: really offline
    eng.tick()
    assert sorted((a.rule, a.subject) for a in eng.alerts()) == [("agent_offline", "gw1"), ("device_offline", "flow1")]
    eng.db.close()


def test_a_site_going_dark_is_judged_in_one_commit(db_path):
    """A tick's verdicts share one durable commit: a site of 2,000 silent devices is not 2,000 fsyncs (each
    under the engine's lock, which the consumer waits on), and every device still gets its alert."""
    clock = Clock()
    eng = make(db_path, clock)
    eng.observe_seen_many({("s1", "gw1"): {f"m{i:04d}": T0 for i in range(2000)}})
    statements: list[str] = []
    eng.db.set_trace_callback(statements.append)
    clock.t = T0 + 300
    eng.tick()
    eng.db.set_trace_callback(None)
    assert len(eng.alerts(("firing",))) == 2001  # every device, and the agent
    commits = [s for s in statements if s.strip().upper() == "COMMIT"]
    assert len(commits) == 2, commits  # the verdicts, then the notices queued for them
    assert len(eng.events()) == 2001
    eng.db.close()


def test_a_failed_step_inside_a_batch_rolls_back_only_itself(db_path):
    """Nested transactions are savepoints: a step that fails inside a batch (and is handled there) undoes its own
    writes, not the batch's."""
    eng = make(db_path, Clock())
    with eng._tx() as db:
        db.execute("INSERT INTO seen VALUES ('s1', 'device', 'kept', ?, 0)", (T0,))
        with pytest.raises(RuntimeError):
            with eng._tx() as inner:
                inner.execute("INSERT INTO seen VALUES ('s1', 'device', 'undone', ?, 0)", (T0,))
                raise RuntimeError("a bug in one judgment")
    names = [r[0] for r in eng.db.execute("SELECT name FROM seen ORDER BY name")]
    assert names == ["kept"]
    eng.db.close()


def test_a_monitor_behind_the_stream_does_not_declare_devices_offline(db_path):
    """Draining a backlog, the newest readings taken are older than the deadman's silence: that silence is
    ours. Silence counts from when the monitor was last behind; a device really silent fires after that."""
    clock = Clock()
    eng = make(db_path, clock)
    eng.observe_seen_many({("s1", "gw1"): {"flow1": T0}})
    clock.t = T0 + 900  # 15 minutes on, the monitor still takes readings of T0 from its backlog
    eng.behind()
    eng.observe_seen_many({("s1", "gw1"): {"flow1": T0 + 1}})
    eng.tick()
    assert eng.alerts() == []
    clock.t += 300  # caught up, and the device sent nothing since: now it is silent
    eng.tick()
    assert sorted((a.rule, a.subject) for a in eng.alerts()) == [("agent_offline", "gw1"), ("device_offline", "flow1")]
    eng.close()
