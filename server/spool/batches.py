"""The spool's queue: accepted telemetry batches waiting for the store, oldest first.

The `spool` table holds each batch as a pickled list of reading rows
(`pack_readings`). Ingest inserts batches inside the spool file's commit
(`server.spool.spool.Spool.commit`); the writer peeks the oldest and removes
them only after the store has taken them. So a reading is always in the
broker, the spool or the store.

Durability window: a store may acknowledge a write it has not yet made
durable (VictoriaMetrics keeps the last seconds in memory). So with such a
store the writer does not delete what it wrote at once: `written(batches, t)`
marks them as *retained* (in memory: every batch up to an id), `expired(t)`
names the retained ones whose window has passed, which the spool then deletes,
and `requeue()` hands every retained batch to the writer again (the store
restarted). The rows themselves are unchanged, so after a crash of this
process every row is pending again and is re-sent: the store's idempotent
writes absorb it.

Bound: `max_bytes` counts the stored batch bodies, retained ones too. When the queue is full the
ingest thread waits for room and stops acknowledging (full policy `block`):
messages stay in the broker's session, the broker stops sending once
`receive_maximum` are unacknowledged, and nothing is dropped here.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import pickle
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

from greenmine.server.errors import SpoolError
from greenmine.server.store.base import Row

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


@functools.lru_cache(maxsize=_CHUNK)
def _insert_sql(rows: int) -> str:
    return f"INSERT INTO spool (received_ms, site, agent, seq, n_readings, body) VALUES {','.join(['(?,?,?,?,?,?)'] * rows)}"


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

    def readings(self) -> list[Row]:
        """The batch's readings: tuples in StoredReading's field order (`server.store.base.Row`)."""
        rows = unpack_readings(self.body)
        return rows if not rows or type(rows[0]) is tuple else list(map(tuple, rows))  # JSON (earlier versions) gives lists


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
    def retained(self) -> tuple[int, int, int]: ...
    def full(self) -> bool: ...
    def wait_for_room(self, timeout_s: float) -> bool: ...
    def wait_for_data(self, timeout_s: float) -> bool: ...
    def wake(self) -> None: ...
    def peek(self, max_readings: int) -> list[SpooledBatch]: ...
    def written(self, batches: Sequence[SpooledBatch], written_ms: int) -> None: ...
    def expired(self, cutoff_ms: int) -> int: ...
    def requeue(self) -> int: ...


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
        # the durability window: batches with id <= _upto were written and are retained; _kept holds
        # (written_ms, last id, batches, readings, bytes) per write, oldest first
        self._upto = 0
        self._kept: deque[tuple[int, int, int, int, int]] = deque()
        self._kept_totals = (0, 0, 0)

    # --- depth -------------------------------------------------------------

    def depth(self) -> tuple[int, int, int]:
        """(batches, readings, body bytes) waiting for the store."""
        with self._cond:
            return self._batches, self._readings, self._bytes

    def retained(self) -> tuple[int, int, int]:
        """(batches, readings, body bytes) the store acknowledged, kept for the durability window."""
        with self._cond:
            return self._kept_totals

    def full(self) -> bool:
        with self._cond:
            return self._bytes + self._kept_totals[2] >= self.max_bytes

    def wait_for_room(self, timeout_s: float) -> bool:
        """Wait until the queue is under its bound. Returns whether it is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._bytes + self._kept_totals[2] < self.max_bytes or self._closed,
                                       timeout_s) and not self._closed

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
            con.execute(_insert_sql(len(chunk)), list(itertools.chain.from_iterable(chunk)))

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

    # --- the durability window (the writer's thread) -----------------------

    def written(self, batches: Sequence[SpooledBatch], written_ms: int) -> None:
        """The store acknowledged `batches` (the oldest pending ones): retain them instead of deleting them."""
        if not batches:
            return
        n, r, b = len(batches), sum(x.n_readings for x in batches), sum(len(x.body) for x in batches)
        with self._cond:
            self._upto = max(self._upto, max(x.id for x in batches))
            self._kept.append((written_ms, self._upto, n, r, b))
            kb, kr, kbytes = self._kept_totals
            self._kept_totals = (kb + n, kr + r, kbytes + b)
            self._batches -= n
            self._readings -= r
            self._bytes -= b

    def expired(self, cutoff_ms: int) -> int:
        """The highest id of the retained batches written at or before `cutoff_ms` (0: none); `pruned(id)`
        after the spool deleted them."""
        with self._cond:
            last = 0
            for written_ms, upto, *_ in self._kept:
                if written_ms > cutoff_ms:
                    break
                last = upto
            return last

    def prune(self, con: sqlite3.Connection, upto_id: int) -> None:
        con.execute("DELETE FROM spool WHERE id <= ?", (upto_id,))

    def pruned(self, upto_id: int) -> None:
        with self._cond:
            while self._kept and self._kept[0][1] <= upto_id:
                _, _, n, r, b = self._kept.popleft()
                kb, kr, kbytes = self._kept_totals
                self._kept_totals = (kb - n, kr - r, kbytes - b)
            self._cond.notify_all()

    def requeue(self) -> int:
        """Hand every retained batch to the writer again (the store lost them). Returns how many."""
        with self._cond:
            n, r, b = self._kept_totals
            self._batches += n
            self._readings += r
            self._bytes += b
            self._kept.clear()
            self._kept_totals = (0, 0, 0)
            self._upto = 0
            self._cond.notify_all()
            return n

    # --- the writer's reads ------------------------------------------------

    def peek(self, max_readings: int) -> list[SpooledBatch]:
        """The oldest batches, up to about `max_readings` readings (at least one batch)."""
        out: list[SpooledBatch] = []
        total = 0
        try:
            cur = self._reader.execute(
                "SELECT id, site, agent, seq, n_readings, body FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (self._upto, max(1, max_readings)),
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
