"""Scenarios: named, data-driven (config/scenarios/*.toml), combinable.

A scenario is a list of effects. Each effect kind is implemented once here and
in `physics`/`server`; a scenario file only chooses kinds, values and when
they apply. Effects come in two scopes:

- physics effects (`power_factor`, `load_factor`, `reuse_fraction`,
  `dust_add_mgm3`, `noise_add_db`) change the site's physics. Site-level
  scenarios apply them to every device; a device-level scenario to that device.
- device effects (`counter_rollover`, `meter_replaced`, `zero_glitch`,
  `offline`, `slow`, `exception`, `flap`) act on one meter or its link, so
  they are only allowed in a device's scenario list (a site-wide "offline"
  would be a mistake, not a scenario).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from greenmine.configfile import ConfigError, format_validation_error, read_toml


class EffectKind(str, Enum):
    POWER_FACTOR = "power_factor"
    LOAD_FACTOR = "load_factor"
    REUSE_FRACTION = "reuse_fraction"
    DUST_ADD = "dust_add_mgm3"
    NOISE_ADD = "noise_add_db"
    COUNTER_ROLLOVER = "counter_rollover"
    METER_REPLACED = "meter_replaced"
    ZERO_GLITCH = "zero_glitch"
    OFFLINE = "offline"
    SLOW = "slow"
    EXCEPTION = "exception"
    FLAP = "flap"

    @property
    def is_device_effect(self) -> bool:
        return self in DEVICE_EFFECTS


DEVICE_EFFECTS = {
    EffectKind.COUNTER_ROLLOVER,
    EffectKind.METER_REPLACED,
    EffectKind.ZERO_GLITCH,
    EffectKind.OFFLINE,
    EffectKind.SLOW,
    EffectKind.EXCEPTION,
    EffectKind.FLAP,
}
_NEEDS_VALUE = {
    EffectKind.POWER_FACTOR, EffectKind.LOAD_FACTOR, EffectKind.REUSE_FRACTION,
    EffectKind.DUST_ADD, EffectKind.NOISE_ADD, EffectKind.METER_REPLACED,
}
HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class Effect(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EffectKind = Field(description="what the effect does (see docs/simulators.md)")
    value: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="factor (power_factor, load_factor), fraction (reuse_fraction), amount added "
        "(dust_add_mgm3 in mg/m3, noise_add_db in dB), or the restart value (meter_replaced)",
    )
    headroom_raw: int | None = Field(
        default=None, ge=1, description="counter_rollover: raw counts left before the counter wraps, at activation"
    )
    every_n: int | None = Field(
        default=None, ge=1, description="zero_glitch: every n-th read is zeros; flap: every n-th request drops the link"
    )
    delay_ms: int | None = Field(default=None, ge=1, le=600_000, description="slow: reply delay")
    codes: list[Literal[1, 2, 3, 4, 5, 6, 8, 10, 11]] = Field(
        default_factory=list, description="exception: Modbus exception codes returned in turn"
    )
    period: Literal["always", "day", "night"] = Field(
        default="always", description="day / night as the site's day_start / night_start define them"
    )
    start: str | None = Field(default=None, pattern=HHMM, description="daily window start, local HH:MM")
    duration_h: float | None = Field(default=None, gt=0, le=24, description="daily window length in hours")

    @model_validator(mode="after")
    def _check(self) -> Effect:
        if self.kind in _NEEDS_VALUE and self.value is None:
            raise ValueError(f"effect '{self.kind.value}' needs value")
        if self.kind is EffectKind.COUNTER_ROLLOVER and self.headroom_raw is None:
            raise ValueError("effect 'counter_rollover' needs headroom_raw")
        if self.kind in (EffectKind.ZERO_GLITCH, EffectKind.FLAP) and self.every_n is None:
            raise ValueError(f"effect '{self.kind.value}' needs every_n")
        if self.kind is EffectKind.SLOW and self.delay_ms is None:
            raise ValueError("effect 'slow' needs delay_ms")
        if self.kind is EffectKind.EXCEPTION and not self.codes:
            raise ValueError("effect 'exception' needs codes")
        if (self.start is None) != (self.duration_h is None):
            raise ValueError("start and duration_h go together")
        if self.start is not None and self.period != "always":
            raise ValueError("use either a daily window (start, duration_h) or period, not both")
        if self.kind is EffectKind.REUSE_FRACTION and not 0 <= (self.value or 0) <= 1:
            raise ValueError("reuse_fraction value must be within 0..1")
        return self

    def window_minutes(self) -> tuple[int, int] | None:
        """(start minute of day, length in minutes) of a daily window, or None."""
        if self.start is None or self.duration_h is None:
            return None
        hh, mm = self.start.split(":")
        return int(hh) * 60 + int(mm), int(round(self.duration_h * 60))


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]{1,64}$", description="scenario name, as used in site configs")
    description: str = Field(description="what a user sees, and what the agent and server should make of it")
    effects: list[Effect] = Field(default_factory=list, description="effects, applied together")

    @property
    def device_only(self) -> bool:
        return any(e.kind.is_device_effect for e in self.effects)


def load_scenarios(dirs: list[Path]) -> dict[str, Scenario]:
    """All scenarios in `dirs`; an earlier folder's file wins over a later one with the same name."""
    found: dict[str, Scenario] = {}
    for folder in reversed(dirs):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            doc = read_toml(path)
            try:
                sc = Scenario.model_validate(doc)
            except ValidationError as exc:
                raise ConfigError(path, format_validation_error(exc, doc)) from None
            if sc.name != path.stem:
                raise ConfigError(path, [f'name "{sc.name}" must match the file name "{path.stem}"'])
            found[sc.name] = sc
    return found


def check_names(names: list[str], known: dict[str, Scenario], *, device_level: bool) -> list[str]:
    problems = []
    for name in names:
        sc = known.get(name)
        if sc is None:
            problems.append(f'unknown scenario "{name}" (known: {", ".join(sorted(known))})')
        elif sc.device_only and not device_level:
            problems.append(f'scenario "{name}" acts on one device; set it in a device\'s scenarios, not the site\'s')
    return problems
