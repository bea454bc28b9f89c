"""The server's MQTT subscriber: the only module of the server's roles that imports paho
(`server/broker`, the provisioning tool, has its own admin client).

- paho-mqtt 2.x, callback API version 2, MQTT 5 by default with
  clean_start=false and a session expiry (or 3.1.1 with clean_session=false),
  so the broker keeps our subscriptions and queues QoS 1 messages while we
  are away.
- `manual_ack=True`: paho does not acknowledge a message on its own; the
  ingest thread calls `ack_all(group)` after the group is durably spooled or
  dead-lettered.
- Acks are queued for a whole group with one wake-up of paho's network
  thread. paho has no batch ack: each `Client.ack` writes a byte to the
  socket pair that wakes its loop, a system call that lets go of the GIL, and
  under load getting it back cost the ingest thread some 57 us per message
  (a fifth of its time). `ack_all` queues the group's PUBACKs with that
  wake-up held back (paho 2.x keeps the socket pair in `_sockpairW`, and
  reads it only when it queues a packet) and wakes the loop once. If the
  attribute is missing (another paho version), it acks one at a time.
- paho's socket is read in 64 KiB chunks (`BufferedSocket`). paho reads a
  packet with three or more `recv` calls (the command byte, each byte of the
  remaining length, the body): each a system call that lets go of the GIL,
  and under load each costs paho's thread a wait to get it back, while the
  ingest and writer threads wait on it in turn. Through the buffer, one call
  serves many packets; measured in bench/server.py's ingest run, some
  tenth more messages per second. The socket is swapped in from paho's
  `on_socket_open` callback (paho 2.x keeps it in `_sock`; if that ever
  changes, paho reads the socket directly, as before).
- Telemetry is subscribed as `$share/<group>/greenmine/v1/+/+/telemetry` when
  a shared group is set, so N processes split the stream. Status is
  subscribed without a group: retained messages are not delivered to shared
  subscriptions, and every process keeps the full agent table.
- A delivery remembers the connection it arrived on. Its packet id means
  nothing on a later connection, so acks for an earlier connection are
  dropped: the broker redelivers those messages and the idempotent store
  absorbs the duplicate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from greenmine.mqtttls import apply_tls
from greenmine.schemas import TopicKind, subscription
from greenmine.server.config import ServerMqttConfig
from greenmine.server.errors import BrokerError

log = logging.getLogger(__name__)


class Delivery(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


#: bytes asked of the socket per read (a loopback or LAN TCP read rarely returns more)
READ_CHUNK = 64 * 1024


class BufferedSocket:
    """A socket whose `recv` is served from the last chunk read (`READ_CHUNK` at a time).

    Everything else is the socket's own. `pending()` counts the bytes read but not yet taken, plus an SSL
    socket's own pending ones: paho asks it before waiting in select (as it does for TLS), so data already
    read here never waits for the socket to become readable again. Errors are the socket's: `BlockingIOError`
    or `ssl.SSLWantReadError` when nothing is buffered and nothing has arrived, `b""` at the end of the stream.
    """

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._sock.recv(max(bufsize, READ_CHUNK))
            if not buf:
                return buf
            self._buf, pos = buf, 0
        end = min(pos + bufsize, len(buf))
        self._pos = end
        return buf if pos == 0 and end == len(buf) else buf[pos:end]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str):
        return getattr(object.__getattribute__(self, "_sock"), name)


class MqttSubscriber:
    def __init__(
        self,
        cfg: ServerMqttConfig,
        on_delivery: Callable[[Delivery], None],
        on_connection: Callable[[bool], None] | None = None,
        *,
        client_id: str | None = None,
        subscriptions: list[str] | None = None,
        resolve: Callable[[str], object] = str,
    ) -> None:
        """`client_id` and `subscriptions` default to the ingest role's (cfg.client_id; telemetry, shared if
        cfg.shared_group is set, and status); the monitor and uplink roles pass their own
        (`server.ingest.consumer`). `resolve` makes the TLS files' paths relative to the config file."""
        self.cfg = cfg
        self.client_id = client_id or cfg.client_id
        self._on_delivery = on_delivery
        self._on_connection = on_connection
        self._generation = 0
        self._connected = False
        self._subscribed = False
        self._consuming = True
        self._ever_connected = False
        self._last_error: str | None = None
        self._lock = threading.Lock()
        v5 = cfg.protocol == "5"
        try:
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                clean_session=None if v5 else False,
                protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
                manual_ack=True,
            )
            if cfg.username is not None:
                self._client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
            tls = cfg.tls_settings()
            if tls is not None:
                apply_tls(self._client, tls, log, "mqtt.tls", resolve)
        except (ValueError, OSError) as exc:
            raise BrokerError(f"mqtt: cannot set up the client: {exc}") from exc
        self._client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(cfg.reconnect_max_s)))
        self._client.on_connect = self._connected_cb
        self._client.on_disconnect = self._disconnected_cb
        self._client.on_message = self._message_cb
        self._client.on_subscribe = self._subscribed_cb
        self._client.on_socket_open = self._socket_open_cb
        self.subscriptions = subscriptions or [
            subscription(TopicKind.TELEMETRY, shared_group=cfg.shared_group),
            subscription(TopicKind.STATUS),
        ]

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def subscribed(self) -> bool:
        """Connected and the broker has granted our subscriptions on this connection."""
        return self._connected and self._subscribed

    def start(self) -> None:
        """Connect in the background; paho reconnects on its own with backoff."""
        kwargs = {}
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            props.ReceiveMaximum = self.cfg.receive_maximum
            kwargs = {"clean_start": False, "properties": props}
        try:
            self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, **kwargs)
        except (ValueError, OSError) as exc:
            raise BrokerError(f"mqtt {self.cfg.host}:{self.cfg.port}: {exc}") from exc
        self._client.loop_start()

    @property
    def alive(self) -> bool:
        """paho's network thread is running (connected or reconnecting), for the systemd watchdog. paho has no
        public accessor for the thread `loop_start` made; `_thread` is it (paho 2.x, reset to None when it ends)."""
        thread = getattr(self._client, "_thread", None)
        return thread is not None and thread.is_alive()

    def ack_all(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge a group of QoS 1 messages, waking paho's network thread once. Returns how many were
        acknowledged (those of an earlier connection are not: they will be redelivered). Call from one thread."""
        with self._lock:
            generation, connected = self._generation, self._connected
        todo = [d for d in deliveries if d.qos and d.generation == generation] if connected else []
        if not todo:
            return 0
        client = self._client
        wake = getattr(client, "_sockpairW", None)
        if wake is None or len(todo) == 1:
            for d in todo:
                client.ack(d.mid, d.qos)
            return len(todo)
        client._sockpairW = None  # paho's _packet_queue skips the wake-up byte while this is None
        try:
            for d in todo:
                client.ack(d.mid, d.qos)
        finally:
            if client._sockpairW is None:
                client._sockpairW = wake
        try:
            wake.send(b"0")  # the one wake-up, as paho's own: the loop then writes every queued PUBACK
        except BlockingIOError:
            pass  # the pair's buffer is full of wake-ups already
        except OSError as exc:  # the loop is gone (closing): the broker redelivers what we could not ack
            log.debug("mqtt: cannot wake paho's loop after queueing acks: %s", exc)
        return len(todo)

    def stop_consuming(self) -> None:
        """Hand no further messages to ingest; they stay unacknowledged and the broker keeps them."""
        self._consuming = False

    def close(self) -> None:
        self._consuming = False
        self._client.disconnect()
        self._client.loop_stop()
        self._set_connected(False)

    # --- paho callbacks (paho's network thread) ----------------------------

    def _socket_open_cb(self, client, userdata, sock) -> None:
        # called by paho's reconnect() just after it stored the new socket in `_sock` (before it sends CONNECT)
        if getattr(client, "_sock", None) is sock and not isinstance(sock, BufferedSocket):
            client._sock = BufferedSocket(sock)

    def _set_connected(self, up: bool) -> None:
        if not up:
            self._subscribed = False
        if up != self._connected:
            self._connected = up
            if self._on_connection:
                self._on_connection(up)

    def _connected_cb(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            msg = f"broker {self.cfg.host}:{self.cfg.port} refused the connection: {reason_code}"
            if msg != self._last_error:
                log.error("mqtt: %s", msg)
                self._last_error = msg
            return
        with self._lock:
            self._generation += 1
            self._connected = True
            self._subscribed = False
        self._last_error = None
        log.info(
            "mqtt: connected to %s:%s as %s (session %s)",
            self.cfg.host, self.cfg.port, self.client_id, "resumed" if flags.session_present else "new",
        )
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        if self._on_connection:
            self._on_connection(True)

    def _subscribed_cb(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("mqtt: broker refused subscriptions %s: %s", self.subscriptions, ", ".join(failed))
            return
        self._subscribed = True

    def _disconnected_cb(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected
        self._set_connected(False)
        if was and self._consuming:
            log.warning("mqtt: lost connection to %s:%s (%s); reconnecting", self.cfg.host, self.cfg.port, reason_code)

    def _message_cb(self, client, userdata, msg) -> None:
        if not self._consuming:
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = repr(msg._topic)  # the broker should never pass this on; keep it for the dead letter
        self._on_delivery(Delivery(topic, msg.payload, msg.mid, msg.qos, self._generation))
