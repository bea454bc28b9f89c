"""A worker in a child process of its own: requests in, replies out, over its stdin/stdout.

    child = Child("greenmine.server.ingest.validation:ValidatorWorker", init_arg, name="validator")
    wait = child.send("op", arg)     # returns at once
    value = wait()                   # the reply; raises ChildFailed or ChildGone
    child.close()

Why: the server's CPU-heavy steps (SQLite inserts, JSON validation) would
otherwise share one GIL with paho's network thread. A child gives them their
own interpreter and core.

- The child is `python -c ...`, started on the first request (not
  multiprocessing: its spawn start method leaves a resource-tracker process
  behind, and fork is unsafe once threads run). It imports `factory` (a
  "module:callable"), calls it with `init_arg`, and serves `obj.handle(op,
  arg)` until its stdin closes; then it calls `obj.close()` if there is one.
- Requests and replies are length-prefixed pickles. Only this process and its
  own child ever see them.
- Replies come in request order; waits must be called in order. A reader
  thread takes every reply off the pipe as soon as it comes, so a large reply
  can never block the child while this process is still writing it a large
  request (a pipe holds 64 KiB).
- An exception in `handle` is sent back and raised as `ChildFailed(kind,
  message)`; `kind` is the exception's class name. The worker goes on.
- A child that dies or cannot start makes the request in flight raise
  `ChildGone`; the next `send` starts another child. If this process dies,
  the child reads EOF and exits.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
_BOOT = "import sys; sys.path[:0] = {path!r}; from server.child import _serve; _serve({factory!r})"


class ChildGone(Exception):
    """The child process died, or could not be started or reached."""


class ChildFailed(Exception):
    """The worker raised `kind` (its exception class name) with `message`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


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


class _Running:
    """A started child, its reply queue and the thread filling it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._pump, name=f"greenmine-child-{proc.pid}", daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        while True:
            try:
                reply = _read_msg(self.proc.stdout)
            except (EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
                self.replies.put(exc)
                return
            self.replies.put(reply)

    def alive(self) -> bool:
        return self.proc.poll() is None


class Child:
    def __init__(self, factory: str, init_arg: object = None, *, name: str = "worker") -> None:
        self.factory = factory
        self.init_arg = init_arg
        self.name = name
        self._run: _Running | None = None
        self._lock = threading.Lock()
        self._closed = False

    def send(self, op: str, arg: object = None) -> Callable[[], object]:
        """Send a request; returns a function that waits for its reply (and raises what the worker raised)."""
        with self._lock:
            run = self._running()
            try:
                _write_msg(run.proc.stdin, (op, arg))
            except (OSError, ValueError) as exc:
                self._stop(run, kill=True)
                self._run = None
                raise ChildGone(f"{self.name}: child process gone ({exc})") from None

        def wait():
            reply = run.replies.get()
            if isinstance(reply, BaseException):
                run.replies.put(reply)  # the pipe is closed for good: every later wait on this child gets it too
            try:
                return self._reply(reply)
            except ChildGone:
                # the pipe is broken (the child died or is dying): it cannot be used again
                with self._lock:
                    if self._run is run:
                        self._stop(run, kill=True)
                        self._run = None
                raise

        return wait

    def start(self) -> None:
        """Start the child now rather than on the first request (no-op if it runs). Raises ChildGone/ChildFailed."""
        with self._lock:
            self._running()

    def _running(self) -> _Running:
        """The running child, started (again) if need be. Call with the lock held."""
        if self._closed:
            raise ChildGone(f"{self.name}: closed")
        if self._run is None or not self._run.alive():
            if self._run is not None:
                log.warning("%s: child process exited (code %s); starting another", self.name, self._run.proc.returncode)
                self._stop(self._run)
            self._run = self._start()
        return self._run

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first request or after it ended)."""
        run = self._run
        return run.pid if run is not None and run.alive() else None

    def call(self, op: str, arg: object = None) -> object:
        return self.send(op, arg)()

    def close(self) -> None:
        """Close the child's stdin (it finishes the request in hand and exits) and reap it."""
        with self._lock:
            self._closed = True
            if self._run is not None:
                self._stop(self._run)
                self._run = None

    def _start(self) -> _Running:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT.format(path=[p for p in sys.path if p], factory=self.factory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        run = _Running(proc)
        try:
            _write_msg(proc.stdin, self.init_arg)
            self._reply(run.replies.get())  # the worker is set up (or says why not)
        except (ChildGone, OSError) as exc:
            self._stop(run, kill=True)
            raise ChildGone(f"{self.name}: child process did not start ({exc})") from None
        except BaseException:
            self._stop(run)
            raise
        return run

    def _reply(self, reply):
        if isinstance(reply, BaseException):
            raise ChildGone(f"{self.name}: child process ended ({reply})")
        status, *value = reply
        if status == "ok":
            return value[0]
        raise ChildFailed(*value)

    @staticmethod
    def _stop(run: _Running, kill: bool = False) -> None:
        proc = run.proc
        if kill:
            proc.kill()
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(10)  # EOF on stdin: it finishes the request in hand and exits
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        run.reader.join(10)  # EOF on its stdout ends the reader
        try:
            proc.stdout.close()
        except OSError:
            pass


def _serve(factory: str) -> None:
    """The child: build the worker from the first message, then serve requests from stdin until EOF."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the reply pipe
    try:
        init_arg = _read_msg(inp)
    except EOFError:
        return
    try:
        module, _, attr = factory.partition(":")
        worker = getattr(importlib.import_module(module), attr)(init_arg)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        _write_msg(out, ("err", type(exc).__name__, str(exc)))
        return
    _write_msg(out, ("ok", None))
    try:
        while True:
            try:
                op, arg = _read_msg(inp)
            except EOFError:
                return
            try:
                reply = ("ok", worker.handle(op, arg))
            except Exception as exc:  # noqa: BLE001 - the parent decides what it means
                reply = ("err", type(exc).__name__, str(exc) or repr(exc))
            try:
                _write_msg(out, reply)
            except OSError:
                return  # the parent is gone
    finally:
        close = getattr(worker, "close", None)
        if close is not None:
            close()
