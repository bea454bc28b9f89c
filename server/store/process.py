"""The SQLite store's writes, in a child process of their own.

    SqliteProcessStore(path, **SqliteStore kwargs)   # same API as SqliteStore

Why: inserting a reading into the store costs about as much CPU as receiving
it from the broker, and in one process both run under one GIL next to the
MQTT thread and validation. A child process gives the inserts their own
interpreter and core. Reads (`query_series`, `count`, ...) stay in this
process on their own connections (`SqliteReader`): WAL lets them run beside
the writer.

The child is a `server.child.Child` (started on the first write; requests and
replies are pickles over its stdin/stdout) running `SqliteStore`.

Guarantees are SqliteStore's: `write` returns only after the child's commit
returned (the writer then deletes the batch from the spool). If the child dies,
the write in flight raises StoreUnavailable, the writer retries it (idempotent),
and the next write starts a new child. If this process dies, the child reads
EOF and exits.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from greenmine.server.child import Child, ChildFailed, ChildGone
from greenmine.server.digest import DigestSpec, digest
from greenmine.server.errors import StoreRejected, StoreUnavailable
from greenmine.server.store.base import StoredReading
from greenmine.server.store.sqlite import SqliteReader, SqliteStore


class SqliteProcessStore(SqliteReader):
    """A Sink with SqliteStore's behaviour whose writes run in a child process."""

    name = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000, **store_kwargs) -> None:
        super().__init__(path, busy_timeout_ms)
        # create the file and tables now, as SqliteStore does, so reads work before the first write
        SqliteStore(path, busy_timeout_ms=busy_timeout_ms).close()
        kwargs = dict(store_kwargs, busy_timeout_ms=busy_timeout_ms)
        kwargs.pop("clock", None)  # a callable cannot cross; the child uses time.time
        self._child = Child("greenmine.server.store.process:StoreWorker", (str(self.path), kwargs), name=f"sqlite store {self.path}")

    def start(self) -> None:
        """Start the writer process now rather than on the first write. Raises StoreUnavailable."""
        try:
            self._child.start()
        except (ChildGone, ChildFailed) as exc:
            raise StoreUnavailable(str(exc)) from None

    def _send(self, op: str, arg=None):
        try:
            wait = self._child.send(op, arg)
        except ChildGone as exc:
            raise StoreUnavailable(str(exc)) from None
        except ChildFailed as exc:  # the store did not open in the child
            raise StoreUnavailable(exc.message) from None

        def result():
            try:
                return wait()
            except ChildGone as exc:
                raise StoreUnavailable(str(exc)) from None
            except ChildFailed as exc:
                if exc.kind == "StoreRejected":
                    raise StoreRejected(exc.message) from None
                if exc.kind == "StoreUnavailable":
                    raise StoreUnavailable(exc.message) from None
                raise StoreUnavailable(f"sqlite store: {exc.kind}: {exc.message}") from None

        return result

    def _call(self, op: str, arg=None):
        return self._send(op, arg)()

    # --- Sink --------------------------------------------------------------

    def write(self, readings: Sequence[StoredReading]) -> None:
        if readings:
            self._call("write", [tuple(r) for r in readings])  # plain tuples pickle several times faster

    def write_async(self, readings: Sequence[StoredReading]):
        """Start a write; returns `wait()`, which returns when it is committed or raises. Wait in order."""
        if not readings:
            return lambda: None
        return self._send("write", [tuple(r) for r in readings])

    def write_spooled_async(self, bodies: Sequence[bytes], digests: Sequence[DigestSpec] = ()):
        """`write_async` of spool bodies (`server.spool.pack_readings`), decoded by the child rather than here.
        With `digests`, `wait()` returns the rows' `server.digest.Digest` for each spec (else None)."""
        if not bodies:
            return (lambda: [digest([], spec) for spec in digests]) if digests else (lambda: None)
        return self._send("write_spooled", (list(bodies), list(digests)))

    def maintain(self, now_s: float | None = None) -> int:
        return self._call("maintain", now_s)

    def ping(self) -> None:
        self._call("ping")

    def close(self) -> None:
        self._child.close()
        super().close()


class StoreWorker:
    """The child's side: a SqliteStore serving the requests above."""

    def __init__(self, init: tuple[str, dict]) -> None:
        path, kwargs = init
        self.store = SqliteStore(path, **kwargs)

    def handle(self, op: str, arg):
        if op == "write":
            return self.store.write(arg)
        if op == "write_spooled":
            from greenmine.server.spool.spool import unpack_readings

            bodies, specs = arg
            rows = list(itertools.chain.from_iterable(map(unpack_readings, bodies)))  # C-level, not a Python loop per row
            self.store.write(rows)
            return [digest(rows, spec) for spec in specs] if specs else None
        if op == "maintain":
            return self.store.maintain(arg)
        if op == "ping":
            return self.store.ping()
        raise ValueError(f"unknown request {op!r}")

    def close(self) -> None:
        self.store.close()
