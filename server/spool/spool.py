"""The spool file: where an accepted message lives between its MQTT ack and the store.

    spool = Spool(path, max_bytes=..., synchronous="full", dead_letter_max_rows=..., keep_bytes=...)
    spool.queue          # server.spool.batches.BatchQueue: telemetry batches waiting for the store
    spool.dead_letters   # server.spool.deadletter.DeadLetterTable: rejected messages
    spool.agents         # server.spool.agents.AgentTable: the last status of every agent
    spool.commit(entries, dead, infos)    # ingest: one durable transaction, then ack
    spool.delete(batches, dead)           # writer: after the store took them

The three parts are separate classes, each owning its table and behind its
own Protocol, but they share one SQLite file (WAL). Why one file: ingest must
record a group's accepted batches, its rejections and its agent states in one
transaction before it acknowledges the group, and the writer must drop a
batch the store refused and record it as a dead letter in one transaction.
Separate files would cost one fsync per file per group and lose that
atomicity (a crash between the two commits could acknowledge a message that
is in neither). This class owns only the file: connections, the lock against
a second process, and the two cross-table transactions.

Durability: `synchronous=FULL` (default) fsyncs the WAL on every commit, so an
acknowledged message survives power loss. Deletes by the writer are not synced
on their own (a lost delete only means a batch is written to the store again).
`normal` in WAL mode syncs only at checkpoints: a commit then survives a crash
of this process (SIGKILL, OOM) but the last transactions can be lost on power
loss or a kernel crash, and those messages were already acknowledged. Choose
it only on a UPS-backed host.

Another process opening the same spool file is refused (an flock on
`<spool>.lock`): each server process needs its own spool.
"""

from __future__ import annotations

import contextlib
import sqlite3
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from greenmine import sqlite as state
from greenmine.filelock import FileLock
from greenmine.server.errors import SpoolError, SpoolRejected
from greenmine.server.spool.agents import SCHEMA as _AGENTS_SCHEMA
from greenmine.server.spool.agents import AgentInfo, AgentStates, AgentTable
from greenmine.server.spool.batches import SCHEMA as _QUEUE_SCHEMA
from greenmine.server.spool.batches import BatchQueue, Queue, SpooledBatch, SpoolEntry
from greenmine.server.spool.deadletter import SCHEMA as _DEAD_LETTERS_SCHEMA
from greenmine.server.spool.deadletter import DeadLetter, DeadLetters, DeadLetterTable


class SpoolStage(Protocol):
    """The spool as ingest and the writer see it."""

    queue: Queue
    dead_letters: DeadLetters
    agents: AgentStates

    def commit(self, entries: Sequence[SpoolEntry], dead: Sequence[DeadLetter] = (), infos: Sequence[AgentInfo] = ()) -> None: ...
    def delete(self, batches: Sequence[SpooledBatch], dead: Sequence[DeadLetter] = ()) -> None: ...
    def prune(self, upto_id: int) -> None: ...
    def close(self) -> None: ...


class Spool:
    """The spool file. `commit` is called by the ingest thread, `delete` by the writer."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 1024**3,
        synchronous: str = "full",
        dead_letter_max_rows: int = 100_000,
        keep_bytes: int = 4096,
        lock: bool = True,
        on_moved: Callable[[state.MovedAside], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.moved_aside: state.MovedAside | None = None  # a damaged file found at open (moved aside, counted)
        self._lock = FileLock(f"{self.path}.lock")
        self._in: sqlite3.Connection | None = None
        self._out: sqlite3.Connection | None = None
        self.queue: BatchQueue | None = None
        # Ingest commits and writer deletes take turns on this lock rather than on SQLite's
        # file lock, whose busy handler sleeps (1 ms, 2 ms, 5 ms, ...) when they collide.
        self._wlock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if lock and not self._lock.acquire("ingest"):
                raise SpoolError(f"spool {self.path} is in use by another server process, {self._lock.holder()}; "
                                 "give each process its own ingest.spool_path")
            # ingest thread: inserts. Checked at open: a damaged or empty file is moved aside (under the lock).
            self._in, self.moved_aside = state.open_or_move_aside(
                self.path, "spool", log=logging.getLogger(__name__), on_moved=on_moved,
                prepare=lambda con: con.executescript(_QUEUE_SCHEMA + _DEAD_LETTERS_SCHEMA + _AGENTS_SCHEMA),
                synchronous="full" if synchronous == "full" else "normal")
            # writer thread and queries: reads and deletes. A delete need not survive power loss: a
            # batch whose delete is lost is written to the store again, which is idempotent. So its
            # commits do not wait for an fsync (the next ingest commit syncs the WAL anyway).
            self._out = self._connect("normal")
            self.queue = BatchQueue(self._out, max_bytes=max_bytes, where=str(self.path))
        except (sqlite3.Error, state.StateError) as exc:
            self.close()
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        self.dead_letters = DeadLetterTable(self._out, keep_bytes=keep_bytes, max_rows=dead_letter_max_rows)
        self.agents = AgentTable(self._out)

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        # see the module docstring for why FULL is the default
        return state.connect(self.path, synchronous="full" if synchronous == "full" else "normal")

    def commit(self, entries: Sequence[SpoolEntry], dead: Sequence[DeadLetter] = (), infos: Sequence[AgentInfo] = ()) -> None:
        """Store accepted batches, dead letters and agent states in one durable transaction. Raises SpoolError."""
        if not (entries or dead or infos):
            return
        with self._transaction(self._in, "commit") as con:
            self.queue.insert(con, entries)
            self.dead_letters.insert(con, dead)
            self.agents.save(con, infos)
        if entries:
            self.queue.inserted(entries)

    def prune(self, upto_id: int) -> None:
        """Delete the retained batches up to `upto_id`, whose durability window has passed. Raises SpoolError."""
        if upto_id <= 0:
            return
        with self._transaction(self._out, "prune") as con:
            self.queue.prune(con, upto_id)
        self.queue.pruned(upto_id)

    def delete(self, batches: Sequence[SpooledBatch], dead: Sequence[DeadLetter] = ()) -> None:
        """Remove batches the store has taken (and record dead letters for any it refused). Raises SpoolError."""
        if not batches:
            return
        with self._transaction(self._out, "delete") as con:
            self.queue.remove(con, batches)
            self.dead_letters.insert(con, dead)
        self.queue.removed(batches)

    @contextlib.contextmanager
    def _transaction(self, con: sqlite3.Connection, what: str):
        """One write transaction (commits and deletes take turns on the thread lock). Raises SpoolError for every
        failure: SpoolRejected for data that cannot be stored (a value SQLite cannot hold, a constraint, or any
        other exception inside the transaction, e.g. a str that cannot be encoded), so retrying it is pointless;
        plain SpoolError for the file (full, locked, I/O, damaged), where a retry may succeed."""
        where = f"spool {self.path}: {what}"
        try:
            with state.transaction(con, where, lock=self._wlock):
                yield con
        except state.StateRejected as exc:
            raise SpoolRejected(str(exc)) from exc
        except state.StateError as exc:
            raise SpoolError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - rolled back; never let one value kill the thread that commits
            raise SpoolRejected(f"{where}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
        for con in (self._in, self._out):
            if con is not None:
                con.close()
        self._in = self._out = None
        self._lock.release()
