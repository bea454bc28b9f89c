"""Ingest: validate each MQTT message, spool or dead-letter it, then acknowledge it.

paho's network thread only queues deliveries (`submit`); one ingest thread
takes up to `spool_commit_max_messages` at a time, validates each with the v1
schemas (telemetry payloads in a child process by default, see
`server.validation`), commits the accepted batches, the dead letters and the
agent states in one spool transaction (group commit: one fsync for many
messages), and only then acknowledges every message of the group. A crash before the commit
leaves the messages unacknowledged in the broker's session, to be redelivered.

Nothing a publisher sends can stop this thread: every failure of validation
becomes a dead letter with a reason, and an unexpected exception in
validation is caught and dead-lettered as `invalid` too.

The queue is bounded (receive maximum + slack). The broker never has more
than `receive_maximum` unacknowledged messages out to us, so it does not
fill; if it does (a broker ignoring the limit), paho's thread waits, which
pushes back on the TCP connection.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable

from greenmine.schemas import (
    TopicKind,
    WireError,
    WireLimits,
    WireRejectReason,
    parse_status,
    parse_topic,
)
from greenmine.schemas.status import AgentStatus
from greenmine.server.spool.agents import AgentInfo, AgentRegistry
from greenmine.server.config import ServerConfig, UnknownSitePolicy
from greenmine.server.spool.deadletter import dead_letter
from greenmine.server.errors import SpoolError
from greenmine.server.metrics import Metrics
from greenmine.server.ingest.mqtt import Delivery
from greenmine.server.spool.spool import DeadLetter, Spool, SpoolEntry
from greenmine.server.ingest.validation import Validator

log = logging.getLogger(__name__)


class Ingestor:
    def __init__(
        self,
        cfg: ServerConfig,
        spool: Spool,
        agents: AgentRegistry,
        metrics: Metrics,
        ack: Callable[[Delivery], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        ing = cfg.ingest
        self.limits = WireLimits(
            max_payload_bytes=ing.max_payload_bytes,
            max_readings=ing.max_readings_per_batch,
            max_future_skew_s=ing.max_future_skew_s,
        )
        self.sites = frozenset(s.id for s in cfg.sites)
        self.accept_unknown = ing.unknown_site is UnknownSitePolicy.ACCEPT
        self.keep_bytes = ing.dead_letter_payload_bytes
        self.max_group = ing.spool_commit_max_messages
        self.spool = spool
        self.agents = agents
        self.metrics = metrics
        self._ack = ack
        self._clock = clock
        self._q: queue.Queue[Delivery] = queue.Queue(maxsize=cfg.mqtt.receive_maximum + 1000)
        self._stopping = False
        self._abort = False
        self._warned: set[str] = set()
        self._pending: dict = {}  # agent states prepared in groups not yet committed
        self._topics: dict = {}  # topic string -> parsed Topic (valid ones only)
        self.validator = Validator(self.limits, in_child=ing.validator_process)
        self._thread = threading.Thread(target=self._run, name="greenmine-ingest")

    # --- paho thread -------------------------------------------------------

    def submit(self, delivery: Delivery) -> None:
        while not self._abort:
            try:
                self._q.put(delivery, timeout=0.5)
                return
            except queue.Full:
                continue  # backpressure: paho's thread waits, the TCP window closes

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Spool and acknowledge what is queued, then stop. Call after the subscriber stopped consuming."""
        self._stopping = True
        if self._thread.is_alive():
            self._thread.join()
        self.validator.close()

    def abort(self) -> None:
        """Stop now; queued messages stay unacknowledged (the broker redelivers them)."""
        self._abort = self._stopping = True
        self.spool.wake()
        if self._thread.is_alive():
            self._thread.join()
        self.validator.close()

    # --- validation --------------------------------------------------------

    def classify(self, d: Delivery, now_ms: int, pending: dict) -> tuple | AgentInfo | DeadLetter:
        """The topic (site, agent) of a telemetry message, to be validated with its group; an agent state for a
        status message; or a dead letter. Never raises."""
        try:
            topic = self._topics.get(d.topic)
            if topic is None:  # each agent publishes on two topics: parse each once
                topic = parse_topic(d.topic)
                if len(self._topics) >= 10_000:
                    self._topics.clear()
                self._topics[d.topic] = topic
            if topic.site not in self.sites and not self.accept_unknown:
                raise WireError(WireRejectReason.UNKNOWN_SITE, f"site {topic.site!r} is not configured (ingest.unknown_site = reject)")
            if topic.kind is TopicKind.TELEMETRY:
                return (topic.site, topic.agent, d.payload)
            status: AgentStatus = parse_status(d.payload, limits=self.limits)
            self._match(topic, status.site, status.agent)
            info = self.agents.prepare(status, now_ms, pending)
            pending[(info.site, info.agent)] = info
            return info
        except WireError as exc:
            return self._reject(d, exc.reason.value, exc.detail, now_ms)
        except Exception as exc:  # a bug in validation must cost one message, not the stream
            log.exception("ingest: unexpected error validating a message on %s", d.topic)
            return self._reject(d, WireRejectReason.INVALID.value, f"internal error: {exc!r}", now_ms)

    @staticmethod
    def _match(topic, site: str, agent: str) -> None:
        if (site, agent) != (topic.site, topic.agent):
            raise WireError(
                WireRejectReason.TOPIC_MISMATCH,
                f"topic is for {topic.site}/{topic.agent}, payload says {site}/{agent}",
            )

    def _reject(self, d: Delivery, reason: str, detail: str, now_ms: int) -> DeadLetter:
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("ingest: rejected a message on %s: %s: %s (further %s rejections are logged at debug)", d.topic, reason, detail, reason)
        else:
            log.debug("ingest: rejected %s: %s: %s", d.topic, reason, detail)
        return dead_letter(d.topic, d.payload, reason, detail, now_ms, self.keep_bytes)

    # --- the ingest thread -------------------------------------------------

    def _run(self) -> None:
        # Two groups in flight: while the validator judges one group, the previous one is
        # committed and acknowledged here, so neither this thread nor the validator waits for the other.
        inflight: collections.deque = collections.deque()
        while not self._abort:
            group = self._take(block=not inflight)
            if group:
                inflight.append(self._start(group))
            elif not inflight:
                if self._stopping:
                    return
                continue
            if inflight and (not group or len(inflight) >= 2):
                self._finish(*inflight.popleft())

    def _take(self, block: bool) -> list[Delivery]:
        try:
            group = [self._q.get(timeout=0.1) if block else self._q.get_nowait()]
        except queue.Empty:
            return []
        while len(group) < self.max_group:
            try:
                group.append(self._q.get_nowait())
            except queue.Empty:
                break
        return group

    def _start(self, group: list[Delivery]) -> tuple:
        """Classify a group and send its telemetry to the validator; `_finish` takes the result."""
        now_ms = int(self._clock() * 1000)
        outs = [self.classify(d, now_ms, self._pending) for d in group]
        telemetry = [i for i, out in enumerate(outs) if type(out) is tuple]
        wait = self.validator.validate_async(now_ms, [outs[i] for i in telemetry])
        return group, now_ms, outs, telemetry, wait

    def _finish(self, group: list[Delivery], now_ms: int, outs: list, telemetry: list[int], wait) -> None:
        for i, res in zip(telemetry, wait()):
            site, agent, _ = outs[i]
            if res[0] == "ok":
                _, seq, n, body, rows = res
                if rows is not None:
                    self.spool.remember_rows(body, rows)  # spares the writer's listeners unpickling it again
                outs[i] = SpoolEntry(now_ms, site, agent, seq, n, body)
            else:
                outs[i] = self._reject(group[i], res[1], res[2], now_ms)
        entries: list[SpoolEntry] = []
        dead: list[DeadLetter] = []
        infos: list[AgentInfo] = []
        for out in outs:
            if isinstance(out, SpoolEntry):
                entries.append(out)
            elif isinstance(out, AgentInfo):
                infos.append(out)
            else:
                dead.append(out)
        if entries and not self._wait_for_room():
            return  # aborted while full: nothing acknowledged, the broker keeps the messages
        if not self._commit(entries, dead, infos):
            return
        self.agents.applied(infos)
        for info in infos:  # applied: later groups read it from the registry
            key = (info.site, info.agent)
            if self._pending.get(key) is info:
                del self._pending[key]
        m = self.metrics
        if entries or infos:
            m.messages.labels("accepted").inc(len(entries) + len(infos))
        if entries:
            m.readings_in.inc(sum(e.n_readings for e in entries))
        if infos:
            m.status_messages.inc(len(infos))
        if dead:
            m.messages.labels("rejected").inc(len(dead))
            for dl in dead:
                m.rejected.labels(dl.reason).inc()
        for d in group:
            self._ack(d)

    def _wait_for_room(self) -> bool:
        if not self.spool.full():
            return True
        log.warning("ingest: spool full (%d bytes); not acknowledging until the store catches up", self.spool.max_bytes)
        while not self.spool.wait_for_room(0.5):
            if self._abort or self._stopping:
                return False  # shutting down while full: leave these unacknowledged, the broker redelivers them
        log.info("ingest: spool has room again; acknowledging")
        return True

    def _commit(self, entries, dead, infos) -> bool:
        delay = 0.1
        failing = False
        while True:
            try:
                self.spool.commit(entries, dead, infos)
                if failing:
                    log.info("ingest: spool writable again")
                return True
            except SpoolError as exc:
                if not failing:
                    log.error("ingest: %s; holding messages unacknowledged and retrying", exc)
                    failing = True
                if self._abort or self._stopping:
                    return False
                time.sleep(delay)  # a disk problem: back off (bounded), the broker keeps the messages meanwhile
                delay = min(delay * 2, 5.0)
