"""The energy role: its own consumer of the stream → the KPI engine's code → the energy platforms.

    role = EnergyRole(cfg, clock=clock)
    role.start() ... role.stop()

Like the monitor (docs/server.md "Roles"), it learns of new data from the broker on its
own persistent session (`cfg.energy_client_id`), for the sites of its enterprises, and
keeps the counter series its items read in its own replica (`server.store.replica`).
Over that replica it runs the same KPI engine code, with the same `[kpi]` configuration,
as the monitor (`values.ItemValues`): so the platform, the emails and `kpi show` agree,
whichever store ingest writes to, and the role can run on another host than the monitor.
A message is acknowledged only after its readings are in the replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from greenmine.schemas import AgentStatus, TelemetryBatch
from greenmine.server.ingest.consumer import StreamConsumer
from greenmine.server.ingest.validation import reading_rows
from greenmine.server.store.base import StoredReading
from greenmine.server.store.replica import SeriesReplica
from greenmine.server.uplink.energy.service import EnergyService

log = logging.getLogger(__name__)


def replica_metrics(cfg) -> frozenset[str]:
    from greenmine.server.monitor.kpi import water

    k = cfg.kpi
    return frozenset({*k.energy_metrics, k.ore_metric, water.FRESH, water.REUSED})


class EnergyRole:
    def __init__(self, cfg, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        e = cfg.energy
        self.replica = SeriesReplica(cfg.resolve(e.replica_path), metrics=replica_metrics(cfg),
                                     retention_days=e.replica_retention_days, owner="energy")
        try:
            self.service = EnergyService(cfg, self.replica, clock=clock)
        except BaseException:
            self.replica.close()
            raise
        self.sites = frozenset(ent.site for ent in e.enterprises)
        self.consumer = StreamConsumer(cfg.mqtt, cfg.wire_limits(), self, client_id=cfg.energy_client_id,
                                       sites=self.sites, accept=self.sites.__contains__, clock=clock, name="energy")
        self._next_prune = 0.0

    @property
    def connected(self) -> bool:
        return self.consumer.connected

    def on_messages(self, batches: list[TelemetryBatch], statuses: list[AgentStatus]) -> None:
        rows = [StoredReading._make(t) for b in batches for t in reading_rows(b)]
        with self.replica.transaction() as con:
            self.replica.add(rows, con)
        newest: dict[str, int] = {}
        for r in rows:
            if r.ts_ms > newest.get(r.site, -1):
                newest[r.site] = r.ts_ms
        for site, ts_ms in newest.items():
            self.service.seen(site, ts_ms / 1000.0)
        now_ms = int(self.clock() * 1000)
        if now_ms >= self._next_prune:
            self._next_prune = now_ms + 3_600_000
            self.replica.prune(now_ms)

    def on_connection(self, up: bool) -> None:
        pass

    def stalled(self) -> list[str]:
        """Its threads that are not running (for the systemd watchdog and /health)."""
        dead = [f"energy ({name})" for name in self.service.dead_threads()]
        return dead + self.consumer.stalled()

    def start(self) -> None:
        self.service.start()
        self.consumer.start()
        log.info("energy: reporting %d enterprise(s) to %s", len(self.sites), ", ".join(self.service.clients))

    def stop(self) -> None:
        self.consumer.stop()
        self.service.stop()
        self.replica.close()

    def close(self) -> None:
        """Release the files of a role that was never started."""
        self.service.close()
        self.replica.close()
