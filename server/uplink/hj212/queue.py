"""The durable queue of HJ 212 uploads not yet acknowledged by the platform.

Delivery contract: a message enters the queue before its first
send and leaves only after the platform's 9014 for its last packet. A split
message remembers how many of its packets were acknowledged, so a restart
resumes at the next packet instead of resending the whole message.

Guarantee: at-least-once. A crash between the 9014 arriving and the row being
deleted resends that packet after restart with its original QN, which is what
platforms deduplicate on.

Bound: `max_messages`; when full the *oldest* message is dropped to make
room (`drop_oldest`), counted in `dropped`. Newer data is more useful to an
environmental platform than a backlog nobody will look at.

SQLite in WAL mode (opened by greenmine.sqlite): readers never block the writer, and with
synchronous=NORMAL a commit is an append to the WAL, cheap enough to call from
the event loop for a handful of messages a minute. Also holds small persistent
state (intervals set by the platform, last scheduled periods).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenmine.sqlite import MovedAside, open_or_move_aside, transaction

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    qn          TEXT    NOT NULL,
    cn          TEXT    NOT NULL,
    frames      TEXT    NOT NULL,  -- JSON list of whole frames (latin-1 text)
    acked       INTEGER NOT NULL DEFAULT 0,  -- packets of this message already acknowledged
    created_at  REAL    NOT NULL,  -- unix time
    expires_at  REAL,              -- unix time after which it is dropped unsent; NULL = never
    dedup_key   TEXT UNIQUE        -- same key enqueued twice is stored once
);
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class QueuedMessage:
    """One queued upload: all its frames (one unless split) and how many were acknowledged."""

    id: int
    qn: str
    cn: str
    frames: tuple[bytes, ...]
    acked: int
    created_at: float


class PacketQueue:
    """SQLite-backed FIFO of upload messages for one monitoring point."""

    def __init__(self, path: Path | str, *, max_messages: int = 200_000,
                 on_moved: Callable[[MovedAside], None] | None = None) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.path = Path(path)
        self.max_messages = max_messages
        self.dropped = 0
        self.expired = 0
        # Checked at open: a damaged or empty queue is moved aside and the point starts with an empty one.
        self._db, self.moved_aside = open_or_move_aside(
            path, "hj212_queue", log=log, on_moved=on_moved, prepare=lambda con: con.executescript(_SCHEMA),
            synchronous="normal")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PacketQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def put(
        self,
        qn: str,
        cn: str,
        frames: list[bytes],
        *,
        now: float,
        expires_at: float | None = None,
        dedup_key: str | None = None,
    ) -> bool:
        """Append a message; False if `dedup_key` was already queued (nothing stored)."""
        if not frames:
            raise ValueError("a message needs at least one frame")
        with transaction(self._db, f"hj212 queue {self.path}: put"):  # make room and insert, or neither
            excess = len(self) - self.max_messages + 1
            if excess > 0:
                self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (excess,)
                )
                self.dropped += excess
            cur = self._db.execute(
                "INSERT OR IGNORE INTO messages (qn, cn, frames, created_at, expires_at, dedup_key) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (qn, cn, json.dumps([f.decode("latin-1") for f in frames]), now, expires_at, dedup_key),
            )
            return cur.rowcount == 1

    def oldest(self, *, now: float) -> QueuedMessage | None:
        """The oldest message still worth sending (expired ones are deleted and counted)."""
        cur = self._db.execute("DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at < ?", (now,))
        self.expired += max(cur.rowcount, 0)
        row = self._db.execute(
            "SELECT id, qn, cn, frames, acked, created_at FROM messages ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        frames = tuple(f.encode("latin-1") for f in json.loads(row[3]))
        return QueuedMessage(id=row[0], qn=row[1], cn=row[2], frames=frames, acked=row[4], created_at=row[5])

    def mark_acked(self, message_id: int, acked: int) -> None:
        """Record that the first `acked` packets of a split message were acknowledged."""
        self._db.execute("UPDATE messages SET acked = ? WHERE id = ?", (acked, message_id))

    def remove(self, message_id: int) -> None:
        self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def all(self) -> list[QueuedMessage]:
        """Every queued message, oldest first (for status pages and tests)."""
        rows = self._db.execute(
            "SELECT id, qn, cn, frames, acked, created_at FROM messages ORDER BY id"
        ).fetchall()
        return [
            QueuedMessage(r[0], r[1], r[2], tuple(f.encode("latin-1") for f in json.loads(r[3])), r[4], r[5])
            for r in rows
        ]

    def get_state(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )
