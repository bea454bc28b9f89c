"""The log-once latch: one failing thing's log lines.

The first failure is logged at error (or the level the caller gives), every repeat at debug,
and the recovery once at info; a success while nothing was failing logs nothing.

    link = Latch(log)
    link.fail("cannot reach broker %s: %s", host, exc)      # error the first time, then debug
    link.ok("broker %s reachable again", host)              # info once, only after a failure

One latch per thing that fails on its own (a broker, a relay, one device). It is not locked:
its owner calls it from one thread.
"""

from __future__ import annotations

import logging
from typing import Any


class Latch:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.failing = False

    def fail(self, msg: str, *args: Any, level: int = logging.ERROR, exc_info: Any = None) -> bool:
        """Log a failure: at `level` if it is the first since the last recovery, else at debug.
        Returns True when this call changed the state (the first failure)."""
        first = not self.failing
        self.failing = True
        self.log.log(level if first else logging.DEBUG, msg, *args, exc_info=exc_info)
        return first

    def ok(self, msg: str, *args: Any) -> bool:
        """Log a recovery at info if something was failing; otherwise log nothing.
        Returns True when this call changed the state (the recovery)."""
        if not self.failing:
            return False
        self.failing = False
        self.log.info(msg, *args)
        return True
