"""End to end: simulated meters (reuse_drop) → agent → Mosquitto → server (store → KPIs → alerts) → email in aiosmtpd.

The simulated site runs 60× faster than real time, so the meters' totals
move a simulated minute per second; the agent polls them every second. A
day's data cannot be waited for in a test, so the server is given one extra
rule on the rolling 24 h reuse rate that judges incomplete windows
(`require_complete = false`): it sees the reuse of the last few (simulated)
hours, which `reuse_drop` puts at about 78 %.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from tests.agent.helpers import write_config
from tests.server.notify.smtpsink import SmtpSink
from tests.simulators.conftest import make_runner, site_doc
from tests.support.services import wait_for

REPO = Path(__file__).resolve().parents[4]
SITE = "s1"
WATER = [("fresh", "xylem-magflux", "fresh", {}), ("reused", "xylem-magflux", "reused", {})]


def server_config(tmp_path: Path, broker_port: int, smtp_port: int):
    from greenmine.server.config import load_server_config

    doc = {
        "kind": "server",
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": "e2e-server", "keepalive_s": 5},
        "ingest": {"spool_path": str(tmp_path / "spool.sqlite")},
        "store": {"kind": "sqlite", "path": str(tmp_path / "store.sqlite")},
        "sites": [{"id": SITE, "name": "金昌某铜矿", "timezone": "Asia/Shanghai", "recipients": ["officer@example.test"]}],
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "sender": "greenmine@mine.test", "timeout_s": 5},
        "kpi": {"counter_interval_s": 1, "rolling_every_s": 1},
        "alerts": {
            "db_path": str(tmp_path / "alerts.sqlite"),
            "tick_interval_s": 0.5,
            "rules": [{"kind": "threshold", "name": "water_reuse_24h_e2e", "series": "water_reuse_24h",
                       "require_complete": False, "severity": "critical"}],
        },
    }
    return load_server_config(tmp_path / "server.toml", doc=doc)


def test_reuse_drop_reaches_the_officer_by_email(tmp_path, mosquitto):
    from greenmine.server.app import App

    smtp = SmtpSink()
    smtp.start()
    # 22:30 local: inside reuse_drop's 22:00 + 6 h window
    sim = make_runner(tmp_path, site_doc(WATER, scenarios=["reuse_drop"]), start=datetime(2025, 6, 2, 22, 30), speed=60.0)
    sim.start()
    cfg = server_config(tmp_path, mosquitto.port, smtp.port)
    app = App(cfg)  # the app runs KPIs -> alerts -> email from its writer's post-write hook
    agent_cfg = write_config(
        tmp_path / "agent.toml", broker_port=mosquitto.port,
        buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": sim.port("gw")}],
        devices=[
            {"name": "fresh1", "bus": "gw", "unit_id": 1, "profile": "xylem-magflux", "poll_groups": {"fast": 5, "totals": 1},
             "registers": [{"name": "forward_total", "metric": "water_fresh_m3_total"}]},
            {"name": "reuse1", "bus": "gw", "unit_id": 2, "profile": "xylem-magflux", "poll_groups": {"fast": 5, "totals": 1},
             "registers": [{"name": "forward_total", "metric": "water_reused_m3_total"}]},
        ],
        outbox={"linger_ms": 50},
    )
    agent = None
    try:
        app.start()
        with open(tmp_path / "agent.log", "wb") as log:
            agent = subprocess.Popen([sys.executable, "-m", "greenmine", "agent", "run", "--config", str(agent_cfg)],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        msgs = wait_for(
            lambda: [m for m in smtp.received() if "water_reuse_24h" in m.get_content() or "滚动24小时" in str(m["Subject"])],
            40, interval_s=0.2, what="the reuse email")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        app.stop()
        sim.stop()
        smtp.stop()
    m = msgs[0]
    subject, body = str(m["Subject"]), m.get_content()
    assert m["To"] == "officer@example.test"
    assert "严重" in subject and "金昌某铜矿" in subject and "选矿废水循环利用率" in subject
    value = float(re.search(r"测量值:\s+([\d.]+) %", body).group(1))
    assert 70 < value < 85, body
    assert "≥ 85 %" in body and "fresh1" in body and "reuse1" in body
