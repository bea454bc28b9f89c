"""A role's own consumer of the stream: how the monitor and uplink roles learn of new data.

Roles are processes and talk through the broker, never through in-process
callbacks (docs/server.md). The ingest role owns the spool and the store; the
monitor and the uplink each hold their own persistent MQTT session (their own
`client_id`, not in ingest's shared group, so each sees every message of the
sites it serves) and receive exactly what the agents published:

    consumer = StreamConsumer(mqtt_cfg, limits, handler, client_id=..., sites=...)
    consumer.start() ... consumer.stop()

- Subscriptions: telemetry and status of the configured sites (one filter per
  site when the role serves a list of sites, the `+` wildcard otherwise);
  `accept(site)` filters further (hash partitions).
- Group commit and manual acks: up to `max_group` messages (what arrives
  within `linger_s`, 50 ms, of the first) are validated with
  the v1 wire contract, handed to `handler.on_messages(batches, statuses)`,
  which commits them durably (the role's own SQLite files) and returns; only
  then is every message of the group acknowledged. A crash before that leaves
  them in the session, to be redelivered, so handlers must be idempotent on a
  reading's identity (site, device, metric, ts) — the replica is
  (`server.store.replica`).
- Invalid messages are acknowledged and counted, not dead-lettered: dead
  letters are ingest's job, and ingest sees the same message.
- A handler that raises is retried with back-off, holding the group
  unacknowledged, so a full disk never loses a message.
- The thread is supervised (`greenmine.supervisor`, policy `fatal`, on
  `self.supervisor`): if it dies anyway, the crash is logged and counted, and
  the process reports itself failed and exits non-zero (a new session gets the
  unacknowledged group back; a restarted thread would not).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Protocol

from greenmine.backoff import Backoff
from greenmine.latch import Latch
from greenmine.schemas import (
    AgentStatus,
    TelemetryBatch,
    TopicKind,
    WireError,
    WireLimits,
    WireRejectReason,
    parse_status,
    parse_telemetry,
    parse_topic,
    subscription,
)
from greenmine.server.config import ServerMqttConfig
from greenmine.server.ingest.mqtt import Delivery, MqttSubscriber
from greenmine.supervisor import Policy, Supervisor

log = logging.getLogger(__name__)


class StreamHandler(Protocol):
    def on_messages(self, batches: list[TelemetryBatch], statuses: list[AgentStatus]) -> None:
        """Commit a group durably (idempotently); raise to have it retried. Called on the consumer's thread."""

    def on_connection(self, up: bool) -> None:
        """The role's broker link went up or down (while it is down, silence is ours, not the devices')."""


def subscriptions_for(sites: Iterable[str] | None) -> list[str]:
    """Telemetry and status filters: per site, or every site."""
    names = sorted(set(sites)) if sites is not None else ["+"]
    return [subscription(kind, site=s) for s in names for kind in (TopicKind.TELEMETRY, TopicKind.STATUS)]


class StreamConsumer:
    def __init__(
        self,
        mqtt: ServerMqttConfig,
        limits: WireLimits,
        handler: StreamHandler,
        *,
        client_id: str,
        sites: Iterable[str] | None = None,
        accept: Callable[[str], bool] = lambda site: True,
        max_group: int = 500,
        linger_s: float = 0.05,
        clock: Callable[[], float] = time.time,
        name: str = "consumer",
        resolve: Callable[[str], object] = str,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self.handler = handler
        self.accept = accept
        self.max_group = max_group
        self.linger_s = linger_s
        self._clock = clock
        self.ignored: Counter[str] = Counter()  # invalid or foreign messages, by reason
        self.messages = 0
        self._q: queue.Queue[Delivery] = queue.Queue(maxsize=mqtt.receive_maximum + 1000)
        self._stop = threading.Event()
        self._thread = None
        self.supervisor = supervisor or Supervisor(log)
        self._latch = Latch(log)
        self.mqtt = MqttSubscriber(mqtt, self._submit, handler.on_connection, client_id=client_id,
                                   subscriptions=subscriptions_for(sites), resolve=resolve)

    @property
    def waiting(self) -> int:
        """Messages received and not yet taken into a group: a backlog when it stays large."""
        return self._q.qsize()

    @property
    def connected(self) -> bool:
        return self.mqtt.connected

    def _submit(self, d: Delivery) -> None:  # paho's thread
        while not self._stop.is_set():
            try:
                self._q.put(d, timeout=0.5)
                return
            except queue.Full:
                continue  # backpressure onto the TCP connection

    def stalled(self) -> list[str]:
        """Its threads that are not running (for the systemd watchdog)."""
        out = [] if self._thread is not None and self._thread.is_alive() else [f"{self.name} (consumer thread)"]
        return out + ([] if self.mqtt.alive else [f"{self.name} (MQTT network thread)"])

    def start(self) -> None:
        self._thread = self.supervisor.thread(f"{self.name}-consumer", self._run, policy=Policy.FATAL, daemon=True)
        self._thread.start()
        self.mqtt.start()

    def stop(self) -> None:
        """Stop consuming; what is queued but not committed stays unacknowledged in the broker's session."""
        self.mqtt.stop_consuming()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        self.mqtt.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                group = [self._q.get(timeout=0.2)]
            except queue.Empty:
                continue
            # group commit with a linger: one commit (a few fsyncs) for what arrives within `linger_s`, instead of
            # one per message when the stream trickles in at the pace the role keeps up with
            until = time.monotonic() + self.linger_s
            while len(group) < self.max_group:
                try:
                    group.append(self._q.get_nowait())
                except queue.Empty:
                    wait = until - time.monotonic()
                    if wait <= 0:
                        break
                    try:
                        group.append(self._q.get(timeout=wait))
                    except queue.Empty:
                        break
            batches, statuses = self._validate(group)
            if not self._commit(batches, statuses):
                return  # stopping: the group stays unacknowledged
            self.mqtt.ack_all(group)
            self.messages += len(group)

    def _validate(self, group: list[Delivery]) -> tuple[list[TelemetryBatch], list[AgentStatus]]:
        now = datetime.fromtimestamp(self._clock(), timezone.utc)
        batches: list[TelemetryBatch] = []
        statuses: list[AgentStatus] = []
        for d in group:
            try:
                topic = parse_topic(d.topic)
                if not self.accept(topic.site):
                    self.ignored["other_partition"] += 1
                    continue
                if topic.kind is TopicKind.TELEMETRY:
                    msg = parse_telemetry(d.payload, limits=self.limits, now=now)
                    out = batches
                else:
                    if not d.payload:
                        continue  # a cleared retained status
                    msg = parse_status(d.payload, limits=self.limits)
                    out = statuses
                if (msg.site, msg.agent) != (topic.site, topic.agent):
                    raise WireError(WireRejectReason.TOPIC_MISMATCH, f"payload says {msg.site}/{msg.agent}")
                out.append(msg)
            except WireError as exc:
                self.ignored[exc.reason.value] += 1
                log.debug("%s: ignored a message on %s: %s", self.name, d.topic, exc)
            except Exception as exc:  # a bug in validation must cost one message, not the role
                self.ignored["invalid"] += 1
                log.warning("%s: cannot read a message on %s: %r", self.name, d.topic, exc)
        return batches, statuses

    def _commit(self, batches: list[TelemetryBatch], statuses: list[AgentStatus]) -> bool:
        if not batches and not statuses:
            return True
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                self.handler.on_messages(batches, statuses)
                self._latch.ok("%s: committing received data again", self.name)
                return True
            except Exception as exc:  # noqa: BLE001 - a disk or database fault: hold the group unacknowledged, retry
                self._latch.fail("%s: cannot commit received data (%s); holding it unacknowledged and retrying",
                                 self.name, exc, exc_info=True)
                if self._stop.wait(backoff.next()):
                    return False
