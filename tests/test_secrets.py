"""Secrets stay secret and state files stay private, checked on the real processes.

A simulated site, `greenmine agent run` and `greenmine server run` (every role: ingest into
SQLite, the monitor with an SMTP relay, the HJ 212 uplink to the platform simulator) run at
debug log level against a real Mosquitto. Every secret has a known value: the agent's MQTT
password (a systemd credential, `${cred:...}`), the server's MQTT and SMTP passwords
(`${ENV}`), the HJ 212 access password (in the file, as the platform assigns it) and an
InfluxDB token (an ingest run on VictoriaMetrics). None of them may appear in a log line, in
the retained status message, in `server status`, /health or /metrics, or in any `--help`.
Every file the processes create is mode 0600, with the umask at 022.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from greenmine.cli import build_parser
from tests.agent.helpers import toml_value
from tests.server.conftest import server_doc
from tests.server.uplink.conftest import ThreadedPlatform
from tests.simulators.conftest import make_runner, site_doc
from tests.support.processes import ROOT, stop_process
from tests.support.services import free_port, wait_for

SITE = "gs-demo"
AGENT_MQTT_PASSWORD = "agentPW-4f1c9e7b"
SERVER_MQTT_PASSWORD = "serverPW-8d2a6b31"
SMTP_PASSWORD = "smtpPW-5e7f0c92"
HJ212_PW = "Hj9k2Q7xZ"
INFLUX_TOKEN = "influxTOKEN-3b9d1a64"
SECRETS = (AGENT_MQTT_PASSWORD, SERVER_MQTT_PASSWORD, SMTP_PASSWORD, HJ212_PW, INFLUX_TOKEN)


def _secret_in(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def _env(tmp_path: Path) -> dict[str, str]:
    creds = tmp_path / "credentials"
    creds.mkdir(exist_ok=True)
    (creds / "mqtt_password").write_text(AGENT_MQTT_PASSWORD + "\n")
    return {**os.environ, "CREDENTIALS_DIRECTORY": str(creds), "GREENMINE_MQTT_PASSWORD": SERVER_MQTT_PASSWORD,
            "SMTP_PASSWORD": SMTP_PASSWORD, "INFLUX_TOKEN": INFLUX_TOKEN}


def _spawn(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "greenmine", "--log-level", "debug", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=lambda: os.umask(0o022))


def _toml(doc: dict, prefix: str = "") -> list[str]:
    lines = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, (dict, list)) or
             (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += [f"[{prefix}{k}]", *_toml(v, f"{prefix}{k}.")]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += [f"[[{prefix}{k}]]", *_toml(item, f"{prefix}{k}.")]
    return lines


def _agent_config(etc: Path, var: Path, broker_port: int, modbus_port: int) -> Path:
    doc = {
        "kind": "agent", "site": SITE, "agent_id": "gw1", "metrics_port": free_port(),
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "username": "gw1", "password": "${cred:mqtt_password}",
                 "reconnect_min_s": 1, "reconnect_max_s": 1, "status_interval_s": 1},
        "outbox": {"path": str(var / "outbox.sqlite"), "linger_ms": 10},
        "buses": [{"name": "env", "transport": "tcp", "host": "127.0.0.1", "port": modbus_port, "timeout_ms": 200}],
        "devices": [{"name": "dust", "bus": "env", "unit_id": 1, "profile": "boling-dust", "poll_groups": {"default": 0.2}},
                    {"name": "noise", "bus": "env", "unit_id": 2, "profile": "tranball-qm7903b",
                     "poll_groups": {"default": 0.2}}],
    }
    path = etc / "agent.toml"
    path.write_text("\n".join(_toml(doc)) + "\n")
    return path


def _server_config(etc: Path, var: Path, broker_port: int, platform_port: int, http_port: int) -> Path:
    doc = server_doc(var, broker_port, mqtt={"username": "greenmine-server", "password": "${GREENMINE_MQTT_PASSWORD}"})
    doc["ingest"]["spool_path"] = str(var / "spool.sqlite")
    doc["store"] = {"kind": "sqlite", "path": str(var / "store.sqlite")}
    doc["http_port"] = http_port
    doc["alerts"] = {"db_path": str(var / "alerts.sqlite")}
    doc["monitor"] = {"replica_path": str(var / "monitor-replica.sqlite")}
    doc["uplink"] = {"replica_path": str(var / "uplink-replica.sqlite")}
    doc["smtp"] = {"host": "127.0.0.1", "port": free_port(), "security": "none", "username": "greenmine",
                   "password": "${SMTP_PASSWORD}", "sender": "greenmine@example.com"}
    doc["hj212"] = [{"name": "boundary", "mn": "010000A8900016F000169DC0", "pw": HJ212_PW, "st": "39", "site": SITE,
                     "devices": ["dust", "noise"], "host": "127.0.0.1", "port": platform_port,
                     "queue_path": str(var / "hj212-boundary.sqlite")}]
    path = etc / "server.toml"
    path.write_text("\n".join(_toml(doc)) + "\n")
    return path


class StatusWatcher:
    """Every status message on the broker (the retained birth message and its refreshes)."""

    def __init__(self, port: int) -> None:
        self.payloads: list[bytes] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-status-watcher")
        self.client.on_connect = lambda c, *a: c.subscribe("greenmine/v1/+/+/status", 1)
        self.client.on_message = lambda c, u, msg: self.payloads.append(msg.payload)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()


def test_no_secret_in_logs_status_or_http_and_every_state_file_is_private(tmp_path, mosquitto):
    etc, var = tmp_path / "etc", tmp_path / "var"
    etc.mkdir()
    var.mkdir()
    env = _env(tmp_path)
    devices = [("dust", "boling-dust", None, {}), ("noise", "tranball-qm7903b", None, {})]
    with make_runner(tmp_path, site_doc(devices)) as sim, ThreadedPlatform() as platform:
        http_port = free_port()
        agent_cfg = _agent_config(etc, var, mosquitto.port, sim.port("gw"))
        server_cfg = _server_config(etc, var, mosquitto.port, platform.port, http_port)
        watcher = StatusWatcher(mosquitto.port)
        server = _spawn(["server", "run", "--config", str(server_cfg)], tmp_path / "server.log", env)
        agent = _spawn(["agent", "run", "--config", str(agent_cfg)], tmp_path / "agent.log", env)
        try:
            def flowing() -> bool:
                return any(line.startswith("greenmine_readings_written_total") and not line.endswith(" 0.0")
                           for line in _get(f"http://127.0.0.1:{http_port}/metrics").splitlines())
            wait_for(lambda: server.poll() is None and agent.poll() is None and _try(flowing), 60,
                     what="readings stored: " + (tmp_path / "server.log").read_text()[-2000:])
            wait_for(lambda: len(platform.received) > 0 or (var / "hj212-boundary.sqlite").exists(), 20,
                     what="the HJ 212 uplink at work")
            wait_for(lambda: len(watcher.payloads) >= 2, 20, what="status messages")
            health = _get(f"http://127.0.0.1:{http_port}/health")
            metrics = _get(f"http://127.0.0.1:{http_port}/metrics")
            agent_metrics = _get(f"http://127.0.0.1:{_port_of(agent_cfg)}/metrics")
        finally:
            assert stop_process(agent) == 0
            assert stop_process(server) == 0
            watcher.close()
    status = subprocess.run([sys.executable, "-m", "greenmine", "server", "status", "--json", "--config", str(server_cfg)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["agents"][0]["agent"] == "gw1"

    logs = (tmp_path / "server.log").read_text() + (tmp_path / "agent.log").read_text()
    assert " DEBUG " in logs  # the debug lines were written, and searched too
    for where, text in (("logs", logs), ("/health", health), ("/metrics", metrics), ("agent /metrics", agent_metrics),
                        ("server status", status.stdout + status.stderr),
                        ("status messages", b"\n".join(watcher.payloads).decode())):
        assert not _secret_in(text), f"{_secret_in(text)} in {where}"

    created = sorted(p for p in var.rglob("*") if p.is_file())
    names = {p.name for p in created}
    assert {"outbox.sqlite", "spool.sqlite", "spool.sqlite.lock", "store.sqlite", "alerts.sqlite", "monitor-replica.sqlite",
            "uplink-replica.sqlite", "hj212-boundary.sqlite"} <= names, names
    loose = {str(p.relative_to(var)): oct(stat.S_IMODE(p.stat().st_mode)) for p in created
             if stat.S_IMODE(p.stat().st_mode) != 0o600}
    assert not loose, f"state files readable by others: {loose}"


def _try(pred) -> bool:
    try:
        return pred()
    except OSError:
        return False


def _port_of(agent_cfg: Path) -> int:
    import tomllib

    return tomllib.loads(agent_cfg.read_text())["metrics_port"]


def test_the_influxdb_token_stays_out_of_the_logs(tmp_path, mosquitto, victoria):
    env = _env(tmp_path)
    doc = server_doc(tmp_path, mosquitto.port, store={"kind": "influxdb", "url": victoria.url, "token": "${INFLUX_TOKEN}"})
    doc["http_port"] = http_port = free_port()
    cfg = tmp_path / "server.toml"
    cfg.write_text("\n".join(_toml(doc)) + "\n")
    server = _spawn(["server", "run", "--config", str(cfg), "--role", "ingest"], tmp_path / "server.log", env)
    try:
        wait_for(lambda: _try(lambda: json.loads(_get(f"http://127.0.0.1:{http_port}/health"))["mqtt_connected"]), 20,
                 what="ingest up: " + (tmp_path / "server.log").read_text()[-2000:])
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-pub")
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        from tests.server.conftest import batch, dumps, topic

        pub.publish(topic(), dumps(batch(1)), qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        wait_for(lambda: victoria.export(), 20, what="the batch in VictoriaMetrics")
        health = _get(f"http://127.0.0.1:{http_port}/health")
    finally:
        assert stop_process(server) == 0
    logs = (tmp_path / "server.log").read_text()
    assert " DEBUG " in logs and INFLUX_TOKEN not in logs and INFLUX_TOKEN not in health


def _all_parsers(parser, prefix=()):
    yield prefix, parser
    for action in parser._actions:  # argparse keeps its subcommands here; there is no public accessor
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                if hasattr(sub, "format_help"):
                    yield from _all_parsers(sub, (*prefix, name))


def test_no_secret_in_any_help_even_with_every_secret_in_the_environment(tmp_path):
    env = _env(tmp_path)
    commands = [list(p) for p, _ in _all_parsers(build_parser())]
    assert ["server", "run"] in commands and ["agent", "run"] in commands and len(commands) > 15
    code = ("import sys\nfrom greenmine.cli import build_parser\n"
            "for cmd in sys.argv[1:]:\n"
            "    try:\n        build_parser().parse_args([*cmd.split(), '--help'])\n"
            "    except SystemExit:\n        pass\n")
    out = subprocess.run([sys.executable, "-c", code, *(" ".join(c) for c in commands)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("usage: greenmine") == len(commands)
    assert not _secret_in(out.stdout + out.stderr)


def test_an_email_written_as_an_eml_file_is_private(tmp_path):
    from email.message import EmailMessage

    from greenmine.server.notify.eml import EmlDirTransport

    msg = EmailMessage()
    msg["Message-ID"] = "<alert-1@greenmine>"
    msg["To"] = "officer@example.com"
    msg.set_content("TSP 1.4 mg/m3 at the north boundary")
    old = os.umask(0o022)
    try:
        EmlDirTransport(tmp_path / "mail").send(msg)
    finally:
        os.umask(old)
    (written,) = (tmp_path / "mail").iterdir()
    assert written.name == "alert-1_greenmine.eml" and stat.S_IMODE(written.stat().st_mode) == 0o600
