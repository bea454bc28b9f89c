"""The server's database of console users, API tokens and the audit log (SQLite, `[web] users_db`).

    db = UserDb(path)
    db.add("wang", "officer", password, sites=["gs-jinchang-cu01"], by="cli:root")
    user = db.check_password("wang", password)        # User | None
    token = db.create_token("wang", "nightly export")  # printed once; only its SHA-256 is stored
    user = db.check_token(token)
    db.audit("wang", "alert.ack", "alert:17", {"comment": "..."})

Roles:

- `officer`: sees the sites assigned to them and acknowledges their alerts;
- `operator`: every site, acknowledges, sets maintenance windows and settings;
- `viewer`: read only (every site, or only the assigned ones if any are).

Passwords are hashed with argon2id (argon2-cffi); there is no default user or
password: the first user is made with `greenmine users add`. A user's
`session_version` grows when the password changes or the user is disabled,
which ends every session signed before.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from greenmine.sqlite import connect, mapped, transaction

ROLES = ("officer", "operator", "viewer")
NAME = r"^[A-Za-z0-9_.@-]{1,64}$"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL, hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0, created_ts REAL NOT NULL, session_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS user_sites (user_id INTEGER NOT NULL, site TEXT NOT NULL, PRIMARY KEY (user_id, site));
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, label TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created_ts REAL NOT NULL, last_used_ts REAL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class UserError(Exception):
    """A user-management request that cannot be done (unknown user, bad role, ...); the message says why."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    disabled: bool
    sites: frozenset[str]
    session_version: int
    created_ts: float = 0.0

    @property
    def all_sites(self) -> bool:
        return self.role == "operator" or (self.role == "viewer" and not self.sites)

    def may_see(self, site: str) -> bool:
        return self.all_sites or site in self.sites

    @property
    def may_ack(self) -> bool:
        return self.role in ("officer", "operator")

    @property
    def may_configure(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: float
    user: str
    action: str
    target: str
    detail: dict


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserDb:
    def __init__(self, path: str | Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self._db = connect(self.path, synchronous="full")
        self._lock = threading.RLock()
        self._ph = hasher or PasswordHasher()
        with mapped(f"{self.path}: schema"):
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _tx(self, what: str):
        return transaction(self._db, f"users {self.path}: {what}", lock=self._lock)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock, mapped(f"users {self.path}: read"):
            return self._db.execute(sql, args).fetchall()

    # --- the signing secret of session cookies -----------------------------

    def secret(self) -> str:
        """The console's cookie-signing key: made once, kept in this database (mode 0600)."""
        with self._tx("secret") as db:
            row = db.execute("SELECT value FROM meta WHERE key='session_secret'").fetchone()
            if row:
                return row[0]
            value = secrets.token_urlsafe(48)
            db.execute("INSERT INTO meta VALUES ('session_secret', ?)", (value,))
            return value

    # --- users ---------------------------------------------------------------

    def _user(self, row) -> User:
        sites = frozenset(r[0] for r in self._read("SELECT site FROM user_sites WHERE user_id=?", (row[0],)))
        return User(id=row[0], name=row[1], role=row[2], disabled=bool(row[4]), sites=sites,
                    session_version=row[6], created_ts=row[5])

    def get(self, name: str) -> User | None:
        rows = self._read("SELECT * FROM users WHERE name=?", (name,))
        return self._user(rows[0]) if rows else None

    def by_id(self, user_id: int) -> User | None:
        rows = self._read("SELECT * FROM users WHERE id=?", (user_id,))
        return self._user(rows[0]) if rows else None

    def users(self) -> list[User]:
        return [self._user(r) for r in self._read("SELECT * FROM users ORDER BY name")]

    def count(self) -> int:
        return self._read("SELECT count(*) FROM users")[0][0]

    def add(self, name: str, role: str, password: str, *, sites: list[str] = (), by: str = "cli") -> User:
        import re

        if not re.fullmatch(NAME, name):
            raise UserError(f"user name {name!r}: use 1-64 letters, digits and _ . @ -")
        if role not in ROLES:
            raise UserError(f"role {role!r}: must be one of {', '.join(ROLES)}")
        check_password_strength(password)
        h = self._ph.hash(password)
        with self._tx("add user") as db:
            if db.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise UserError(f"user {name!r} exists already")
            uid = db.execute("INSERT INTO users (name, role, hash, created_ts) VALUES (?,?,?,?)",
                             (name, role, h, time.time())).lastrowid
            db.executemany("INSERT INTO user_sites VALUES (?,?)", [(uid, s) for s in dict.fromkeys(sites)])
            self._audit(db, by, "user.add", f"user:{name}", {"role": role, "sites": list(sites)})
        return self.get(name)

    def set_password(self, name: str, password: str, *, by: str = "cli") -> None:
        check_password_strength(password)
        h = self._ph.hash(password)
        with self._tx("password") as db:
            cur = db.execute("UPDATE users SET hash=?, session_version=session_version+1 WHERE name=?", (h, name))
            if cur.rowcount != 1:
                raise UserError(f"no user {name!r}")
            self._audit(db, by, "user.passwd", f"user:{name}", {})

    def set_disabled(self, name: str, disabled: bool = True, *, by: str = "cli") -> None:
        with self._tx("disable") as db:
            cur = db.execute("UPDATE users SET disabled=?, session_version=session_version+1 WHERE name=?",
                             (int(disabled), name))
            if cur.rowcount != 1:
                raise UserError(f"no user {name!r}")
            if disabled:
                db.execute("UPDATE tokens SET revoked=1 WHERE user_id=(SELECT id FROM users WHERE name=?)", (name,))
            self._audit(db, by, "user.disable" if disabled else "user.enable", f"user:{name}", {})

    def set_sites(self, name: str, sites: list[str], *, by: str = "cli") -> None:
        with self._tx("sites") as db:
            row = db.execute("SELECT id FROM users WHERE name=?", (name,)).fetchone()
            if row is None:
                raise UserError(f"no user {name!r}")
            db.execute("DELETE FROM user_sites WHERE user_id=?", (row[0],))
            db.executemany("INSERT INTO user_sites VALUES (?,?)", [(row[0], s) for s in dict.fromkeys(sites)])
            self._audit(db, by, "user.sites", f"user:{name}", {"sites": list(sites)})

    def check_password(self, name: str, password: str) -> User | None:
        """The user if the password is right and the user enabled; None otherwise (same cost either way)."""
        rows = self._read("SELECT * FROM users WHERE name=?", (name,))
        h = rows[0][3] if rows else _dummy_hash()
        try:
            self._ph.verify(h, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if not rows or rows[0][4]:
            return None
        return self._user(rows[0])

    # --- API tokens ------------------------------------------------------------

    def create_token(self, name: str, label: str = "", *, by: str = "cli") -> tuple[int, str]:
        token = "gmt_" + secrets.token_urlsafe(32)
        with self._tx("token") as db:
            row = db.execute("SELECT id, disabled FROM users WHERE name=?", (name,)).fetchone()
            if row is None:
                raise UserError(f"no user {name!r}")
            if row[1]:
                raise UserError(f"user {name!r} is disabled")
            tid = db.execute("INSERT INTO tokens (user_id, label, hash, created_ts) VALUES (?,?,?,?)",
                             (row[0], label, _token_hash(token), time.time())).lastrowid
            self._audit(db, by, "token.create", f"user:{name}", {"token_id": tid, "label": label})
        return tid, token

    def tokens(self) -> list[tuple]:
        """(id, user, label, created_ts, last_used_ts, revoked) of every token."""
        return self._read("SELECT t.id, u.name, t.label, t.created_ts, t.last_used_ts, t.revoked FROM tokens t "
                          "JOIN users u ON u.id=t.user_id ORDER BY t.id")

    def revoke_token(self, token_id: int, *, by: str = "cli") -> None:
        with self._tx("revoke") as db:
            if db.execute("UPDATE tokens SET revoked=1 WHERE id=?", (token_id,)).rowcount != 1:
                raise UserError(f"no token {token_id}")
            self._audit(db, by, "token.revoke", f"token:{token_id}", {})

    def check_token(self, token: str) -> User | None:
        rows = self._read("SELECT t.id, u.id FROM tokens t JOIN users u ON u.id=t.user_id "
                          "WHERE t.hash=? AND t.revoked=0 AND u.disabled=0", (_token_hash(token),))
        if not rows:
            return None
        with self._tx("token used") as db:
            db.execute("UPDATE tokens SET last_used_ts=? WHERE id=?", (time.time(), rows[0][0]))
        return self.by_id(rows[0][1])

    # --- audit -------------------------------------------------------------------

    def _audit(self, db, user: str, action: str, target: str, detail: dict) -> None:
        db.execute("INSERT INTO audit (ts, user, action, target, detail) VALUES (?,?,?,?,?)",
                   (time.time(), user, action, target, json.dumps(detail, ensure_ascii=False)))

    def audit(self, user: str, action: str, target: str, detail: dict | None = None, *, ts: float | None = None) -> None:
        with self._tx("audit") as db:
            db.execute("INSERT INTO audit (ts, user, action, target, detail) VALUES (?,?,?,?,?)",
                       (time.time() if ts is None else ts, user, action, target, json.dumps(detail or {}, ensure_ascii=False)))

    def audit_log(self, target: str | None = None, limit: int = 200) -> list[AuditEntry]:
        sql = "SELECT id, ts, user, action, target, detail FROM audit"
        args: tuple = ()
        if target is not None:
            sql += " WHERE target=?"
            args = (target,)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]


def check_password_strength(password: str) -> None:
    if len(password) < 10:
        raise UserError("password: at least 10 characters")
    if password.strip() != password or not password.isprintable():
        raise UserError("password: no leading/trailing spaces or control characters")


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash to verify against for unknown users, so a wrong name costs as much as a wrong password."""
    if not _DUMMY:
        _DUMMY.append(PasswordHasher().hash(secrets.token_urlsafe(16)))
    return _DUMMY[0]
