"""The simulated site's config: which simulated meters, on which port or unit id,
with which profile and scenario.

Loading is pure and strict: a missing profile or scenario is an error at load.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, model_validator

from agent.registermap import IDENT, Profile, load_profile
from greenmine import PROFILES_DIR
from greenmine.configfile import ConfigError, load_model, read_toml, resolve_path


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimTransport(str, Enum):
    TCP = "tcp"
    RTU_OVER_TCP = "rtu_over_tcp"
    RTU = "rtu"


class ClockConfig(_Model):
    start: datetime | None = Field(default=None, description="simulated start time (ISO 8601, with offset); absent: now")
    speed: float = Field(default=1.0, gt=0, le=100_000, description="simulated seconds per real second (1440 = a day in a minute)")
    timezone: str = Field(default="Asia/Shanghai", description="local time zone of the site's shifts and nights")


class SimDeviceConfig(_Model):
    name: str = Field(pattern=IDENT, description="device name; the agent config uses the same name")
    unit_id: int = Field(ge=0, le=247, description="Modbus unit id served")
    profile: str = Field(description="profile name: config/profiles/<profile>.toml")
    role: str | None = Field(default=None, description="what the meter measures on this site, e.g. fresh | reused | discharge for water")
    scenarios: list[str] = Field(default_factory=lambda: ["normal"], description="scenarios to apply, combined in order")

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


class SimServerConfig(_Model):
    """One listening endpoint: a meter, or a serial-to-Ethernet gateway with several unit ids."""

    name: str = Field(pattern=IDENT, description="server name")
    transport: SimTransport = Field(default=SimTransport.TCP, description="tcp | rtu_over_tcp | rtu")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int | None = Field(default=None, ge=0, le=65535, description="TCP port; 0 picks a free one")
    serial_port: str | None = Field(default=None, description="for rtu: the serial device (e.g. one end of a socat pty pair)")
    baudrate: int = Field(default=9600, description="for rtu")
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


class SimSiteConfig(_Model):
    """`greenmine sim run --site FILE`."""

    kind: Literal["sim"] = Field(default="sim", description="config kind, for check-config")
    site: str = Field(pattern=IDENT, description="site id")
    seed: int = Field(default=20251210, description="random seed: the same seed gives the same series")
    clock: ClockConfig = Field(default_factory=ClockConfig, description="simulated clock: start and speed")
    control_port: int | None = Field(default=None, ge=0, le=65535, description="local HTTP control interface on 127.0.0.1; absent: off")
    servers: list[SimServerConfig] = Field(min_length=1, description="listening endpoints, [[servers]]")

    _path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique(self) -> SimSiteConfig:
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

    def resolve(self, value: str) -> Path:
        return resolve_path(value, self._path.parent if self._path else Path.cwd())


def load_sim_config(path: str | Path, doc: dict | None = None) -> SimSiteConfig:
    path = Path(path)
    if doc is None:
        doc = read_toml(path)
    cfg = load_model(SimSiteConfig, path, context={"profile_dirs": [path.parent / "profiles", PROFILES_DIR]}, doc=doc)
    object.__setattr__(cfg, "_path", path)
    return cfg
