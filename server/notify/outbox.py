"""The durable email outbox and the notifier that feeds and drains it.

Delivery contract:
- an alert event becomes outbox rows in the same SQLite transaction that marks
  it dispatched, so an event is turned into mail exactly once;
- a row is marked sent only after the relay accepted it. A crash between the
  relay's "250 OK" and our commit re-sends that one message after restart
  (at least once); it keeps its Message-ID so mail clients can fold the copy;
- while the relay is down rows wait, retried with capped exponential back-off
  (greenmine.backoff, with jitter) from the injectable clock; nothing is dropped. A permanent rejection (5xx
  for the recipient) is recorded as failed with its reason and logged;
- a notice whose template fails to render, or a row that cannot be built into
  a message, is dead-lettered (status `dead`, with its reason, logged) and
  never holds up the rows behind it. `greenmine alerts outbox` lists them.

The outbox grows only while the relay is down, by a few rows per alert; it is
not bounded, because dropping an officer's notice is worse than disk use.
"""

from __future__ import annotations

import email.errors
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Protocol

from greenmine.server.notify.config import NotifyConfig
from greenmine.server.notify.errors import BuildError, PermanentSendError, TemplateError, TransientSendError
from greenmine.server.notify.templates import Templates
from greenmine.backoff import Backoff
from greenmine.latch import Latch
from greenmine.sqlite import transaction

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS email_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_ts REAL NOT NULL, recipient TEXT NOT NULL, subject TEXT NOT NULL,
    body TEXT NOT NULL, message_id TEXT NOT NULL UNIQUE, event_ids TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ts REAL NOT NULL, status TEXT NOT NULL DEFAULT 'queued', sent_ts REAL, last_error TEXT);
CREATE INDEX IF NOT EXISTS email_outbox_due ON email_outbox (status, next_attempt_ts);
"""


class Transport(Protocol):
    sender: str

    def send(self, msg: EmailMessage) -> dict: ...


@dataclass(frozen=True)
class OutboxRow:
    id: int
    recipient: str
    subject: str
    body: str
    message_id: str
    attempts: int
    status: str
    sent_ts: float | None
    last_error: str | None


class Notifier:
    """Alert events → outbox rows (with digests) → transport."""

    def __init__(self, cfg: NotifyConfig, db: sqlite3.Connection, transport: Transport, *,
                 templates: Templates | None = None, clock: Callable[[], float] = time.time,
                 lock: threading.RLock | None = None) -> None:
        self.cfg = cfg
        self.db = db
        self.transport = transport
        self.templates = templates or Templates()
        self.clock = clock
        self._lock = lock or threading.RLock()
        self._retry = Backoff(cfg.retry_initial_s, cfg.retry_max_s)
        self._relay = Latch(log)
        with self._lock:
            db.executescript(_SCHEMA)

    def _tx(self, what: str):
        return transaction(self.db, f"email outbox: {what}", lock=self._lock)

    # --- events -> outbox ---------------------------------------------------

    def dispatch(self, now: float | None = None) -> int:
        """Turn undispatched alert events into outbox rows. Returns the number of rows queued."""
        now = self.clock() if now is None else now
        with self._tx("dispatch alert events"):
            try:
                rows = self.db.execute(
                    "SELECT id, kind, recipients, facts FROM alert_events WHERE dispatched=0 ORDER BY id").fetchall()
            except sqlite3.OperationalError:  # no alert engine on this database yet
                rows = []
            per_recipient: dict[str, list[tuple[int, str, dict]]] = {}
            for ev_id, kind, recipients, facts in rows:
                rcpts = json.loads(recipients)
                if not rcpts:
                    log.warning("alert event %d (%s) has no recipients: configure sites[].recipients or default_recipients", ev_id, kind)
                for r in rcpts:
                    per_recipient.setdefault(r, []).append((ev_id, kind, json.loads(facts)))
            queued = 0
            for rcpt, notices in per_recipient.items():
                if len(notices) >= self.cfg.digest_threshold:
                    queued += self._render_and_queue(rcpt, [e for e, _, _ in notices], now, self.templates.digest,
                                                     [(k, f) for _, k, f in notices])
                else:
                    for ev_id, kind, facts in notices:
                        queued += self._render_and_queue(rcpt, [ev_id], now, self.templates.notice, kind, facts)
            if rows:
                self.db.executemany("UPDATE alert_events SET dispatched=1 WHERE id=?", [(r[0],) for r in rows])
            return queued

    def _render_and_queue(self, rcpt: str, event_ids: list[int], now: float, render, *args) -> int:
        try:
            subject, body = render(*args)
        except TemplateError as exc:
            # one notice that cannot be rendered must not stop the events behind it
            log.error("email to %s for alert event(s) %s dead-lettered: %s", rcpt, event_ids, exc)
            return self._queue(rcpt, "", "", event_ids, now, dead=f"cannot render: {exc}")
        return self._queue(rcpt, subject, body, event_ids, now)

    def _queue(self, rcpt: str, subject: str, body: str, event_ids: list[int], now: float, dead: str | None = None) -> int:
        key = hashlib.sha256(f"{rcpt}|{event_ids}".encode()).hexdigest()[:20]
        domain = self.transport.sender.rpartition("@")[2] or "greenmine"
        cur = self.db.execute(
            "INSERT OR IGNORE INTO email_outbox (created_ts, recipient, subject, body, message_id, event_ids, next_attempt_ts, "
            "status, last_error) VALUES (?,?,?,?,?,?,?,?,?)",
            (now, rcpt, subject, body, f"<greenmine.{key}@{domain}>", json.dumps(event_ids), now,
             "queued" if dead is None else "dead", dead))
        return cur.rowcount if dead is None else 0

    def enqueue(self, recipient: str, subject: str, body: str, now: float | None = None, key: str | None = None) -> bool:
        """Queue an arbitrary message (e.g. a report) through the same durable path. With `key`, the message is
        queued at most once per (key, recipient), however often this is called: False if it was already."""
        now = self.clock() if now is None else now
        if key is None:
            msg_id = f"<greenmine.m{now:.6f}.{hashlib.sha256((recipient + subject + body).encode()).hexdigest()[:12]}@greenmine>"
        else:
            msg_id = f"<greenmine.{hashlib.sha256(f'{key}|{recipient}'.encode()).hexdigest()[:20]}.k@greenmine>"
        with self._tx("queue a message"):
            cur = self.db.execute(
                "INSERT OR IGNORE INTO email_outbox (created_ts, recipient, subject, body, message_id, event_ids, "
                "next_attempt_ts) VALUES (?,?,?,?,?,?,?)", (now, recipient, subject, body, msg_id, "[]", now))
            return cur.rowcount == 1

    # --- outbox -> relay ----------------------------------------------------

    def deliver(self, now: float | None = None) -> int:
        """Send due messages. Stops at the first transient failure (the relay is down). Returns sent count."""
        now = self.clock() if now is None else now
        with self._lock:
            rows = self.db.execute(
                "SELECT id, recipient, subject, body, message_id, attempts, created_ts FROM email_outbox "
                "WHERE status='queued' AND next_attempt_ts<=? ORDER BY id LIMIT ?", (now, self.cfg.send_batch_max)).fetchall()
        sent = 0
        for row_id, rcpt, subject, body, msg_id, attempts, created in rows:
            try:
                msg = self._message(rcpt, subject, body, msg_id, created)
            except BuildError as exc:
                self._update("UPDATE email_outbox SET status='dead', last_error=? WHERE id=?", (str(exc), row_id))
                log.error("email %s to %s dead-lettered: %s", msg_id, rcpt, exc)
                continue
            try:
                refused = self.transport.send(msg)
            except TransientSendError as exc:
                delay = self._retry.delay_s(attempts)
                self._update("UPDATE email_outbox SET attempts=attempts+1, next_attempt_ts=?, last_error=? WHERE id=?",
                             (now + delay, str(exc), row_id))
                # delay the rest of the queue too, so order is kept and a dead relay is not hammered
                self._update("UPDATE email_outbox SET next_attempt_ts=max(next_attempt_ts, ?) WHERE status='queued'",
                             (now + delay,))
                self._relay.fail("mail relay unavailable, %d message(s) waiting: %s", len(rows) - sent, exc)
                break
            except PermanentSendError as exc:
                self._update("UPDATE email_outbox SET attempts=attempts+1, status='failed', last_error=? WHERE id=?",
                             (str(exc), row_id))
                log.error("email %s to %s rejected permanently: %s", msg_id, rcpt, exc)
                continue
            self._update("UPDATE email_outbox SET attempts=attempts+1, status='sent', sent_ts=?, last_error=? WHERE id=?",
                         (now, json.dumps(refused) if refused else None, row_id))
            sent += 1
            self._relay.ok("mail relay reachable again")
        return sent

    def _update(self, sql: str, args: tuple) -> None:
        with self._tx("update a message"):
            self.db.execute(sql, args)

    def _message(self, rcpt: str, subject: str, body: str, msg_id: str, created: float) -> EmailMessage:
        return build_message(self.transport.sender, rcpt, subject, body, msg_id, created)

    def has_due(self, now: float) -> bool:
        with self._lock:
            return self.db.execute("SELECT 1 FROM email_outbox WHERE status='queued' AND next_attempt_ts<=? LIMIT 1",
                                   (now,)).fetchone() is not None

    def rows(self, status: str | None = None) -> list[OutboxRow]:
        with self._lock:
            return outbox_rows(self.db, (status,) if status else None)

    def run_once(self, now: float | None = None) -> int:
        self.dispatch(now)
        return self.deliver(now)


def outbox_rows(db: sqlite3.Connection, statuses: tuple[str, ...] | None = None) -> list[OutboxRow]:
    """Outbox rows in queue order, of these statuses (queued, sent, failed, dead) or all."""
    q = "SELECT id, recipient, subject, body, message_id, attempts, status, sent_ts, last_error FROM email_outbox"
    if statuses:
        q += f" WHERE status IN ({','.join('?' * len(statuses))})"
    try:
        rs = db.execute(q + " ORDER BY id", statuses or ()).fetchall()
    except sqlite3.OperationalError:  # no notifier has run on this database yet
        return []
    return [OutboxRow(*r) for r in rs]


def build_message(sender: str, rcpt: str, subject: str, body: str, msg_id: str, created: float) -> EmailMessage:
    """The message for one outbox row. Raises BuildError (e.g. a header value with a line break), never sends it half made."""
    try:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = rcpt
        msg["Subject"] = subject
        msg["Date"] = formatdate(created, localtime=False)
        msg["Message-ID"] = msg_id
        msg["X-Greenmine"] = "alert"
        msg.set_content(body, charset="utf-8")
        msg.as_bytes()  # serialise once here: a header that cannot be folded fails now, not inside the transport
    except (ValueError, TypeError, email.errors.MessageError) as exc:
        raise BuildError(f"cannot build email: {type(exc).__name__}: {exc}") from exc
    return msg
