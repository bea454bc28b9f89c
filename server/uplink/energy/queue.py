"""The energy uplink's durable state: the sent-record history, a delivery queue per data centre, cursors.

One SQLite file (`<state_dir>/energy.sqlite`, WAL, synchronous=full):

- `records`: every record produced, keyed on (site, code, statType, period start) and kept
  `history_days` (>= 6 months): what was sent, re-sendable by period (`requeue`).
- `deliveries`: one row per (record, centre), the centre's queue. A record is queued for every
  centre in the same transaction that stores it (and advances its period's cursor), so a crash
  can never leave it queued for one centre and not another, nor produce a period twice. Each
  centre acknowledges its row separately; a row is marked acked only after the centre's success
  reply (at least once: a crash between the reply and the commit resends that batch, which the
  platform stores once on the same key).
- `cursors`: per (site, statType) the start of the next period to produce.
- `credentials`: per centre what registration or requestAK returned (device id, key, token,
  upload slot), so a restart does not re-register.
- `events`: consistency failures and held periods, for `greenmine energy status`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from greenmine.sqlite import connect, mapped, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL, code TEXT NOT NULL, stat_type INTEGER NOT NULL, period_start REAL NOT NULL,
    period_end REAL NOT NULL, value REAL NOT NULL, complete INTEGER NOT NULL, completeness REAL NOT NULL,
    input_type INTEGER NOT NULL, scope INTEGER NOT NULL, created_at REAL NOT NULL,
    UNIQUE (site, code, stat_type, period_start));
CREATE TABLE IF NOT EXISTS deliveries (
    record_id INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE, centre TEXT NOT NULL,
    queued_at REAL NOT NULL, next_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    acked_at REAL, last_error TEXT, PRIMARY KEY (record_id, centre));
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (centre, acked_at, record_id);
CREATE TABLE IF NOT EXISTS cursors (site TEXT NOT NULL, stat_type INTEGER NOT NULL, next_start REAL NOT NULL,
    PRIMARY KEY (site, stat_type));
CREATE TABLE IF NOT EXISTS credentials (centre TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS centre_status (centre TEXT PRIMARY KEY, last_ack_at REAL, last_error TEXT, last_error_at REAL,
    acked INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, site TEXT NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Record:
    """One value for the platform: item `code` of `site` over [period_start, period_end)."""

    site: str
    code: str
    stat_type: int
    period_start: float
    period_end: float
    value: float
    complete: bool
    completeness: float
    input_type: int
    scope: int
    id: int | None = None

    @property
    def key(self) -> tuple[str, str, int, float]:
        return (self.site, self.code, self.stat_type, self.period_start)


_COLS = "id, site, code, stat_type, period_start, period_end, value, complete, completeness, input_type, scope"


def _record(row) -> Record:
    return Record(id=row[0], site=row[1], code=row[2], stat_type=row[3], period_start=row[4], period_end=row[5],
                  value=row[6], complete=bool(row[7]), completeness=row[8], input_type=row[9], scope=row[10])


class EnergyState:
    def __init__(self, path: str | Path, *, real_clock=time.time) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._db = connect(path, synchronous="full", foreign_keys=True)
        with mapped(f"energy state {path}: schema"):
            self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._real = real_clock

    def close(self) -> None:
        self._db.close()

    def _read(self, sql: str, args=()) -> list[tuple]:
        with self._lock, mapped("energy state: read"):
            return self._db.execute(sql, args).fetchall()

    # --- producing ---------------------------------------------------------

    def cursor(self, site: str, stat_type: int) -> float | None:
        rows = self._read("SELECT next_start FROM cursors WHERE site=? AND stat_type=?", (site, stat_type))
        return rows[0][0] if rows else None

    def set_cursor(self, site: str, stat_type: int, next_start: float) -> None:
        with transaction(self._db, "energy state: cursor", lock=self._lock):
            self._db.execute("INSERT OR REPLACE INTO cursors VALUES (?,?,?)", (site, stat_type, next_start))

    def produce(self, site: str, stat_type: int, next_start: float, records: list[tuple[Record, list[str]]],
                events: list[tuple[str, str]] = ()) -> int:
        """Store each record, queue it for its centres and move the cursor, in one transaction.
        A record already stored (same key) is left as it was. Returns how many were new."""
        now = self._real()
        new = 0
        with transaction(self._db, "energy state: produce", lock=self._lock):
            for r, centres in records:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO records (site, code, stat_type, period_start, period_end, value, complete, "
                    "completeness, input_type, scope, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (r.site, r.code, r.stat_type, r.period_start, r.period_end, r.value, int(r.complete),
                     r.completeness, r.input_type, r.scope, now))
                if cur.rowcount:
                    new += 1
                    rid = cur.lastrowid
                    self._db.executemany("INSERT INTO deliveries (record_id, centre, queued_at, next_at) VALUES (?,?,?,?)",
                                         [(rid, c, now, 0.0) for c in centres])
            for kind, detail in events:
                self._db.execute("INSERT INTO events (at, site, kind, detail) VALUES (?,?,?,?)", (now, site, kind, detail))
            self._db.execute("INSERT OR REPLACE INTO cursors VALUES (?,?,?)", (site, stat_type, next_start))
        return new

    def add_event(self, site: str, kind: str, detail: str) -> None:
        with transaction(self._db, "energy state: event", lock=self._lock):
            self._db.execute("INSERT INTO events (at, site, kind, detail) VALUES (?,?,?,?)", (self._real(), site, kind, detail))

    def events(self, limit: int = 20) -> list[tuple]:
        return self._read("SELECT at, site, kind, detail FROM events ORDER BY id DESC LIMIT ?", (limit,))

    # --- history -----------------------------------------------------------

    def records(self, site: str, start: float = float("-inf"), end: float = float("inf"),
                stat_type: int | None = None, code: str | None = None) -> list[Record]:
        sql = f"SELECT {_COLS} FROM records WHERE site=? AND period_start>=? AND period_start<?"
        args: list = [site, start, end]
        if stat_type is not None:
            sql += " AND stat_type=?"
            args.append(stat_type)
        if code is not None:
            sql += " AND code=?"
            args.append(code)
        return [_record(r) for r in self._read(sql + " ORDER BY period_start, stat_type, code", args)]

    def requeue(self, site: str, start: float, end: float, centres: list[str]) -> int:
        """Queue again every stored record of `site` whose period starts in [start, end), for `centres`."""
        now = self._real()
        with transaction(self._db, "energy state: requeue", lock=self._lock):
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM records WHERE site=? AND period_start>=? AND period_start<?", (site, start, end))]
            for c in centres:
                self._db.executemany(
                    "INSERT OR REPLACE INTO deliveries (record_id, centre, queued_at, next_at) VALUES (?,?,?,0)",
                    [(i, c, now) for i in ids])
        return len(ids)

    def prune(self, before_real: float) -> int:
        """Drop records created before `before_real` whose every delivery was acked."""
        with transaction(self._db, "energy state: prune", lock=self._lock):
            cur = self._db.execute(
                "DELETE FROM records WHERE created_at<? AND id NOT IN "
                "(SELECT record_id FROM deliveries WHERE acked_at IS NULL)", (before_real,))
        return cur.rowcount

    # --- the per-centre queues ----------------------------------------------

    def due(self, centre: str, now_real: float, limit: int, stat_types: tuple[int, ...]) -> list[Record]:
        q = ",".join("?" * len(stat_types))
        rows = self._read(
            f"SELECT {', '.join('r.' + c for c in _COLS.split(', '))} FROM deliveries d JOIN records r ON r.id=d.record_id "
            f"WHERE d.centre=? AND d.acked_at IS NULL AND d.next_at<=? AND r.stat_type IN ({q}) ORDER BY d.record_id LIMIT ?",
            (centre, now_real, *stat_types, limit))
        return [_record(r) for r in rows]

    def acked(self, centre: str, ids: list[int]) -> None:
        now = self._real()
        with transaction(self._db, f"energy state: ack {centre}", lock=self._lock):
            self._db.executemany("UPDATE deliveries SET acked_at=?, last_error=NULL, attempts=attempts+1 "
                                 "WHERE record_id=? AND centre=?", [(now, i, centre) for i in ids])
            self._db.execute("INSERT OR IGNORE INTO centre_status (centre) VALUES (?)", (centre,))
            self._db.execute("UPDATE centre_status SET last_ack_at=?, acked=acked+? WHERE centre=?", (now, len(ids), centre))

    def failed(self, centre: str, ids: list[int], next_at: float, error: str, rejected: bool) -> None:
        now = self._real()
        with transaction(self._db, f"energy state: failure {centre}", lock=self._lock):
            self._db.executemany("UPDATE deliveries SET next_at=?, last_error=?, attempts=attempts+1 "
                                 "WHERE record_id=? AND centre=?", [(next_at, error, i, centre) for i in ids])
            self._db.execute("INSERT OR IGNORE INTO centre_status (centre) VALUES (?)", (centre,))
            self._db.execute("UPDATE centre_status SET last_error=?, last_error_at=?, rejected=rejected+? WHERE centre=?",
                             (error, now, len(ids) if rejected else 0, centre))

    def depth(self, centre: str) -> tuple[int, float | None]:
        """(unacked records, queued_at of the oldest unacked one)."""
        row = self._read("SELECT COUNT(*), MIN(queued_at) FROM deliveries WHERE centre=? AND acked_at IS NULL", (centre,))[0]
        return row[0], row[1]

    def status(self, centre: str) -> dict:
        rows = self._read("SELECT last_ack_at, last_error, last_error_at, acked, rejected FROM centre_status WHERE centre=?", (centre,))
        depth, oldest = self.depth(centre)
        base = dict(zip(("last_ack_at", "last_error", "last_error_at", "acked", "rejected"), rows[0])) if rows else {
            "last_ack_at": None, "last_error": None, "last_error_at": None, "acked": 0, "rejected": 0}
        return {**base, "depth": depth, "oldest_queued_at": oldest}

    # --- credentials ---------------------------------------------------------

    def credentials(self, centre: str) -> dict | None:
        rows = self._read("SELECT body FROM credentials WHERE centre=?", (centre,))
        return json.loads(rows[0][0]) if rows else None

    def set_credentials(self, centre: str, body: dict | None) -> None:
        with transaction(self._db, f"energy state: credentials {centre}", lock=self._lock):
            if body is None:
                self._db.execute("DELETE FROM credentials WHERE centre=?", (centre,))
            else:
                self._db.execute("INSERT OR REPLACE INTO credentials VALUES (?,?,?)", (centre, json.dumps(body), self._real()))
