"""The whole path once, with real parts: a simulated meter (a real pymodbus
server) → the agent → a real Mosquitto → the server → the SQLite store.

- The value the simulated meter serves arrives in the store, exactly once per
  poll, with the poll's (aligned) timestamp and the register's unit.
- Publishing the same batch twice leaves one row.
"""

from __future__ import annotations

import sqlite3
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt

from greenmine.configfile import dump_toml
from tests.support.processes import spawn_greenmine, stop_process
from tests.support.services import wait_for

ROOT = Path(__file__).resolve().parent.parent
SITE = "gs-skeleton"
START = datetime.fromisoformat("2026-06-01T10:00:00+08:00")


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def test_meter_to_store_exactly_once(tmp_path, mosquitto):
    from greenmine.server.store.sqlite import SqliteReader
    from greenmine.simulators.config import load_sim_config
    from greenmine.simulators.site import SiteRunner

    site_doc = {
        "kind": "sim", "site": SITE,
        "servers": [{"name": "meter-gw", "transport": "tcp", "port": 0,
                     "devices": [{"name": "meter-1", "unit_id": 1, "profile": "eastron-sdm630", "role": "crusher"}]}],
    }
    (tmp_path / "site.toml").write_text(dump_toml(site_doc))
    sim_cfg = load_sim_config(tmp_path / "site.toml")

    # speed 0 freezes the simulated clock: the meter serves constant values.
    with SiteRunner(sim_cfg, start=START, speed=0) as sim:
        served_kwh = sim.expected_value("meter-1", "import_kwh")
        agent_doc = {
            "kind": "agent", "site": SITE, "agent_id": "gw-1",
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            "buses": [{"name": "lan", "transport": "tcp", "host": "127.0.0.1", "port": sim.port("meter-gw")}],
            "devices": [{"name": "meter-1", "bus": "lan", "unit_id": 1, "profile": "eastron-sdm630",
                         "poll_groups": {"fast": 1.0, "totals": 1.0}}],
        }
        server_doc = {
            "kind": "server",
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "skeleton-server"},
            "ingest": {"spool_path": str(tmp_path / "spool.sqlite")},
            "store": {"kind": "sqlite", "path": str(tmp_path / "store.sqlite")},
            "sites": [{"id": SITE}],
        }
        (tmp_path / "agent.toml").write_text(dump_toml(agent_doc))
        (tmp_path / "server.toml").write_text(dump_toml(server_doc))

        begin = datetime.now(timezone.utc)
        server = spawn_greenmine(["server", "run", "--config", str(tmp_path / "server.toml")], tmp_path / "server.log")
        agent = spawn_greenmine(["agent", "run", "--config", str(tmp_path / "agent.toml")], tmp_path / "agent.log")
        reader = SqliteReader(tmp_path / "store.sqlite")
        try:
            def rows():
                try:
                    return reader.query_series(SITE, "meter-1", "energy_kwh_total", begin - timedelta(seconds=5),
                                               begin + timedelta(minutes=5))
                except sqlite3.Error:  # the server has not created the store yet
                    return []

            wait_for(lambda: len(rows()) >= 3, 30, what="three polls in the store")
            assert stop_process(agent) == 0, (tmp_path / "agent.log").read_text()[-3000:]
            got = rows()
            assert len({p.ts_ms for p in got}) == len(got), "a poll was stored twice"
            for p in got:
                assert p.value == f32(served_kwh), (p.value, served_kwh)
                assert p.unit == "kWh" and p.quality == "good" and p.agent == "gw-1"
                assert p.ts_ms % 1000 == 0, "ts is the poll's scheduled time, aligned to the 1 s interval"
                assert begin - timedelta(seconds=2) <= p.ts <= datetime.now(timezone.utc)

            # The same batch published twice leaves one row.
            ts = datetime(2026, 6, 1, 2, 0, 0, tzinfo=timezone.utc)
            batch = {
                "schema": "greenmine.telemetry.v1", "site": SITE, "agent": "gw-1", "seq": 1,
                "sent_at": ts.isoformat(), "readings": [
                    {"device": "meter-1", "metric": "power_kw", "ts": ts.isoformat(), "value": 12.5, "unit": "kW"}],
            }
            marker = dict(batch, seq=2, readings=[dict(batch["readings"][0], metric="marker")])
            import json

            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="skeleton-pub")
            pub.connect("127.0.0.1", mosquitto.port)
            pub.loop_start()
            try:
                topic = f"greenmine/v1/{SITE}/gw-1/telemetry"
                for doc in (batch, batch, marker):
                    pub.publish(topic, json.dumps(doc), qos=1).wait_for_publish(10)
            finally:
                pub.loop_stop()
                pub.disconnect()
            window = (ts - timedelta(seconds=1), ts + timedelta(seconds=1))
            wait_for(lambda: reader.query_series(SITE, "meter-1", "marker", *window), 20, what="the marker batch")
            dup = reader.query_series(SITE, "meter-1", "power_kw", *window)
            assert [(p.ts, p.value) for p in dup] == [(ts, 12.5)]
        finally:
            reader.close()
            stop_process(agent)
            assert stop_process(server) == 0, (tmp_path / "server.log").read_text()[-3000:]
