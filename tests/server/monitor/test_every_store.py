"""Compliance on every store: the same day of readings, through real Mosquitto and the real server roles,
gives the same KPIs and the same alerts whether ingest writes to SQLite or to VictoriaMetrics.

The values are checked against figures computed by hand:
- water: 4.0 m³ reused and 1.0 m³ fresh per 5 minutes all day -> 80 % (below the 85 % floor: breach);
- dust: 10:00-11:00 alternates 1.2 and 1.0 mg/m³ -> 1.1 (over 1.0: breach); other hours 0.5;
- noise: 06:00-22:00 alternates 50 and 60 dB(A) -> Leq 10·log10((10^5 + 10^6) / 2) = 57.40 (class 2 day
  limit 60: no breach); night 40 constant -> 40.00.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from greenmine.server.config import load_server_config
from tests.server.conftest import Publisher, server_doc, topic
from tests.support.services import wait_for

TZ = ZoneInfo("Asia/Shanghai")
DAY = datetime(2026, 11, 20, tzinfo=TZ)
SITE = "gs-demo"


def day_batches() -> list[bytes]:
    out = []
    for i in range(24 * 12 + 1):  # every 5 minutes, 00:00 .. 24:00 (the read closing the day)
        ts = DAY + timedelta(minutes=5 * i)
        hour = ts.hour if i < 24 * 12 else 24
        tsp = (1.2 if i % 2 else 1.0) if hour == 10 else 0.5
        laeq = (60.0 if i % 2 else 50.0) if 6 <= hour < 22 else 40.0
        readings = [
            {"device": "reuse1", "metric": "water_reused_m3_total", "value": 1000 + 4.0 * i, "unit": "m3"},
            {"device": "fresh1", "metric": "water_fresh_m3_total", "value": 500 + 1.0 * i, "unit": "m3"},
            {"device": "dust1", "metric": "dust_tsp_mgm3", "value": tsp, "unit": "mg/m3"},
            {"device": "noise1", "metric": "noise_laeq_db", "value": laeq, "unit": "dB(A)"},
        ]
        doc = {"schema": "greenmine.telemetry.v1", "site": SITE, "agent": "gw1", "seq": i, "sent_at": ts.isoformat(),
               "readings": [{**r, "ts": ts.isoformat(), "quality": "good"} for r in readings]}
        out.append(json.dumps(doc).encode())
    return out


def run_day(tmp_path, port: int, store: dict) -> tuple[dict, set]:
    from greenmine.server.app import App

    doc = server_doc(tmp_path, port, store=store, name=tmp_path.name)
    doc["kpi"] = {"counter_interval_s": 300, "sample_interval_s": 300}
    doc["alerts"] = {"db_path": str(tmp_path / "alerts.sqlite"), "tick_interval_s": 1}
    doc["monitor"] = {"replica_path": str(tmp_path / "replica.sqlite")}
    doc["sites"] = [{"id": SITE, "timezone": "Asia/Shanghai", "recipients": ["officer@example.test"]}]
    doc["notify"] = {"eml_dir": str(tmp_path / "mail")}
    cfg = load_server_config(tmp_path / "server.toml", doc=doc)
    start = time.time()
    base = (DAY + timedelta(days=1, minutes=30)).timestamp()
    app = App(cfg, clock=lambda: base + (time.time() - start))
    app.start()
    pub = Publisher(port, client_id=f"pub-{tmp_path.name}")
    try:
        wait_for(lambda: app.mqtt.subscribed and app.monitor.consumer.mqtt.subscribed, 10, what="both roles subscribed")
        pub.publish_many([(topic(), b) for b in day_batches()])
        store_kpis = app.monitor.monitor.kpi_store

        def done():
            return (store_kpis.values(SITE, "water_reuse_daily") and len(store_kpis.values(SITE, "dust_tsp_hourly")) == 24
                    and store_kpis.values(SITE, "noise_leq_night"))

        wait_for(done, 30, what="the day's KPIs computed")
        alerts = app.monitor.monitor.alerts
        # the dust alert fires for 10:00-11:00 and resolves with the next hour; the reuse alert stays firing
        wait_for(lambda: {("water_reuse_daily", "firing"), ("dust_tsp_hourly", "resolved")}
                 <= {(a.rule, a.state) for a in alerts.alerts(("firing", "resolved"))}, 15, what="alerts raised")
        wait_for(lambda: app.spool.queue.depth()[0] == 0, 15, what="spool drained into the store")
        kpis = {}
        for name in ("water_reuse_daily", "dust_tsp_hourly", "noise_leq_day", "noise_leq_night", "noise_leq_hourly"):
            for v in store_kpis.values(SITE, name):
                kpis[(name, v.subject, v.period_start)] = (None if v.value is None else round(v.value, 9), v.complete, v.breached)
        raised = {(a.rule, a.subject, a.state) for a in alerts.alerts(("pending", "firing", "resolved"))}
        return kpis, raised
    finally:
        pub.close()
        app.stop()


def test_kpis_and_alerts_are_the_same_on_sqlite_and_victoriametrics(tmp_path, mosquitto, victoria_dedup):
    (tmp_path / "sqlite").mkdir()
    (tmp_path / "vm").mkdir()
    on_sqlite, firing_sqlite = run_day(tmp_path / "sqlite", mosquitto.port,
                                       {"kind": "sqlite", "path": str(tmp_path / "sqlite" / "store.sqlite")})
    on_vm, firing_vm = run_day(tmp_path / "vm", mosquitto.port, {"kind": "influxdb", "url": victoria_dedup.url})

    assert on_sqlite == on_vm
    assert firing_sqlite == firing_vm

    day0 = DAY.timestamp()
    assert on_vm[("water_reuse_daily", "site", day0)] == (80.0, True, True)
    ten = (DAY + timedelta(hours=10)).timestamp()
    assert on_vm[("dust_tsp_hourly", "dust1", ten)] == (pytest.approx(1.1), True, True)
    nine = (DAY + timedelta(hours=9)).timestamp()
    assert on_vm[("dust_tsp_hourly", "dust1", nine)] == (0.5, True, False)
    day_leq = next(v for k, v in on_vm.items() if k[0] == "noise_leq_day")
    # stored as judged against the 60 dB limit: rounded to one decimal more than it is written with (GB/T 8170)
    assert day_leq[0] == round(10 * math.log10((10**5 + 10**6) / 2), 1) == 57.4 and day_leq[2] is False
    night = [v for k, v in on_vm.items() if k[0] == "noise_leq_night"]
    assert night and all(v[0] == pytest.approx(40.0) for v in night)
    assert {r[0] for r in firing_vm} == {"water_reuse_daily", "dust_tsp_hourly"}

    # ingest really wrote to VictoriaMetrics: every reuse-meter read of the day is there
    series = victoria_dedup.export('{__name__="water_reused_m3_total_value"}')
    assert sum(len(s["values"]) for s in series) == 24 * 12 + 1
