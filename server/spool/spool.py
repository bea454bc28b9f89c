"""The durable spool: where an accepted message lives between its MQTT ack and the store.

One SQLite file per server process (WAL) holds three tables:

- `spool`: accepted telemetry batches, oldest first, each a pickled list of
  reading rows (`pack_readings`). The ingest thread commits a group of messages in one
  transaction and only then acknowledges them (group commit); the writer
  deletes a batch only after the store has taken it. So a reading is always
  in the broker, the spool or the store, and a crash anywhere loses nothing.
- `dead_letters`: rejected messages (topic, payload truncated to a bound,
  reason, detail, time); bounded by row count, oldest deleted first.
- `agents`: the last known status of every agent (`server.agents`).

Durability: `synchronous=FULL` (default) fsyncs the WAL on every commit, so an
acknowledged message survives power loss. Deletes by the writer are not synced
on their own (a lost delete only means a batch is written to the store again). `normal` in WAL mode syncs only at
checkpoints: a commit then survives a crash of this process (SIGKILL, OOM)
but the last transactions can be lost on power loss or a kernel crash, and
those messages were already acknowledged. Choose it only on a UPS-backed host.

Bound: `max_bytes` counts the stored batch bodies. When the spool is full the
ingest thread waits for room and stops acknowledging (full policy `block`):
messages stay in the broker's session, the broker stops sending once
`receive_maximum` are unacknowledged, and nothing is dropped here.

Another process opening the same spool file is refused (an flock on
`<spool>.lock`): each server process needs its own spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import json
import os
import pickle
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from greenmine.server.errors import SpoolError
from greenmine.server.store.base import StoredReading

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    site        TEXT    NOT NULL,
    agent       TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    n_readings  INTEGER NOT NULL,
    body        BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms   INTEGER NOT NULL,
    topic         TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    detail        TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    payload_bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason);
CREATE TABLE IF NOT EXISTS agents (
    site             TEXT    NOT NULL,
    agent            TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    since_ms         INTEGER NOT NULL,
    seen_ms          INTEGER NOT NULL,
    status_ts_ms     INTEGER NOT NULL,
    version          TEXT,
    config_hash      TEXT,
    outbox_depth     INTEGER,
    dropped_batches  INTEGER,
    dropped_readings INTEGER,
    PRIMARY KEY (site, agent)
);
"""


#: rows per multi-row statement (at most 6 parameters each, well under SQLite's 32766)
_CHUNK = 500


def _values(n_rows: int, n_cols: int) -> str:
    row = "(" + ",".join("?" * n_cols) + ")"
    return ",".join([row] * n_rows)


class SpoolEntry(NamedTuple):
    """An accepted batch, ready to be spooled. `body` is `pack_readings(...)`."""

    received_ms: int
    site: str
    agent: str
    seq: int
    n_readings: int
    body: bytes


class DeadLetter(NamedTuple):
    received_ms: int
    topic: str
    reason: str
    detail: str
    payload: bytes
    payload_bytes: int


class SpooledBatch(NamedTuple):
    id: int
    site: str
    agent: str
    seq: int
    n_readings: int
    body: bytes

    def readings(self) -> list[StoredReading]:
        return list(map(_make_reading, unpack_readings(self.body)))


_make_reading = StoredReading._make


def pack_readings(rows: Iterable[tuple]) -> bytes:
    """StoredReading-shaped plain tuples (site, agent, device, metric, ts_ms, value, unit, quality) as the spool stores them.

    Pickle protocol 5 of a list of tuples of str, int and float: about five times
    cheaper than JSON both ways, and the format is stable across Python versions
    (unlike marshal), so a spool survives an upgrade. It is read back by an
    unpickler that refuses every global, so a tampered spool file cannot run code.
    """
    return pickle.dumps(rows if isinstance(rows, list) else list(rows), protocol=5)


class _RowsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # only plain containers and scalars are allowed
        raise pickle.UnpicklingError(f"spool body refers to {module}.{name}")


def unpack_readings(body: bytes) -> list:
    if body[:1] == b"[":  # written by an earlier version as compact JSON
        return json.loads(body)
    return _RowsUnpickler(io.BytesIO(body)).load()


class Spool:
    """The spool file. `commit` is called by the ingest thread, `peek`/`delete` by the writer."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 1024**3,
        synchronous: str = "full",
        dead_letter_max_rows: int = 100_000,
        lock: bool = True,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dead_letter_max_rows = dead_letter_max_rows
        self._lock_fd: int | None = None
        self._cond = threading.Condition()
        # Ingest commits and writer deletes take turns on this lock rather than on SQLite's
        # file lock, whose busy handler sleeps (1 ms, 2 ms, 5 ms, ...) when they collide.
        self._wlock = threading.Lock()
        # rows ingest has just packed, by body, so the writer's listeners need not unpickle them again
        self._recent: dict[bytes, list] = {}
        self._recent_readings = 0
        self._recent_lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if lock:
                self._take_lock()
            self._in = self._connect(synchronous)  # ingest thread: inserts
            self._in.executescript(_SCHEMA)
            # writer thread: reads and deletes. A delete need not survive power loss: a batch
            # whose delete is lost is written to the store again, which is idempotent. So its
            # commits do not wait for an fsync (the next ingest commit syncs the WAL anyway).
            self._out = self._connect("normal")
            row = self._in.execute("SELECT count(*), coalesce(sum(n_readings), 0), coalesce(sum(length(body)), 0) FROM spool").fetchone()
        except sqlite3.Error as exc:
            self.close()
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        self._batches, self._readings, self._bytes = row

    def _take_lock(self) -> None:
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(
                f"spool {self.path} is in use by another server process; give each process its own ingest.spool_path"
            ) from None
        self._lock_fd = fd

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        # see the module docstring for why FULL is the default
        con.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        return con

    # --- depth -------------------------------------------------------------

    def depth(self) -> tuple[int, int, int]:
        """(batches, readings, body bytes) waiting for the store."""
        with self._cond:
            return self._batches, self._readings, self._bytes

    def full(self) -> bool:
        with self._cond:
            return self._bytes >= self.max_bytes

    def wait_for_room(self, timeout_s: float) -> bool:
        """Wait until the spool is under its bound. Returns whether it is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._bytes < self.max_bytes or self._closed, timeout_s) and not self._closed

    def wait_for_data(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._batches > 0 or self._closed, timeout_s)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- ingest side -------------------------------------------------------

    #: most readings kept decoded for the writer (a backlog beyond it is unpickled again)
    RECENT_MAX_READINGS = 50_000

    def remember_rows(self, body: bytes, rows: list) -> None:
        """Keep `rows`, which `body` is `pack_readings(rows)` of, for `rows_of(body)` (the writer's listeners).

        Bounded: the oldest are dropped first. Keyed by content, so a stale or
        never-committed entry can only ever give the rows its body holds."""
        with self._recent_lock:
            self._recent[body] = rows
            self._recent_readings += len(rows)
            recent = self._recent
            while self._recent_readings > self.RECENT_MAX_READINGS and recent:
                self._recent_readings -= len(recent.pop(next(iter(recent))))

    def rows_of(self, body: bytes) -> list:
        """The rows of a spool body: the ones ingest kept (`remember_rows`) or, failing that, decoded."""
        with self._recent_lock:
            rows = self._recent.pop(body, None)
            if rows is not None:
                self._recent_readings -= len(rows)
                return rows
        return unpack_readings(body)

    def commit(
        self,
        entries: Sequence[SpoolEntry],
        dead: Sequence[DeadLetter] = (),
        agents: Sequence[tuple] = (),
    ) -> None:
        """Store accepted batches, dead letters and agent states in one durable transaction. Raises SpoolError."""
        if not (entries or dead or agents):
            return
        with self._transaction(self._in, "commit") as con:
            # multi-row statements rather than executemany: one GIL round trip per
            # chunk instead of per row (see SqliteStore.write)
            for i in range(0, len(entries), _CHUNK):
                chunk = entries[i : i + _CHUNK]
                con.execute(
                    f"INSERT INTO spool (received_ms, site, agent, seq, n_readings, body) VALUES {_values(len(chunk), 6)}",
                    list(itertools.chain.from_iterable(chunk)),
                )
            self._insert_dead_letters(con, dead)
            if agents:
                con.executemany("INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", agents)
        if entries:
            with self._cond:
                self._batches += len(entries)
                self._readings += sum(e.n_readings for e in entries)
                self._bytes += sum(len(e.body) for e in entries)
                self._cond.notify_all()

    @contextlib.contextmanager
    def _transaction(self, con: sqlite3.Connection, what: str):
        """One write transaction (commits and deletes take turns on the thread lock). Raises SpoolError."""
        with self._wlock:
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: {what}: {exc}") from exc

    def _insert_dead_letters(self, con: sqlite3.Connection, dead: Sequence[DeadLetter]) -> None:
        """Rejected messages (ingest's, or batches the store refused), keeping the table to its bound."""
        if not dead:
            return
        con.executemany(
            "INSERT INTO dead_letters (received_ms, topic, reason, detail, payload, payload_bytes) VALUES (?, ?, ?, ?, ?, ?)",
            dead,
        )
        con.execute("DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?", (self.dead_letter_max_rows,))

    # --- writer side -------------------------------------------------------

    def peek(self, max_readings: int, after_id: int = 0) -> list[SpooledBatch]:
        """The oldest batches (with an id above `after_id`), up to about `max_readings` readings (at least one batch)."""
        out: list[SpooledBatch] = []
        total = 0
        try:
            cur = self._out.execute(
                "SELECT id, site, agent, seq, n_readings, body FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, max(1, max_readings)),
            )
            for row in cur:
                if out and total + row[4] > max_readings:
                    break
                out.append(SpooledBatch(*row))
                total += row[4]
            cur.close()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: read: {exc}") from exc
        return out

    def delete(self, batches: Sequence[SpooledBatch], dead: Sequence[DeadLetter] = ()) -> None:
        """Remove batches the store has taken (and record dead letters for any it refused)."""
        if not batches:
            return
        with self._transaction(self._out, "delete") as con:
            for i in range(0, len(batches), _CHUNK):
                chunk = batches[i : i + _CHUNK]
                con.execute(f"DELETE FROM spool WHERE id IN ({','.join('?' * len(chunk))})", [b.id for b in chunk])
            self._insert_dead_letters(con, dead)
        with self._cond:
            self._batches -= len(batches)
            self._readings -= sum(b.n_readings for b in batches)
            self._bytes -= sum(len(b.body) for b in batches)
            self._cond.notify_all()

    # --- queries (also used by `greenmine server status`) -----------------

    def load_agents(self) -> list[tuple]:
        return self._out.execute("SELECT * FROM agents ORDER BY site, agent").fetchall()

    def dead_letter_counts(self) -> dict[str, int]:
        return dict(self._out.execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY reason"))

    def dead_letters(self, limit: int = 50, reason: str | None = None) -> list[tuple]:
        """Newest first: (id, received_ms, topic, reason, detail, payload, payload_bytes)."""
        sql = "SELECT id, received_ms, topic, reason, detail, payload, payload_bytes FROM dead_letters"
        args: tuple = ()
        if reason:
            sql += " WHERE reason = ?"
            args = (reason,)
        return self._out.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for name in ("_in", "_out"):
            con = getattr(self, name, None)
            if con is not None:
                con.close()
                setattr(self, name, None)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
