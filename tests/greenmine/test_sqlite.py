"""greenmine.sqlite against real SQLite files: pragmas, private files, transactions, and the error mapping."""

from __future__ import annotations

import sqlite3

import pytest

from greenmine.sqlite import (
    StateAccess,
    StateCorrupt,
    StateError,
    StateLocked,
    StateRejected,
    StateUnavailable,
    connect,
    mapped,
    quick_check,
    state_error,
    transaction,
)


def pragma(con, name):
    return con.execute(f"PRAGMA {name}").fetchone()[0]


def test_connect_sets_wal_synchronous_busy_timeout_and_foreign_keys(tmp_path):
    full = connect(tmp_path / "a" / "full.sqlite", synchronous="full", busy_timeout_ms=1234, foreign_keys=True)
    normal = connect(tmp_path / "normal.sqlite", synchronous="normal")
    assert pragma(full, "journal_mode") == "wal" and pragma(full, "synchronous") == 2
    assert pragma(full, "busy_timeout") == 1234 and pragma(full, "foreign_keys") == 1
    assert pragma(normal, "synchronous") == 1 and pragma(normal, "foreign_keys") == 0
    assert not full.in_transaction and full.isolation_level is None  # autocommit: only transaction() begins one
    full.close()
    normal.close()


def test_new_files_are_private_and_existing_ones_keep_their_mode(tmp_path):
    con = connect(tmp_path / "new.sqlite")
    con.execute("CREATE TABLE t (x)")
    for name in ("new.sqlite", "new.sqlite-wal", "new.sqlite-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    con.close()
    old = tmp_path / "old.sqlite"
    sqlite3.connect(old).close()
    old.chmod(0o640)
    connect(old).close()
    assert old.stat().st_mode & 0o777 == 0o640


def test_transaction_commits_or_rolls_back_and_restores_synchronous(tmp_path):
    con = connect(tmp_path / "t.sqlite", synchronous="full")
    con.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    with transaction(con, synchronous="normal"):
        con.execute("INSERT INTO t VALUES (1)")
        assert con.in_transaction and pragma(con, "synchronous") == 1
    assert pragma(con, "synchronous") == 2
    with pytest.raises(KeyError):  # not an SQLite error: passes through unchanged, after the rollback
        with transaction(con):
            con.execute("INSERT INTO t VALUES (2)")
            raise KeyError("boom")
    with pytest.raises(StateRejected, match="insert twice"):
        with transaction(con, "insert twice"):
            con.execute("INSERT INTO t VALUES (3)")
            con.execute("INSERT INTO t VALUES (1)")
    assert [r[0] for r in con.execute("SELECT x FROM t")] == [1] and not con.in_transaction
    con.close()


def test_a_nested_transaction_is_a_savepoint_of_the_outer_one(tmp_path):
    con = connect(tmp_path / "t.sqlite", synchronous="full")
    con.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    statements: list[str] = []
    con.set_trace_callback(statements.append)
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
        with transaction(con):
            con.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(KeyError):  # undoes only its own step
            with transaction(con):
                con.execute("INSERT INTO t VALUES (3)")
                raise KeyError("one step fails")
        with pytest.raises(StateRejected, match="the step"):  # an SQLite error inside is mapped as outside
            with transaction(con, "the step"):
                con.execute("INSERT INTO t VALUES (1)")
    con.set_trace_callback(None)
    assert [r[0] for r in con.execute("SELECT x FROM t ORDER BY x")] == [1, 2] and not con.in_transaction
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    con.close()


def test_an_int_beyond_64_bits_is_rejected_not_an_overflow(tmp_path):
    con = connect(tmp_path / "o.sqlite")
    con.execute("CREATE TABLE t (x)")
    with pytest.raises(StateRejected, match="store x") as err:
        with transaction(con, "store x"):
            con.execute("INSERT INTO t VALUES (?)", (2**63,))
    assert isinstance(err.value.__cause__, OverflowError)
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    con.close()


def test_a_database_locked_by_another_connection_is_state_locked(tmp_path):
    path = tmp_path / "l.sqlite"
    holder = connect(path)
    holder.execute("CREATE TABLE t (x)")
    waiter = connect(path, busy_timeout_ms=50)
    with transaction(holder):
        holder.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(StateLocked, match="second writer") as err:
            with transaction(waiter, "second writer"):
                pass
    assert isinstance(err.value, StateUnavailable)  # transient: the caller may retry
    with transaction(waiter):  # and the retry works once the lock is free
        waiter.execute("INSERT INTO t VALUES (2)")
    holder.close()
    waiter.close()


def _damage(path, page_size=4096):
    """Overwrite the second page (the first table's root) with garbage, keeping the header."""
    with open(path, "r+b") as f:
        f.seek(page_size)
        f.write(b"\xa5" * page_size)


def test_quick_check_finds_a_damaged_page(tmp_path):
    path = tmp_path / "c.sqlite"
    con = connect(path)
    con.execute("CREATE TABLE t (x)")
    with transaction(con):
        con.executemany("INSERT INTO t VALUES (?)", [(f"row {i}" * 20,) for i in range(500)])
    quick_check(con, "c")  # healthy: no error
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    _damage(path)
    with pytest.raises(StateCorrupt, match="c.sqlite"):
        connect(path, check=True)


def test_not_a_database_is_corrupt_and_a_missing_permission_is_access(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not SQLite" * 300)
    with pytest.raises(StateCorrupt, match="junk.sqlite"):
        connect(junk)
    with pytest.raises(StateAccess):
        connect(tmp_path)  # a folder, not a file


def test_mapping_by_result_code_and_by_class():
    def err(cls, code):
        e = cls("x")
        e.sqlite_errorcode = code
        return e

    assert type(state_error(err(sqlite3.OperationalError, sqlite3.SQLITE_FULL), "w")).__name__ == "StateFull"
    assert type(state_error(err(sqlite3.OperationalError, sqlite3.SQLITE_IOERR | (4 << 8)), "w")).__name__ == "StateIOError"
    assert type(state_error(sqlite3.IntegrityError("x"), "w")) is StateRejected
    assert type(state_error(sqlite3.ProgrammingError("closed"), "w")) is StateError
    assert str(state_error(sqlite3.ProgrammingError("closed"), "outbox: read")) == "outbox: read: closed"


def test_mapped_translates_a_real_error_outside_a_transaction(tmp_path):
    con = connect(tmp_path / "m.sqlite")
    con.close()
    with pytest.raises(StateError, match="read after close"):
        with mapped("read after close"):
            con.execute("SELECT 1")


# --- open_or_move_aside --------------------------------------------------------------------------


def test_open_or_move_aside_keeps_a_sound_file_and_moves_a_damaged_one(tmp_path):
    import logging

    from greenmine.sqlite import open_or_move_aside

    log = logging.getLogger("test")
    path = tmp_path / "x.sqlite"
    con, moved = open_or_move_aside(path, "x", log=log, prepare=lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (v)"))
    con.execute("INSERT INTO t VALUES (1)")
    con.close()
    con, moved = open_or_move_aside(path, "x", log=log)
    assert moved is None and con.execute("SELECT v FROM t").fetchall() == [(1,)]
    con.close()
    path.write_bytes(b"garbage" * 1000)
    seen = []
    con, moved = open_or_move_aside(path, "x", log=log, on_moved=seen.append,
                                    prepare=lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (v)"))
    assert seen == [moved] and moved.what == "x" and "not a database" in moved.reason
    assert moved.moved_to.read_bytes() == b"garbage" * 1000 and moved.moved_to.name.startswith("x.sqlite.damaged-")
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
    con.close()
