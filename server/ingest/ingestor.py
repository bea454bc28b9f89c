"""Ingest: validate each MQTT message, spool or dead-letter it, then acknowledge it.

paho's network thread only queues deliveries (`submit`); one ingest thread
takes up to `spool_commit_max_messages` at a time, validates each with the v1
schemas (`server.ingest.validation`), commits the accepted batches, the dead
letters and the agent states in one spool transaction (group commit: one
fsync for many messages), and only then acknowledges every message of the
group. A crash before the commit leaves the messages unacknowledged in the
broker's session, to be redelivered.

Nothing a publisher sends can stop this thread: every failure of validation
becomes a dead letter with a reason, and an unexpected exception in
validation is caught and dead-lettered as `invalid` too. A group whose commit
the spool refuses for its data (`SpoolRejected`: a value SQLite cannot hold,
or any other exception inside the transaction) is committed again one message
at a time; a message that fails again alone (its second failure) is
dead-lettered as `poison` and the rest are spooled. A failure of the file
itself (disk full, locked, I/O) holds the group unacknowledged and retries.

The thread is supervised (`greenmine.supervisor`, policy `fatal`): if it dies
anyway, the crash is logged and counted, `/health` fails and `server run`
exits non-zero, so that systemd restarts the process and the broker
redelivers what this one had received but not acknowledged.

The queue is bounded (receive maximum + slack). The broker never has more
than `receive_maximum` unacknowledged messages out to us, so it does not
fill; if it does (a broker ignoring the limit), paho's thread waits, which
pushes back on the TCP connection.

One thread per process: more throughput comes from more processes on a shared
subscription (docs/server.md), not from more threads or child processes here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone

from greenmine.backoff import Backoff
from greenmine.latch import Latch
from greenmine.schemas import (
    TopicKind,
    WireError,
    WireLimits,
    WireRejectReason,
    parse_status,
    parse_topic,
)
from greenmine.schemas.status import AgentStatus
from greenmine.server.config import IngestConfig, UnknownSitePolicy
from greenmine.server.errors import SpoolError, SpoolRejected
from greenmine.supervisor import Policy, Supervisor
from greenmine.server.ingest.mqtt import Delivery
from greenmine.server.ingest.validation import check_topic, validate_telemetry
from greenmine.server.metrics import Metrics
from greenmine.server.spool.agents import AgentInfo, AgentRegistry
from greenmine.server.spool.batches import SpoolEntry, pack_readings
from greenmine.server.spool.deadletter import POISON, DeadLetter
from greenmine.server.spool.spool import SpoolStage

log = logging.getLogger(__name__)


class Ingestor:
    """The ingest stage (`server.ingest.base.Ingest`)."""

    def __init__(
        self,
        cfg: IngestConfig,
        sites: Iterable[str],
        spool: SpoolStage,
        agents: AgentRegistry,
        metrics: Metrics,
        ack: Callable[[Sequence[Delivery]], object],
        *,
        queue_size: int,
        clock: Callable[[], float] = time.time,
        limits: WireLimits | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        """`sites`: the configured site ids; `queue_size`: the most deliveries held before paho's thread waits;
        `limits`: the wire bounds (default `cfg.wire_limits()`; the app passes the server config's, which know the
        store's retention); `supervisor`: the process's (default: one of its own)."""
        self.limits = limits or cfg.wire_limits()
        self._spool_latch = Latch(log)
        self.sites = frozenset(sites)
        self.accept_unknown = cfg.unknown_site is UnknownSitePolicy.ACCEPT
        self.max_group = cfg.spool_commit_max_messages
        self.spool = spool
        self.agents = agents
        self.metrics = metrics
        self._ack = ack
        self._clock = clock
        # SimpleQueue (C, no Python-level locking per message: a twentieth of queue.Queue's cost), bounded by
        # `submit` waiting on `_room` while it holds `queue_size` deliveries
        self._q: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._queue_size = queue_size
        self._room = threading.Condition()
        self._stopping = False
        self._abort = False
        self._warned: set[str] = set()
        self._topics: dict = {}  # topic string -> parsed Topic (valid ones only)
        self.supervisor = supervisor or Supervisor(log)
        self._thread = self.supervisor.thread("ingest", self._run, policy=Policy.FATAL)

    @property
    def spool_ok(self) -> bool:
        """False while spool commits are failing (the group is held unacknowledged meanwhile)."""
        return not self._spool_latch.failing

    # --- paho thread -------------------------------------------------------

    def submit(self, delivery: Delivery) -> None:
        if self._q.qsize() >= self._queue_size:  # backpressure: paho's thread waits, the TCP window closes
            with self._room:
                while self._q.qsize() >= self._queue_size:
                    if self._abort:
                        return  # stopping: the message stays unacknowledged, the broker redelivers it
                    self._room.wait(0.5)
        self._q.put(delivery)

    # --- lifecycle ---------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Its thread is running (for the systemd watchdog)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Spool and acknowledge what is queued, then stop. Call after the subscriber stopped consuming."""
        self._stopping = True
        if self._thread.is_alive():
            self._thread.join()

    def abort(self) -> None:
        """Stop now; queued messages stay unacknowledged (the broker redelivers them)."""
        self._abort = self._stopping = True
        self.spool.queue.wake()
        with self._room:
            self._room.notify_all()  # paho's thread, if it waits for room
        if self._thread.is_alive():
            self._thread.join()

    # --- validation --------------------------------------------------------

    def classify(self, d: Delivery, now_ms: int, now: datetime, pending: dict) -> SpoolEntry | AgentInfo | DeadLetter:
        """A batch to spool for a telemetry message; an agent state for a status message; or a dead letter.
        `now` is `now_ms` as a datetime (the group's: computed once for all its messages). Never raises."""
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
                seq, rows = validate_telemetry(topic.site, topic.agent, d.payload, self.limits, now)
                return SpoolEntry(now_ms, topic.site, topic.agent, seq, len(rows), pack_readings(rows))
            status: AgentStatus = parse_status(d.payload, limits=self.limits)
            check_topic(topic.site, topic.agent, status.site, status.agent)
            info = self.agents.prepare(status, now_ms, pending)
            pending[(info.site, info.agent)] = info
            return info
        except WireError as exc:
            return self._reject(d, exc.reason.value, exc.detail, now_ms)
        except Exception as exc:  # a bug in validation must cost one message, not the stream
            log.exception("ingest: unexpected error validating a message on %s", d.topic)
            return self._reject(d, WireRejectReason.INVALID.value, f"internal error: {exc!r}", now_ms)

    def _reject(self, d: Delivery, reason: str, detail: str, now_ms: int) -> DeadLetter:
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("ingest: rejected a message on %s: %s: %s (further %s rejections are logged at debug)", d.topic, reason, detail, reason)
        else:
            log.debug("ingest: rejected %s: %s: %s", d.topic, reason, detail)
        return self.spool.dead_letters.letter(d.topic, d.payload, reason, detail, now_ms)

    # --- the ingest thread -------------------------------------------------

    def _run(self) -> None:
        while not self._abort:
            group = self._take()
            if group:
                self._handle(group)
            elif self._stopping:
                return

    def _take(self) -> list[Delivery]:
        try:
            group = [self._q.get(timeout=0.1)]
        except queue.Empty:
            return []
        while len(group) < self.max_group:
            try:
                group.append(self._q.get_nowait())
            except queue.Empty:
                break
        with self._room:  # once per group: paho's thread may be waiting for room
            self._room.notify_all()
        return group

    def _handle(self, group: list[Delivery]) -> None:
        now_ms = int(self._clock() * 1000)
        now = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
        pending: dict = {}  # agent states prepared earlier in this group
        outs = [self.classify(d, now_ms, now, pending) for d in group]
        if any(isinstance(out, SpoolEntry) for out in outs) and not self._wait_for_room():
            return  # aborted while full: nothing acknowledged, the broker keeps the messages
        try:
            if not self._commit(outs):
                return
        except SpoolRejected as exc:
            outs = self._isolate(group, outs, exc, now_ms)
            if outs is None:
                return
        entries = [o for o in outs if isinstance(o, SpoolEntry)]
        infos = [o for o in outs if isinstance(o, AgentInfo)]
        dead = [o for o in outs if isinstance(o, DeadLetter)]
        self.agents.applied(infos)
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
        self._ack(group)

    def _wait_for_room(self) -> bool:
        q = self.spool.queue
        if not q.full():
            return True
        log.warning("ingest: spool full (%d bytes); not acknowledging until the store catches up", q.max_bytes)
        while not q.wait_for_room(0.5):
            if self._abort or self._stopping:
                return False  # shutting down while full: leave these unacknowledged, the broker redelivers them
        log.info("ingest: spool has room again; acknowledging")
        return True

    def _commit(self, outs: list) -> bool:
        """Commit one group in one transaction. False: stopped while the spool was failing (nothing committed).
        Raises SpoolRejected when the data itself cannot be stored (retrying the same group cannot help)."""
        entries = [o for o in outs if isinstance(o, SpoolEntry)]
        infos = [o for o in outs if isinstance(o, AgentInfo)]
        dead = [o for o in outs if isinstance(o, DeadLetter)]
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                self.spool.commit(entries, dead, infos)
                self._spool_latch.ok("ingest: spool writable again")
                return True
            except SpoolRejected:
                raise
            except SpoolError as exc:
                self._spool_latch.fail("ingest: %s; holding messages unacknowledged and retrying", exc)
                if self._abort or self._stopping:
                    return False
                time.sleep(backoff.next())  # a disk problem: the broker keeps the messages meanwhile

    def _isolate(self, group: list[Delivery], outs: list, exc: SpoolRejected, now_ms: int) -> list | None:
        """The group's commit was refused for its data: commit each message alone, and dead-letter as `poison`
        a message whose commit fails again. Returns what was committed, in order (None: stopped)."""
        log.warning("ingest: the spool refused a group of %d messages (%s); committing them one at a time", len(group), exc)
        done = []
        for d, out in zip(group, outs):
            try:
                if not self._commit([out]):
                    return None
            except SpoolRejected as again:
                log.error("ingest: a message on %s cannot be stored (%s); dead-lettered as %s", d.topic, again, POISON)
                # the topic is made printable ASCII: it is the one field of the letter that came from the wire
                topic = d.topic.encode("ascii", "backslashreplace").decode("ascii")
                out = self.spool.dead_letters.letter(topic, d.payload, POISON, str(again), now_ms)
                try:
                    if not self._commit([out]):
                        return None
                except SpoolRejected as last:  # pragma: no cover - a dead letter is bytes and ASCII text
                    log.error("ingest: cannot even dead-letter a message on %r (%s); dropped", topic, last)
                    self.metrics.rejected.labels(POISON).inc()
                    continue
            done.append(out)
        return done
