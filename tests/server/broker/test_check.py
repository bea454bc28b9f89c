"""`greenmine broker check` flags each setting that would lose data, one test per setting, against a
real Mosquitto provisioned by `broker init` (the conf file is read, the rest is tried over MQTT)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.server.conftest import ROOT, SITE
from tests.support.services import Mosquitto, ProvisionedMosquitto


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One broker for the module: the checks only read it (each test's variants are conf files)."""
    b = ProvisionedMosquitto(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


def server_toml(tmp_path, mqtt: dict, name: str = "server.toml") -> str:
    from greenmine.configfile import dump_toml

    doc = {"mqtt": mqtt, "sites": [{"id": SITE, "timezone": "Asia/Shanghai"}]}
    path = tmp_path / name
    path.write_text(dump_toml(doc))
    return str(path)


def check(config: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenmine", "broker", "check", "--config", config, "--timeout", "5",
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)


def unsafe(out: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in out.stdout.splitlines() if ln.startswith("UNSAFE")]


@pytest.fixture(scope="module")
def server_creds(broker):
    return broker.add_server()


@pytest.fixture
def as_server(tmp_path, broker, server_creds):
    return server_toml(tmp_path, broker.tls_mqtt(*server_creds))


def conf_variant(broker, tmp_path, edit) -> str:
    path = tmp_path / "variant.conf"
    path.write_text(edit(broker.conf.read_text()))
    (tmp_path / "broker.toml").write_text((broker.dir / "broker.toml").read_text())  # the sizing beside it
    return str(path)


def test_the_generated_config_is_safe(broker, as_server):
    out = check(as_server, "--broker-conf", str(broker.conf))
    assert out.returncode == 0, out.stdout + out.stderr
    assert not unsafe(out)
    assert "anonymous access: refused" in out.stdout
    assert "server subscription: greenmine/v1/+/+/telemetry: Granted QoS 1" in out.stdout


def test_without_the_conf_it_says_what_it_did_not_check(broker, as_server):
    out = check(as_server)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not checked: persistence, the queue bound" in out.stdout


def test_persistence_off_is_flagged(tmp_path, broker, as_server):
    conf = conf_variant(broker, tmp_path, lambda t: t.replace("persistence true", "persistence false"))
    out = check(as_server, "--broker-conf", conf)
    assert out.returncode == 1
    assert [ln for ln in unsafe(out) if "persistence: off" in ln], out.stdout


def test_persistence_folder_missing_is_flagged(tmp_path, broker, as_server):
    conf = conf_variant(broker, tmp_path, lambda t: t.replace(str(broker.dir / "data"), str(tmp_path / "nowhere")))
    out = check(as_server, "--broker-conf", conf)
    assert out.returncode == 1
    assert [ln for ln in unsafe(out) if "does not exist" in ln], out.stdout


def test_queue_bound_below_outage_times_rate_is_flagged(tmp_path, broker, as_server):
    # the generated bound covers 24 h at 60 batches/min for 1 agent; 10 agents need ten times as much
    out = check(as_server, "--broker-conf", str(broker.conf), "--agents", "10")
    assert out.returncode == 1
    assert [ln for ln in unsafe(out) if "queue bound: max_queued_messages" in ln and "< 24 h x 10 agent(s)" in ln], out.stdout


def test_mosquitto_default_queue_bound_is_flagged(tmp_path, broker, as_server):
    conf = conf_variant(broker, tmp_path, lambda t: "\n".join(
        ln for ln in t.splitlines() if not ln.startswith(("max_queued_messages", "max_queued_bytes"))))
    out = check(as_server, "--broker-conf", conf)
    assert out.returncode == 1
    assert [ln for ln in unsafe(out) if "max_queued_messages 1000 (not set: Mosquitto's default)" in ln], out.stdout


def test_anonymous_access_is_flagged(tmp_path, broker, as_server):
    # over MQTT: a broker that lets a client in without a user name
    (tmp_path / "open").mkdir()
    open_broker = Mosquitto(tmp_path / "open")  # allow_anonymous true
    open_broker.start()
    try:
        out = check(server_toml(tmp_path, {"host": "127.0.0.1", "port": open_broker.port}, "open.toml"))
    finally:
        open_broker.stop()
    assert out.returncode == 1
    assert [ln for ln in unsafe(out) if "anonymous access" in ln and "accepts clients without a user name" in ln], out.stdout
    # and in the conf file
    conf = conf_variant(broker, tmp_path, lambda t: t.replace("allow_anonymous false", "allow_anonymous true"))
    out = check(as_server, "--broker-conf", conf)
    assert out.returncode == 1
    assert [ln for ln in unsafe(out) if "allow_anonymous true" in ln], out.stdout


def test_tls_off_on_a_network_listener_is_flagged(tmp_path, broker, as_server):
    conf = conf_variant(broker, tmp_path, lambda t: t + "\nlistener 1884 0.0.0.0\n")
    out = check(as_server, "--broker-conf", conf)
    assert out.returncode == 1
    assert [ln for ln in unsafe(out) if "listener 1884 0.0.0.0" in ln and "no TLS" in ln], out.stdout
    # the local plain listener is not flagged
    assert not [ln for ln in unsafe(out) if "127.0.0.1" in ln]


def test_server_that_cannot_connect_is_exit_2(tmp_path, broker):
    out = check(server_toml(tmp_path, broker.tls_mqtt("greenmine-server", "wrong")))
    assert out.returncode == 2
    assert "cannot connect as the server" in out.stderr
