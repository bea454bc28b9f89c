"""Long-lived threads that never die silently: each is logged, counted and restarted, or ends the process.

A thread's work is a function that returns when the thread should end (its owner asked it to stop). If it
raises instead, the supervisor logs the traceback at error, counts the crash and then, by the thread's policy:

- `restart`: calls the function again after a back-off (greenmine.backoff, 0.5 s doubling to 30 s), for
  work that keeps no state between iterations outside durable files (the store writer);
- `fatal`: does not restart it and marks the supervisor failed. The process must then exit non-zero so
  that its own supervisor (systemd's `Restart=on-failure`) starts it afresh. For work that holds
  something only a new process gets back, e.g. MQTT messages received but not acknowledged: the broker
  redelivers them only on a new session.

    sup = Supervisor(log, on_crash=lambda name: crashes.labels(name).inc())
    t = sup.thread("ingest", self._run, policy=Policy.FATAL)   # like threading.Thread: start, join, is_alive
    sup.failed                  # "ingest: RuntimeError('...')" once a fatal thread died, else None
    sup.wait_failed(timeout_s)  # for the process's main loop
    sup.snapshot()              # {name: {"alive", "policy", "crashes", "last_error"}}, for /health

One supervisor per component or per process; it holds no global state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import Enum

from greenmine.backoff import Backoff


class Policy(str, Enum):
    RESTART = "restart"
    FATAL = "fatal"


class SupervisedThread:
    """One supervised thread; the threading.Thread calls its owner uses (start, join, is_alive)."""

    def __init__(self, sup: Supervisor, name: str, target: Callable[[], None], policy: Policy, daemon: bool) -> None:
        self.name = name
        self.policy = policy
        self.crashes = 0
        self.last_error: str | None = None
        self.running = False  # inside `target` now (False while waiting to be restarted)
        self._sup = sup
        self._target = target
        self._stop = threading.Event()
        self._backoff = Backoff(sup.restart_min_s, sup.restart_max_s)
        self._thread = threading.Thread(target=self._run, name=f"greenmine-{name}", daemon=daemon)

    def start(self) -> None:
        self.running = True  # from here on, not only once the thread got going: /health asked at once is right
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread; a restart that is waiting for its back-off is cancelled."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self.running = True
            try:
                self._target()
                return
            except Exception as exc:  # noqa: BLE001 - the point of this module: no thread dies silently
                self.crashes += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                fatal = self.policy is Policy.FATAL
                self._sup.log.error("thread %s died (crash %d): %s; %s", self.name, self.crashes, self.last_error,
                                    "the process must restart" if fatal else "restarting it", exc_info=True)
                self._sup._crashed(self, exc)
                if fatal:
                    return
            finally:
                self.running = False
            if self._stop.wait(self._backoff.next()):
                return

    def state(self) -> dict:
        return {"alive": self.running, "policy": self.policy.value, "crashes": self.crashes, "last_error": self.last_error}


class Supervisor:
    def __init__(self, log: logging.Logger | None = None, *, on_crash: Callable[[str], None] | None = None,
                 restart_min_s: float = 0.5, restart_max_s: float = 30.0) -> None:
        self.log = log or logging.getLogger(__name__)
        self.restart_min_s, self.restart_max_s = restart_min_s, restart_max_s
        self._on_crash = [on_crash] if on_crash else []
        self._threads: list[SupervisedThread] = []
        self._failed = threading.Event()
        self._failure: str | None = None
        self._lock = threading.Lock()

    def thread(self, name: str, target: Callable[[], None], *, policy: Policy = Policy.RESTART,
               daemon: bool = False) -> SupervisedThread:
        """A supervised thread running `target` (not started)."""
        t = SupervisedThread(self, name, target, policy, daemon)
        with self._lock:
            self._threads.append(t)
        return t

    def add_crash_listener(self, fn: Callable[[str], None]) -> None:
        """Call `fn(thread name)` on every crash (e.g. to count it in a metric)."""
        self._on_crash.append(fn)

    @property
    def failed(self) -> str | None:
        """What a fatal thread died of ("name: error"), or None."""
        return self._failure

    def wait_failed(self, timeout_s: float) -> bool:
        return self._failed.wait(timeout_s)

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            threads = list(self._threads)
        return {t.name: t.state() for t in threads}

    def _crashed(self, t: SupervisedThread, exc: Exception) -> None:
        for fn in self._on_crash:
            try:
                fn(t.name)
            except Exception:  # noqa: BLE001 - a broken counter must not hide the crash it counts
                self.log.exception("supervisor: crash listener failed")
        if t.policy is Policy.FATAL and self._failure is None:
            self._failure = f"{t.name}: {t.last_error}"
            self._failed.set()
