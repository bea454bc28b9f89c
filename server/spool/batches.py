"""The spool's queue: accepted telemetry batches waiting for the store, oldest first.

The `spool` table holds each batch as a pickled list of reading rows
(`pack_readings`). Ingest inserts batches inside the spool file's commit
(`server.spool.spool.Spool.commit`); the writer peeks the oldest and removes
them only after the store has taken them. So a reading is always in the
broker, the spool or the store.

Bound: `max_bytes` counts the stored batch bodies. When the queue is full the
ingest thread waits for room and stops acknowledging (full policy `block`):
messages stay in the broker's session, the broker stops sending once
`receive_maximum` are unacknowledged, and nothing is dropped here.
"""

from __future__ import annotations

import io
import itertools
import json
import pickle
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

from greenmine.server.errors import SpoolError
from greenmine.server.store.base import StoredReading

SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    site        TEXT    NOT NULL,
    agent       TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    n_readings  INTEGER NOT NULL,
    body        BLOB    NOT NULL
);
"""

#: rows per multi-row statement (at most 6 parameters each, well under SQLite's 32766)
_CHUNK = 500


class SpoolEntry(NamedTuple):
    """An accepted batch, ready to be spooled. `body` is `pack_readings(...)`."""

    received_ms: int
    site: str
    agent: str
    seq: int
    n_readings: int
    body: bytes


class SpooledBatch(NamedTuple):
    id: int
    site: str
    agent: str
    seq: int
    n_readings: int
    body: bytes

    def readings(self) -> list[StoredReading]:
        return list(map(StoredReading._make, unpack_readings(self.body)))


def pack_readings(rows: Iterable[tuple]) -> bytes:
    """Plain tuples in StoredReading's field order (site, agent, device, metric, ts_ms, value, unit, quality) as the spool stores them.

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


class Queue(Protocol):
    """What ingest and the writer need of the queue. `insert`/`remove` run inside the spool file's transactions."""

    max_bytes: int

    def depth(self) -> tuple[int, int, int]: ...
    def full(self) -> bool: ...
    def wait_for_room(self, timeout_s: float) -> bool: ...
    def wait_for_data(self, timeout_s: float) -> bool: ...
    def wake(self) -> None: ...
    def peek(self, max_readings: int) -> list[SpooledBatch]: ...


class BatchQueue:
    """The `spool` table and its in-memory depth counters (kept beside it so `full()` costs no query)."""

    def __init__(self, reader: sqlite3.Connection, *, max_bytes: int, where: str) -> None:
        self.max_bytes = max_bytes
        self._reader = reader
        self._where = where
        self._cond = threading.Condition()
        self._closed = False
        row = reader.execute("SELECT count(*), coalesce(sum(n_readings), 0), coalesce(sum(length(body)), 0) FROM spool").fetchone()
        self._batches, self._readings, self._bytes = row

    # --- depth -------------------------------------------------------------

    def depth(self) -> tuple[int, int, int]:
        """(batches, readings, body bytes) waiting for the store."""
        with self._cond:
            return self._batches, self._readings, self._bytes

    def full(self) -> bool:
        with self._cond:
            return self._bytes >= self.max_bytes

    def wait_for_room(self, timeout_s: float) -> bool:
        """Wait until the queue is under its bound. Returns whether it is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._bytes < self.max_bytes or self._closed, timeout_s) and not self._closed

    def wait_for_data(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._batches > 0 or self._closed, timeout_s)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- in a transaction of the spool file --------------------------------

    def insert(self, con: sqlite3.Connection, entries: Sequence[SpoolEntry]) -> None:
        # multi-row statements rather than executemany: one GIL round trip per chunk instead of per row
        for i in range(0, len(entries), _CHUNK):
            chunk = entries[i : i + _CHUNK]
            row = "(?,?,?,?,?,?)"
            con.execute(
                f"INSERT INTO spool (received_ms, site, agent, seq, n_readings, body) VALUES {','.join([row] * len(chunk))}",
                list(itertools.chain.from_iterable(chunk)),
            )

    def remove(self, con: sqlite3.Connection, batches: Sequence[SpooledBatch]) -> None:
        for i in range(0, len(batches), _CHUNK):
            chunk = batches[i : i + _CHUNK]
            con.execute(f"DELETE FROM spool WHERE id IN ({','.join('?' * len(chunk))})", [b.id for b in chunk])

    # --- after that transaction committed ----------------------------------

    def inserted(self, entries: Sequence[SpoolEntry]) -> None:
        self._count(len(entries), sum(e.n_readings for e in entries), sum(len(e.body) for e in entries))

    def removed(self, batches: Sequence[SpooledBatch]) -> None:
        self._count(-len(batches), -sum(b.n_readings for b in batches), -sum(len(b.body) for b in batches))

    def _count(self, batches: int, readings: int, nbytes: int) -> None:
        with self._cond:
            self._batches += batches
            self._readings += readings
            self._bytes += nbytes
            self._cond.notify_all()

    # --- the writer's reads ------------------------------------------------

    def peek(self, max_readings: int) -> list[SpooledBatch]:
        """The oldest batches, up to about `max_readings` readings (at least one batch)."""
        out: list[SpooledBatch] = []
        total = 0
        try:
            cur = self._reader.execute(
                "SELECT id, site, agent, seq, n_readings, body FROM spool ORDER BY id LIMIT ?", (max(1, max_readings),),
            )
            for row in cur:
                if out and total + row[4] > max_readings:
                    break
                out.append(SpooledBatch(*row))
                total += row[4]
            cur.close()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self._where}: read: {exc}") from exc
        return out
