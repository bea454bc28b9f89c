"""One explicit notion of "now" shared by the agent, the server and the demo.

Production runs on the system clock, and that is the default. For demos and
tests a process can instead run on an *accelerated* simulated clock: simulated
time starts at `sim_start` at the real (Unix) instant `real_start_epoch_s` and
then advances `speed` simulated seconds per real second:

    sim(t_real) = sim_start + (t_real - real_start_epoch_s) * speed

Processes given the same three values agree on the simulated time without
talking to each other (the demo passes them to the simulator, the server and
the agent). Schedules stay in real seconds; only the time written into data
(reading and status timestamps) and the time data is judged by (the server's
KPIs, alert timing, ingest's future check, emails) are simulated.

    cfg = ClockConfig(mode="accelerated", sim_start=..., real_start_epoch_s=..., speed=60)
    clock = Clock(cfg)
    clock.now()              # simulated epoch seconds
    clock.to_sim(real_s)     # real epoch seconds -> simulated
    clock.to_real(sim_s)     # simulated epoch seconds -> real
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from enum import Enum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class ClockMode(str, Enum):
    SYSTEM = "system"
    ACCELERATED = "accelerated"


class ClockConfig(BaseModel):
    """The `[clock]` section: which time stamps data and judges it. For demos and tests; production keeps `system`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: ClockMode = Field(
        default=ClockMode.SYSTEM,
        description="system: the host's clock (production); accelerated: simulated time, for demos and tests only",
    )
    sim_start: AwareDatetime | None = Field(
        default=None, description="accelerated: the simulated time at real_start_epoch_s (ISO 8601 with offset)"
    )
    real_start_epoch_s: float | None = Field(
        default=None, gt=0,
        description="accelerated: the real Unix time at which simulated time was sim_start; give every process the same value",
    )
    speed: float = Field(default=1.0, gt=0, le=100_000, description="accelerated: simulated seconds per real second")

    @model_validator(mode="after")
    def _check(self) -> ClockConfig:
        if self.mode is ClockMode.ACCELERATED:
            missing = [n for n in ("sim_start", "real_start_epoch_s") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"mode = \"accelerated\" needs {' and '.join(missing)}")
        else:
            given = [n for n in ("sim_start", "real_start_epoch_s") if getattr(self, n) is not None]
            if given or self.speed != 1.0:
                given += ["speed"] if self.speed != 1.0 else []
                raise ValueError(f"{', '.join(given)} only apply to mode = \"accelerated\" (mode is \"system\")")
        return self


def sim_time(real_s: float, sim_start_s: float, real_start_s: float, speed: float) -> float:
    """The rule every accelerated clock follows: simulated epoch seconds at real epoch seconds `real_s`."""
    return sim_start_s + (real_s - real_start_s) * speed


class Clock:
    """Now, as the config says: the system clock, or simulated time derived from the real clock."""

    def __init__(self, cfg: ClockConfig | None = None, *, real: Callable[[], float] = time.time) -> None:
        self.cfg = cfg or ClockConfig()
        self._real = real
        self.accelerated = self.cfg.mode is ClockMode.ACCELERATED
        if self.accelerated:
            self._sim0 = self.cfg.sim_start.timestamp()
            self._real0 = float(self.cfg.real_start_epoch_s)
            self.speed = self.cfg.speed
        else:
            self._sim0 = self._real0 = 0.0
            self.speed = 1.0

    def to_sim(self, real_s: float) -> float:
        """Real epoch seconds -> simulated epoch seconds (the identity on the system clock)."""
        return sim_time(real_s, self._sim0, self._real0, self.speed) if self.accelerated else real_s

    def to_real(self, sim_s: float) -> float:
        """Simulated epoch seconds -> the real epoch seconds at which the clock reads them."""
        return self._real0 + (sim_s - self._sim0) / self.speed if self.accelerated else sim_s

    def now(self) -> float:
        """Epoch seconds: simulated when accelerated."""
        return self.to_sim(self._real())

    def now_datetime(self) -> datetime:
        """now() as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now(), timezone.utc)

    def sim_datetime(self, real_s: float) -> datetime:
        """The simulated time of a real instant, as an aware UTC datetime (e.g. a poll slot's timestamp)."""
        return datetime.fromtimestamp(self.to_sim(real_s), timezone.utc)

    def describe(self) -> str:
        if not self.accelerated:
            return "system clock"
        return f"accelerated clock x{self.speed:g} from {self.cfg.sim_start.isoformat()}"
