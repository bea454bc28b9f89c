"""The in-process demo broker, driven by real paho-mqtt 2.x clients (and raw
sockets for hostile input) on a free loopback port. No sleeps: every wait is a
condition with a deadline."""

from __future__ import annotations

import logging
import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from greenmine.simulators.broker import DemoBrokerThread, topic_matches, valid_topic_filter
from tests.support.services import wait_for

V311, V5 = 4, 5
VERSIONS = [pytest.param(V311, id="mqtt311"), pytest.param(V5, id="mqtt5")]


@pytest.fixture
def broker():
    with DemoBrokerThread(max_queued_messages=50) as b:
        yield b


class Client:
    """A paho client with its callbacks turned into waitable state."""

    def __init__(self, port: int, client_id: str, version: int = V311, *, clean: bool = True,
                 expiry_s: int = 0, manual_ack: bool = False, keepalive_s: int = 30) -> None:
        self.port = port
        self.version = version
        self.clean = clean
        self.expiry_s = expiry_s
        self.keepalive_s = keepalive_s
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if version == V5 else mqtt.MQTTv311,
            clean_session=clean if version == V311 else None,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
        )
        self.lock = threading.Lock()
        self.messages: list[mqtt.MQTTMessage] = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.subacks: dict[int, list] = {}
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = lambda *a: self.disconnected.set()
        self._looping = False

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.session_present = bool(flags.session_present)
        if not reason_code.is_failure:
            self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append(msg)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.lock:
            self.subacks[mid] = [rc.value for rc in reason_codes]

    def will(self, topic: str, payload: bytes, retain: bool = False) -> Client:
        self.c.will_set(topic, payload, qos=1, retain=retain)
        return self

    def connect(self) -> Client:
        kwargs = {}
        if self.version == V5:
            props = Properties(PacketTypes.CONNECT)
            if self.expiry_s:
                props.SessionExpiryInterval = self.expiry_s
            kwargs = {"clean_start": self.clean, "properties": props}
        self.c.username_pw_set("anyone", "anything")
        self.c.connect("127.0.0.1", self.port, keepalive=self.keepalive_s, **kwargs)
        self.c.loop_start()
        self._looping = True
        assert self.connected.wait(5), "no CONNACK"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return wait_for(lambda: self.subacks.get(mid), 5, what=f"SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published()

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.messages]

    def wait_payloads(self, n: int, timeout_s: float = 5) -> list[bytes]:
        return wait_for(lambda: len(self.payloads()) >= n and self.payloads(), timeout_s,
                        what=f"{n} messages on {self.c._client_id!r}")

    def disconnect(self) -> None:
        if self._looping:
            self.c.disconnect()
            self.c.loop_stop()
            self._looping = False

    def drop(self) -> None:
        """Close the socket without DISCONNECT: an abnormal close to the broker."""
        # shutdown() sends FIN and wakes paho's network thread, which then ends
        # (reconnect_on_failure=False) instead of waiting out its 1 s select.
        self.c.socket().shutdown(socket.SHUT_RDWR)
        self.c.loop_stop()
        self._looping = False


@pytest.fixture
def clients(broker):
    made: list[Client] = []

    def make(client_id: str, version: int = V311, **kw) -> Client:
        c = Client(broker.port, client_id, version, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.disconnect()


# ------------------------------------------------------------ raw-socket helpers


def _s(text: str) -> bytes:
    b = text.encode()
    return len(b).to_bytes(2, "big") + b


def _pkt(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray()
    while True:
        n, d = divmod(n, 128)
        out.append(d | (0x80 if n else 0))
        if not n:
            break
    return bytes([first]) + bytes(out) + body


def raw_connect(port: int, client_id: str, *, level: int = 4, keepalive_s: int = 30,
                will: tuple[str, bytes] | None = None) -> socket.socket:
    flags = 0x02 | (0x04 | 0x08 if will else 0)
    body = _s("MQTT") + bytes([level, flags]) + keepalive_s.to_bytes(2, "big")
    body += (b"\x00" if level == 5 else b"") + _s(client_id)
    if will:
        body += (b"\x00" if level == 5 else b"") + _s(will[0]) + len(will[1]).to_bytes(2, "big") + will[1]
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(_pkt(0x10, body))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


# ------------------------------------------------------------ topic rules


@pytest.mark.parametrize("flt,topic,expected", [
    ("a/b", "a/b", True),
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("#", "a/b", True),
    ("+/+", "/x", True),
    ("+", "a/b", False),
    ("#", "$SYS/broker", False),
    ("+/broker", "$SYS/broker", False),
    ("$SYS/#", "$SYS/broker", True),
    ("a/b", "a/B", False),
])
def test_topic_matching(flt, topic, expected):
    assert topic_matches(flt, topic) is expected


@pytest.mark.parametrize("flt,ok", [
    ("a/#", True), ("#", True), ("+/x/+", True), ("a/#/b", False), ("a#", False), ("a/b+", False), ("", False),
])
def test_topic_filter_validity(flt, ok):
    assert valid_topic_filter(flt) is ok


# ------------------------------------------------------------ pub/sub


@pytest.mark.parametrize("version", VERSIONS)
def test_pubsub_qos0_and_qos1(clients, version):
    sub = clients("sub", version).connect()
    assert sub.subscribe("greenmine/v1/+/+/telemetry", 1) == [1]
    pub = clients("pub", version).connect()
    pub.publish("greenmine/v1/s1/a1/telemetry", b"q0", qos=0)
    pub.publish("greenmine/v1/s1/a1/telemetry", b"q1", qos=1)
    pub.publish("greenmine/v1/s1/a1/status", b"not matched", qos=1)
    pub.publish("greenmine/v1/s1/a1/telemetry", b"end", qos=1)
    assert sub.wait_payloads(3) == [b"q0", b"q1", b"end"]
    assert [m.qos for m in sub.messages] == [0, 1, 1]
    assert not any(m.retain for m in sub.messages)


@pytest.mark.parametrize("version", VERSIONS)
def test_qos2_is_granted_and_delivered_as_qos1(clients, version):
    sub = clients("sub", version).connect()
    assert sub.subscribe("q2/topic", 2) == [1]
    pub = clients("pub", version).connect()
    pub.publish("q2/topic", b"once", qos=2)
    assert sub.wait_payloads(1) == [b"once"]
    assert sub.messages[0].qos == 1


def test_wildcards_and_dollar_topics(clients):
    everything = clients("all").connect()
    everything.subscribe("#")
    plus = clients("plus").connect()
    plus.subscribe("+/b")
    sys_ = clients("sys").connect()
    sys_.subscribe("$SYS/#")
    pub = clients("pub").connect()
    for topic in ("a", "a/b", "x/b/c", "$SYS/load", "end"):
        pub.publish(topic, topic.encode())
    assert everything.wait_payloads(4) == [b"a", b"a/b", b"x/b/c", b"end"]
    assert sys_.wait_payloads(1) == [b"$SYS/load"]
    pub.publish("z/b", b"z/b")
    assert plus.wait_payloads(2) == [b"a/b", b"z/b"]


@pytest.mark.parametrize("version", VERSIONS)
def test_shared_subscription_splits_stream(clients, version):
    members = [clients(f"server-{i}", version).connect() for i in range(2)]
    for m in members:
        assert m.subscribe("$share/ingest/greenmine/v1/+/+/telemetry", 1) == [1]
    pub = clients("agent", version).connect()
    sent = [f"batch-{i}".encode() for i in range(20)]
    for p in sent:
        pub.publish("greenmine/v1/s1/a1/telemetry", p)
    wait_for(lambda: sum(len(m.payloads()) for m in members) >= len(sent), 5, what="all batches")
    got = [p for m in members for p in m.payloads()]
    assert sorted(got) == sorted(sent), "every message delivered exactly once across the group"
    assert [len(m.payloads()) for m in members] == [10, 10], "round-robin between online members"


def test_unsubscribe_stops_delivery(clients):
    sub = clients("sub").connect()
    sub.subscribe("a/#")
    sub.subscribe("marker")
    sub.c.unsubscribe("a/#")
    pub = clients("pub").connect()
    wait_for(lambda: (pub.publish("a/x", b"dropped"), pub.publish("marker", b"m")) and sub.payloads(), 5,
             what="marker after unsubscribe")
    assert b"dropped" not in sub.payloads()


# ------------------------------------------------------------ retained


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_set_delivered_and_cleared(clients, version):
    pub = clients("agent", version).connect()
    pub.publish("greenmine/v1/s1/a1/status", b"online", retain=True)
    first = clients("late-1", version).connect()
    first.subscribe("greenmine/v1/+/+/status")
    assert first.wait_payloads(1) == [b"online"]
    assert first.messages[0].retain
    pub.publish("greenmine/v1/s1/a1/status", b"live")
    assert first.wait_payloads(2)[1] == b"live"
    assert not first.messages[1].retain, "a live message to an existing subscriber is not marked retained"

    pub.publish("greenmine/v1/s1/a1/status", b"", retain=True)  # clears it
    second = clients("late-2", version).connect()
    second.subscribe("greenmine/v1/+/+/status")
    second.subscribe("marker")
    pub.publish("marker", b"m")
    # The retained message, had there been one, is sent right after SUBACK, before the marker.
    assert second.wait_payloads(1) == [b"m"]


# ------------------------------------------------------------ wills


@pytest.mark.parametrize("version", VERSIONS)
def test_will_on_abnormal_close_not_on_disconnect(clients, broker, version):
    watcher = clients("watcher", version).connect()
    watcher.subscribe("greenmine/v1/+/+/status")
    polite = clients("polite", version).will("greenmine/v1/s1/polite/status", b"offline").connect()
    polite.disconnect()
    crashed = clients("crashed", version).will("greenmine/v1/s1/crashed/status", b"offline", retain=True).connect()
    crashed.drop()
    assert watcher.wait_payloads(1) == [b"offline"]
    assert watcher.messages[0].topic == "greenmine/v1/s1/crashed/status"
    marker = clients("marker", version).connect()
    marker.publish("greenmine/v1/s1/marker/status", b"marker")
    assert watcher.wait_payloads(2) == [b"offline", b"marker"], "no will after a DISCONNECT"
    assert broker.stats()["wills_published"] == 1
    late = clients("late", version).connect()
    late.subscribe("greenmine/v1/s1/crashed/status")
    assert late.wait_payloads(1) == [b"offline"], "a retained will is retained"


def test_keepalive_drops_silent_client_and_publishes_will(clients, broker, caplog):
    watcher = clients("watcher").connect()
    watcher.subscribe("status/#")
    with raw_connect(broker.port, "silent", keepalive_s=1, will=("status/silent", b"gone")) as sock:
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        sock.settimeout(5)
        # Sends nothing more: the broker must close it after 1.5 s.
        assert read_until_closed(sock) == b""
    assert watcher.wait_payloads(1) == [b"gone"]
    assert broker.stats()["keepalive_timeouts"] == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_client_id_takeover(clients, version):
    watcher = clients("watcher", version).connect()
    watcher.subscribe("status/#")
    old = clients("agent-1", version).will("status/agent-1", b"offline").connect()
    new = clients("agent-1", version).connect()
    assert old.disconnected.wait(5), "the old connection is closed"
    assert watcher.wait_payloads(1) == [b"offline"], "the old connection's will is published"
    new.publish("status/agent-1", b"online")
    assert watcher.wait_payloads(2)[1] == b"online"
    assert not new.disconnected.is_set()
    old._looping = False
    old.c.loop_stop()


# ------------------------------------------------------------ persistent sessions


def _persistent(clients, client_id, version, **kw):
    return clients(client_id, version, clean=False, expiry_s=300 if version == V5 else 0, **kw)


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session_gets_messages_published_while_offline(clients, version):
    server = _persistent(clients, "server", version).connect()
    assert server.session_present is False
    server.subscribe("greenmine/v1/#", 1)
    server.disconnect()
    pub = clients("agent", version).connect()
    for i in range(5):
        pub.publish("greenmine/v1/s1/a1/telemetry", f"b{i}".encode())
    pub.publish("greenmine/v1/s1/a1/telemetry", b"qos0 is not queued", qos=0)
    back = _persistent(clients, "server", version).connect()
    assert back.session_present is True
    assert back.wait_payloads(5) == [f"b{i}".encode() for i in range(5)]
    pub.publish("greenmine/v1/s1/a1/telemetry", b"live")
    assert back.wait_payloads(6)[5] == b"live", "the subscription survived in the session"


def test_v5_session_expiry_zero_discards_session(clients):
    first = clients("server", V5, clean=False, expiry_s=0).connect()
    first.subscribe("t", 1)
    first.disconnect()
    again = clients("server", V5, clean=False, expiry_s=0).connect()
    assert again.session_present is False


def test_v5_session_expires_after_its_interval(clients, broker):
    first = clients("server", V5, clean=False, expiry_s=1).connect()
    first.subscribe("t", 1)
    first.disconnect()
    wait_for(lambda: broker.stats().get("sessions_expired") == 1, 5, what="the session to expire")
    again = clients("server", V5, clean=False, expiry_s=1).connect()
    assert again.session_present is False


def test_clean_session_discards_persistent_session(clients):
    first = _persistent(clients, "server", V311).connect()
    first.subscribe("t", 1)
    first.disconnect()
    clean = clients("server", V311, clean=True).connect()
    assert clean.session_present is False


@pytest.mark.parametrize("version", VERSIONS)
def test_unacked_qos1_redelivered_with_dup_on_reconnect(clients, version):
    server = _persistent(clients, "server", version, manual_ack=True).connect()
    server.subscribe("greenmine/v1/#", 1)
    pub = clients("agent", version).connect()
    pub.publish("greenmine/v1/s1/a1/telemetry", b"batch-1")
    assert server.wait_payloads(1) == [b"batch-1"]
    assert not server.messages[0].dup
    server.disconnect()  # without acking: the broker still owes this message
    back = _persistent(clients, "server", version).connect()
    assert back.wait_payloads(1) == [b"batch-1"]
    assert back.messages[0].dup, "a redelivery is marked DUP"
    # Acked this time (paho acks automatically): a further reconnect gets nothing old.
    pub.publish("greenmine/v1/s1/a1/telemetry", b"batch-2")
    assert back.wait_payloads(2)[1] == b"batch-2"
    back.disconnect()
    pub.publish("greenmine/v1/s1/a1/telemetry", b"batch-3")
    third = _persistent(clients, "server", version).connect()
    assert third.wait_payloads(1) == [b"batch-3"]


def test_offline_queue_is_bounded_and_drops_oldest(clients, broker):
    server = _persistent(clients, "server", V311).connect()
    server.subscribe("t", 1)
    server.disconnect()
    pub = clients("agent").connect()
    for i in range(60):  # the fixture's max_queued_messages is 50
        pub.publish("t", str(i).encode())
    back = _persistent(clients, "server", V311).connect()
    assert back.wait_payloads(50) == [str(i).encode() for i in range(10, 60)]
    assert broker.stats()["dropped_queued"] == 10


# ------------------------------------------------------------ hostile input


@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x10\xff\xff\xff\xff\x7f", id="remaining-length-5-bytes"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(_pkt(0x30, _s("a/b")), id="publish-before-connect"),
    pytest.param(_pkt(0x10, _s("MQTT") + b"\x04\x03\x00\x1e" + _s("x")), id="reserved-connect-flag"),
    pytest.param(_pkt(0x10, _s("MQTT") + b"\x04\x02\x00\x1e" + b"\x00\x02\xff\xfe"), id="bad-utf8-client-id"),
    pytest.param(_pkt(0x10, _s("MQTT") + b"\x04\x02\x00\x1e" + _s("x")) + _pkt(0x82, b"\x00\x01"),
                 id="subscribe-without-filters"),
    pytest.param(_pkt(0x10, _s("MQTT") + b"\x04\x02\x00\x1e" + _s("x")) + _pkt(0x36, _s("a/#") + b"\x00\x01"),
                 id="publish-qos3-wildcard"),
    pytest.param(_pkt(0x10, _s("MQTT") + b"\x04\x02\x00\x1e" + _s("x")) + b"\x30" + b"\xff\xff\x7f",
                 id="oversize-packet"),
])
def test_malformed_input_closes_only_that_client(clients, broker, caplog, garbage):
    caplog.set_level(logging.WARNING, logger="greenmine.simulators.broker")
    sub = clients("sub").connect()
    sub.subscribe("t")
    pub = clients("pub").connect()
    pub.publish("t", b"before")
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(garbage)
        read_until_closed(sock)  # the broker hangs up on it
    wait_for(lambda: broker.stats().get("bad_packets") == 1, 5, what="the bad packet counted")
    assert any("closing it" in r.getMessage() for r in caplog.records), "a log line names the problem"
    pub.publish("t", b"after")
    assert sub.wait_payloads(2) == [b"before", b"after"]
    assert not sub.disconnected.is_set() and not pub.disconnected.is_set()


@pytest.mark.parametrize("level", [3, 6])
def test_bad_protocol_version_refused(broker, level):
    with raw_connect(broker.port, "old", level=level) as sock:
        assert read_until_closed(sock) == b"\x20\x02\x00\x01", "CONNACK 'unacceptable protocol version'"


def test_thread_wrapper_stops_cleanly_with_clients_connected():
    with DemoBrokerThread() as b:
        c = Client(b.port, "lingering").connect()
        c.subscribe("t")
    assert c.disconnected.wait(5)
    c.c.loop_stop()


def test_v5_malformed_connect_gets_connack_reason(broker):
    body = _s("MQTT") + b"\x05\x02\x00\x1e" + b"\x02\x7f\x00" + _s("v5")  # unknown property 0x7f
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(_pkt(0x10, body))
        assert read_until_closed(sock) == b"\x20\x03\x00\x81\x00", "CONNACK 'malformed packet'"


def test_v5_protocol_error_gets_disconnect_reason(broker):
    with raw_connect(broker.port, "aliaser", level=5) as sock:
        assert sock.recv(2) == b"\x20\x08"  # CONNACK with properties
        sock.recv(8)
        # PUBLISH using a topic alias, which the broker never allowed.
        sock.sendall(_pkt(0x30, _s("a/b") + b"\x03\x23\x00\x01" + b"payload"))
        assert read_until_closed(sock) == b"\xe0\x02\x94\x00", "DISCONNECT 'topic alias invalid'"
    assert broker.stats()["bad_packets"] == 1


def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="failed to start"):
            DemoBrokerThread(port=taken.getsockname()[1]).start()
