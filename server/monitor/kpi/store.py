"""Where KPIs read from and write to.

- `ReadingSource` is the one thing the KPI engine needs from stored readings:
  the readings of one metric at one site over a time window. `StoreSource`
  adapts a reader with the SQLite store's read API to it: the monitor's
  replica (`server.store.replica`) or, for `kpi recompute`, the SQLite store;
  `MemorySource` is a plain in-memory implementation for tests.
- `KpiStore` (SQLite) keeps the KPI values and counter increments as their own
  series, upserted on (site, kpi, subject, period kind, period start), so a
  past period can be recomputed and simply overwrites its old value. It also
  keeps the set of periods that new data has made dirty, so a restart between
  a write and the next computation loses nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from greenmine.server.monitor.kpi.counters import CounterEvent, Increment
from greenmine.server.monitor.kpi.model import KpiValue
from greenmine.server.monitor.kpi.periods import Period
from greenmine.sqlite import MovedAside, open_or_move_aside, transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    device: str
    ts: float  # epoch seconds
    value: float
    quality: str = "good"


class ReadingSource(Protocol):
    def points(self, site: str, metric: str, start: float, end: float) -> list[Point]:
        """Readings of `metric` at `site` with start <= ts < end, any device, any order."""
        ...

    def neighbours(self, site: str, device: str, metric: str, start: float, end: float) -> tuple[float | None, float | None]:
        """The times of the device's last good reading before `start` and its first good one after `end`
        (None: none, or the source cannot tell): the reads a gap-closing or late counter read sits between."""
        ...


class MemorySource:
    """An in-memory ReadingSource: a list per (site, metric)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], list[Point]] = {}

    def add(self, site: str, metric: str, device: str, ts: float, value: float, quality: str = "good") -> None:
        self._data.setdefault((site, metric), []).append(Point(device, ts, value, quality))

    def points(self, site: str, metric: str, start: float, end: float) -> list[Point]:
        return [p for p in self._data.get((site, metric), []) if start <= p.ts < end]

    def neighbours(self, site: str, device: str, metric: str, start: float, end: float) -> tuple[float | None, float | None]:
        ts = [p.ts for p in self._data.get((site, metric), []) if p.device == device and p.quality == "good"]
        return max((t for t in ts if t < start), default=None), min((t for t in ts if t > end), default=None)


class StoreSource:
    """A ReadingSource over the server's SQLite store reader (`server.store.sqlite.SqliteReader`).

    Uses its query API: `series(site)` for the (site, device, metric) triples and
    `query_series(site, device, metric, start_ms, end_ms)` for one series' rows
    (`ts_ms`, `value`, `quality`).
    """

    def __init__(self, reader) -> None:
        self.reader = reader

    def points(self, site: str, metric: str, start: float, end: float) -> list[Point]:
        out: list[Point] = []
        for _site, device, m in self.reader.series(site):
            if m != metric:
                continue
            for r in self.reader.query_series(site, device, metric, int(start * 1000), int(end * 1000)):
                out.append(Point(device, r.ts_ms / 1000.0, r.value, r.quality))
        return out

    def neighbours(self, site: str, device: str, metric: str, start: float, end: float) -> tuple[float | None, float | None]:
        find = getattr(self.reader, "neighbours", None)  # the replica has it; `kpi recompute` computes whole days
        if find is None:
            return None, None
        prev, nxt = find(site, device, metric, int(start * 1000), int(end * 1000))
        return (None if prev is None else prev / 1000.0), (None if nxt is None else nxt / 1000.0)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS kpi_values (
    site TEXT NOT NULL, kpi TEXT NOT NULL, subject TEXT NOT NULL, period_kind TEXT NOT NULL,
    period_start REAL NOT NULL, period_end REAL NOT NULL, value REAL, unit TEXT NOT NULL,
    completeness REAL NOT NULL, complete INTEGER NOT NULL, body TEXT NOT NULL, computed_at REAL NOT NULL,
    PRIMARY KEY (site, kpi, subject, period_kind, period_start));
CREATE TABLE IF NOT EXISTS increments (
    site TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, start_ts REAL NOT NULL, end_ts REAL NOT NULL,
    value REAL NOT NULL, flag TEXT NOT NULL, PRIMARY KEY (site, device, metric, end_ts));
CREATE TABLE IF NOT EXISTS counter_events (
    site TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
    prev REAL NOT NULL, new REAL NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (site, device, metric, ts, kind));
CREATE TABLE IF NOT EXISTS counter_widths (
    site TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, width_bits INTEGER NOT NULL, scale REAL NOT NULL,
    agent TEXT NOT NULL, reported_at REAL NOT NULL, PRIMARY KEY (site, device, metric));
CREATE TABLE IF NOT EXISTS kpi_dirty (
    site TEXT NOT NULL, period_kind TEXT NOT NULL, period_start REAL NOT NULL, period_end REAL NOT NULL,
    label TEXT NOT NULL, gen INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (site, period_kind, period_start));
"""


def _prepare(con) -> None:
    con.executescript(_SCHEMA)
    # `gen` counts the marks of a dirty period, so a computation clears only the mark it read (files from before)
    if "gen" not in {r[1] for r in con.execute("PRAGMA table_info(kpi_dirty)")}:
        con.execute("ALTER TABLE kpi_dirty ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
        con.commit()


class KpiStore:
    def __init__(self, path: str | Path, *, on_moved: Callable[[MovedAside], None] | None = None) -> None:
        # Checked at open: a damaged or empty file is moved aside; the KPIs are recomputed from the store.
        self._db, self.moved_aside = open_or_move_aside(
            path, "kpi", log=log, on_moved=on_moved, prepare=_prepare, synchronous="full")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _tx(self, sql: str, rows: Iterable[tuple]) -> None:
        with transaction(self._db, "kpi store", lock=self._lock):
            self._db.executemany(sql, rows)

    def put_values(self, values: list[KpiValue], now: float) -> None:
        self._tx(
            "INSERT OR REPLACE INTO kpi_values VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [(v.site, v.kpi, v.subject, v.period_kind, v.period_start, v.period_end, v.value, v.unit,
              v.completeness, int(v.complete), json.dumps(v.to_dict(), ensure_ascii=False), now) for v in values],
        )

    def values(self, site: str, kpi: str, start: float = float("-inf"), end: float = float("inf"),
               subject: str | None = None) -> list[KpiValue]:
        """KPI values whose period starts in [start, end), oldest first."""
        sql = "SELECT body FROM kpi_values WHERE site=? AND kpi=? AND period_start>=? AND period_start<?"
        args: list = [site, kpi, start, end]
        if subject is not None:
            sql += " AND subject=?"
            args.append(subject)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY period_start, subject", args).fetchall()
        return [KpiValue.from_dict(json.loads(r[0])) for r in rows]

    def put_increments(self, site: str, metric: str,
                       meters: Iterable[tuple[str, list[Increment], list[CounterEvent]]]) -> None:
        """The increments and counter events of a metric's meters, (device, increments, events) each, in one
        transaction (a day's close writes every meter of a site at once)."""
        meters = list(meters)
        with transaction(self._db, "kpi store", lock=self._lock):
            self._db.executemany("INSERT OR REPLACE INTO increments VALUES (?,?,?,?,?,?,?)",
                                 [(site, device, metric, i.start_ts, i.end_ts, i.value, i.flag.value)
                                  for device, incs, _ in meters for i in incs])
            self._db.executemany("INSERT OR REPLACE INTO counter_events VALUES (?,?,?,?,?,?,?,?)",
                                 [(site, device, metric, e.ts, e.kind.value, e.prev, e.new, e.detail)
                                  for device, _, events in meters for e in events])

    def prune_increments(self, before_ts: float) -> int:
        """Forget the kept per-read increments that end before `before_ts` (the replica's retention: they cannot be
        recomputed from further back anyway). Counter events are kept: they are few, and reports cite them."""
        with transaction(self._db, "kpi store", lock=self._lock):
            return self._db.execute("DELETE FROM increments WHERE end_ts < ?", (before_ts,)).rowcount

    def increments(self, site: str, device: str, metric: str, start: float, end: float) -> list[tuple[float, float, float, str]]:
        with self._lock:
            return self._db.execute(
                "SELECT start_ts, end_ts, value, flag FROM increments WHERE site=? AND device=? AND metric=? "
                "AND end_ts>? AND start_ts<? ORDER BY end_ts", (site, device, metric, start, end)).fetchall()

    def counter_events(self, site: str) -> list[tuple]:
        with self._lock:
            return self._db.execute(
                "SELECT device, metric, ts, kind, prev, new, detail FROM counter_events WHERE site=? ORDER BY ts",
                (site,)).fetchall()

    def put_counter_widths(self, site: str, agent: str, widths: Iterable[tuple[str, str, int, float]], now: float) -> None:
        """(device, metric, width_bits, scale) of totals as an agent's status reported them (the latest wins)."""
        self._tx("INSERT OR REPLACE INTO counter_widths VALUES (?,?,?,?,?,?,?)",
                 [(site, device, metric, bits, scale, agent, now) for device, metric, bits, scale in widths])

    def counter_widths(self) -> dict[tuple[str, str, str], tuple[int, float]]:
        """(site, device, metric) -> (width_bits, scale), every total any agent reported."""
        with self._lock:
            rows = self._db.execute("SELECT site, device, metric, width_bits, scale FROM counter_widths").fetchall()
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}

    def mark_dirty(self, site: str, ps: Iterable[Period]) -> None:
        """Mark periods for (re)computation; marking one already marked counts up its generation, so that a
        computation that read the earlier mark does not clear this one (`clear_dirty`)."""
        self._tx("INSERT INTO kpi_dirty VALUES (?,?,?,?,?,0) ON CONFLICT DO UPDATE SET gen=gen+1",
                 [(site, p.kind, p.start, p.end, p.label) for p in ps])

    def dirty_closed(self, now: float) -> list[tuple[str, Period, int]]:
        """(site, period, generation of its mark) of every marked period that has ended by `now`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT site, period_kind, period_start, period_end, label, gen FROM kpi_dirty WHERE period_end<=? "
                "ORDER BY period_end, site", (now,)).fetchall()
        return [(r[0], Period(r[1], r[2], r[3], r[4]), r[5]) for r in rows]

    def clear_dirty(self, site: str, p: Period, gen: int) -> None:
        """Unmark a computed period, unless it was marked again since generation `gen` was read (`dirty_closed`)."""
        self._tx("DELETE FROM kpi_dirty WHERE site=? AND period_kind=? AND period_start=? AND gen=?",
                 [(site, p.kind, p.start, gen)])
