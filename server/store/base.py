"""The sink interface every store implements, and the reading row it takes.

A sink is the last stage of the pipeline. `Sink` declares
everything the writer (`server.store.writer`) calls: `write`, `ping`,
`maintain` every `maintenance_interval_s`, `close`. A store that holds
acknowledged writes in memory (InfluxDB, VictoriaMetrics) also implements
`RestartAware`, so that the writer can tell when it restarted and lost them.
It is driven by one writer thread; writes must be idempotent on a reading's
identity (site, device, metric, ts), because the spool delivers at least once.

A sink is handed rows: plain tuples in `StoredReading`'s field order, as the
spool unpickles them (building a NamedTuple per reading would cost the writer
a tenth of its time). A sink indexes them; `StoredReading` (a NamedTuple of the
same shape) is also accepted, and `StoredReading._make(row)` names the fields
where speed does not matter (an error message).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import NamedTuple, Protocol, runtime_checkable

#: Integer codes for `Quality`, used where a store holds numbers only (InfluxDB fields, VictoriaMetrics).
QUALITY_CODES = {"good": 0, "bad": 1, "stale": 2, "out_of_range": 3}


class StoredReading(NamedTuple):
    """One reading as the spool hands it to a sink. Identity: (site, device, metric, ts_ms)."""

    site: str
    agent: str
    device: str
    metric: str
    ts_ms: int
    value: float
    unit: str
    quality: str

    @property
    def ts(self) -> datetime:
        return datetime.fromtimestamp(self.ts_ms / 1000, timezone.utc)


#: A reading as the writer hands it to sinks and listeners: a tuple in StoredReading's field order (site, agent,
#: device, metric, ts_ms, value, unit, quality); a StoredReading is one too.
Row = tuple


@runtime_checkable
class Sink(Protocol):
    #: the `sink` label of greenmine_readings_written_total
    name: str
    #: how often the writer calls `maintain`; None: never
    maintenance_interval_s: float | None

    def write(self, readings: Sequence[Row]) -> None:
        """Store every reading (rows in StoredReading's field order), or raise StoreUnavailable / StoreRejected.
        Idempotent."""

    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot take writes now."""

    def maintain(self) -> int:
        """Housekeeping that must not run per write (SQLite: raw retention); returns rows removed. Raises
        StoreUnavailable."""

    def close(self) -> None:
        """Release connections. Idempotent."""


class StoreStart(NamedTuple):
    """When the store's process started (epoch seconds, by the store's own clock), and how long it has been up
    by that clock (None: the store does not say)."""

    at: float
    age_s: float | None


@runtime_checkable
class RestartAware(Protocol):
    """A sink whose store may acknowledge writes it still holds in memory (`server.store.writer`'s durability
    window)."""

    def started_at(self) -> StoreStart | None:
        """The store process's start, which changes when it restarts; None if it does not report one. Raises
        StoreUnavailable if it cannot be asked now."""
