"""Roles as real processes on a real Mosquitto: two ingest processes on one shared subscription and one
monitor, each SIGKILLed mid-stream and restarted with the same instance (so the same client_id).

- Ingest: every reading is in the store once (0 lost; the store is idempotent on identity, so 0 duplicated).
- Monitor: every dust alert of the two days is raised once (0 lost), and no email reaches the relay twice.

Mosquitto keeps a killed member's in-flight shared-subscription messages for its session (mosquitto issue
2662), which is why the restart reuses the client id; docs/server.md says what to run where members come
and go.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import urllib.request
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tests.server.conftest import Publisher, server_doc, topic, write_toml
from tests.server.notify.smtpsink import SmtpSink
from tests.support.processes import spawn_greenmine, stop_process
from tests.support.services import free_port, wait_for

TZ = ZoneInfo("Asia/Shanghai")
DAY = datetime(2026, 11, 18, tzinfo=TZ)
SITE = "gs-demo"
DAYS = 2
POWER_METERS = 20


def batches() -> list[bytes]:
    out = []
    for i in range(DAYS * 24 * 12):
        ts = DAY + timedelta(minutes=5 * i)
        # every odd hour over the 1.0 limit: 12 alerts a day; each third of the stream ends in one (see below)
        tsp = 1.5 if ts.hour % 2 == 1 else 0.5
        readings = [{"device": "dust1", "metric": "dust_tsp_mgm3", "value": tsp, "unit": "mg/m3"}]
        readings += [{"device": f"m{k:02d}", "metric": "power_kw", "value": i + k / 100, "unit": "kW"}
                     for k in range(POWER_METERS)]
        doc = {"schema": "greenmine.telemetry.v1", "site": SITE, "agent": "gw1", "seq": i, "sent_at": ts.isoformat(),
               "readings": [{**r, "ts": ts.isoformat(), "quality": "good"} for r in readings]}
        out.append(json.dumps(doc).encode())
    return out


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except OSError as exc:
        if getattr(exc, "code", None) == 503:
            return json.loads(exc.read())
        return {}


def test_sigkill_ingest_and_monitor_mid_stream_loses_and_duplicates_nothing(tmp_path, mosquitto):
    smtp = SmtpSink()
    smtp.start()
    doc = server_doc(tmp_path, mosquitto.port, mqtt={"shared_group": "ingest", "client_id": "roles"},
                     store={"kind": "sqlite", "path": str(tmp_path / "store.sqlite")})
    doc["ingest"]["spool_path"] = str(tmp_path / "spool.sqlite")
    doc["kpi"] = {"sample_interval_s": 300}
    doc["alerts"] = {"db_path": str(tmp_path / "alerts.sqlite"), "tick_interval_s": 1, "default_rules": False,
                     "min_renotify_s": 0}
    doc["smtp"] = {"host": "127.0.0.1", "port": smtp.port, "security": "none", "sender": "greenmine@example.test"}
    doc["sites"] = [{"id": SITE, "timezone": "Asia/Shanghai", "recipients": ["officer@example.test"]}]
    cfg = write_toml(tmp_path / "server.toml", doc)
    with open(cfg, "a", encoding="utf-8") as f:  # one rule only, so the count of alerts is exact
        f.write('[[alerts.rules]]\nkind = "threshold"\nname = "dust_tsp_hourly"\nseries = "dust_tsp_hourly"\n'
                'clear_hysteresis = 0.05\n')
    ports = {name: free_port() for name in ("a", "b", "m")}
    roles = {"a": "ingest", "b": "ingest", "m": "monitor"}

    def spawn(name: str):
        return spawn_greenmine(["server", "run", "--config", str(cfg), "--role", roles[name], "--instance", name,
                                "--http-port", str(ports[name])], tmp_path / f"{name}.log")

    def ready(name: str) -> bool:
        h = health(ports[name])
        return bool(h.get("mqtt_subscribed") if roles[name] == "ingest" else h.get("monitor_connected"))

    procs = {name: spawn(name) for name in roles}
    pub = Publisher(mosquitto.port, client_id="roles-pub")
    try:
        for name in procs:
            wait_for(lambda: ready(name), 20, what=f"{name} subscribed")
        items = [(topic(), b) for b in batches()]
        third = len(items) // 3  # 16 hours: each third ends in an odd (breach) hour
        pub.publish_many(items[:third])
        for name in ("a", "m"):  # mid-stream: both have unacknowledged messages in flight
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait(10)
        pub.publish_many(items[third:2 * third])
        for name in ("a", "m"):
            procs[name] = spawn(name)
        pub.publish_many(items[2 * third:])

        expected = len(items) * (1 + POWER_METERS)

        def stored() -> int:
            if not (tmp_path / "store.sqlite").exists():
                return 0
            with sqlite3.connect(f"file:{tmp_path / 'store.sqlite'}?mode=ro", uri=True, timeout=5) as con:
                return con.execute("SELECT count(*) FROM samples").fetchone()[0]

        wait_for(lambda: stored() >= expected, 90, interval_s=0.5, what=f"{expected} readings in the store")
        assert stored() == expected

        def alerts() -> list[tuple]:
            with sqlite3.connect(f"file:{tmp_path / 'alerts-m.sqlite'}?mode=ro", uri=True, timeout=5) as con:
                return con.execute("SELECT rule, subject, state FROM alerts").fetchall()

        # A backlog's alert that fires and resolves in one run of the monitor sends no email; the last
        # hour of each third fires and stays firing until the next third arrives, so those are emailed.
        wait_for(lambda: len(alerts()) == DAYS * 12 and [a[2] for a in alerts()].count("firing") == 1, 60,
                 interval_s=0.5, what="every dust alert raised, the last one still firing")

        def undelivered() -> int:
            with sqlite3.connect(f"file:{tmp_path / 'alerts-m.sqlite'}?mode=ro", uri=True, timeout=5) as con:
                return (con.execute("SELECT count(*) FROM alert_events WHERE dispatched = 0").fetchone()[0]
                        + con.execute("SELECT count(*) FROM email_outbox WHERE status != 'sent'").fetchone()[0])

        wait_for(lambda: undelivered() == 0 and smtp.messages, 60, interval_s=0.5, what="every email delivered")
        with smtp.lock:
            ids = Counter(str(m["Message-ID"]) for m in smtp.messages)
        assert ids and max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]
        assert any("TSP" in str(m["Subject"]) for m in smtp.messages)  # at least the last, still firing
    finally:
        pub.close()
        for p in procs.values():
            if p.poll() is None:
                stop_process(p)
        smtp.stop()
