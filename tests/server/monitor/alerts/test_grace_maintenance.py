"""Status-driven rules wait out their grace (for_s); maintenance windows hold alerts (issue 12 item 10).

The alert engine and the email outbox (.eml files) with a driven clock; the CLI as a real subprocess on the same
alert state file while the engine has it open.
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

from greenmine.server.config import SiteConfig, load_server_config
from greenmine.server.monitor.alerts.config import AlertsConfig, DeadmanRule
from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.server.monitor.alerts.maintenance import MaintenanceWindow
from greenmine.server.monitor.kpi.model import KpiValue
from greenmine.server.notify.config import NotifyConfig
from greenmine.server.notify.eml import EmlDirTransport
from greenmine.server.notify.outbox import Notifier

ROOT = Path(__file__).resolve().parents[4]
TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 27, 8, tzinfo=TZ).timestamp()
SITE = SiteConfig(id="s1", name="金昌某铜矿", recipients=["officer@example.test"])


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


class Rig:
    def __init__(self, tmp_path, clock, **cfg):
        self.mail = tmp_path / "mail"
        path = tmp_path / "alerts.sqlite"
        self.eng = AlertEngine(AlertsConfig(reminder_interval_s=0, **cfg), [SITE], open_db(path), clock=clock)
        self.notifier = Notifier(NotifyConfig(), open_db(path), EmlDirTransport(self.mail), clock=clock)

    def deliver(self):
        self.notifier.run_once()
        return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
                for f in sorted(self.mail.glob("*.eml"))]

    def close(self):
        self.eng.db.close()
        self.notifier.db.close()


def dust(hour, value):
    start = datetime(2026, 11, 27, hour, tzinfo=TZ).timestamp()
    return KpiValue(site="s1", kpi="dust_tsp_hourly", subject="dust1", period_kind="hour", period_start=start,
                    period_end=start + 3600, period_label=f"2026-11-27T{hour:02d}", value=value, unit="mg/m³",
                    completeness=1.0, complete=True, devices=("dust1",), limit=1.0, comparison=">",
                    standard="GB 16297-1996")


def test_graceful_offline_then_online_within_grace_sends_nothing(tmp_path):
    clock = Clock()
    rig = Rig(tmp_path, clock)
    eng = rig.eng
    eng.observe_seen_many({("s1", "gw1"): {"m1": T0}})
    # a restart: the agent's graceful offline, back online 40 s later
    clock.t = T0 + 10
    eng.observe_agent_status("s1", "gw1", online=False)
    assert [(a.rule, a.state) for a in eng.alerts()] == [("agent_offline", "pending")]
    clock.t = T0 + 50
    eng.observe_agent_status("s1", "gw1", online=True)
    eng.observe_seen_many({("s1", "gw1"): {"m1": T0 + 50}})
    clock.t = T0 + 400
    eng.observe_seen_many({("s1", "gw1"): {"m1": T0 + 400}})
    eng.tick()
    assert eng.alerts(("pending", "firing", "resolved")) == [] and rig.deliver() == []

    # gone for good: pending through the grace, firing at its end, one email saying since when
    t1 = T0 + 500
    clock.t = t1
    eng.observe_seen_many({("s1", "gw1"): {"m1": t1}})  # its last batch, then a graceful stop
    eng.observe_agent_status("s1", "gw1", online=False)
    clock.t = t1 + 299
    eng.tick()
    assert [a.state for a in eng.alerts()] == ["pending"] and rig.deliver() == []
    clock.t = t1 + 300
    eng.tick()
    (a,) = [a for a in eng.alerts(("firing",)) if a.rule == "agent_offline"]
    assert a.facts["since_ts"] == t1 and a.fired_ts == t1 + 300
    (m,) = [m for m in rig.deliver() if "gw1" in str(m["Subject"])]
    assert "2026-11-27 08:08" in m.get_content()  # since: the offline report, 08:08:20
    rig.close()


def test_grace_is_configurable_and_zero_fires_at_once(tmp_path):
    clock = Clock()
    rig = Rig(tmp_path, clock, rules=[DeadmanRule(name="agent_offline", target="agent", for_s=0)])
    rig.eng.observe_agent_status("s1", "gw1", online=False)
    assert [(a.rule, a.state) for a in rig.eng.alerts()] == [("agent_offline", "firing")]
    rig.close()
    # the grace alone decides, not the silence: an hour's silence_s, two minutes' for_s
    clock = Clock()
    rig = Rig(tmp_path / "b", clock, rules=[DeadmanRule(name="agent_offline", target="agent", silence_s=3600, for_s=120)])
    rig.eng.observe_agent_status("s1", "gw1", online=False)
    clock.t += 119
    rig.eng.tick()
    assert [a.state for a in rig.eng.alerts()] == ["pending"]
    clock.t += 1
    rig.eng.tick()
    assert [a.state for a in rig.eng.alerts()] == ["firing"] and len(rig.deliver()) == 1
    rig.close()
    cfg = AlertsConfig.model_validate({"rules": [{"kind": "deadman", "name": "agent_offline", "target": "agent",
                                                  "for_s": 120}]})
    assert [r.for_s for r in cfg.effective_rules() if r.name == "agent_offline"] == [120]
    assert [r.for_s for r in AlertsConfig().effective_rules() if r.name == "agent_offline"] == [300]


def window(start_h, end_h, device=None, reason="校准扬尘监测仪 / calibrating"):
    return MaintenanceWindow(site="s1", device=device, start=datetime(2026, 11, 27, start_h, tzinfo=TZ),
                             end=datetime(2026, 11, 27, end_h, tzinfo=TZ), reason=reason)


def test_breach_inside_a_window_is_held_and_released_if_it_outlasts_it(tmp_path):
    clock = Clock()
    rig = Rig(tmp_path, clock, maintenance=[window(9, 11)])
    eng = rig.eng
    clock.t = datetime(2026, 11, 27, 10, 1, tzinfo=TZ).timestamp()
    eng.observe_kpis([dust(9, 2.5)])  # 09:00-10:00, inside the window
    (a,) = eng.alerts(("firing",))
    assert a.facts["held"]["reason"] == "校准扬尘监测仪 / calibrating" and a.facts["held"]["from_local"] == "2026-11-27 09:00"
    assert rig.deliver() == []
    clock.t += 3600
    eng.observe_kpis([dust(10, 2.0)])  # still inside: held
    assert rig.deliver() == []
    clock.t += 3600
    eng.observe_kpis([dust(11, 1.8)])  # the first hour after the window, still over: the breach outlasted it
    (a,) = eng.alerts(("firing",))
    assert "held" not in a.facts and a.facts["held_was"]["id"] == a.facts["held_was"]["id"] > 0
    (m,) = rig.deliver()
    assert "1.80 mg/m³" in m.get_content()
    rig.close()


def test_breach_that_ends_inside_its_window_is_never_emailed_but_recorded(tmp_path):
    clock = Clock()
    rig = Rig(tmp_path, clock, maintenance=[window(9, 12)])
    eng = rig.eng
    clock.t = datetime(2026, 11, 27, 10, 1, tzinfo=TZ).timestamp()
    eng.observe_kpis([dust(9, 2.5)])
    clock.t += 3600
    eng.observe_kpis([dust(10, 0.4)])
    (a,) = eng.alerts(("resolved",))
    assert a.notified == 3 and a.facts["held"]["source"] == "config"  # closed quietly, held by the window
    assert rig.deliver() == [] and eng.events() == []
    # outside any window the same breach is emailed
    clock.t += 3 * 3600
    eng.observe_kpis([dust(13, 2.5)])
    assert len(rig.deliver()) == 1
    rig.close()


def test_reminders_wait_during_a_window(tmp_path):
    clock = Clock()
    path = tmp_path / "alerts.sqlite"
    eng = AlertEngine(AlertsConfig(reminder_interval_s=3600, maintenance=[window(12, 14)]), [SITE], open_db(path),
                      clock=clock)
    clock.t = datetime(2026, 11, 27, 10, 1, tzinfo=TZ).timestamp()
    eng.observe_kpis([dust(9, 2.5)])  # before the window: emailed
    clock.t = datetime(2026, 11, 27, 12, 30, tzinfo=TZ).timestamp()
    eng.tick()
    assert [e.kind for e in eng.events()] == ["firing"]
    clock.t = datetime(2026, 11, 27, 14, 0, tzinfo=TZ).timestamp()
    eng.tick()
    assert [e.kind for e in eng.events()] == ["firing", "reminder"]
    eng.db.close()


def run(*args):
    return subprocess.run([sys.executable, "-m", "greenmine", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_device_window_from_the_cli_holds_that_device_only(tmp_path):
    cfg_path = tmp_path / "server.toml"
    cfg_path.write_text(
        '[[sites]]\nid = "s1"\nrecipients = ["officer@example.test"]\n[alerts]\ndb_path = "alerts.sqlite"\n'
        'reminder_interval_s = 0\n[[alerts.maintenance]]\nsite = "s1"\nstart = 2026-12-24T00:00:00+08:00\n'
        'end = 2026-12-26T00:00:00+08:00\nreason = "holiday shutdown"\n[notify]\neml_dir = "mail"\n',
        encoding="utf-8")
    cfg = load_server_config(cfg_path)
    clock = Clock()
    eng = AlertEngine(cfg.alerts, cfg.sites, open_db(tmp_path / "alerts.sqlite"), clock=clock)
    eng.observe_seen_many({("s1", "gw1"): {"flow1": T0, "flow2": T0}})

    out = run("alerts", "maintenance", "add", "--config", str(cfg_path), "--site", "s1", "--device", "flow1",
              "--from", "2026-11-27T08:00", "--to", "2026-11-27T12:00", "--reason", "replacing the flow meter")
    assert out.returncode == 0, out.stderr
    assert "2026-11-27 08:00 – 2026-11-27 12:00 (Asia/Shanghai)" in out.stdout
    out = run("alerts", "maintenance", "list", "--config", str(cfg_path), "--all")  # 2026-11-27 is past by now
    assert out.returncode == 0 and "replacing the flow meter" in out.stdout and "holiday shutdown" in out.stdout
    (cli_id,) = [int(line.split()[0]) for line in out.stdout.splitlines() if "flow1" in line]
    (cfg_id,) = [int(line.split()[0]) for line in out.stdout.splitlines() if "holiday" in line]

    # the running engine sees the window the CLI added: flow1's silence is held, flow2's is not
    clock.t = T0 + 600
    eng.observe_seen_many({("s1", "gw1"): {}})  # the agent itself is alive
    eng.tick()
    by = {a.subject: a for a in eng.alerts(("firing",))}
    assert set(by) == {"flow1", "flow2"}
    assert by["flow1"].facts["held"]["reason"] == "replacing the flow meter" and "held" not in by["flow2"].facts
    assert [e.facts["subject"] for e in eng.events()] == ["flow2"]
    out = run("alerts", "list", "--config", str(cfg_path))
    assert f"held: maintenance {cli_id} (replacing the flow meter)" in out.stdout

    assert run("alerts", "maintenance", "remove", str(cfg_id), "--config", str(cfg_path)).returncode == 1
    assert run("alerts", "maintenance", "remove", str(cli_id), "--config", str(cfg_path)).returncode == 0
    assert "flow1" not in run("alerts", "maintenance", "list", "--config", str(cfg_path), "--all").stdout
    # the window removed, flow1's breach is no longer held at the next tick: its email goes out
    clock.t += 30
    eng.tick()
    assert sorted(e.facts["subject"] for e in eng.events()) == ["flow1", "flow2"]

    bad = run("alerts", "maintenance", "add", "--config", str(cfg_path), "--site", "nope", "--from", "2026-11-27T08:00",
              "--to", "2026-11-27T09:00", "--reason", "x")
    assert bad.returncode == 2 and 'site "nope"' in bad.stderr
    bad = run("alerts", "maintenance", "add", "--config", str(cfg_path), "--site", "s1", "--from", "2026-11-27T09:00",
              "--to", "2026-11-27T08:00", "--reason", "x")
    assert bad.returncode == 2 and "end is not after its start" in bad.stderr
    bad = run("alerts", "maintenance", "add", "--config", str(cfg_path), "--site", "s1", "--from", "tomorrow",
              "--to", "2026-11-27T08:00", "--reason", "x")
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr
    eng.db.close()


def test_window_config_errors_name_their_place():
    with pytest.raises(ValidationError, match="is not after start"):
        window(12, 9)
    with pytest.raises(ValidationError, match="timezone"):
        MaintenanceWindow(site="s1", start=datetime(2026, 11, 27, 9), end=datetime(2026, 11, 27, 10), reason="x")
    with pytest.raises(ValidationError, match="control characters"):
        window(9, 10, reason="a\nBcc: x")
    with pytest.raises(ValidationError, match="maintenance.0.end"):
        AlertsConfig.model_validate({"maintenance": [{"site": "s1", "start": "2026-11-27T09:00:00+08:00",
                                                      "reason": "x"}]})


def test_a_window_for_an_unknown_site_fails_at_load(tmp_path):
    cfg_path = tmp_path / "server.toml"
    cfg_path.write_text('[[sites]]\nid = "s1"\n[[alerts.maintenance]]\nsite = "s2"\n'
                        'start = 2026-12-24T00:00:00+08:00\nend = 2026-12-26T00:00:00+08:00\nreason = "x"\n',
                        encoding="utf-8")
    with pytest.raises(Exception, match=r'alerts.maintenance\[0\] "s2": not a configured site'):
        load_server_config(cfg_path)
