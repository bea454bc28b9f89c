"""The embedded SQLite store: raw readings, hourly and daily rollups, and the query API.

Tables (one file, WAL mode, so readers in other threads or processes never
block the writer):

- `samples(series, ts_ms, value, label)`: one row per reading, primary key
  (series, ts_ms), WITHOUT ROWID, so the key is also the clustered index that
  makes "this device's metric over a time range" one range scan. A row holds
  numbers only: `series` is an id in `series(id, site, device, metric)` and
  `label` one in `labels(id, unit, quality, agent)`. Ids are never deleted or
  renumbered; the writer keeps both tables in memory (and forgets the ids made
  by a write that rolls back, since SQLite may give them out again).
  Written with `ON CONFLICT DO NOTHING`: a reading's identity is still (site,
  device, metric, ts_ms), the first write of a reading wins and a redelivered
  batch changes nothing.
- `readings`: a view with the old one-table columns (site, device, metric,
  ts_ms, value, unit, quality, agent) for ad-hoc SQL. A file written before
  `samples` existed holds `readings` as a table: it is migrated on open, once,
  in one transaction.
- `rollups`: per (site, device, metric, period, start_ms) with period `hour` or
  `day` in the site's local time (docs/kpi-alerts.md: daily periods start at 00:00).
  Only rows that were really inserted update a rollup (the INSERT ... RETURNING
  tells which), so duplicates never double-count. Aggregates cover
  `quality = good` readings; `not_good` counts the others. A write aggregates
  per series and bucket (slices of its sorted rows), not per reading.
- Raw rows older than `raw_retention_days` are deleted by `maintain()`;
  rollups stay.

`SqliteReader` is the read side (KPIs, web API, tests); it opens its own
connections, one per thread, and can be used from another process.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import sqlite3
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from greenmine.sqlite import PerThread, create_private
from greenmine.server.errors import StoreRejected, StoreUnavailable
from greenmine.server.store.base import Row

log = logging.getLogger(__name__)

PERIODS = ("hour", "day")

# Raw readings are normalised so that an inserted row binds four numbers, no text: about half
# the CPU per reading of the earlier layout, one text row of 8 columns keyed by (site, device,
# metric, ts_ms). Ids are never deleted or renumbered, so the writer caches them.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS series (
    id     INTEGER PRIMARY KEY,
    site   TEXT    NOT NULL,
    device TEXT    NOT NULL,
    metric TEXT    NOT NULL,
    UNIQUE (site, device, metric)
)""",
    """CREATE TABLE IF NOT EXISTS labels (
    id      INTEGER PRIMARY KEY,
    unit    TEXT    NOT NULL,
    quality TEXT    NOT NULL,
    agent   TEXT    NOT NULL,
    UNIQUE (unit, quality, agent)
)""",
    """CREATE TABLE IF NOT EXISTS samples (
    series INTEGER NOT NULL,  -- series.id
    ts_ms  INTEGER NOT NULL,
    value  REAL    NOT NULL,
    label  INTEGER NOT NULL,  -- labels.id
    PRIMARY KEY (series, ts_ms)
) WITHOUT ROWID""",
    # the readings as one table, for ad-hoc SQL; queries by site, device and metric still use the indexes
    """CREATE VIEW IF NOT EXISTS readings AS
SELECT se.site AS site, se.device AS device, se.metric AS metric, sa.ts_ms AS ts_ms, sa.value AS value,
       la.unit AS unit, la.quality AS quality, la.agent AS agent
FROM samples sa JOIN series se ON se.id = sa.series JOIN labels la ON la.id = sa.label""",
    """CREATE TABLE IF NOT EXISTS rollups (
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
) WITHOUT ROWID""",
)

# A store written before the normalisation holds `readings` as a table; on open it is copied
# into the tables above (series and labels numbered in key order, so samples go in in order).
_MIGRATE = (
    "INSERT INTO series (site, device, metric) SELECT DISTINCT site, device, metric FROM readings ORDER BY 1, 2, 3",
    "INSERT INTO labels (unit, quality, agent) SELECT DISTINCT unit, quality, agent FROM readings ORDER BY 1, 2, 3",
    "INSERT INTO samples (series, ts_ms, value, label) "
    "SELECT se.id, r.ts_ms, r.value, la.id FROM readings r "
    "CROSS JOIN series se ON se.site = r.site AND se.device = r.device AND se.metric = r.metric "
    "CROSS JOIN labels la ON la.unit = r.unit AND la.quality = r.quality AND la.agent = r.agent "
    "ORDER BY r.site, r.device, r.metric, r.ts_ms",
    "DROP TABLE readings",
)

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

#: rows per multi-row INSERT into samples (4 parameters each, well under SQLite's 32766 limit)
_CHUNK = 500
#: rows per multi-row rollup upsert (15 parameters each)
_ROLLUP_CHUNK = 500

_IDS_KEY = operator.itemgetter(0, 2, 3, 6, 7, 1)  # (site, device, metric) + (unit, quality, agent) of a StoredReading
_TS = operator.itemgetter(4)
_VALUE = operator.itemgetter(5)
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
# of a samples row (series, ts_ms, value, label)
_SAMPLE_KEY = operator.itemgetter(0, 1)
_TS_OF_SAMPLE = operator.itemgetter(1)
_VALUE_OF_SAMPLE = operator.itemgetter(2)
_LABEL_OF_SAMPLE = operator.itemgetter(3)

_SLOT_MS = 900_000  # _Buckets' cache slot: every UTC offset is a multiple of 15 minutes


def _stats(ts: Sequence[int], values: Sequence[float], good: Sequence[bool] | None, lo: int, hi: int) -> list:
    """[n, total, min, max, first_ts, first, last_ts, last, not_good] of readings [lo, hi): one series,
    sorted by time, distinct timestamps; aggregates over the good ones."""
    if good is None:
        vs = values[lo:hi]
        return [hi - lo, sum(vs, 0.0), min(vs), max(vs), ts[lo], vs[0], ts[hi - 1], vs[-1], 0]
    flags = good[lo:hi]
    vs = list(itertools.compress(values[lo:hi], flags))
    n = len(vs)
    if not n:
        return [0, 0.0, None, None, None, None, None, None, hi - lo]
    f = lo + flags.index(True)
    la = hi - 1 - flags[::-1].index(True)
    return [n, sum(vs, 0.0), min(vs), max(vs), ts[f], vs[0], ts[la], vs[-1], hi - lo - n]


def _add(acc: dict[tuple, list], key: tuple, end: int, part: list) -> None:
    """Add a part's stats to the partial rollup `key` ([end] + stats), merging as the rollup upsert does."""
    a = acc.get(key)
    if a is None:
        acc[key] = [end, *part]
        return
    if part[0]:
        if not a[1]:
            a[3:9] = part[2:8]
        else:
            if part[2] < a[3]:
                a[3] = part[2]
            if part[3] > a[4]:
                a[4] = part[3]
            if part[4] < a[5]:
                a[5], a[6] = part[4], part[5]
            if part[6] >= a[7]:
                a[7], a[8] = part[6], part[7]
    a[1] += part[0]
    a[2] += part[1]
    a[9] += part[8]


def _values(n_rows: int, n_cols: int) -> str:
    row = "(" + ",".join("?" * n_cols) + ")"
    return ",".join([row] * n_rows)


# The SQL texts are cached: sqlite3's statement cache is keyed by the text, which would otherwise be
# rebuilt (and hashed, some 10 kB) for every statement.
@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int, returning: bool) -> str:
    sql = f"INSERT INTO samples (series, ts_ms, value, label) VALUES {_values(rows, 4)} ON CONFLICT DO NOTHING"
    return sql + " RETURNING series, ts_ms, value, label" if returning else sql


@functools.lru_cache(maxsize=64)
def _rollup_sql(rows: int) -> str:
    return _ROLLUP_UPSERT.format(values=_values(rows, 15))


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
    if str(path) != ":memory:":
        create_private(path)  # mode 0600, as every state file (greenmine.sqlite.connect)
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


# One series' points: its id from `series`, then a range of the samples' primary key (CROSS JOIN
# keeps samples the outer loop, labels being looked up per row).
_POINTS = (
    "SELECT sa.ts_ms, sa.value, la.unit, la.quality, la.agent FROM samples sa CROSS JOIN labels la ON la.id = sa.label "
    "WHERE sa.series = (SELECT id FROM series WHERE site = ? AND device = ? AND metric = ?)"
)


class SqliteReader:
    """Read side of the SQLite store; safe to share between threads (one connection per thread)."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._cons = PerThread(lambda: _connect(self.path, self._busy_timeout_ms))

    def _con(self) -> sqlite3.Connection:
        return self._cons.get()

    def query_series(
        self, site: str, device: str, metric: str, start: datetime | int, end: datetime | int
    ) -> list[Point]:
        """Readings of one series with start <= ts < end (datetimes or epoch ms), oldest first."""
        rows = self._con().execute(
            f"{_POINTS} AND sa.ts_ms >= ? AND sa.ts_ms < ? ORDER BY sa.ts_ms",
            (site, device, metric, to_ms(start), to_ms(end)),
        ).fetchall()
        return [Point(*r) for r in rows]

    def latest(self, site: str, device: str, metric: str) -> Point | None:
        """The newest reading of one series."""
        row = self._con().execute(f"{_POINTS} ORDER BY sa.ts_ms DESC LIMIT 1", (site, device, metric)).fetchone()
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
        return self._con().execute("SELECT count(*) FROM samples").fetchone()[0]

    def close(self) -> None:
        self._cons.close()


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
        maintenance_interval_s: float | None = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path, busy_timeout_ms)
        self.raw_retention_days = raw_retention_days
        self.maintenance_interval_s = maintenance_interval_s
        self._buckets = _Buckets(site_timezones or {}, default_timezone)
        self._clock = clock
        self._wlock = threading.Lock()
        # The writer's copy of the id tables: (site, device, metric) -> series id, and so on.
        self._series_ids: dict[tuple[str, str, str], int] = {}
        self._series_keys: dict[int, tuple[str, str, str]] = {}
        self._label_ids: dict[tuple[str, str, str], int] = {}
        self._good_labels: set[int] = set()
        self._ids: dict[tuple, tuple[int, int]] = {}  # both at once, filled as readings come
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._w = _connect(self.path, busy_timeout_ms)
            self._w.execute("PRAGMA journal_mode=WAL")
            # FULL: the spool deletes a batch once this commit returns, so the commit must survive power loss too.
            self._w.execute("PRAGMA synchronous=FULL")
            # the writer touches one leaf page per series it writes: keep them cached (the default is 2 MiB)
            self._w.execute("PRAGMA cache_size=-32768")
            # The savepoint of a write keeps the pages it changes (some 2 MB for 5,000 readings) in a
            # sub-journal, which by default spills to a temporary file past 64 KiB: one pwrite per page,
            # about a fifth of the CPU of a write. In memory it is a memcpy.
            self._w.execute("PRAGMA temp_store=MEMORY")
            self._create()
            for sid, *key in self._w.execute("SELECT id, site, device, metric FROM series"):
                self._series_ids[tuple(key)] = sid
                self._series_keys[sid] = tuple(key)
            for lid, *key in self._w.execute("SELECT id, unit, quality, agent FROM labels"):
                self._label_ids[tuple(key)] = lid
                if key[1] == "good":
                    self._good_labels.add(lid)
        except sqlite3.Error as exc:
            if getattr(self, "_w", None) is not None:
                self._w.close()
            raise _translate(exc, f"cannot open {self.path}") from exc

    def _create(self) -> None:
        """Create the tables, or migrate a store written before `readings` became a view, in one transaction."""
        con = self._w
        have = dict(con.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                                "('series', 'labels', 'samples', 'readings', 'rollups')"))
        if have == {"series": "table", "labels": "table", "samples": "table", "readings": "view", "rollups": "table"}:
            return  # the usual case: no need to wait for the write lock
        con.execute("BEGIN IMMEDIATE")
        try:
            old = con.execute("SELECT type FROM sqlite_master WHERE name = 'readings'").fetchone()
            migrate = old is not None and old[0] == "table"
            for stmt in _SCHEMA:
                if not (migrate and stmt.startswith("CREATE VIEW")):
                    con.execute(stmt)
            if migrate:
                for stmt in _MIGRATE:
                    con.execute(stmt)
                con.execute(next(stmt for stmt in _SCHEMA if stmt.startswith("CREATE VIEW")))
                n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if migrate:
            log.info("sqlite store %s: migrated %d raw readings to the series/labels/samples layout", self.path, n)

    def write(self, readings: Sequence[Row]) -> None:
        if not readings:
            return
        with self._wlock:
            con = self._w
            created: list[tuple[dict, tuple]] = []  # ids cached in this transaction: forgotten if it rolls back
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    rows, ids = self._rows(readings, created)
                    # In primary-key order, consecutive inserts land on the same leaf page: about half
                    # the CPU of inserting in arrival order (series interleaved). Plain tuple order is
                    # (series, ts_ms) order unless a reading is repeated within this write; then the
                    # fast path below fails and the fallback sorts stably, so that the first copy wins.
                    try:
                        ordered = sorted(rows)
                    except TypeError:  # a repeated reading with a value of another type: let the insert reject it
                        ordered = sorted(rows, key=_SAMPLE_KEY)
                    # Multi-row statements, not executemany: sqlite3 releases and retakes the
                    # GIL around every step, and with the ingest and MQTT threads busy each
                    # retake can wait a whole switch interval; one step per 500 rows avoids that.
                    # Fast path: plain INSERTs; if they inserted every row, all are new and feed
                    # the rollups as they are. Otherwise some were stored already (a redelivery):
                    # undo, and insert again with RETURNING so that only new rows are counted.
                    con.execute("SAVEPOINT fast")
                    added = 0
                    for i in range(0, len(ordered), _CHUNK):
                        chunk = ordered[i : i + _CHUNK]
                        added += con.execute(_insert_sql(len(chunk), False), list(itertools.chain.from_iterable(chunk))).rowcount
                    if added == len(rows):
                        con.execute("RELEASE fast")
                        inserted = ordered
                    else:
                        con.execute("ROLLBACK TO fast")
                        con.execute("RELEASE fast")
                        rows.sort(key=_SAMPLE_KEY)  # stable: of two copies of a reading, the first is inserted
                        inserted = []
                        for i in range(0, len(rows), _CHUNK):
                            chunk = rows[i : i + _CHUNK]
                            inserted += con.execute(_insert_sql(len(chunk), True), list(itertools.chain.from_iterable(chunk))).fetchall()
                        inserted.sort()  # RETURNING's order is unspecified; (series, ts_ms) is unique among them
                    # all good (the usual case) is checked on the ids, not per row
                    aggs = self._aggregate(inserted, self._good_labels.issuperset(map(_SECOND, ids))) if inserted else []
                    for i in range(0, len(aggs), _ROLLUP_CHUNK):
                        chunk = aggs[i : i + _ROLLUP_CHUNK]
                        con.execute(_rollup_sql(len(chunk)), list(itertools.chain.from_iterable(chunk)))
                    con.execute("COMMIT")
                except BaseException:
                    self._forget(created)
                    con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _translate(exc, "write") from exc

    def _rows(self, readings: Sequence[Row], created: list[tuple[dict, tuple]]) -> tuple[list, list]:
        """samples rows (series, ts_ms, value, label) of StoredReading-shaped tuples, in their order, and their
        (series, label) ids."""
        # one dict lookup per reading, in C: (site, device, metric, unit, quality, agent) -> (series, label)
        ids = list(map(self._ids.get, map(_IDS_KEY, readings)))
        if None in ids:
            ids = [self._new_ids(_IDS_KEY(r), created) if x is None else x for r, x in zip(readings, ids)]
        return list(zip(map(_FIRST, ids), map(_TS, readings), map(_VALUE, readings), map(_SECOND, ids))), ids

    def _new_ids(self, key: tuple, created: list[tuple[dict, tuple]]) -> tuple[int, int]:
        ids = self._ids.get(key)  # an earlier reading of this write may have added it
        if ids is None:
            ids = self._ids[key] = (self._series_id(key[:3], created), self._label_id(key[3:], created))
            created.append((self._ids, key))
        return ids

    def _series_id(self, key: tuple[str, str, str], created: list[tuple[dict, tuple]]) -> int:
        sid = self._series_ids.get(key)  # an earlier reading of this write may have created it
        if sid is None:
            sid = self._series_ids[key] = self._row_id("series", ("site", "device", "metric"), key)
            self._series_keys[sid] = key
            created.append((self._series_ids, key))
        return sid

    def _row_id(self, table: str, columns: tuple[str, ...], key: tuple) -> int:
        """The id of `key` in an id table, inserting it if needed (another process sharing the file may have
        inserted it since we loaded the ids)."""
        row = self._w.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(key))}) "
                              "ON CONFLICT DO NOTHING RETURNING id", key).fetchone()
        if row is None:
            row = self._w.execute(f"SELECT id FROM {table} WHERE {' AND '.join(c + ' = ?' for c in columns)}", key).fetchone()
        return row[0]

    def _label_id(self, key: tuple[str, str, str], created: list[tuple[dict, tuple]]) -> int:
        lid = self._label_ids.get(key)
        if lid is None:
            lid = self._label_ids[key] = self._row_id("labels", ("unit", "quality", "agent"), key)
            if key[1] == "good":
                self._good_labels.add(lid)
            created.append((self._label_ids, key))
        return lid

    def _forget(self, created: list[tuple[dict, tuple]]) -> None:
        """Drop ids cached in a transaction that rolls back: SQLite may give them to other keys later."""
        for ids, key in created:
            i = ids.pop(key)
            if ids is self._series_ids:
                del self._series_keys[i]
            elif ids is self._label_ids:
                self._good_labels.discard(i)

    def _aggregate(self, rows: list[tuple], all_good: bool) -> list[tuple]:
        """Partial rollups of newly inserted samples rows (sorted by series, then time): one tuple per
        (series, period, bucket), in the rollups table's column order.

        Work is per series and bucket, not per reading: a bucket is a contiguous slice of its series,
        aggregated with builtins. Usually a write holds a few seconds of each series, all of them in one
        15-minute slot (so in one hour and one day) and all good (`all_good` says if every row of the
        write is): that case is inline.
        """
        series_keys = self._series_keys
        buckets = self._buckets
        out: list[tuple] = []
        lo, n = 0, len(rows)
        while lo < n:
            first = rows[lo]
            hi = bisect_right(rows, first[0], lo, key=_FIRST)
            key = series_keys[first[0]]
            last = rows[hi - 1]
            t = first[1]
            if all_good and last[1] - t < _SLOT_MS - t % _SLOT_MS:  # all in one slot
                vs = list(map(_VALUE_OF_SAMPLE, rows[lo:hi]))
                part = (hi - lo, sum(vs, 0.0), min(vs), max(vs), t, first[2], last[1], last[2], 0)
                b = buckets(key[0], t)
                out.append(key + ("hour", b[0], b[1]) + part)
                out.append(key + ("day", b[2], b[3]) + part)
            else:
                out += self._segments(key, rows[lo:hi])
            lo = hi
        return out

    def _segments(self, key: tuple[str, str, str], rows: list[tuple]) -> list[tuple]:
        """`_aggregate` of one series' rows in general: some not good, or spanning 15-minute slots."""
        ts = list(map(_TS_OF_SAMPLE, rows))
        values = list(map(_VALUE_OF_SAMPLE, rows))
        good_labels = self._good_labels
        good = None if good_labels.issuperset(map(_LABEL_OF_SAMPLE, rows)) else list(map(good_labels.__contains__, map(_LABEL_OF_SAMPLE, rows)))
        acc: dict[tuple, list] = {}
        buckets = self._buckets
        site = key[0]
        # Cut the series into segments whose readings share their hour and day, and aggregate each
        # segment once for both. Every reading of a 15-minute slot shares its buckets (see _Buckets),
        # so the walk goes slot by slot; jumping to the hour's end instead would be wrong where a DST
        # shift is not a whole hour.
        hi = len(rows)
        t = ts[0]
        b = buckets(site, t)
        seg = 0
        i = bisect_left(ts, t - t % _SLOT_MS + _SLOT_MS, 1, hi)
        while i < hi:
            t = ts[i]
            nb = buckets(site, t)
            if nb[0] != b[0] or nb[2] != b[2]:
                part = _stats(ts, values, good, seg, i)
                _add(acc, ("hour", b[0]), b[1], part)
                _add(acc, ("day", b[2]), b[3], part)
                b, seg = nb, i
            i = bisect_left(ts, t - t % _SLOT_MS + _SLOT_MS, i + 1, hi)
        part = _stats(ts, values, good, seg, hi)
        _add(acc, ("hour", b[0]), b[1], part)
        _add(acc, ("day", b[2]), b[3], part)
        return [key + bucket + tuple(a) for bucket, a in acc.items()]

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
                for (sid,) in self._w.execute("SELECT id FROM series").fetchall():
                    deleted += self._w.execute("DELETE FROM samples WHERE series = ? AND ts_ms < ?", (sid, cutoff)).rowcount
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
