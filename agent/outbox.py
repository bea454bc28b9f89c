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
across restarts even when the outbox has been emptied. It also never goes backwards when the file
itself is lost: a high-water mark beside it (`<outbox>.seq`, written atomically) holds a bound every
seq used so far is below, reserved `SEQ_RESERVE` at a time (one small fsynced write per that many
batches). A fresh outbox file (none yet, moved aside as damaged, replaced) resumes at that bound.

Lost readings are counted by reason (`DROP_REASONS`: disk_full, write_failed, outbox_full, max_age,
corrupt), persisted in `meta` at the next commit that succeeds (a full disk cannot take the count
that says so), and reported in the status message and the metrics.

At open the file is checked (`PRAGMA quick_check`); a damaged or empty one is moved aside with a
timestamp (`greenmine.sqlite.open_or_move_aside`) and the agent starts with a new one. A batch read
back is checked against the wire contract (and its seq) before it is handed to the forwarder; one
that fails is deleted and counted as `corrupt`, never published.

This class is synchronous and owns one connection; the agent calls it from a single worker
thread (`AsyncOutbox`) so an fsync never stalls the event loop that polls the meters.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from greenmine.agent.errors import OutboxError
from greenmine.latch import Latch
from greenmine.schemas import DROP_REASONS, Reading, TelemetryBatch
from greenmine.sqlite import MovedAside, StateError, StateFull, mapped, open_or_move_aside, transaction

log = logging.getLogger(__name__)

#: seqs reserved per write of the high-water mark file: at most this many numbers are skipped when
#: the outbox file is lost, and the file is written (and fsynced) once per this many batches.
SEQ_RESERVE = 1000

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
    dropped_by_reason: dict[str, int]


@dataclass(frozen=True)
class StoredBatch:
    seq: int
    created_s: float
    readings: int
    payload: bytes


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` by a file holding `text`, durably: write a temporary file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Outbox:
    def __init__(self, path: Path | str, *, site: str, agent: str, max_bytes: int, max_age_s: float) -> None:
        self.site, self.agent = site, agent
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.path = Path(path)
        self.hwm_path = self.path.with_name(self.path.name + ".seq")
        self._hwm_failing = Latch(log)
        found: dict = {}

        def prepare(con) -> None:
            con.executescript(_SCHEMA)
            found["row"] = con.execute("SELECT count(*), coalesce(sum(bytes), 0), coalesce(max(seq), -1) FROM batch").fetchone()
            found["meta"] = dict(con.execute("SELECT key, value FROM meta").fetchall())

        self.moved_aside: MovedAside | None = None  # the damaged file found at open, if any
        try:
            self._db, self.moved_aside = open_or_move_aside(path, "outbox", log=log, prepare=prepare, synchronous="full")
        except StateError as exc:
            raise OutboxError(f"outbox: {exc}") from exc
        row, meta = found["row"], found["meta"]
        self._depth, self._bytes = int(row[0]), int(row[1])
        # max(seq)+1 guards against a meta row lost to an older version of the file.
        self._next_seq = max(int(meta.get("next_seq", 0)), int(row[2]) + 1)
        self._reserved = self._read_hwm()
        if "next_seq" not in meta and self._reserved > self._next_seq:
            # A new file where an outbox was before (lost, moved aside, replaced): never reuse a seq the
            # server may have seen.
            log.warning("outbox %s is new; seq resumes at %d, above the high-water mark in %s",
                        self.path, self._reserved, self.hwm_path.name)
            self._next_seq = self._reserved
        self._dropped_batches = int(meta.get("dropped_batches", 0))
        self._dropped_readings = int(meta.get("dropped_readings", 0))
        self._by_reason = {r: int(meta.get(f"dropped_readings:{r}", 0)) for r in DROP_REASONS}

    def _read_hwm(self) -> int:
        try:
            text = self.hwm_path.read_text()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.error("outbox: cannot read the seq high-water mark %s: %s", self.hwm_path, exc)
            return 0
        try:
            return max(0, int(text.strip()))
        except ValueError:
            log.error("outbox: the seq high-water mark %s is damaged (%r); ignored", self.hwm_path, text[:40])
            return 0

    def _reserve(self, seq: int) -> None:
        """Before `seq` is used: make sure the high-water mark file is above it."""
        if seq < self._reserved:
            return
        bound = seq + SEQ_RESERVE
        try:
            _write_atomic(self.hwm_path, f"{bound}\n")
        except OSError as exc:
            # The batch itself may still be stored (the seq counter in the outbox is the primary record).
            self._hwm_failing.fail("outbox: cannot write the seq high-water mark %s: %s", self.hwm_path, exc)
            return
        self._hwm_failing.ok("outbox: seq high-water mark %s written again", self.hwm_path)
        self._reserved = bound

    def stats(self) -> OutboxStats:
        return OutboxStats(self._depth, self._bytes, self._next_seq, self._dropped_batches, self._dropped_readings,
                           dict(self._by_reason))

    def count_lost(self, reason: str, readings: int) -> None:
        """Readings lost outside a commit (e.g. rejected before it); persisted with the next commit."""
        self._by_reason[reason] += readings
        self._dropped_readings += readings

    def commit(self, readings: list[Reading], now_s: float) -> StoredBatch:
        """Commit one batch (durable when this returns) and return it, payload included.
        Applies the bound (drop oldest) in the same transaction."""
        seq = self._next_seq
        sent_at = datetime.fromtimestamp(now_s, timezone.utc)
        try:
            payload = TelemetryBatch(site=self.site, agent=self.agent, seq=seq, sent_at=sent_at, readings=readings).to_json()
        except ValidationError as exc:
            self.count_lost("write_failed", len(readings))
            raise OutboxError(f"outbox: cannot build batch {seq}: {exc}") from exc
        self._reserve(seq)
        by_reason = dict(self._by_reason)
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
                    expired = row[1] < cutoff
                    if not (size > self.max_bytes or expired):
                        break
                    self._db.execute("DELETE FROM batch WHERE seq = ?", (row[0],))
                    depth, size = depth - 1, size - row[3]
                    dropped_b, dropped_r = dropped_b + 1, dropped_r + row[2]
                    by_reason["max_age" if expired else "outbox_full"] += row[2]
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [
                        ("next_seq", seq + 1),
                        ("dropped_batches", self._dropped_batches + dropped_b),
                        ("dropped_readings", self._dropped_readings + dropped_r),
                        *((f"dropped_readings:{r}", n) for r, n in by_reason.items()),
                    ],
                )
        except StateError as exc:
            self.count_lost("disk_full" if isinstance(exc, StateFull) else "write_failed", len(readings))
            raise OutboxError(f"outbox: {exc}") from exc
        self._next_seq = seq + 1
        self._depth, self._bytes = depth, size
        self._dropped_batches += dropped_b
        self._dropped_readings += dropped_r
        self._by_reason = by_reason
        return StoredBatch(seq, now_s, len(readings), payload)

    def fetch(self, after_seq: int, before_seq: int | None = None, limit: int = 10) -> list[StoredBatch]:
        """Stored batches with after_seq < seq (< before_seq), oldest first, each checked against the wire
        contract: one that fails is deleted and counted as `corrupt` (readings lost), never returned."""
        hi = before_seq if before_seq is not None else 1 << 62
        try:
            with mapped("cannot read stored batches"):
                rows = self._db.execute(
                    "SELECT seq, created_s, readings, payload FROM batch WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                    (after_seq, hi, limit),
                ).fetchall()
        except StateError as exc:
            raise OutboxError(f"outbox: {exc}") from exc
        out, bad = [], []
        for r in rows:
            batch = StoredBatch(int(r[0]), float(r[1]), int(r[2]), bytes(r[3]) if r[3] is not None else b"")
            problem = self._check(batch)
            if problem is None:
                out.append(batch)
            else:
                log.error("outbox: batch %d (%d readings) is damaged and is dropped, not published: %s",
                          batch.seq, batch.readings, problem)
                bad.append(batch)
        if bad:
            self._drop_corrupt(bad)
        return out

    def _check(self, batch: StoredBatch) -> str | None:
        try:
            doc = TelemetryBatch.model_validate_json(batch.payload, by_name=False)
        except ValidationError as exc:
            return str(exc).splitlines()[0] + ": " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors(include_url=False)[:3])
        if (doc.seq, doc.site, doc.agent) != (batch.seq, self.site, self.agent):
            return f"payload is seq {doc.seq} of {doc.site}/{doc.agent}, stored as seq {batch.seq} of {self.site}/{self.agent}"
        return None

    def _drop_corrupt(self, bad: list[StoredBatch]) -> None:
        n = sum(max(0, b.readings) for b in bad)
        self.count_lost("corrupt", n)
        try:
            with transaction(self._db, f"cannot delete {len(bad)} damaged batches"):
                gone = [self._db.execute("DELETE FROM batch WHERE seq = ? RETURNING bytes", (b.seq,)).fetchone()
                        for b in bad]
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [("dropped_readings", self._dropped_readings), ("dropped_readings:corrupt", self._by_reason["corrupt"])],
                )
        except StateError as exc:
            raise OutboxError(f"outbox: {exc}") from exc
        gone = [g for g in gone if g is not None]
        self._depth -= len(gone)
        self._bytes -= sum(int(g[0]) for g in gone)

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
