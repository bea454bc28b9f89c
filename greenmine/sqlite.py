"""The durable SQLite helper: every greenmine state file is opened, written and checked here.

It owns how a state file is opened (`connect`: WAL, `synchronous` as the caller asks, a busy
timeout, foreign keys where used, a new file created with mode 0600 because state files can
hold secrets), the write transaction (`transaction`: BEGIN IMMEDIATE, COMMIT or ROLLBACK), the
integrity check a caller may run at open (`quick_check`), what a part does with a damaged file
at start (`open_or_move_aside`: check it, move it aside with a timestamp, start afresh), and the one mapping of `sqlite3`'s
failures to our own. The agent's and the server's errors wrap these:

    StateError(Exception)          a local SQLite state file cannot be used; the message names the file or the step
    ├── StateUnavailable           the same operation may succeed later
    │   ├── StateLocked            another connection held the lock past the busy timeout (SQLITE_BUSY, SQLITE_LOCKED)
    │   ├── StateFull              the disk or the quota is full (SQLITE_FULL)
    │   └── StateIOError           the OS failed a read or a write, or memory ran out (SQLITE_IOERR, SQLITE_NOMEM)
    ├── StateCorrupt               not a database, or a damaged one (SQLITE_CORRUPT, SQLITE_NOTADB, a failed quick_check)
    ├── StateAccess                cannot be opened or written: permissions, a read-only file, no such folder
    │                              (SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_PERM, SQLITE_AUTH)
    └── StateRejected              this data cannot be stored: a constraint failed, or a value is out of range
                                   (IntegrityError, OverflowError from binding an int beyond 64 bits, SQLITE_TOOBIG)

    con = connect(path, synchronous="full")            # raises StateError
    with transaction(con, "outbox: store batch 7"):     # BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception
        con.execute(...)
    with mapped("outbox: read"):                        # any other statement, with the same mapping
        con.execute(...)
    con, moved = open_or_move_aside(path, "outbox", log=log, prepare=create_tables)   # at start

Connections are opened in autocommit mode (`isolation_level=None`): only `transaction` begins
one, so a transaction's extent is visible in the code. They may be used from several threads
(`check_same_thread=False`); a caller that shares one between threads passes its lock to
`transaction`. A reader used from many threads keeps one connection per thread (`PerThread`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

Synchronous = Literal["full", "normal"]


class StateError(Exception):
    """A local SQLite state file cannot be used."""


class StateUnavailable(StateError):
    """The same operation may succeed later."""


class StateLocked(StateUnavailable):
    """Another connection held the database lock for longer than the busy timeout."""


class StateFull(StateUnavailable):
    """The disk or the quota is full."""


class StateIOError(StateUnavailable):
    """The operating system failed a read or a write (or memory ran out)."""


class StateCorrupt(StateError):
    """The file is not a database, or it is damaged."""


class StateAccess(StateError):
    """The file cannot be opened or written: permissions, read-only, a missing folder."""


class StateRejected(StateError):
    """This data cannot be stored: a constraint failed, or a value is out of SQLite's range."""


# Primary result codes (the low byte of an extended code), https://sqlite.org/rescode.html
_BY_CODE: dict[int, type[StateError]] = {
    sqlite3.SQLITE_BUSY: StateLocked,
    sqlite3.SQLITE_LOCKED: StateLocked,
    sqlite3.SQLITE_FULL: StateFull,
    sqlite3.SQLITE_IOERR: StateIOError,
    sqlite3.SQLITE_NOMEM: StateIOError,
    sqlite3.SQLITE_CORRUPT: StateCorrupt,
    sqlite3.SQLITE_NOTADB: StateCorrupt,
    sqlite3.SQLITE_CANTOPEN: StateAccess,
    sqlite3.SQLITE_READONLY: StateAccess,
    sqlite3.SQLITE_PERM: StateAccess,
    sqlite3.SQLITE_AUTH: StateAccess,
    sqlite3.SQLITE_CONSTRAINT: StateRejected,
    sqlite3.SQLITE_TOOBIG: StateRejected,
    sqlite3.SQLITE_MISMATCH: StateRejected,
}


def state_error(exc: BaseException, what: str) -> StateError:
    """The StateError for one sqlite3.Error (or an OverflowError from binding an int), naming `what`.

    Raise it `from exc`. Errors raised by the sqlite3 module itself (a closed connection, a wrong
    number of parameters) carry no result code and become a plain StateError.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, OverflowError):
        cls: type[StateError] = StateRejected
    elif code is not None and (code & 0xFF) in _BY_CODE:
        cls = _BY_CODE[code & 0xFF]
    elif isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
        cls = StateRejected
    else:
        cls = StateError
    return cls(f"{what}: {exc}")


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """Translate sqlite3.Error and OverflowError raised inside the block into a StateError naming `what`.

    OverflowError is caught because sqlite3 raises it, not an sqlite3.Error, for an int parameter
    beyond 64 bits; keep arithmetic that could overflow outside the block.
    """
    try:
        yield
    except (sqlite3.Error, OverflowError) as exc:
        raise state_error(exc, what) from exc


def create_private(path: Path | str) -> None:
    """Create the file with mode 0600 if it does not exist yet (SQLite would use 0644 less the umask).

    SQLite gives the -wal and -shm files the database file's mode, so they are private too.
    An existing file keeps its mode: tightening it is the operator's choice.
    An SQLite file opened without `connect` (the store's own tuned connections) calls this first.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def connect(
    path: Path | str,
    *,
    synchronous: Synchronous = "full",
    busy_timeout_ms: int = 30_000,
    foreign_keys: bool = False,
    check: bool = False,
) -> sqlite3.Connection:
    """Open (creating it and its folder if needed) one SQLite state file in WAL mode. Raises StateError.

    synchronous: "full" makes every commit durable on return (an fsync per commit); "normal"
    may lose the last commits to a power cut, never to a crash of the process.
    check: run `quick_check` first; a damaged file raises StateCorrupt.
    `":memory:"` opens a private in-memory database (no WAL, for tests).
    """
    where = str(path)
    con = None
    try:
        if where != ":memory:":
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            create_private(p)
        with mapped(f"{where}: open"):
            con = sqlite3.connect(where, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
            con.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if check:
                quick_check(con, where)
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if where != ":memory:" and str(mode).lower() != "wal":
                raise StateAccess(f"{where}: open: cannot use WAL mode (journal_mode is {mode})")
            con.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            if foreign_keys:
                con.execute("PRAGMA foreign_keys=ON")
    except OSError as exc:
        raise StateAccess(f"{where}: open: {exc.strerror or exc}") from exc
    except BaseException:
        if con is not None:
            con.close()
        raise
    return con


def quick_check(con: sqlite3.Connection, what: str = "database") -> None:
    """Run `PRAGMA quick_check` (the cheaper integrity check: every page, no index cross-check).

    Raises StateCorrupt naming the first problems found, or StateError if it cannot run.
    """
    with mapped(f"{what}: quick_check"):
        rows = [r[0] for r in con.execute("PRAGMA quick_check(5)").fetchall()]
    if rows != ["ok"]:
        raise StateCorrupt(f"{what}: failed its integrity check: {'; '.join(rows)}")


@contextlib.contextmanager
def transaction(
    con: sqlite3.Connection,
    what: str = "transaction",
    *,
    lock: threading.Lock | threading.RLock | None = None,
    synchronous: Synchronous | None = None,
) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK if the block raises.

    IMMEDIATE takes the write lock at the start, so a busy database fails here (after the busy
    timeout) rather than half-way. sqlite3 failures inside, and at COMMIT, raise StateError;
    other exceptions pass through unchanged after the rollback.
    lock: held for the whole transaction, for a connection shared between threads.
    synchronous: this transaction's commit only (e.g. "normal" for deletes that may be lost).

    Nested (the connection is already in a transaction, opened here): a savepoint. A block that raises
    undoes only its own writes; the rest commit, or not, with the outer transaction, so a batch of
    steps is one durable commit. `synchronous` is the outer transaction's to set.
    """
    with lock if lock is not None else contextlib.nullcontext():
        if con.in_transaction:
            with mapped(what):
                con.execute("SAVEPOINT nested")
                try:
                    yield con
                except BaseException:
                    if con.in_transaction:  # SQLite may have rolled the whole transaction back already
                        with contextlib.suppress(sqlite3.Error):
                            con.execute("ROLLBACK TO nested")
                            con.execute("RELEASE nested")
                    raise
                con.execute("RELEASE nested")
            return
        with mapped(what):
            previous = None
            if synchronous is not None:
                previous = con.execute("PRAGMA synchronous").fetchone()[0]
                con.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (e.g. after SQLITE_FULL): then there is nothing to undo,
                    # and a failing ROLLBACK must not hide the error that caused it.
                    if con.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            con.execute("ROLLBACK")
                    raise
            finally:
                if previous is not None:
                    con.execute(f"PRAGMA synchronous={int(previous)}")


class PerThread:
    """One connection per thread to one file, made on first use by `open_()`, since a sqlite3 connection
    belongs to the thread that made it; `close()` closes every one (readers shared between threads)."""

    def __init__(self, open_: Callable[[], sqlite3.Connection]) -> None:
        self._open = open_
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._open()
            with self._lock:
                self._all.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            cons, self._all = self._all, []
        for con in cons:
            con.close()
        self._local = threading.local()


@dataclass(frozen=True)
class MovedAside:
    """A state file found damaged at start and renamed; the part started with a fresh file."""

    what: str  # the part, e.g. "outbox", "spool"
    path: Path
    moved_to: Path
    reason: str


def _damaged_reason(path: Path) -> str | None:
    """Why an existing file cannot be trusted before SQLite even opens it, or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        wal = Path(f"{path}-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            # Every file greenmine opens gets its header written at once (switching to WAL writes page 1),
            # so an empty one was truncated or replaced: whatever it held is gone, and that is worth an error.
            return "the file is empty (0 bytes)"
    return None


def move_aside(path: Path | str, what: str, reason: str, *, now: datetime | None = None) -> MovedAside:
    """Rename a state file (and its -wal and -shm) to `<name>.damaged-<UTC time>`, for later inspection."""
    p = Path(path)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S.%fZ")
    target = p.with_name(f"{p.name}.damaged-{stamp}")
    try:
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{p}{suffix}")
            if src.exists():
                os.replace(src, f"{target}{suffix}")
    except OSError as exc:
        raise StateAccess(f"{p}: cannot move the damaged file aside: {exc.strerror or exc}") from exc
    return MovedAside(what, p, target, reason)


def open_or_move_aside(
    path: Path | str,
    what: str,
    *,
    log: logging.Logger,
    prepare: Callable[[sqlite3.Connection], None] | None = None,
    on_moved: Callable[[MovedAside], None] | None = None,
    **connect_kw,
) -> tuple[sqlite3.Connection, MovedAside | None]:
    """Open a state file at start: `connect` with `quick_check`, then `prepare(con)` (create tables, read
    what the part needs). A damaged file (a failed check, not a database, empty where it held data, or
    SQLITE_CORRUPT while preparing) is moved aside (`move_aside`), logged at error, passed to `on_moved`
    (the part counts it), and a fresh file is opened and prepared. Other failures raise StateError.

    Returns the connection and what was moved aside (None if the file was sound).
    """
    if str(path) == ":memory:":
        con = connect(path, **connect_kw)
        if prepare is not None:
            with mapped(f"{what}: prepare"):
                prepare(con)
        return con, None
    p = Path(path)
    reason = _damaged_reason(p)
    if reason is None:
        con = None
        try:
            con = connect(p, check=True, **connect_kw)
            if prepare is not None:
                with mapped(f"{what} {p}: prepare"):
                    prepare(con)
            return con, None
        except StateCorrupt as exc:
            if con is not None:
                con.close()
            reason = str(exc).removeprefix(f"{p}: ").replace("\n", "; ")
        except BaseException:
            if con is not None:
                con.close()
            raise
    moved = move_aside(p, what, reason)
    log.error("%s %s is damaged (%s): moved aside to %s; starting with a new file", what, p, reason, moved.moved_to.name)
    if on_moved is not None:
        on_moved(moved)
    con = connect(p, **connect_kw)
    try:
        if prepare is not None:
            with mapped(f"{what} {p}: prepare"):
                prepare(con)
    except BaseException:
        con.close()
        raise
    return con, moved
