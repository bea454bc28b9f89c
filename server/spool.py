"""The durable spool: where an accepted message lives between its MQTT ack and the store.

One SQLite file per server process (WAL) holds three tables:

- `spool`: accepted telemetry batches, oldest first, each a compact JSON list
  of readings. The ingest thread commits a group of messages in one
  transaction and only then acknowledges them (group commit); the writer
  deletes a batch only after the store has taken it. So a reading is always
  in the broker, the spool or the store, and a crash anywhere loses nothing.
- `dead_letters`: rejected messages (topic, payload truncated to a bound,
  reason, detail, time); bounded by row count, oldest deleted first.
- `agents`: the last known status of every agent (`server.agents`).

Durability: `synchronous=FULL` (default) fsyncs the WAL on every commit, so an
acknowledged message survives power loss. `normal` in WAL mode syncs only at
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

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from server.errors import SpoolError
from server.store.base import StoredReading

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
        return list(map(_make_reading, json.loads(self.body)))


_make_reading = StoredReading._make


def pack_readings(rows: Iterable[tuple]) -> bytes:
    """StoredReading-shaped rows (site, agent, device, metric, ts_ms, value, unit, quality) as the spool stores them."""
    return json.dumps(list(rows), separators=(",", ":"), allow_nan=False).encode()


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
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if lock:
                self._take_lock()
            self._in = self._connect(synchronous)  # ingest thread: inserts
            self._in.executescript(_SCHEMA)
            self._out = self._connect(synchronous)  # writer thread: reads and deletes
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

    def commit(
        self,
        entries: Sequence[SpoolEntry],
        dead: Sequence[DeadLetter] = (),
        agents: Sequence[tuple] = (),
    ) -> None:
        """Store accepted batches, dead letters and agent states in one durable transaction. Raises SpoolError."""
        if not (entries or dead or agents):
            return
        con = self._in
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                if entries:
                    con.executemany(
                        "INSERT INTO spool (received_ms, site, agent, seq, n_readings, body) VALUES (?, ?, ?, ?, ?, ?)",
                        entries,
                    )
                if dead:
                    con.executemany(
                        "INSERT INTO dead_letters (received_ms, topic, reason, detail, payload, payload_bytes) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        dead,
                    )
                    con.execute(
                        "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?",
                        (self.dead_letter_max_rows,),
                    )
                if agents:
                    con.executemany("INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", agents)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: commit: {exc}") from exc
        if entries:
            with self._cond:
                self._batches += len(entries)
                self._readings += sum(e.n_readings for e in entries)
                self._bytes += sum(len(e.body) for e in entries)
                self._cond.notify_all()

    # --- writer side -------------------------------------------------------

    def peek(self, max_readings: int) -> list[SpooledBatch]:
        """The oldest batches, up to about `max_readings` readings (at least one batch)."""
        out: list[SpooledBatch] = []
        total = 0
        try:
            cur = self._out.execute("SELECT id, site, agent, seq, n_readings, body FROM spool ORDER BY id LIMIT ?", (max(1, max_readings),))
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
        con = self._out
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("DELETE FROM spool WHERE id = ?", [(b.id,) for b in batches])
                if dead:
                    con.executemany(
                        "INSERT INTO dead_letters (received_ms, topic, reason, detail, payload, payload_bytes) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        dead,
                    )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: delete: {exc}") from exc
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
