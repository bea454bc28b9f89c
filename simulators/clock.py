"""The simulated clock: accelerated, settable, freezable.

Simulated time is a float of epoch seconds (UTC). It advances at `speed`
simulated seconds per real (monotonic) second from the last time it was set,
so tests can start at 21:59 local time, jump ahead, or freeze the clock and
read deterministic values. The rule is greenmine.clock's (`sim_time`), anchored
at the last set instant, so a simulator started with the same start, speed and
real start as an agent and a server tells the same time.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from greenmine.clock import sim_time


class SimClock:
    def __init__(self, start: datetime | None = None, speed: float = 1.0, tz: str = "Asia/Shanghai",
                 real_start_epoch_s: float | None = None) -> None:
        self.tz = ZoneInfo(tz)
        self._lock = threading.Lock()
        self._speed = float(speed)
        self._base_mono = time.monotonic()
        self._base_sim = self._to_epoch(start) if start is not None else time.time()
        if start is not None and real_start_epoch_s is not None:
            # `start` was the simulated time at that real instant, so the simulator agrees with an
            # agent and a server given the same start, speed and real start.
            self._base_sim = sim_time(time.time(), self._base_sim, real_start_epoch_s, self._speed)

    @classmethod
    def from_config(cls, cfg, speed: float | None = None) -> SimClock:
        """From a site config's `[clock]` (simulators.config.SimClockConfig); `speed` overrides its speed."""
        return cls(cfg.start, cfg.speed if speed is None else speed, cfg.timezone, cfg.real_start_epoch_s)

    def _to_epoch(self, when: datetime | float) -> float:
        if isinstance(when, (int, float)):
            return float(when)
        if when.tzinfo is None:  # a naive time is the site's local time
            when = when.replace(tzinfo=self.tz)
        return when.timestamp()

    def now(self) -> float:
        """Simulated epoch seconds."""
        with self._lock:
            return sim_time(time.monotonic(), self._base_sim, self._base_mono, self._speed)

    def now_local(self) -> datetime:
        return datetime.fromtimestamp(self.now(), self.tz)

    def set(self, when: datetime | float, speed: float | None = None) -> None:
        """Jump to `when` (aware datetime, naive local datetime, or epoch seconds)."""
        epoch = self._to_epoch(when)
        with self._lock:
            self._base_mono = time.monotonic()
            self._base_sim = epoch
            if speed is not None:
                self._speed = float(speed)

    def set_speed(self, speed: float) -> None:
        """Change the rate from now on; 0 freezes the clock."""
        if speed < 0:
            raise ValueError("speed must be >= 0")
        now = self.now()
        self.set(now, speed)

    def freeze(self) -> None:
        self.set_speed(0.0)

    def advance(self, seconds: float) -> None:
        self.set(self.now() + seconds)

    @property
    def speed(self) -> float:
        return self._speed

    def state(self) -> dict:
        now = self.now()
        return {
            "sim_time": datetime.fromtimestamp(now, self.tz).isoformat(),
            "sim_epoch_s": now,
            "utc": datetime.fromtimestamp(now, timezone.utc).isoformat(),
            "speed": self._speed,
            "timezone": str(self.tz),
        }
