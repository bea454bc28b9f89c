"""The running monitor checks for overdue rectifications on its tick and tells the officer once (driven clock)."""

from __future__ import annotations

import email
import email.policy
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from tests.server.conftest import server_doc
from tests.server.supervision.test_registry import mine
from tests.support.services import wait_for

TZ = ZoneInfo("Asia/Shanghai")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _mails(folder):
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in sorted(folder.glob("*.eml"))]


def test_running_monitor_notifies_an_overdue_rectification_once(tmp_path, mosquitto):
    from greenmine.server.app import App
    from greenmine.server.config import load_server_config
    from greenmine.server.supervision.registry import open_registry

    doc = server_doc(tmp_path, mosquitto.port, name="overdue")
    doc["sites"] = [{"id": "m01", "timezone": "Asia/Shanghai"}]
    doc["alerts"] = {"db_path": str(tmp_path / "alerts.sqlite")}
    doc["notify"] = {"eml_dir": str(tmp_path / "mail")}
    doc["monitor"] = {"replica_path": str(tmp_path / "replica.sqlite")}
    doc["supervision"] = {"db_path": str(tmp_path / "supervision.sqlite"), "overdue_check_s": 3600,
                          "mines": [mine(1), mine(2)]}
    cfg = load_server_config(tmp_path / "server.toml", doc=doc)
    reg = open_registry(cfg, date(2026, 6, 1))
    try:
        cid = reg.add_check("m02", date(2026, 6, 1), ["i1"])  # m02 has no monitoring: the check still applies
        rid = reg.record_check(cid, day=date(2026, 6, 1), result="fail", findings="排土场未复绿", deadline=date(2026, 9, 1),
                               officer="wang@example.test", by="test")
    finally:
        reg.close()

    clock = Clock(datetime(2026, 9, 1, 12, tzinfo=TZ).timestamp())  # the deadline day: not overdue yet
    app = App(cfg, roles={"monitor"}, clock=clock)
    app.start()
    try:
        watch = app.monitor.overdue
        wait_for(lambda: watch.runs >= 1, 10, what="the monitor's first overdue check")
        assert watch.raised == [] and _mails(tmp_path / "mail") == []

        clock.t = datetime(2026, 9, 3, 9, tzinfo=TZ).timestamp()  # two days late
        wait_for(lambda: len(_mails(tmp_path / "mail")) == 1, 15, what="the overdue notice delivered")
        msg = _mails(tmp_path / "mail")[0]
        assert msg["To"] == "wang@example.test" and f"rectification {rid}" in str(msg["Subject"])
        assert "整改逾期" in str(msg["Subject"]) and "2 day(s)" in str(msg["Subject"])

        # the watch runs again each hour of the clock; the notice is not raised again
        for hours in (1, 2, 30):
            runs = watch.runs
            clock.t = datetime(2026, 9, 3, 9, tzinfo=TZ).timestamp() + hours * 3600 + 1
            wait_for(lambda: watch.runs > runs, 15, what="another overdue check")
        ticks = app.monitor.ticks
        wait_for(lambda: app.monitor.ticks >= ticks + 2, 10, what="mail delivery ticks")
        assert watch.raised == [rid] and len(_mails(tmp_path / "mail")) == 1
    finally:
        app.stop()

    reg = open_registry(cfg, date(2026, 9, 3))
    try:
        assert reg.rectification(rid).overdue_alert_ts == datetime(2026, 9, 3, 9, tzinfo=TZ).timestamp()
    finally:
        reg.close()


def test_no_registry_no_check(tmp_path, mosquitto):
    """Without mines configured and without a registry file, the monitor never creates one."""
    from greenmine.server.app import App
    from greenmine.server.config import load_server_config

    doc = server_doc(tmp_path, mosquitto.port, name="noreg")
    doc["alerts"] = {"db_path": str(tmp_path / "alerts.sqlite")}
    doc["notify"] = {"eml_dir": str(tmp_path / "mail")}
    doc["monitor"] = {"replica_path": str(tmp_path / "replica.sqlite")}
    cfg = load_server_config(tmp_path / "server.toml", doc=doc)
    app = App(cfg, roles={"monitor"}, clock=Clock(datetime(2026, 9, 3, tzinfo=TZ).timestamp()))
    app.start()
    try:
        wait_for(lambda: app.monitor.ticks >= 2, 10, what="two monitor ticks")
    finally:
        app.stop()
    assert app.monitor.overdue.runs == 0
    assert not (tmp_path / "supervision.sqlite").exists()
