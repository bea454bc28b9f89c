"""Helpers for the agent's integration tests: config writing and an MQTT collector."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(path: Path, *, broker_port: int, buses: list[dict], devices: list[dict], outbox: dict | None = None,
                 mqtt_extra: dict | None = None, top: dict | None = None) -> Path:
    lines = ['site = "s1"', 'agent_id = "gw1"']
    for k, v in (top or {}).items():
        lines.append(f"{k} = {toml_value(v)}")
    m = {"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 1, "reconnect_max_s": 1} | (mqtt_extra or {})
    lines.append("[mqtt]")
    lines += [f"{k} = {toml_value(v)}" for k, v in m.items()]
    lines.append("[outbox]")
    lines += [f"{k} = {toml_value(v)}" for k, v in ({"path": "outbox.sqlite"} | (outbox or {})).items()]
    for b in buses:
        lines.append("[[buses]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in b.items()]
    for d in devices:
        lines.append("[[devices]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in d.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Collector:
    """A persistent-session QoS 1 subscriber that records every telemetry batch and status message."""

    def __init__(self, port: int, client_id: str | None = None) -> None:
        self.batches: list[dict] = []
        self.arrivals: list[float] = []
        self.statuses: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise AssertionError("collector did not subscribe")

    def _on_connect(self, client, userdata, flags, rc, props):
        client.subscribe([("greenmine/v1/+/+/telemetry", 1), ("greenmine/v1/+/+/status", 1)])
        self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        doc = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/telemetry"):
                self.batches.append(doc)
                self.arrivals.append(time.time())
            else:
                self.statuses.append(doc)

    def readings(self, device: str | None = None) -> list[tuple[dict, float]]:
        with self._lock:
            out = [(r, at) for b, at in zip(self.batches, self.arrivals) for r in b["readings"]]
        return [(r, at) for r, at in out if device is None or r["device"] == device]

    def ts_of(self, device: str, metric: str | None = None) -> list[float]:
        return [datetime.fromisoformat(r["ts"]).timestamp() for r, _ in self.readings(device)
                if metric is None or r["metric"] == metric]

    def seqs(self) -> list[int]:
        with self._lock:
            return [b["seq"] for b in self.batches]

    def last_status(self) -> dict | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
