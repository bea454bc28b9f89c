"""The outbox: every telemetry batch is committed here before it is published (docs/agent.md "Delivery").

SQLite in WAL mode with synchronous=FULL (opened by greenmine.sqlite): a batch whose `commit`
returned survives a `kill -9` and a power cut. A batch is deleted only by `ack_many`, which the
forwarder calls for the batches the broker acknowledged (PUBACK).

Bound: after every insert the oldest batches are
dropped while the stored payload bytes exceed `max_bytes` or a batch is older than `max_age_s`.
The newest batch is always kept, so polling never blocks on a full outbox. Drops are counted in
the database (they survive restarts) and reported in the status message.

Deletes are not fsynced: `ack_many` deletes every batch acknowledged since the last call in one
transaction under synchronous=NORMAL. In WAL mode that commit is ordered before the next
synchronous=FULL commit, whose fsync carries it too, so a `commit` is exactly as durable as before;
a delete lost to a power cut only means that batch is sent again (delivery is at least once and the
server writes idempotently). This keeps the one outbox thread free for the commits that matter
(one fsync per batch, not two).

`seq` comes from a counter stored in the same transaction as the batch, so it keeps increasing
across restarts even when the outbox has been emptied.

This class is synchronous and owns one connection; the agent calls it from a single worker
thread (`AsyncOutbox`) so an fsync never stalls the event loop that polls the meters.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from greenmine.agent.errors import OutboxError
from greenmine.schemas import Reading, TelemetryBatch
from greenmine.sqlite import StateError, connect, mapped, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    seq INTEGER PRIMARY KEY,
    created_s REAL NOT NULL,
    readings INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    next_seq: int
    dropped_batches: int
    dropped_readings: int


@dataclass(frozen=True)
class StoredBatch:
    seq: int
    created_s: float
    readings: int
    payload: bytes


class Outbox:
    def __init__(self, path: Path | str, *, site: str, agent: str, max_bytes: int, max_age_s: float) -> None:
        self.site, self.agent = site, agent
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        try:
            self._db = connect(path, synchronous="full")
            with mapped(f"outbox {path}"):
                self._db.executescript(_SCHEMA)
                row = self._db.execute("SELECT count(*), coalesce(sum(bytes), 0), coalesce(max(seq), -1) FROM batch").fetchone()
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except StateError as exc:
            raise OutboxError(f"outbox: {exc}") from exc
        self._depth, self._bytes = int(row[0]), int(row[1])
        # max(seq)+1 guards against a meta row lost to an older version of the file.
        self._next_seq = max(int(meta.get("next_seq", 0)), int(row[2]) + 1)
        self._dropped_batches = int(meta.get("dropped_batches", 0))
        self._dropped_readings = int(meta.get("dropped_readings", 0))

    def stats(self) -> OutboxStats:
        return OutboxStats(self._depth, self._bytes, self._next_seq, self._dropped_batches, self._dropped_readings)

    def commit(self, readings: list[Reading], now_s: float) -> StoredBatch:
        """Commit one batch (durable when this returns) and return it, payload included.
        Applies the bound (drop oldest) in the same transaction."""
        seq = self._next_seq
        sent_at = datetime.fromtimestamp(now_s, timezone.utc)
        payload = TelemetryBatch(site=self.site, agent=self.agent, seq=seq, sent_at=sent_at, readings=readings).to_json()
        try:
            with transaction(self._db, f"cannot store batch {seq}"):
                self._db.execute(
                    "INSERT INTO batch (seq, created_s, readings, bytes, payload) VALUES (?, ?, ?, ?, ?)",
                    (seq, now_s, len(readings), len(payload), payload),
                )
                depth, size = self._depth + 1, self._bytes + len(payload)
                dropped_b = dropped_r = 0
                cutoff = now_s - self.max_age_s
                while depth > 1:
                    row = self._db.execute("SELECT seq, created_s, readings, bytes FROM batch ORDER BY seq LIMIT 1").fetchone()
                    if not (size > self.max_bytes or row[1] < cutoff):
                        break
                    self._db.execute("DELETE FROM batch WHERE seq = ?", (row[0],))
                    depth, size = depth - 1, size - row[3]
                    dropped_b, dropped_r = dropped_b + 1, dropped_r + row[2]
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [
                        ("next_seq", seq + 1),
                        ("dropped_batches", self._dropped_batches + dropped_b),
                        ("dropped_readings", self._dropped_readings + dropped_r),
                    ],
                )
        except StateError as exc:
            raise OutboxError(f"outbox: {exc}") from exc
        self._next_seq = seq + 1
        self._depth, self._bytes = depth, size
        self._dropped_batches += dropped_b
        self._dropped_readings += dropped_r
        return StoredBatch(seq, now_s, len(readings), payload)

    def fetch(self, after_seq: int, before_seq: int | None = None, limit: int = 10) -> list[StoredBatch]:
        """Stored batches with after_seq < seq (< before_seq), oldest first."""
        hi = before_seq if before_seq is not None else 1 << 62
        try:
            with mapped("cannot read stored batches"):
                rows = self._db.execute(
                    "SELECT seq, created_s, readings, payload FROM batch WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                    (after_seq, hi, limit),
                ).fetchall()
        except StateError as exc:
            raise OutboxError(f"outbox: {exc}") from exc
        return [StoredBatch(int(r[0]), float(r[1]), int(r[2]), bytes(r[3])) for r in rows]

    def ack_many(self, seqs: list[int]) -> int:
        """Delete delivered batches in one transaction, without an fsync (see the module docstring).
        Returns how many were still there."""
        if not seqs:
            return 0
        try:
            with transaction(self._db, f"cannot delete {len(seqs)} delivered batches", synchronous="normal"):
                rows = [self._db.execute("DELETE FROM batch WHERE seq = ? RETURNING bytes", (s,)).fetchone()
                        for s in seqs]
        except StateError as exc:
            raise OutboxError(f"outbox: {exc}") from exc
        gone = [r for r in rows if r is not None]
        self._depth -= len(gone)
        self._bytes -= sum(int(r[0]) for r in gone)
        return len(gone)

    def close(self) -> None:
        self._db.close()


class AsyncOutbox:
    """The outbox used from the event loop: every call runs on one worker thread."""

    def __init__(self, outbox: Outbox) -> None:
        self.sync = outbox
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ThreadPoolExecutor-outbox")

    def stats(self) -> OutboxStats:
        return self.sync.stats()

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def commit(self, readings: list[Reading], now_s: float) -> StoredBatch:
        return await self._call(self.sync.commit, readings, now_s)

    async def ack_many(self, seqs: list[int]) -> int:
        return await self._call(self.sync.ack_many, seqs)

    async def fetch(self, after_seq: int, before_seq: int | None = None, limit: int = 10) -> list[StoredBatch]:
        return await self._call(self.sync.fetch, after_seq, before_seq, limit)

    async def close(self) -> None:
        await self._call(self.sync.close)
        self._pool.shutdown(wait=True)
