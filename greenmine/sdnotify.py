"""The systemd notification protocol (sd_notify), without a dependency: READY=1, WATCHDOG=1, STOPPING=1.

A unit with `Type=notify` sets `NOTIFY_SOCKET` (a datagram socket: a path, or `@name` in the
abstract namespace); `WatchdogSec=` adds `WATCHDOG_USEC` (and `WATCHDOG_PID`). A message is
one datagram of `KEY=value` lines (https://www.freedesktop.org/software/systemd/man/sd_notify.html).
Outside systemd there is no NOTIFY_SOCKET and every call does nothing.

    notifier = Notifier.from_env()       # reads NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID
    notifier.ready("polling 12 devices") # READY=1 and a STATUS= line
    watchdog = Watchdog(notifier, alive) # alive() -> [] when healthy, else what is stuck
    watchdog.tick()                      # call often; pings WATCHDOG=1 every interval_s while alive() is []
    notifier.stopping(); notifier.close()

The watchdog pings only while the process's own loops are alive (the caller's `alive`), never
from a timer of its own that would keep running while the work is stuck: a process that stops
pinging is killed and restarted by systemd (`Restart=on-failure`) after `WatchdogSec=`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from greenmine.latch import Latch

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to `address` (None: not under systemd, every call is a no-op)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        #: the unit's WatchdogSec in seconds, if systemd watches this process
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._failing = Latch(log)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log.warning("sd_notify: NOTIFY_SOCKET %r is not a unix socket path; not notifying systemd", address)
            address = None
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):  # the watchdog may be for another pid
            try:
                usec = int(env["WATCHDOG_USEC"])
            except ValueError:
                log.warning("sd_notify: WATCHDOG_USEC %r is not a number; no watchdog pings", env["WATCHDOG_USEC"])
        return cls(address, usec if usec and usec > 0 else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of `lines`. False if not under systemd or the send failed (logged once)."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8"), target)
        except OSError as exc:
            self._failing.fail("sd_notify: cannot write to NOTIFY_SOCKET %s: %s", self.address, exc, level=logging.WARNING)
            return False
        self._failing.ok("sd_notify: NOTIFY_SOCKET writable again")
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """WATCHDOG=1 every `interval_s` (half of WatchdogSec, as systemd advises) while `alive()` returns [].

    `alive()` returns the names of the loops that are not running (empty: healthy). When it
    names any, pings stop and that is logged once, with the names; systemd then kills the
    process after WatchdogSec and restarts it.
    """

    def __init__(self, notifier: Notifier, alive: Callable[[], list[str]], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.alive = alive
        self.interval_s = notifier.watchdog_s / 2 if notifier.watchdog_s else None
        self._clock = clock
        self._next = 0.0
        self._stuck = Latch(log)
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled and self.interval_s is not None

    def tick(self) -> bool:
        """Ping if due and alive. Returns True if a ping was sent."""
        if not self.enabled:
            return False
        now = self._clock()
        if now < self._next:
            return False
        stuck = self.alive()
        if stuck:
            self._stuck.fail("watchdog: not pinging systemd, not running: %s (systemd restarts the service after "
                             "WatchdogSec)", ", ".join(stuck))
            return False
        self._stuck.ok("watchdog: every loop running again; pinging systemd")
        self._next = now + self.interval_s
        if self.notifier.ping():
            self.pings += 1
            return True
        return False
