"""Real Mosquitto configured by `greenmine broker init` and `add-agent`/`add-server`: ACLs, passwords,
anonymous access, TLS, the queue bound and a broker restart, with the real server app on the other end."""

from __future__ import annotations

import logging
import os
import sqlite3
import ssl
import stat
import subprocess
import sys

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from greenmine.mqtttls import TlsConfig, ssl_context
from greenmine.server.broker import certs
from greenmine.server.broker.conf import Sizing
from greenmine.server.broker.dynsec import DynsecError, Endpoint, connect
from greenmine.server.ingest.mqtt import BufferedSocket
from greenmine.server.store.sqlite import SqliteReader
from tests.server.conftest import ROOT, SITE, batch, dumps, running, server_doc, topic
from tests.support.services import ProvisionedMosquitto, need_root, wait_for

OTHER = "gs-other"


@pytest.fixture
def broker(tmp_path):
    b = ProvisionedMosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


def server_config(tmp_path, broker: ProvisionedMosquitto, user: str, password: str, **mqtt):
    from greenmine.server.config import load_server_config

    doc = server_doc(tmp_path, broker.port, mqtt=broker.tls_mqtt(user, password, **mqtt))
    doc["sites"] = [{"id": SITE, "timezone": "Asia/Shanghai"}, {"id": OTHER, "timezone": "Asia/Shanghai"}]
    return load_server_config(tmp_path / "server.toml", doc=doc)


class Agent:
    """A paho client over TLS with an agent's credentials, publishing as the agent does (QoS 1,
    persistent session); MQTT 5 when `v5`, so the broker's refusal shows in the PUBACK."""

    def __init__(self, broker: ProvisionedMosquitto, user: str, password: str, *, v5: bool = False,
                 client_id: str = "test-agent") -> None:
        self.v5 = v5
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
                                  clean_session=None if v5 else False)
        self.client.username_pw_set(user, password)
        self.client.tls_set_context(ssl_context(TlsConfig(ca_file=str(broker.ca_file))))
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.acks: dict[int, object] = {}
        self.client.on_publish = lambda c, u, mid, rc, props: self.acks.__setitem__(mid, rc)
        self.client.connect("localhost", broker.port, keepalive=10)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, what="agent connected")

    def publish(self, t: str, payload: bytes):
        info = self.client.publish(t, payload, qos=1)
        info.wait_for_publish(10)
        return self.acks.get(info.mid)

    def publish_many(self, items) -> None:
        infos = [self.client.publish(t, p, qos=1) for t, p in items]
        for info in infos:
            info.wait_for_publish(60)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def endpoint(broker, user="", password="", port=None) -> Endpoint:
    return Endpoint(host="localhost", port=port or broker.port, username=user, password=password)


def tls_ctx(ca) -> ssl.SSLContext:
    return ssl_context(TlsConfig(ca_file=str(ca)))


def test_init_writes_secrets_0600_and_a_queue_bound_with_its_arithmetic(tmp_path):
    """`broker init` on the command line: the conf says how the bound was reached; secrets are private."""
    out = subprocess.run(
        [sys.executable, "-m", "greenmine", "broker", "init", str(tmp_path / "b"), "--make-ca", "--hostname", "localhost",
         "--outage-hours", "48", "--agents", "10", "--batches-per-minute", "6"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    needed = 10 * (6 + 1) * 60 * 48  # agents x (batches + status) per minute x 60 x hours
    assert f"= {needed} messages" in conf
    assert f"max_queued_messages {int(needed * 1.5)}\n" in conf
    for line in ("persistence true", "allow_anonymous false", "per_listener_settings false", "listener 8883 0.0.0.0",
                 "plugin /", "max_inflight_messages 100", "listener 1883 127.0.0.1"):
        assert line in conf, line
    for name in ("admin.secret", "dynamic-security.json", "tls/server.key", "tls/ca.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "b" / name).st_mode) == 0o600, name
    assert "password" not in out.stdout


def test_init_refuses_a_folder_the_broker_user_cannot_reach(tmp_path):
    """Mosquitto as user 'mosquitto' under a folder only root may enter could not save anything."""
    from greenmine.server.broker.provision import InitOptions, ProvisionError, init

    need_root("only root can give the data folder to another user")
    os.chmod(tmp_path.parent, 0o700)
    with pytest.raises(ProvisionError, match="out of reach of 'mosquitto'"):
        init(tmp_path / "b", InitOptions(sizing=Sizing(), make_ca=True, hostnames=("localhost",), user="mosquitto"))


def test_as_user_mosquitto_sessions_survive_a_restart(tmp_path):
    """The production set-up: started as root, Mosquitto drops to 'mosquitto', which owns the data folder
    and the dynamic-security file; what it queued for the server is still there after a restart."""
    import pwd
    import shutil
    import tempfile
    from pathlib import Path

    need_root("Mosquitto switches to the user 'mosquitto' only when started as root")
    pwd.getpwnam("mosquitto")  # Debian's package makes it
    base = Path(tempfile.mkdtemp(prefix="greenmine-broker-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        b = ProvisionedMosquitto(base, user="mosquitto")
        assert os.stat(b.dir / "data").st_uid == pwd.getpwnam("mosquitto").pw_uid
        b.start()
        try:
            cfg = server_config(tmp_path, b, *b.add_server())
            creds = b.add_agent(SITE, "gw1")
            with running(cfg):
                pass
            agent = Agent(b, *creds)
            agent.publish_many((topic(), dumps(batch(i, n=1))) for i in range(50))
            agent.close()
            b.restart()
            wait_for(lambda: (b.dir / "data" / "mosquitto.db").exists(), 10, what="the database saved by 'mosquitto'")
            reader = SqliteReader(cfg.resolve(cfg.store.path))
            try:
                with running(cfg):
                    wait_for(lambda: _stored(reader) == 50, 20, what="the 50 batches queued before the restart")
            finally:
                reader.close()
        finally:
            b.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_site_a_agent_cannot_publish_on_site_b_and_nothing_reaches_the_server(tmp_path, broker):
    cfg = server_config(tmp_path, broker, *broker.add_server())
    agent = Agent(broker, *broker.add_agent(SITE, "gw1"), v5=True)
    reader = SqliteReader(cfg.resolve(cfg.store.path))
    try:
        with running(cfg) as app:
            refused = agent.publish(topic(site=OTHER, agent="gw1"), dumps(batch(1, site=OTHER, agent="gw1")))
            refused_status = agent.publish(topic("status", site=OTHER, agent="gw9"), b'{"state": "online"}')
            other_agent = agent.publish(topic(agent="gw2"), dumps(batch(2, agent="gw2")))
            assert str(refused) == "Not authorized" and str(refused_status) == "Not authorized"
            assert str(other_agent) == "Not authorized"  # same site, another agent's topic
            ok = agent.publish(topic(), dumps(batch(3, n=5)))
            assert not ok.is_failure
            # one connection delivers in order: when its own batch is stored, the refused ones would have been too
            wait_for(lambda: os.path.exists(cfg.resolve(cfg.store.path)) and reader.count() == 5, 10, what="own batch")
            con = sqlite3.connect(cfg.resolve(cfg.store.path))
            try:
                assert [r[0] for r in con.execute("SELECT DISTINCT site FROM series")] == [SITE]
            finally:
                con.close()
            assert app.spool.dead_letters.counts() == {}
            assert app.metrics.value("greenmine_readings_written_total", sink="sqlite") == 5
    finally:
        reader.close()
        agent.close()


def test_agent_may_subscribe_to_nothing(broker):
    user, password = broker.add_agent(SITE, "gw1")
    c = connect(endpoint(broker, user, password), "test-sub", context=tls_ctx(broker.ca_file))
    got = []
    c.on_subscribe = lambda cl, u, mid, rcs, p=None: got.append(rcs[0])
    try:
        c.subscribe(topic(), qos=1)
        wait_for(lambda: got, 5, what="suback")
        assert got[0].is_failure
    finally:
        c.disconnect()
        c.loop_stop()


def test_wrong_password_is_refused(broker):
    user, _ = broker.add_agent(SITE, "gw1")
    with pytest.raises(DynsecError, match="refused 'agent.gs-demo.gw1': Not authorized"):
        connect(endpoint(broker, user, "not-the-password"), "test-wrong", context=tls_ctx(broker.ca_file))


def test_anonymous_is_refused_on_both_listeners(broker):
    with pytest.raises(DynsecError, match="refused an anonymous client"):
        connect(endpoint(broker), "anon-tls", context=tls_ctx(broker.ca_file), anonymous=True)
    with pytest.raises(DynsecError, match="refused an anonymous client"):
        connect(Endpoint("127.0.0.1", broker.local_port, "", ""), "anon-local", anonymous=True)


def test_tls_with_the_test_ca_works_and_a_broker_certificate_of_another_ca_is_refused(tmp_path, caplog):
    # the broker presents a certificate signed by a CA the clients do not trust
    other = certs.make_ca(tmp_path / "other", name="someone else's CA")
    crt, key = certs.make_cert(tmp_path / "other", "server", other, ["localhost", "127.0.0.1"])
    trusted = certs.make_ca(tmp_path / "trusted")
    b = ProvisionedMosquitto(tmp_path, certfile=crt, keyfile=key, cafile=other[0])
    b.start()
    try:
        user, password = b.add_server()
        with pytest.raises(DynsecError, match="CERTIFICATE_VERIFY_FAILED"):
            connect(endpoint(b, user, password), "test-tls", context=tls_ctx(trusted[0]))
        # the CA that did sign it works
        connect(endpoint(b, user, password), "test-tls-ok", context=tls_ctx(other[0])).loop_stop()
        # insecure = true: the server connects without verifying (the CA it names did not sign the broker's
        # certificate), and says so at warning when it starts
        cfg = server_config(tmp_path, b, user, password, tls={"ca_file": str(trusted[0]), "insecure": True})
        with caplog.at_level(logging.WARNING, logger="greenmine.server.ingest.mqtt"):
            with running(cfg) as app:
                assert app.mqtt.subscribed
        assert "insecure = true" in caplog.text and "NOT verified" in caplog.text
    finally:
        b.stop()


def test_server_with_a_client_certificate_when_the_broker_requires_one(tmp_path):
    b = ProvisionedMosquitto(tmp_path, require_client_cert=True)
    b.start()
    try:
        ca = (b.ca_file, b.dir / "tls" / "ca.key")
        crt, key = certs.make_cert(tmp_path / "client", "server-client", ca, ["greenmine-server"], client=True)
        user, password = b.add_server()
        cfg = server_config(tmp_path, b, user, password,
                            tls={"ca_file": str(b.ca_file), "cert_file": str(crt), "key_file": str(key)})
        with running(cfg) as app:
            assert app.mqtt.subscribed
        with pytest.raises(DynsecError):  # the same without the certificate
            connect(endpoint(b, user, password), "test-nocert", 3, context=tls_ctx(b.ca_file))
    finally:
        b.stop()


def _stored(reader) -> int:
    try:
        return reader.count()
    except Exception:  # the store file is created by the server's writer
        return 0


def test_queue_bound_holds_5000_batches_while_the_server_is_away(tmp_path):
    """Mosquitto's default bound (1000) would drop 4000 of them after the agent has deleted them."""
    b = ProvisionedMosquitto(tmp_path, sizing=Sizing(outage_hours=1, agents=1, batches_per_minute=60))
    b.start()
    agent = None
    try:
        cfg = server_config(tmp_path, b, *b.add_server())
        with running(cfg):
            pass  # the server's persistent session now exists; it goes away
        agent = Agent(b, *b.add_agent(SITE, "gw1"))
        n = 5000
        agent.publish_many((topic(), dumps(batch(i, n=1))) for i in range(n))
        reader = SqliteReader(cfg.resolve(cfg.store.path))
        try:
            with running(cfg):
                wait_for(lambda: _stored(reader) == n, 60, what="every batch stored")
        finally:
            reader.close()
    finally:
        if agent:
            agent.close()
        b.stop()


def test_broker_restart_resumes_sessions_and_loses_nothing(tmp_path, broker):
    cfg = server_config(tmp_path, broker, *broker.add_server())
    creds = broker.add_agent(SITE, "gw1")
    with running(cfg):
        pass  # the server's session exists, and is away
    agent = Agent(broker, *creds)
    agent.publish_many((topic(), dumps(batch(i, n=2))) for i in range(300))
    agent.close()
    broker.restart()  # SIGTERM: Mosquitto saves its database; then the same generated config
    agent = Agent(broker, *creds)  # the clients and roles came back from the dynamic-security file
    agent.publish_many((topic(), dumps(batch(i, n=2))) for i in range(300, 600))
    agent.close()
    reader = SqliteReader(cfg.resolve(cfg.store.path))
    try:
        with running(cfg):
            wait_for(lambda: _stored(reader) == 1200, 30, what="all 600 batches, from before and after the restart")
    finally:
        reader.close()


def test_real_agent_over_tls_stores_with_its_own_credentials_and_another_sites_are_refused(tmp_path, broker):
    """The agent process itself ([mqtt.tls] with the test CA, the add-agent credentials): its readings
    reach the store; the same credentials in a config for another site publish nothing the server sees."""
    from tests.agent.helpers import write_config
    from tests.agent.mbserver import ModbusTestServer, ServerThread, Unit
    from tests.support.processes import spawn_greenmine, stop_process

    cfg = server_config(tmp_path, broker, *broker.add_server())
    user, password = broker.add_agent(SITE, "gw1")
    mqtt = {"host": "localhost", "port": broker.port, "username": user, "password": password,
            "tls": {"ca_file": str(broker.ca_file)}}
    regs = [{"name": "r0", "address": 0, "data_type": "uint16", "poll_group": "fast"}]
    reader = SqliteReader(cfg.resolve(cfg.store.path))
    with ServerThread(ModbusTestServer({1: Unit(holding={0: 7})})) as meter:
        def agent_config(name: str, site: str):
            (tmp_path / name).mkdir()
            path = write_config(tmp_path / name / "agent.toml", broker_port=broker.port, mqtt_extra=mqtt,
                                buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": meter.port}],
                                devices=[{"name": "m1", "bus": "gw", "unit_id": 1, "registers": regs,
                                          "poll_groups": {"fast": 0.5}}])
            path.write_text(path.read_text().replace('site = "s1"', f'site = "{site}"'))
            return path

        own, other = agent_config("own", SITE), agent_config("other", OTHER)
        with running(cfg) as app:
            # the server reads TLS through its buffer: SSL's own pending bytes count too (paho waits in select otherwise)
            sock = app.mqtt._client._sock
            assert isinstance(sock, BufferedSocket) and isinstance(sock._sock, ssl.SSLSocket)
            intruder = spawn_greenmine(["agent", "run", "--config", str(other)], tmp_path / "other.log")
            try:
                wait_for(lambda: "connected to broker" in (tmp_path / "other.log").read_text(), 20,
                         what="the misconfigured agent connected")
                agent = spawn_greenmine(["agent", "run", "--config", str(own)], tmp_path / "own.log")
                try:
                    wait_for(lambda: _stored(reader) >= 3, 20, what="the agent's readings stored")
                finally:
                    assert stop_process(agent) == 0, (tmp_path / "own.log").read_text()[-3000:]
            finally:
                stop_process(intruder)
            assert "(TLS)" in (tmp_path / "own.log").read_text()
            con = sqlite3.connect(cfg.resolve(cfg.store.path))
            try:
                assert [r[0] for r in con.execute("SELECT DISTINCT site FROM series")] == [SITE]
            finally:
                con.close()
            assert app.spool.dead_letters.counts() == {}
    reader.close()
