"""Helpers for the server tests: configs, a bare paho publisher, telemetry batches, running apps.

`victoria_dedup` is the shared VictoriaMetrics fixture started with
`-dedup.minScrapeInterval=1ms`, as docs/server.md tells operators to run it:
VictoriaMetrics keeps every duplicate sample otherwise, while InfluxDB
overwrites a point with the same measurement, tags and timestamp.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.services import VictoriaMetrics, wait_for

ROOT = Path(__file__).resolve().parents[2]
SITE = "gs-demo"


class DedupVictoria(VictoriaMetrics):
    def command(self) -> list[str]:
        return super().command() + ["-dedup.minScrapeInterval=1ms"]


@pytest.fixture
def victoria_dedup(tmp_path):
    vm = DedupVictoria(tmp_path)
    vm.start()
    yield vm
    vm.stop()


def server_doc(
    tmp_path: Path, broker_port: int, *, name: str = "s1", store: dict | None = None, mqtt: dict | None = None, **ingest
) -> dict:
    return {
        "kind": "server",
        "mqtt": {
            "host": "127.0.0.1", "port": broker_port, "client_id": f"test-{name}", "keepalive_s": 5, "reconnect_max_s": 1,
            **(mqtt or {}),
        },
        "ingest": {
            "spool_path": str(tmp_path / f"{name}-spool.sqlite"),
            "writer_retry_min_s": 0.05,
            "writer_retry_max_s": 0.5,
            "shutdown_flush_timeout_s": 5,
            **ingest,
        },
        "store": store or {"kind": "sqlite", "path": str(tmp_path / "store.sqlite")},
        "sites": [{"id": SITE, "timezone": "Asia/Shanghai"}],
    }


def make_config(tmp_path: Path, broker_port: int, **kw):
    from greenmine.server.config import load_server_config

    doc = server_doc(tmp_path, broker_port, **kw)
    return load_server_config(tmp_path / "server.toml", doc=doc)


def write_toml(path: Path, doc: dict) -> Path:
    """A tiny TOML writer for the flat docs above (tables of scalars, arrays of tables)."""

    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(v)

    lines = [f"{k} = {scalar(v)}" for k, v in doc.items() if not isinstance(v, (dict, list))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {scalar(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list):
            for item in v:
                lines.append(f"[[{k}]]")
                lines += [f"{kk} = {scalar(vv)}" for kk, vv in item.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


T0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def batch(seq: int, *, n: int = 20, site: str = SITE, agent: str = "gw1", t0: datetime = T0, **over) -> dict:
    """A realistic telemetry batch: n readings of n devices, one poll, seq seconds after t0."""
    ts = (t0 + timedelta(seconds=seq)).isoformat()
    doc = {
        "schema": "greenmine.telemetry.v1",
        "site": site,
        "agent": agent,
        "seq": seq,
        "sent_at": ts,
        "readings": [
            {"device": f"m{i:02d}", "metric": "power_kw", "ts": ts, "value": seq + i / 100, "unit": "kW", "quality": "good"}
            for i in range(n)
        ],
    }
    doc.update(over)
    return doc


def dumps(doc) -> bytes:
    return json.dumps(doc).encode()


class Publisher:
    """A bare paho client, as an agent would publish."""

    def __init__(self, port: int, client_id: str = "test-pub", will: tuple[str, bytes] | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5, what="publisher connected")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def publish_many(self, items, qos: int = 1) -> None:
        infos = [self.client.publish(t, p, qos=qos) for t, p in items]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker publishes the will."""
        self.client.loop_stop()
        self.client.socket().close()


@pytest.fixture
def publisher(mosquitto):
    pub = Publisher(mosquitto.port)
    yield pub
    pub.close()


def topic(kind: str = "telemetry", site: str = SITE, agent: str = "gw1") -> str:
    return f"greenmine/v1/{site}/{agent}/{kind}"


@contextlib.contextmanager
def running(cfg, **kw):
    from greenmine.server.app import App

    app = App(cfg, **kw)
    app.start()
    try:
        wait_for(lambda: app.mqtt.subscribed, 10, what="server subscribed")
        # the other roles' own sessions too: a message published before a role's subscription is granted is not its
        for role in (app.monitor, app.uplink, app.energy):
            if role is not None:
                wait_for(lambda: role.consumer.mqtt.subscribed, 10, what=f"{role.consumer.name} subscribed")
        yield app
    finally:
        app.stop()
