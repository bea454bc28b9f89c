"""The uplink role: its own consumer of the stream → the HJ 212 points (and, later, the energy platform).

    role = UplinkRole(cfg)
    role.start() ... role.stop()

Like the monitor, it learns of new data from the broker on its own persistent
session (`cfg.uplink_client_id`), for the sites its points report, and keeps
the series those points send in its own replica (`server.store.replica`):
real-time values come from the stream, minute, hourly and daily data and the
platforms' history requests from the replica. So HJ 212 reporting is the same
whichever store ingest writes to. Agent and device states come from the
retained status messages, in memory (every birth is redelivered on subscribe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from greenmine.schemas import AgentStatus, TelemetryBatch
from greenmine.server.ingest.consumer import StreamConsumer
from greenmine.server.spool.agents import AgentRegistry
from greenmine.server.ingest.validation import reading_rows
from greenmine.server.store.base import StoredReading
from greenmine.server.store.replica import SeriesReplica
from greenmine.server.uplink.hj212.service import Hj212Service

log = logging.getLogger(__name__)


class UplinkRole:
    def __init__(self, cfg, *, clock: Callable[[], float] = time.time, client_options: Mapping | None = None,
                 on_moved=None) -> None:
        self.clock = clock
        self.agents = AgentRegistry()
        metrics = {m.metric for p in cfg.hj212 for m in p.metrics}
        self.replica = SeriesReplica(cfg.resolve(cfg.uplink.replica_path), metrics=metrics,
                                     retention_days=cfg.uplink.replica_retention_days, on_moved=on_moved,
                                     owner="uplink")
        self.hj212 = Hj212Service(cfg, self.agents, self.replica, client_options=client_options, on_moved=on_moved)
        self.sites = frozenset(p.site for p in cfg.hj212)
        self.consumer = StreamConsumer(cfg.mqtt, cfg.wire_limits(), self, client_id=cfg.uplink_client_id, sites=self.sites,
                                       accept=self.sites.__contains__, clock=clock, name="uplink", resolve=cfg.resolve)
        self._next_prune = 0.0

    @property
    def connected(self) -> bool:
        return self.consumer.connected

    def on_messages(self, batches: list[TelemetryBatch], statuses: list[AgentStatus]) -> None:
        rows = [StoredReading._make(t) for b in batches for t in reading_rows(b)]
        with self.replica.transaction() as con:
            self.replica.add(rows, con)
        self.hj212.on_stored(rows)
        now_ms = int(self.clock() * 1000)
        if statuses:
            pending: dict = {}
            infos = []
            for st in statuses:
                info = self.agents.prepare(st, now_ms, pending)
                pending[(info.site, info.agent)] = info
                infos.append(info)
            self.agents.applied(infos)
        if now_ms >= self._next_prune:
            self._next_prune = now_ms + 3_600_000
            self.replica.prune(now_ms)

    def on_connection(self, up: bool) -> None:
        pass  # real-time frames flag stale values themselves (realtime_stale_s)

    def stalled(self) -> list[str]:
        """Its threads that are not running (for the systemd watchdog)."""
        return ([] if self.hj212.alive else ["uplink (HJ 212 loop thread)"]) + self.consumer.stalled()

    def start(self) -> None:
        self.hj212.start()
        self.consumer.start()

    def stop(self) -> None:
        self.consumer.stop()
        self.hj212.stop()
        self.replica.close()
