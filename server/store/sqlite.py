"""The embedded SQLite store: raw readings, hourly and daily rollups, and the query API.

Tables (one file, WAL mode, so readers in other threads or processes never
block the writer):

- `readings`: one row per reading, primary key (site, device, metric, ts_ms),
  WITHOUT ROWID, so the key is also the clustered index that makes "this
  device's metric over a time range" one range scan. Written with
  `ON CONFLICT DO NOTHING`: the first write of a reading wins and a redelivered
  batch changes nothing.
- `rollups`: per (site, device, metric, period, start_ms) with period `hour` or
  `day` in the site's local time (DOMAIN.md: daily periods start at 00:00).
  Only rows that were really inserted update a rollup (the INSERT ... RETURNING
  tells which), so duplicates never double-count. Aggregates cover
  `quality = good` readings; `not_good` counts the others.
- Raw rows older than `raw_retention_days` are deleted by `maintain()`;
  rollups stay.

`SqliteReader` is the read side (KPIs, web API, tests); it opens its own
connections, one per thread, and can be used from another process.
"""

from __future__ import annotations

import itertools
import logging
import operator
import sqlite3
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from server.errors import StoreRejected, StoreUnavailable
from server.store.base import StoredReading

log = logging.getLogger(__name__)

PERIODS = ("hour", "day")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    site    TEXT    NOT NULL,
    device  TEXT    NOT NULL,
    metric  TEXT    NOT NULL,
    ts_ms   INTEGER NOT NULL,
    value   REAL    NOT NULL,
    unit    TEXT    NOT NULL,
    quality TEXT    NOT NULL,
    agent   TEXT    NOT NULL,
    PRIMARY KEY (site, device, metric, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups (
    site        TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    metric      TEXT    NOT NULL,
    period      TEXT    NOT NULL CHECK (period IN ('hour', 'day')),
    start_ms    INTEGER NOT NULL,
    end_ms      INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    total       REAL    NOT NULL,
    vmin        REAL,
    vmax        REAL,
    first_ts_ms INTEGER,
    v_first     REAL,
    last_ts_ms  INTEGER,
    v_last      REAL,
    not_good    INTEGER NOT NULL,
    PRIMARY KEY (site, device, metric, period, start_ms)
) WITHOUT ROWID;
"""

# Upsert of a partial aggregate: every expression on the right sees the old row,
# so first/last compare against the old timestamps before either is replaced.
_ROLLUP_UPSERT = """
INSERT INTO rollups (site, device, metric, period, start_ms, end_ms, n, total, vmin, vmax,
                     first_ts_ms, v_first, last_ts_ms, v_last, not_good)
VALUES {values}
ON CONFLICT (site, device, metric, period, start_ms) DO UPDATE SET
    n = n + excluded.n,
    total = total + excluded.total,
    vmin = min(coalesce(vmin, excluded.vmin), coalesce(excluded.vmin, vmin)),
    vmax = max(coalesce(vmax, excluded.vmax), coalesce(excluded.vmax, vmax)),
    v_first = CASE WHEN excluded.first_ts_ms IS NOT NULL AND (first_ts_ms IS NULL OR excluded.first_ts_ms < first_ts_ms)
                   THEN excluded.v_first ELSE v_first END,
    first_ts_ms = CASE WHEN excluded.first_ts_ms IS NOT NULL AND (first_ts_ms IS NULL OR excluded.first_ts_ms < first_ts_ms)
                   THEN excluded.first_ts_ms ELSE first_ts_ms END,
    v_last = CASE WHEN excluded.last_ts_ms IS NOT NULL AND (last_ts_ms IS NULL OR excluded.last_ts_ms >= last_ts_ms)
                  THEN excluded.v_last ELSE v_last END,
    last_ts_ms = CASE WHEN excluded.last_ts_ms IS NOT NULL AND (last_ts_ms IS NULL OR excluded.last_ts_ms >= last_ts_ms)
                  THEN excluded.last_ts_ms ELSE last_ts_ms END,
    not_good = not_good + excluded.not_good
"""

#: rows per multi-row INSERT (8 parameters each, well under SQLite's 32766 limit)
_CHUNK = 500



_PK = operator.itemgetter(0, 2, 3, 4)  # (site, device, metric, ts_ms) of a StoredReading


_SLOT_MS = 900_000  # _Buckets' cache slot: every UTC offset is a multiple of 15 minutes


def _accumulate(acc: dict[tuple, list], key: tuple, end: int, ts: Sequence[int], values: Sequence[float],
                good: Sequence[bool] | None, lo: int, hi: int) -> None:
    """Add readings [lo, hi) (one series, sorted by time, distinct timestamps) to the partial rollup `key`."""
    if good is None:
        vs = values[lo:hi]
        part = [end, hi - lo, sum(vs, 0.0), min(vs), max(vs), ts[lo], values[lo], ts[hi - 1], values[hi - 1], 0]
    else:
        flags = good[lo:hi]
        vs = list(itertools.compress(values[lo:hi], flags))
        n = len(vs)
        if n:
            f = lo + flags.index(True)
            la = hi - 1 - flags[::-1].index(True)
            part = [end, n, sum(vs, 0.0), min(vs), max(vs), ts[f], values[f], ts[la], values[la], hi - lo - n]
        else:
            # end, n, total, min, max, first_ts, first, last_ts, last, not_good
            part = [end, 0, 0.0, None, None, None, None, None, None, hi - lo]
    a = acc.get(key)
    if a is None:
        acc[key] = part
        return
    # the same bucket again, not contiguous with its first part: merge as the rollup upsert does
    if part[1]:
        if not a[1]:
            a[3:9] = part[3:9]
        else:
            a[3] = min(a[3], part[3])
            a[4] = max(a[4], part[4])
            if part[5] < a[5]:
                a[5], a[6] = part[5], part[6]
            if part[7] >= a[7]:
                a[7], a[8] = part[7], part[8]
    a[1] += part[1]
    a[2] += part[2]
    a[9] += part[9]


def _values(n_rows: int, n_cols: int) -> str:
    row = "(" + ",".join("?" * n_cols) + ")"
    return ",".join([row] * n_rows)


def _insert_plain_sql(rows: int) -> str:
    return f"INSERT INTO readings (site, agent, device, metric, ts_ms, value, unit, quality) VALUES {_values(rows, 8)} ON CONFLICT DO NOTHING"


def _insert_sql(rows: int) -> str:
    values = ",".join(["(?,?,?,?,?,?,?,?)"] * rows)
    return (
        f"INSERT INTO readings (site, agent, device, metric, ts_ms, value, unit, quality) VALUES {values} "
        "ON CONFLICT DO NOTHING RETURNING site, agent, device, metric, ts_ms, value, unit, quality"
    )


def to_ms(when: datetime | int | float) -> int:
    """Epoch milliseconds from an aware datetime or a number of ms."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware one")
        return (when - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
    return int(when)


class Point(NamedTuple):
    """One stored reading of a series."""

    ts_ms: int
    value: float
    unit: str
    quality: str
    agent: str

    @property
    def ts(self) -> datetime:
        return datetime.fromtimestamp(self.ts_ms / 1000, timezone.utc)


class Rollup(NamedTuple):
    """Aggregates of one series over one hour or one local day, from quality=good readings."""

    site: str
    device: str
    metric: str
    period: str
    start_ms: int
    end_ms: int
    count: int
    sum: float
    min: float | None
    max: float | None
    first_ts_ms: int | None
    first: float | None
    last_ts_ms: int | None
    last: float | None
    not_good: int

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.start_ms / 1000, timezone.utc)


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    con.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return con


def _translate(exc: sqlite3.Error, what: str):
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreRejected(f"sqlite store: {what}: {exc}")
    # locked, busy, disk full, I/O: all may clear up, so the writer retries
    return StoreUnavailable(f"sqlite store: {what}: {exc}")


class _Buckets:
    """Hour and local-day boundaries per site, cached per 15-minute slot (every UTC offset is a multiple of 15 min)."""

    def __init__(self, site_timezones: dict[str, str], default_timezone: str) -> None:
        self._tz = {site: ZoneInfo(tz) for site, tz in site_timezones.items()}
        self._default = ZoneInfo(default_timezone)
        self._cache: dict[tuple[str, int], tuple[int, int, int, int]] = {}

    def __call__(self, site: str, ts_ms: int) -> tuple[int, int, int, int]:
        slot = ts_ms // 900_000
        key = (site, slot)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            tz = self._tz.get(site, self._default)
            local = datetime.fromtimestamp(slot * 900, tz)
            hour = local.replace(minute=0, second=0, microsecond=0)
            hour_ms = to_ms(hour)
            day: date = local.date()
            day_ms = to_ms(datetime(day.year, day.month, day.day, tzinfo=tz))
            nxt = day + timedelta(days=1)
            next_day_ms = to_ms(datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz))
            hit = self._cache[key] = (hour_ms, hour_ms + 3_600_000, day_ms, next_day_ms)
        return hit


class SqliteReader:
    """Read side of the SQLite store; safe to share between threads (one connection per thread)."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = _connect(self.path, self._busy_timeout_ms)
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def query_series(
        self, site: str, device: str, metric: str, start: datetime | int, end: datetime | int
    ) -> list[Point]:
        """Readings of one series with start <= ts < end (datetimes or epoch ms), oldest first."""
        rows = self._con().execute(
            "SELECT ts_ms, value, unit, quality, agent FROM readings "
            "WHERE site = ? AND device = ? AND metric = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms",
            (site, device, metric, to_ms(start), to_ms(end)),
        ).fetchall()
        return [Point(*r) for r in rows]

    def latest(self, site: str, device: str, metric: str) -> Point | None:
        """The newest reading of one series."""
        row = self._con().execute(
            "SELECT ts_ms, value, unit, quality, agent FROM readings "
            "WHERE site = ? AND device = ? AND metric = ? ORDER BY ts_ms DESC LIMIT 1",
            (site, device, metric),
        ).fetchone()
        return Point(*row) if row else None

    def rollups(
        self, site: str, device: str, metric: str, period: str, start: datetime | int, end: datetime | int
    ) -> list[Rollup]:
        """Hourly or daily rollups of one series whose period starts in [start, end), oldest first."""
        if period not in PERIODS:
            raise ValueError(f"period must be one of {PERIODS}, not {period!r}")
        rows = self._con().execute(
            "SELECT site, device, metric, period, start_ms, end_ms, n, total, vmin, vmax, first_ts_ms, v_first, "
            "last_ts_ms, v_last, not_good FROM rollups "
            "WHERE site = ? AND device = ? AND metric = ? AND period = ? AND start_ms >= ? AND start_ms < ? "
            "ORDER BY start_ms",
            (site, device, metric, period, to_ms(start), to_ms(end)),
        ).fetchall()
        return [Rollup(*r) for r in rows]

    def rollup_at(self, site: str, device: str, metric: str, period: str, when: datetime | int) -> Rollup | None:
        """The rollup whose period contains `when`, if any reading fell in it."""
        t = to_ms(when)
        row = self._con().execute(
            "SELECT site, device, metric, period, start_ms, end_ms, n, total, vmin, vmax, first_ts_ms, v_first, "
            "last_ts_ms, v_last, not_good FROM rollups "
            "WHERE site = ? AND device = ? AND metric = ? AND period = ? AND start_ms <= ? AND end_ms > ? "
            "ORDER BY start_ms DESC LIMIT 1",
            (site, device, metric, period, t, t),
        ).fetchone()
        return Rollup(*row) if row else None

    def series(self, site: str | None = None) -> list[tuple[str, str, str]]:
        """Every (site, device, metric) that has a daily rollup (so also those whose raw rows expired)."""
        sql = "SELECT DISTINCT site, device, metric FROM rollups WHERE period = 'day'"
        args: tuple = ()
        if site is not None:
            sql += " AND site = ?"
            args = (site,)
        return [tuple(r) for r in self._con().execute(sql + " ORDER BY 1, 2, 3", args)]

    def count(self) -> int:
        """Number of raw rows (for tests and `server status`)."""
        return self._con().execute("SELECT count(*) FROM readings").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            cons, self._all = self._all, []
        for con in cons:
            con.close()
        self._local = threading.local()


class SqliteStore(SqliteReader):
    """The embedded sink. `write` is called from one writer thread; reads may come from any thread."""

    name = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        site_timezones: dict[str, str] | None = None,
        default_timezone: str = "UTC",
        raw_retention_days: float = 400,
        busy_timeout_ms: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path, busy_timeout_ms)
        self.raw_retention_days = raw_retention_days
        self._buckets = _Buckets(site_timezones or {}, default_timezone)
        self._clock = clock
        self._wlock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._w = _connect(self.path, busy_timeout_ms)
            self._w.execute("PRAGMA journal_mode=WAL")
            # FULL: the spool deletes a batch once this commit returns, so the commit must survive power loss too.
            self._w.execute("PRAGMA synchronous=FULL")
            # the writer touches one leaf page per series it writes: keep them cached (the default is 2 MiB)
            self._w.execute("PRAGMA cache_size=-32768")
            self._w.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot open {self.path}") from exc

    def write(self, readings: Sequence[StoredReading]) -> None:
        if not readings:
            return
        # In primary-key order, consecutive inserts land on the same leaf page: about half
        # the CPU of inserting in arrival order (series interleaved). The sort is stable, so
        # of two copies of a reading in one write the first still wins.
        readings = sorted(readings, key=_PK)
        with self._wlock:
            con = self._w
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    # Multi-row statements, not executemany: sqlite3 releases and retakes the
                    # GIL around every step, and with the ingest and MQTT threads busy each
                    # retake can wait a whole switch interval; one step per 500 rows avoids that.
                    # Fast path: plain INSERTs; if they inserted every row, all are new and feed
                    # the rollups as they are. Otherwise some were stored already (a redelivery):
                    # undo, and insert again with RETURNING so that only new rows are counted.
                    con.execute("SAVEPOINT fast")
                    added = 0
                    for i in range(0, len(readings), _CHUNK):
                        chunk = readings[i : i + _CHUNK]
                        added += con.execute(_insert_plain_sql(len(chunk)), list(itertools.chain.from_iterable(chunk))).rowcount
                    if added == len(readings):
                        con.execute("RELEASE fast")
                        inserted = readings
                    else:
                        con.execute("ROLLBACK TO fast")
                        con.execute("RELEASE fast")
                        inserted = []
                        for i in range(0, len(readings), _CHUNK):
                            chunk = readings[i : i + _CHUNK]
                            params = list(itertools.chain.from_iterable(chunk))
                            inserted += con.execute(_insert_sql(len(chunk)), params).fetchall()
                        inserted.sort(key=_PK)  # RETURNING's order is unspecified
                    if inserted:
                        site, _agent, device, metric, ts, value, _unit, quality = zip(*inserted)
                        good = None if quality.count("good") == len(quality) else [q == "good" for q in quality]
                        runs = []
                        lo = 0
                        for key, grp in itertools.groupby(zip(site, device, metric)):
                            hi = lo + sum(1 for _ in grp)
                            runs.append((key, lo, hi))
                            lo = hi
                        aggs = self._aggregate(runs, ts, value, good)
                        for i in range(0, len(aggs), _CHUNK):
                            chunk = aggs[i : i + _CHUNK]
                            con.execute(_ROLLUP_UPSERT.format(values=_values(len(chunk), 15)), list(itertools.chain.from_iterable(chunk)))
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _translate(exc, "write") from exc

    def _aggregate(self, runs: Sequence[tuple[tuple[str, str, str], int, int]], ts: Sequence[int],
                   values: Sequence[float], good: Sequence[bool] | None) -> list[tuple]:
        """Partial rollups of newly inserted readings: one tuple per (series, period, bucket).

        The readings are columns (`ts`, `values`, `good`: None when every one is good) sorted by
        series, then time; `runs` holds ((site, device, metric), lo, hi) per series, its rows being
        [lo, hi). Work is per bucket, not per reading: a bucket is a contiguous slice of its series,
        aggregated with builtins.
        """
        acc: dict[tuple, list] = {}
        buckets = self._buckets
        for key, lo, hi in runs:
            site = key[0]
            # Walk the series one 15-minute slot at a time (every reading of a slot shares its
            # buckets, see _Buckets) and cut it where the hour or the local day changes. Jumping
            # to the bucket's end instead would be wrong where a DST shift is not a whole hour.
            hour = day = buckets(site, ts[lo])
            h_lo = d_lo = lo
            i = bisect_left(ts, ts[lo] - ts[lo] % _SLOT_MS + _SLOT_MS, lo + 1, hi)
            while i < hi:
                t = ts[i]
                b = buckets(site, t)
                if b[0] != hour[0]:
                    _accumulate(acc, key + ("hour", hour[0]), hour[1], ts, values, good, h_lo, i)
                    hour, h_lo = b, i
                if b[2] != day[2]:
                    _accumulate(acc, key + ("day", day[2]), day[3], ts, values, good, d_lo, i)
                    day, d_lo = b, i
                i = bisect_left(ts, t - t % _SLOT_MS + _SLOT_MS, i + 1, hi)
            _accumulate(acc, key + ("hour", hour[0]), hour[1], ts, values, good, h_lo, hi)
            _accumulate(acc, key + ("day", day[2]), day[3], ts, values, good, d_lo, hi)
        return [key + tuple(a) for key, a in acc.items()]

    def ping(self) -> None:
        try:
            with self._wlock:
                self._w.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, "ping") from exc

    def maintain(self, now_s: float | None = None) -> int:
        """Delete raw rows older than the retention, series by series (a range on the primary key). Returns rows deleted."""
        cutoff = int(((self._clock() if now_s is None else now_s) - self.raw_retention_days * 86400) * 1000)
        deleted = 0
        with self._wlock:
            try:
                series = self._w.execute("SELECT DISTINCT site, device, metric FROM rollups WHERE period = 'day'").fetchall()
                for site, device, metric in series:
                    cur = self._w.execute(
                        "DELETE FROM readings WHERE site = ? AND device = ? AND metric = ? AND ts_ms < ?",
                        (site, device, metric, cutoff),
                    )
                    deleted += cur.rowcount
            except sqlite3.Error as exc:
                raise _translate(exc, "retention") from exc
        if deleted:
            log.info("retention: deleted %d raw rows older than %g days", deleted, self.raw_retention_days)
        return deleted

    def close(self) -> None:
        with self._wlock:
            if self._w is not None:
                self._w.close()
                self._w = None  # type: ignore[assignment]
        super().close()
