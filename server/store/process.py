"""The SQLite store's writes, in a child process of their own.

    SqliteProcessStore(path, **SqliteStore kwargs)   # same API as SqliteStore

Why: inserting a reading into the store costs about as much CPU as receiving
it from the broker, and in one process both run under one GIL next to the
MQTT thread and validation. A child process gives the inserts their own
interpreter and core. Reads (`query_series`, `count`, ...) stay in this
process on their own connections (`SqliteReader`): WAL lets them run beside
the writer.

The child is `python -c ...` started on the first write (not multiprocessing:
its spawn start method leaves a resource-tracker process behind, and fork is
unsafe once threads run). Requests and replies are length-prefixed pickles over
its stdin/stdout: only this process and its own child ever see them.

Guarantees are SqliteStore's: `write` returns only after the child's commit
returned (the writer then deletes the batch from the spool). If the child dies,
the write in flight raises StoreUnavailable, the writer retries it (idempotent),
and the next write starts a new child. If this process dies, the child reads
EOF and exits.
"""

from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from server.errors import StoreRejected, StoreUnavailable
from server.store.base import StoredReading
from server.store.sqlite import SqliteReader, SqliteStore

log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
_CHILD = "import sys; sys.path[:0] = {path!r}; from server.store.process import _serve; _serve()"


def _read_msg(f) -> object:
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("pipe closed")
    (n,) = _LEN.unpack(head)
    body = f.read(n)
    if len(body) < n:
        raise EOFError("pipe closed")
    return pickle.loads(body)


def _write_msg(f, obj: object) -> None:
    body = pickle.dumps(obj, protocol=5)
    f.write(_LEN.pack(len(body)) + body)
    f.flush()


class _Broken(Exception):
    """The pipe to the child failed (as opposed to the child reporting an error)."""


class SqliteProcessStore(SqliteReader):
    """A Sink with SqliteStore's behaviour whose writes run in a child process."""

    name = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000, **store_kwargs) -> None:
        super().__init__(path, busy_timeout_ms)
        # create the file and tables now, as SqliteStore does, so reads work before the first write
        SqliteStore(path, busy_timeout_ms=busy_timeout_ms).close()
        self._kwargs = dict(store_kwargs, busy_timeout_ms=busy_timeout_ms)
        self._kwargs.pop("clock", None)  # a callable cannot cross; the child uses time.time
        self._proc: subprocess.Popen | None = None
        self._plock = threading.Lock()
        self._closed = False

    # --- the child ---------------------------------------------------------

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD.format(path=[p for p in sys.path if p])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        try:
            _write_msg(proc.stdin, (str(self.path), self._kwargs))
            self._reply(proc)  # the child opened the store (or says why not)
        except (_Broken, OSError) as exc:
            self._stop(proc, kill=True)
            raise StoreUnavailable(f"sqlite store {self.path}: writer process did not start ({exc})") from None
        except BaseException:
            self._stop(proc)
            raise
        return proc

    def _reply(self, proc: subprocess.Popen):
        try:
            status, value = _read_msg(proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise _Broken(f"sqlite store {self.path}: writer process ended ({exc})") from None
        if status == "ok":
            return value
        if status == "rejected":
            raise StoreRejected(value)
        raise StoreUnavailable(value)

    def _call(self, op: str, arg=None):
        return self._send(op, arg)()

    def _send(self, op: str, arg=None):
        """Send a request; returns a function that waits for its reply. Replies come in request order."""
        with self._plock:
            if self._closed:
                raise StoreUnavailable(f"sqlite store {self.path}: closed")
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    log.warning("sqlite store: writer process exited (code %s); starting another", self._proc.returncode)
                    self._stop(self._proc)
                self._proc = self._start()
            proc = self._proc
            try:
                _write_msg(proc.stdin, (op, arg))
            except OSError as exc:
                self._stop(proc, kill=True)
                self._proc = None
                raise StoreUnavailable(f"sqlite store {self.path}: writer process gone ({exc})") from None

        def wait():
            try:
                return self._reply(proc)
            except _Broken as exc:
                # the pipe is broken (the child died or is dying): it cannot be used again
                with self._plock:
                    if self._proc is proc:
                        self._stop(proc, kill=True)
                        self._proc = None
                raise StoreUnavailable(str(exc)) from None

        return wait

    @staticmethod
    def _stop(proc: subprocess.Popen, kill: bool = False) -> None:
        if kill:
            proc.kill()
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            proc.wait(10)  # EOF on stdin: it finishes the write in hand and exits
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # --- Sink --------------------------------------------------------------

    def write(self, readings: Sequence[StoredReading]) -> None:
        if readings:
            self._call("write", [tuple(r) for r in readings])  # plain tuples pickle several times faster

    def write_async(self, readings: Sequence[StoredReading]):
        """Start a write; returns `wait()`, which returns when it is committed or raises. Wait in order."""
        if not readings:
            return lambda: None
        return self._send("write", [tuple(r) for r in readings])

    def write_spooled_async(self, bodies: Sequence[bytes]):
        """`write_async` of spool bodies (`server.spool.pack_readings`), decoded by the child rather than here."""
        if not bodies:
            return lambda: None
        return self._send("write_spooled", list(bodies))

    def maintain(self, now_s: float | None = None) -> int:
        return self._call("maintain", now_s)

    def ping(self) -> None:
        self._call("ping")

    def close(self) -> None:
        with self._plock:
            self._closed = True
            if self._proc is not None:
                self._stop(self._proc)
                self._proc = None
        super().close()


def _serve() -> None:
    """The child: open the store, then serve requests from stdin until EOF."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the reply pipe
    try:
        path, kwargs = _read_msg(inp)
    except EOFError:
        return
    try:
        store = SqliteStore(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which retries
        _write_msg(out, ("unavailable", str(exc)))
        return
    _write_msg(out, ("ok", None))
    try:
        while True:
            try:
                op, arg = _read_msg(inp)
            except EOFError:
                return
            try:
                if op == "write":
                    value = store.write(arg)
                elif op == "write_spooled":
                    from server.spool import unpack_readings

                    value = store.write([row for body in arg for row in unpack_readings(body)])
                elif op == "maintain":
                    value = store.maintain(arg)
                elif op == "ping":
                    value = store.ping()
                else:
                    raise ValueError(f"unknown request {op!r}")
                reply = ("ok", value)
            except StoreRejected as exc:
                reply = ("rejected", str(exc))
            except Exception as exc:  # noqa: BLE001 - StoreUnavailable or a bug: the parent retries
                reply = ("unavailable", str(exc) if isinstance(exc, StoreUnavailable) else f"sqlite store: {exc!r}")
            try:
                _write_msg(out, reply)
            except OSError:
                return  # the parent is gone
    finally:
        store.close()
