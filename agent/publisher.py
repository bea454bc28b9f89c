"""MQTT publishing: the only agent module that imports paho-mqtt.

paho-mqtt 2.x with CallbackAPIVersion.VERSION2, MQTT 3.1.1, QoS 1, a persistent session
(clean_session=False under a stable client id), optional TLS (CA, client certificate and key)
and user name/password. The will is the `offline` status, retained. paho runs its network
loop on its own thread and reconnects with exponential back-off (reconnect_min_s ..
reconnect_max_s); every callback is handed to the asyncio loop with call_soon_threadsafe, so
the rest of the agent is single-threaded.

Messages paho has sent but not seen a PUBACK for stay in paho's memory and are re-sent by
paho itself after a reconnect (with DUP set); the forwarder therefore never republishes a
batch it still has in flight. After a restart, the outbox re-sends everything not acked.

Errors: bad TLS files or options -> PublishError at start. Publishing while disconnected is
not an error: `publish` returns None and the batch stays in the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from greenmine.agent.config import MqttConfig
from greenmine.agent.errors import PublishError
from greenmine.latch import Latch
from greenmine.mqtttls import apply_tls

log = logging.getLogger(__name__)


class MqttPublisher:
    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        will_topic: str,
        will_payload: bytes,
        loop: asyncio.AbstractEventLoop,
        on_connect: Callable[[bool], None],
        on_disconnect: Callable[[str], None],
        on_puback: Callable[[int], None],
        resolve_path: Callable[[str], str] = str,
    ) -> None:
        self.cfg = cfg
        self._loop = loop
        self._on_connect, self._on_disconnect, self._on_puback = on_connect, on_disconnect, on_puback
        self.connected = False
        self._ever_connected = False
        self._link = Latch(log)  # paho's thread is the only caller
        self._stopping = False
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if cfg.username is not None:
            c.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        if cfg.tls is not None:
            try:
                apply_tls(c, cfg.tls, log, "mqtt.tls", resolve_path)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise PublishError(f"MQTT TLS set-up failed: {exc}") from exc
        c.will_set(will_topic, will_payload, qos=1, retain=True)
        c.reconnect_delay_set(max(1, round(cfg.reconnect_min_s)), max(1, round(cfg.reconnect_max_s)))
        c.max_inflight_messages_set(cfg.max_inflight)
        c.on_connect = self._cb_connect
        c.on_disconnect = self._cb_disconnect
        c.on_publish = self._cb_publish
        c.on_connect_fail = self._cb_connect_fail
        self._client = c

    # -- paho thread -> event loop ------------------------------------------------------------
    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop already closed during shutdown: nothing left to tell
            pass

    def _cb_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._link.fail("broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason_code)
            return
        self.connected = True
        msg, args = "connected to broker %s:%d (session present: %s)", (self.cfg.host, self.cfg.port, flags.session_present)
        if not self._link.ok(msg, *args) and not self._ever_connected:
            log.info(msg, *args)
        self._ever_connected = True
        self._post(self._on_connect, bool(flags.session_present))

    def _cb_connect_fail(self, client, userdata) -> None:
        # The broker is down or unreachable (refused, DNS, timeout); paho retries with back-off.
        self._link.fail("cannot reach broker %s:%d; retrying every %g..%g s, batches wait in the outbox",
                        self.cfg.host, self.cfg.port, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)

    def _cb_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        if was and not self._stopping:
            self._link.fail("lost the broker connection (%s); batches wait in the outbox", reason_code,
                            level=logging.WARNING)
        self._post(self._on_disconnect, str(reason_code))

    def _cb_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._post(self._on_puback, mid)

    # -- event loop side ------------------------------------------------------------------------
    def start(self) -> None:
        try:
            # connect_async: an unreachable broker at start-up is an outage, not a fatal error.
            self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            raise PublishError(f"MQTT connect to {self.cfg.host}:{self.cfg.port}: {exc}") from exc
        self._client.loop_start()

    @property
    def alive(self) -> bool:
        """paho's network thread is running (connected or reconnecting), for the systemd watchdog. paho has no
        public accessor for the thread `loop_start` made; `_thread` is it (paho 2.x, reset to None when it ends)."""
        thread = getattr(self._client, "_thread", None)
        return not self._stopping and thread is not None and thread.is_alive()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Queue a QoS 1 publish. Returns its mid (PUBACK arrives via on_puback), or None if offline."""
        if not self.connected:
            return None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            return None
        # MQTT_ERR_NO_CONN: the link dropped just now; paho keeps the message and sends it after
        # the reconnect, so it is in flight all the same.
        return info.mid

    def stop(self, last_topic: str | None = None, last_payload: bytes | None = None, timeout_s: float = 2.0) -> None:
        """Publish a last (retained) message if connected, then disconnect cleanly and stop paho's thread."""
        if last_topic is not None and self.connected:
            info = self._client.publish(last_topic, last_payload, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError):
                pass  # could not be sent in time; the retained online status stays until the will fires
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
