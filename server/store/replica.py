"""A role's own durable copy of the series it reads, built from the stream.

The monitor (KPIs, alert rules) and the HJ 212 uplink read history: a day of
counter reads for the reuse rate, an hour of dust samples, a night of noise.
The time-series store cannot always be read back (InfluxDB 2/3 has no server
here to test a reader against, and a province's store is a cluster another
team runs), so each of these roles keeps the few series it needs in its own
SQLite file, fed by its own consumer of the broker (`server.ingest.consumer`):

- `series_replica(site, device, metric, ts_ms, value, unit, quality, agent)`,
  primary key (site, device, metric, ts_ms), WITHOUT ROWID: a redelivered or
  re-sent reading is ignored (`INSERT ... ON CONFLICT DO NOTHING RETURNING`
  tells which rows were new), so nothing counts twice; a late reading is just
  a row in its place, and the periods it touches are recomputed;
- `replica_series(site, device, metric)`: the series held, so `series(site)`
  reads a few rows instead of scanning every reading;
- only the metrics the role reads are kept (`metrics`), and only for
  `retention_days` (`prune`);
- the read API is the SQLite store's (`query_series`, `latest`, `series`,
  `rollups`), so the KPI engine and the HJ 212 history run unchanged on
  whichever store ingest writes to.

The file is the role's: one writer (the consumer's thread), readers on any
thread (one connection each, WAL). A writer opens it with `owner` set (the
monitor, uplink and energy roles, `kpi recompute`) and holds an flock on
`<replica>.lock` until `close()`: a second owner is refused with a
`StateInUse` naming the process that holds it, so two monitors never write
one replica and `kpi recompute` never rebuilds rollups under a running
monitor. Readers (the console, `energy preview`) pass no owner.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from greenmine import sqlite as sqlite_state
from greenmine.filelock import FileLock
from greenmine.server.errors import StateInUse, StoreUnavailable
from greenmine.server.store.base import StoredReading
from greenmine.server.store.sqlite import Point, Rollup, to_ms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series_replica (
    site TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    value REAL NOT NULL, unit TEXT NOT NULL, quality TEXT NOT NULL, agent TEXT NOT NULL,
    PRIMARY KEY (site, device, metric, ts_ms)
) WITHOUT ROWID;
-- the series the replica holds, so listing a site's series reads a few rows, not every reading
CREATE TABLE IF NOT EXISTS replica_series (
    site TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL,
    PRIMARY KEY (site, device, metric)
) WITHOUT ROWID;
"""


#: readings per INSERT statement: 8 parameters each, under SQLite's default limit of 32,766
_ROWS_PER_INSERT = 4000


@functools.lru_cache(maxsize=64)
def _insert_sql(n: int) -> str:
    # `WHERE true` keeps SQLite's parser from reading ON CONFLICT as part of the SELECT's join
    return ("INSERT INTO series_replica (site, device, metric, ts_ms, value, unit, quality, agent) "
            "SELECT * FROM (VALUES " + ",".join(["(?,?,?,?,?,?,?,?)"] * n) + ") WHERE true "
            "ON CONFLICT DO NOTHING RETURNING site, device, metric, ts_ms")


class SeriesReplica:
    def __init__(self, path: str | Path, *, metrics: Iterable[str] | None = None, retention_days: float = 62.0,
                 on_moved: Callable[[sqlite_state.MovedAside], None] | None = None, owner: str | None = None) -> None:
        """`owner`: what writes it ("monitor", "kpi recompute"): the file is this process's until `close()`, and
        StateInUse is raised if another process has it. None: a reader."""
        self.path = Path(path)
        self._lock = FileLock(f"{self.path}.lock")
        if owner is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._lock.acquire(owner):
                raise StateInUse(f"replica {self.path}", self._lock.holder(),
                                 "each process that writes a replica needs its own (the role's replica_path, or "
                                 "`server run --instance NAME`)")
        try:
            self._setup(metrics, retention_days, on_moved)
        except BaseException:
            self._lock.release()
            raise

    def _setup(self, metrics, retention_days: float, on_moved) -> None:
        self.metrics = frozenset(metrics) if metrics is not None else None
        self.retention_ms = int(retention_days * 86_400_000)
        # Checked once at open: a damaged or empty replica is moved aside and refilled from the stream.
        try:
            first, self.moved_aside = sqlite_state.open_or_move_aside(
                self.path, "replica", log=logging.getLogger(__name__), on_moved=on_moved,
                prepare=lambda con: con.executescript(_SCHEMA), synchronous="full")
        except sqlite_state.StateError as exc:
            raise StoreUnavailable(f"replica {self.path}: {exc}") from exc
        first.close()
        self._cons = sqlite_state.PerThread(self._open)
        #: series known to be in replica_series (so a group lists only new ones)
        self._listed: set[tuple[str, str, str]] = set()
        con = self._con()
        if con.execute("SELECT 1 FROM replica_series LIMIT 1").fetchone() is None:  # a file from before the table
            with sqlite_state.transaction(con, f"replica {self.path}"):
                con.execute("INSERT OR IGNORE INTO replica_series SELECT DISTINCT site, device, metric FROM series_replica")

    def _open(self) -> sqlite3.Connection:
        try:
            return sqlite_state.connect(self.path, synchronous="full")
        except sqlite_state.StateError as exc:
            raise StoreUnavailable(f"replica {self.path}: {exc}") from exc

    def _con(self) -> sqlite3.Connection:
        return self._cons.get()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the replica's file, for state kept beside the readings that must commit
        with them (the monitor's rollups, `server.monitor.kpi.rollups`)."""
        return self._cons.get()

    def wants(self, metric: str) -> bool:
        return self.metrics is None or metric in self.metrics

    # --- write side (one thread) -------------------------------------------

    def add(self, readings: Iterable[StoredReading | tuple], con: sqlite3.Connection | None = None) -> list:
        """Insert the readings of kept metrics (StoredReading or plain tuples in its field order); return the
        ones that were new, as they were given. Runs in the caller's transaction if `con` is this thread's connection
        inside one (see `transaction`).

        One multi-row `INSERT ... ON CONFLICT DO NOTHING RETURNING` per `_ROWS_PER_INSERT` readings: the
        returned keys are the new rows (a reading repeated within one call counts once)."""
        wants = self.wants
        rows = [r for r in readings if wants(r[3])]
        if not rows:
            return []
        c = con or self._con()
        new: list = []
        for i in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[i:i + _ROWS_PER_INSERT]
            args = [x for r in chunk for x in (r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[1])]
            returned = c.execute(_insert_sql(len(chunk)), args).fetchall()
            if len(returned) == len(chunk):  # all new (the usual case): no need to tell which
                fresh = chunk
            else:
                keys = {tuple(k) for k in returned}
                fresh = []
                for r in chunk:
                    key = (r[0], r[2], r[3], r[4])
                    if key in keys:
                        keys.discard(key)
                        fresh.append(r)
            unlisted = {(r[0], r[2], r[3]) for r in fresh} - self._listed
            if unlisted:
                c.executemany("INSERT OR IGNORE INTO replica_series VALUES (?, ?, ?)", unlisted)
                self._listed |= unlisted  # forgotten if the transaction fails (see transaction)
            new += fresh
        return new

    @contextlib.contextmanager
    def transaction(self):
        """`with replica.transaction() as con:` one durable transaction on this thread's connection."""
        try:
            with sqlite_state.transaction(self._con(), f"replica {self.path}") as con:
                yield con
        except BaseException:
            self._listed.clear()  # what it listed was rolled back
            raise

    def prune(self, now_ms: int) -> int:
        """Forget readings older than the retention. Returns how many. A series whose readings are all gone
        stays listed by `series` (its queries return nothing)."""
        cur = self._con().execute("DELETE FROM series_replica WHERE ts_ms < ?", (now_ms - self.retention_ms,))
        return cur.rowcount

    # --- read side: the SQLite store's API (server.store.sqlite.SqliteReader) --

    def query_series(self, site: str, device: str, metric: str, start: datetime | int, end: datetime | int) -> list[Point]:
        rows = self._con().execute(
            "SELECT ts_ms, value, unit, quality, agent FROM series_replica "
            "WHERE site = ? AND device = ? AND metric = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms",
            (site, device, metric, to_ms(start), to_ms(end)),
        ).fetchall()
        return [Point(*r) for r in rows]

    def latest(self, site: str, device: str, metric: str) -> Point | None:
        row = self._con().execute(
            "SELECT ts_ms, value, unit, quality, agent FROM series_replica "
            "WHERE site = ? AND device = ? AND metric = ? ORDER BY ts_ms DESC LIMIT 1",
            (site, device, metric),
        ).fetchone()
        return Point(*row) if row else None

    def neighbours(self, site: str, device: str, metric: str, start_ms: int, end_ms: int,
                   quality: str = "good") -> tuple[int | None, int | None]:
        """The ts_ms of the last `quality` reading of the series before `start_ms` and of the first after
        `end_ms` (None: there is none): the reads a late or gap-closing counter read sits between."""
        key = (site, device, metric)
        prev = self._con().execute(
            "SELECT max(ts_ms) FROM series_replica WHERE site = ? AND device = ? AND metric = ? AND ts_ms < ? "
            "AND quality = ?", (*key, start_ms, quality)).fetchone()[0]
        nxt = self._con().execute(
            "SELECT min(ts_ms) FROM series_replica WHERE site = ? AND device = ? AND metric = ? AND ts_ms > ? "
            "AND quality = ?", (*key, end_ms, quality)).fetchone()[0]
        return prev, nxt

    def series(self, site: str | None = None) -> list[tuple[str, str, str]]:
        sql = "SELECT site, device, metric FROM replica_series"
        args: tuple = ()
        if site is not None:
            sql += " WHERE site = ?"
            args = (site,)
        return [tuple(r) for r in self._con().execute(sql + " ORDER BY 1, 2, 3", args)]

    def rollups(self, site: str, device: str, metric: str, period: str, start, end) -> list[Rollup]:
        """The replica keeps raw readings for its whole retention, so it never needs rollups."""
        return []

    def count(self) -> int:
        return self._con().execute("SELECT count(*) FROM series_replica").fetchone()[0]

    def close(self) -> None:
        self._cons.close()
        self._lock.release()
