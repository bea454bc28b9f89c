"""The simulated site's config: which simulated meters, on which port or unit id,
with which profile and scenario.

Loading is pure and strict: a missing profile or scenario is an error at load.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from greenmine.agent.registermap import Profile, load_profile
from greenmine import PROFILES_DIR, SCENARIOS_DIR
from greenmine.configbase import IDENT, ConfigModel, FileConfig
from greenmine.configfile import ConfigError, load_model, read_toml
from greenmine.simulators.scenarios import HHMM, check_names, load_scenarios


class SimTransport(str, Enum):
    TCP = "tcp"
    RTU_OVER_TCP = "rtu_over_tcp"
    RTU = "rtu"


class SimClockConfig(ConfigModel):
    start: datetime | None = Field(default=None, description="simulated start time (ISO 8601, with offset); absent: now")
    real_start_epoch_s: float | None = Field(
        default=None, gt=0,
        description="with start: the real Unix time at which the simulated clock read start (absent: when the simulator "
        "starts); the demo gives the agent and server [clock] the same start, speed and real start so all agree",
    )
    speed: float = Field(default=1.0, gt=0, le=100_000, description="simulated seconds per real second (1440 = a day in a minute)")
    timezone: str = Field(default="Asia/Shanghai", description="local time zone of the site's shifts and nights")


class SimDeviceConfig(ConfigModel):
    name: str = Field(pattern=IDENT, description="device name; the agent config uses the same name")
    unit_id: int = Field(ge=0, le=247, description="Modbus unit id served")
    profile: str = Field(description="profile name: config/profiles/<profile>.toml")
    role: str | None = Field(default=None, description="what the meter measures on this site, e.g. fresh | reused | discharge for water")
    scenarios: list[str] = Field(
        default_factory=list, description="scenarios for this meter only (faults, counters), on top of the site's"
    )
    params: dict[str, float] = Field(
        default_factory=dict,
        description="physics parameters of this meter, e.g. rated_kw = 800 (energy meters), "
        "rate_tph = 350 (belt scales), initial_total = 123456 (any totalizer); see docs/simulators.md",
    )

    _profile: Profile | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> SimDeviceConfig:
        search = (info.context or {}).get("profile_dirs") or [PROFILES_DIR]
        try:
            object.__setattr__(self, "_profile", load_profile(self.profile, search))
        except ConfigError as exc:
            raise ValueError("; ".join(exc.messages)) from None
        return self

    @property
    def resolved_profile(self) -> Profile:
        assert self._profile is not None
        return self._profile


class SimServerConfig(ConfigModel):
    """One listening endpoint: a meter, or a serial-to-Ethernet gateway with several unit ids."""

    name: str = Field(pattern=IDENT, description="server name")
    transport: SimTransport = Field(default=SimTransport.TCP, description="tcp | rtu_over_tcp | rtu")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int | None = Field(default=None, ge=0, le=65535, description="TCP port; 0 picks a free one")
    serial_port: str | None = Field(default=None, description="for rtu: the serial device (e.g. one end of a socat pty pair)")
    baudrate: int = Field(default=9600, description="for rtu (and for emulate_baud on any transport)")
    parity: Literal["N", "E", "O"] = Field(default="N", description="for rtu: N, E or O")
    stopbits: Literal[1, 2] = Field(default=1, description="for rtu")
    bytesize: Literal[7, 8] = Field(default=8, description="for rtu")
    emulate_baud: bool = Field(default=False, description="hold each reply for the time its frame takes at baudrate")
    devices: list[SimDeviceConfig] = Field(min_length=1, description="meters behind this endpoint, [[servers.devices]]")

    @model_validator(mode="after")
    def _check(self) -> SimServerConfig:
        if self.transport is SimTransport.RTU and not self.serial_port:
            raise ValueError("transport 'rtu' needs serial_port")
        if self.transport is not SimTransport.RTU and self.port is None:
            raise ValueError(f"transport '{self.transport.value}' needs port")
        units = {}
        for i, dev in enumerate(self.devices):
            if dev.unit_id in units:
                raise ValueError(f'devices[{i}] "{dev.name}": unit_id {dev.unit_id} also used by "{units[dev.unit_id]}"')
            units[dev.unit_id] = dev.name
        return self


class ShiftConfig(ConfigModel):
    start: str = Field(pattern=HHMM, description="local time the shift starts, HH:MM")
    load: float = Field(ge=0, le=1.2, description="plant load during the shift, 0 (stopped) .. 1 (rated)")


class PhysicsConfig(ConfigModel):
    """Site-wide physics: shifts, water circuit, blasting, day and night."""

    shifts: list[ShiftConfig] = Field(
        default_factory=lambda: [
            ShiftConfig(start="00:00", load=0.85),
            ShiftConfig(start="08:00", load=1.0),
            ShiftConfig(start="16:00", load=0.95),
        ],
        min_length=1,
        description="the plant's shift pattern; each shift runs until the next one starts",
    )
    maintenance_weekday: int | None = Field(
        default=2, ge=0, le=6, description="weekday (0 = Monday) of the weekly maintenance stop; absent: none"
    )
    maintenance_start: str = Field(default="08:00", pattern=HHMM, description="maintenance stop start, local HH:MM")
    maintenance_h: float = Field(default=4.0, ge=0, le=24, description="maintenance stop length in hours (load 0.05)")
    process_water_m3h: float = Field(default=420.0, gt=0, description="process water demand at full load")
    reuse_fraction: float = Field(default=0.88, ge=0, le=1, description="reused / (reused + fresh) on a normal day")
    discharge_fraction: float = Field(default=0.04, ge=0, le=1, description="discharge as a fraction of process water")
    blast_times: list[str] = Field(default_factory=lambda: ["12:00"], description="daily blasting times, local HH:MM")
    day_start: str = Field(default="06:00", pattern=HHMM, description="GB 12348 day starts (local)")
    night_start: str = Field(default="22:00", pattern=HHMM, description="GB 12348 night starts (local)")

    @model_validator(mode="after")
    def _check(self) -> PhysicsConfig:
        starts = [s.start for s in self.shifts]
        if len(set(starts)) != len(starts):
            raise ValueError("two shifts start at the same time")
        for t in self.blast_times:
            import re

            if not re.match(HHMM, t):
                raise ValueError(f'blast_times: "{t}" is not HH:MM')
        return self


class SimSiteConfig(FileConfig):
    """`greenmine sim run --site FILE`."""

    kind: Literal["sim"] = Field(default="sim", description="config kind, for check-config")
    site: str = Field(pattern=IDENT, description="site id")
    seed: int = Field(default=20251210, description="random seed: the same seed gives the same series")
    clock: SimClockConfig = Field(default_factory=SimClockConfig, description="simulated clock: start and speed")
    scenarios: list[str] = Field(
        default_factory=lambda: ["normal"], description="site-wide scenarios (physics), combined in order"
    )
    physics: PhysicsConfig = Field(default_factory=PhysicsConfig, description="site physics: shifts, water, blasting, day/night")
    control_port: int | None = Field(default=None, ge=0, le=65535, description="local HTTP control interface on 127.0.0.1; absent: off")
    servers: list[SimServerConfig] = Field(min_length=1, description="listening endpoints, [[servers]]")

    @model_validator(mode="after")
    def _unique(self, info: ValidationInfo) -> SimSiteConfig:
        dirs = (info.context or {}).get("scenario_dirs") or [SCENARIOS_DIR]
        try:
            known = load_scenarios(dirs)
        except ConfigError as exc:
            raise ValueError("; ".join(str(exc).splitlines())) from None
        problems = [f"scenarios: {p}" for p in check_names(self.scenarios, known, device_level=False)]
        for s in self.servers:
            for d in s.devices:
                problems += [f'device "{d.name}": scenarios: {p}' for p in check_names(d.scenarios, known, device_level=True)]
        if problems:
            raise ValueError("; ".join(problems))
        names, ports = {}, {}
        for s in self.servers:
            if s.port and s.port in ports:
                raise ValueError(f'servers "{s.name}": port {s.port} also used by "{ports[s.port]}"')
            ports[s.port] = s.name
            for d in s.devices:
                if d.name in names:
                    raise ValueError(f'device "{d.name}" is on both "{names[d.name]}" and "{s.name}"')
                names[d.name] = s.name
        return self

    def scenario_dirs(self) -> list[Path]:
        """Where scenarios are looked up: the site file's `scenarios/` folder, then the shipped ones."""
        return ([self._path.parent / "scenarios"] if self._path else []) + [SCENARIOS_DIR]

    def devices(self) -> list[tuple[SimServerConfig, SimDeviceConfig]]:
        return [(s, d) for s in self.servers for d in s.devices]


def load_sim_config(path: str | Path, doc: dict | None = None) -> SimSiteConfig:
    path = Path(path)
    if doc is None:
        doc = read_toml(path)
    context = {
        "profile_dirs": [path.parent / "profiles", PROFILES_DIR],
        "scenario_dirs": [path.parent / "scenarios", SCENARIOS_DIR],
    }
    cfg = load_model(SimSiteConfig, path, context=context, doc=doc)
    cfg.loaded_from(path)
    return cfg
