"""Dead letters: what is kept of a rejected message, the closed set of reasons, and their table.

Rejected messages are stored in the spool file's `dead_letters` table, in the
same transaction that lets the message be acknowledged (ingest's rejections)
or that removes the batch from the queue (batches the store refused). They are
counted by reason in `greenmine_ingest_rejected_total` and listed by
`greenmine server dead-letters`. The table is bounded by row count, oldest
deleted first; each keeps at most `keep_bytes` of its payload.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from greenmine.schemas import WireRejectReason

#: A batch the store itself refused (HTTP 4xx); not a wire reason, so it is added here.
STORE_REJECTED = "store_rejected"

#: A message that passed validation but cannot be committed to the spool (it failed in its group, then alone).
POISON = "poison"

#: every reason label, pre-registered on the metric so each shows as 0 before it first happens
REASONS = tuple(r.value for r in WireRejectReason) + (STORE_REJECTED, POISON)

_DETAIL_MAX = 500

SCHEMA = """
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
"""


class DeadLetter(NamedTuple):
    received_ms: int
    topic: str
    reason: str
    detail: str
    payload: bytes
    payload_bytes: int


class DeadLetters(Protocol):
    """What ingest, the writer and the CLI need of the dead letters. `insert` runs inside a spool file transaction."""

    def letter(self, topic: str, payload: bytes, reason: str, detail: str, received_ms: int) -> DeadLetter: ...
    def insert(self, con: sqlite3.Connection, dead: Sequence[DeadLetter]) -> None: ...
    def counts(self) -> dict[str, int]: ...
    def newest(self, limit: int = 50, reason: str | None = None) -> list[tuple]: ...


class DeadLetterTable:
    """The `dead_letters` table of the spool file."""

    def __init__(self, reader: sqlite3.Connection, *, keep_bytes: int = 4096, max_rows: int = 100_000) -> None:
        self._reader = reader
        self.keep_bytes = keep_bytes
        self.max_rows = max_rows

    def letter(self, topic: str, payload: bytes, reason: str, detail: str, received_ms: int) -> DeadLetter:
        """A dead letter keeping at most `keep_bytes` of the payload (its full size is recorded)."""
        return DeadLetter(received_ms, topic, reason, detail[:_DETAIL_MAX], bytes(payload[: self.keep_bytes]), len(payload))

    def insert(self, con: sqlite3.Connection, dead: Sequence[DeadLetter]) -> None:
        """Record rejected messages, keeping the table to its bound."""
        if not dead:
            return
        con.executemany(
            "INSERT INTO dead_letters (received_ms, topic, reason, detail, payload, payload_bytes) VALUES (?, ?, ?, ?, ?, ?)",
            dead,
        )
        con.execute("DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?", (self.max_rows,))

    def counts(self) -> dict[str, int]:
        return dict(self._reader.execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY reason"))

    def newest(self, limit: int = 50, reason: str | None = None) -> list[tuple]:
        """Newest first: (id, received_ms, topic, reason, detail, payload, payload_bytes)."""
        sql = "SELECT id, received_ms, topic, reason, detail, payload, payload_bytes FROM dead_letters"
        args: tuple = ()
        if reason:
            sql += " WHERE reason = ?"
            args = (reason,)
        return self._reader.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
