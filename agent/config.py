"""The agent's config: site identity, MQTT, outbox, buses, devices, poll groups.

Loading is pure: it reads files (the config and the device
profiles it names) and never connects. Every problem is an error that names
its place; nothing is warned about and dropped.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, model_validator

from greenmine.agent.codec import DataType, WordOrder
from greenmine.agent.registermap import Register, check_register_layout, load_profile, merge_registers
from greenmine import PROFILES_DIR
from greenmine.clock import ClockConfig
from greenmine.configbase import IDENT, ConfigModel, FileConfig
from greenmine.configfile import ConfigError, load_model, resolve_path
from greenmine.schemas import CounterWidth
from greenmine.mqtttls import TlsConfig  # the [mqtt.tls] section, shared with the server


class MqttConfig(ConfigModel):
    host: str = Field(default="127.0.0.1", description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port (8883 for TLS, by convention)")
    client_id: str | None = Field(default=None, description="MQTT client id; default greenmine-agent-<site>-<agent_id>")
    username: str | None = Field(default=None, description="user name, if the broker requires one")
    password: SecretStr | None = Field(default=None, description='password; use "${ENV_VAR}" to keep it out of the file')
    tls: TlsConfig | None = Field(default=None, description="enable TLS with these files; absent: plain TCP")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive")
    reconnect_min_s: float = Field(default=1.0, gt=0, description="first reconnect delay; doubles up to reconnect_max_s")
    reconnect_max_s: float = Field(default=60.0, gt=0, description="longest reconnect delay")
    status_interval_s: float = Field(default=60.0, ge=1, description="how often the retained online status is refreshed")
    max_inflight: int = Field(default=20, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK at once")


class FullPolicy(str, Enum):
    DROP_OLDEST = "drop_oldest"


class OutboxConfig(ConfigModel):
    path: str = Field(default="outbox.sqlite", description="SQLite outbox file; relative to the config file's folder")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024, description="bound on stored batches, in bytes")
    max_age_s: float = Field(default=30 * 86400, ge=60, description="batches older than this are dropped (counted)")
    full_policy: FullPolicy = Field(default=FullPolicy.DROP_OLDEST, description="drop_oldest: never block polling")
    batch_max_readings: int = Field(default=500, ge=1, le=10000, description="readings per published batch, at most")
    drain_batches_per_s: float = Field(default=50.0, gt=0, description="backlog publish rate after an outage")
    linger_ms: int = Field(
        default=15, ge=0, le=10000,
        description="readings of polls finishing within this window share one batch (polls finishing while a "
        "commit runs join the next batch anyway)"
    )


class Transport(str, Enum):
    TCP = "tcp"
    RTU = "rtu"
    RTU_OVER_TCP = "rtu_over_tcp"


class BusConfig(ConfigModel):
    """One serial port or one TCP endpoint. Requests on a bus are strictly serialised."""

    name: str = Field(pattern=IDENT, description="bus name, referenced by devices")
    transport: Transport = Field(description="tcp | rtu | rtu_over_tcp")
    host: str | None = Field(default=None, description="for tcp and rtu_over_tcp: gateway or meter address")
    port: int | None = Field(default=None, ge=1, le=65535, description="for tcp and rtu_over_tcp; default 502")
    serial_port: str | None = Field(default=None, description="for rtu: e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, description="for rtu: bits per second")
    parity: Literal["N", "E", "O"] = Field(default="N", description="for rtu: N, E or O")
    stopbits: Literal[1, 2] = Field(default=1, description="for rtu")
    bytesize: Literal[7, 8] = Field(default=8, description="for rtu")
    timeout_ms: int = Field(default=1000, ge=10, le=60000, description="per-request response timeout")
    retries: int = Field(default=1, ge=0, le=10, description="retries of a failed request before the device counts as failing")
    inter_request_delay_ms: int = Field(default=0, ge=0, le=10000, description="pause between requests on this bus")

    @model_validator(mode="after")
    def _endpoint(self) -> BusConfig:
        if self.transport is Transport.RTU:
            if not self.serial_port:
                raise ValueError("transport 'rtu' needs serial_port")
            if self.host or self.port:
                raise ValueError("transport 'rtu' uses serial_port, not host/port")
            if self.baudrate not in (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200):
                raise ValueError(f"baudrate {self.baudrate} is not a standard rate")
        else:
            if not self.host:
                raise ValueError(f"transport '{self.transport.value}' needs host")
            if self.serial_port:
                raise ValueError(f"transport '{self.transport.value}' uses host/port, not serial_port")
        return self

    @property
    def endpoint(self) -> str:
        if self.transport is Transport.RTU:
            return f"rtu:{self.serial_port}@{self.baudrate}{self.parity}{self.bytesize}{self.stopbits}"
        return f"{self.transport.value}://{self.host}:{self.port or 502}"


def resolve_registers(dev: Mapping[str, Any], search: list[Path]) -> tuple[list[Register], WordOrder, int, list[str]]:
    """A device's registers from its fields (validated, or raw from the file): (registers, the
    profile's word order, the largest read, problems). Works on raw fields too, so a device
    whose other fields have type errors still gets its register problems reported in the same run."""
    problems: list[str] = []
    poll_groups = dev.get("poll_groups") or {"default": 10.0}
    forbidden = dev.get("forbidden") or []
    for name, interval in poll_groups.items():
        if not interval > 0:
            problems.append(f"poll_groups.{name}: interval must be > 0 s, got {interval}")
    for lo, hi in forbidden:
        if lo > hi or lo < 0 or hi > 65535:
            problems.append(f"forbidden range [{lo}, {hi}] is not a valid address range")
    order, max_regs, base = WordOrder.ABCD, 125, ()
    if dev.get("profile") is not None:
        try:
            prof = load_profile(dev["profile"], search)
        except ConfigError as exc:
            return [], order, max_regs, problems + exc.messages
        order, max_regs, base = prof.word_order, prof.max_registers_per_request, prof.registers
    elif not dev.get("registers"):
        return [], order, max_regs, problems + ["needs a profile or registers"]
    regs, more = merge_registers(base, dev.get("registers") or [], dev.get("exclude") or [])
    problems += more + check_register_layout(regs)
    max_regs = dev.get("max_registers_per_request") or max_regs
    for reg in regs:
        if not reg.type.is_bit and reg.count > max_regs:
            problems.append(f'register "{reg.name}" ({reg.address}..{reg.end}) is {reg.count} registers, '
                            f"wider than max_registers_per_request {max_regs}")
        if reg.poll_group not in poll_groups:
            problems.append(
                f'register "{reg.name}": poll_group "{reg.poll_group}" has no interval in poll_groups '
                f"(defined: {', '.join(sorted(poll_groups))})"
            )
        for lo, hi in forbidden:
            if not reg.type.is_bit and reg.address <= hi and reg.end >= lo:
                problems.append(f'register "{reg.name}" ({reg.address}..{reg.end}) is in forbidden range [{lo}, {hi}]')
    return regs, order, max_regs, problems


class DeviceConfig(ConfigModel):
    """One meter: where it sits, which profile describes it, how often each group is polled."""

    name: str = Field(pattern=IDENT, description="device name, unique in the site; used in topics and tags")
    bus: str = Field(description="name of the bus it is on")
    unit_id: int = Field(ge=0, le=255, description="Modbus unit id (slave address) on the bus, 1..247 on RTU")
    profile: str | None = Field(default=None, description="profile name: config/profiles/<profile>.toml")
    word_order: WordOrder | None = Field(default=None, description="override the profile's default word order")
    registers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="register overrides by name (only the fields given change), or extra registers",
    )
    exclude: list[str] = Field(default_factory=list, description="profile registers not to poll")
    poll_groups: dict[str, float] = Field(
        default_factory=lambda: {"default": 10.0},
        description="poll group name -> interval in seconds, e.g. {fast = 1, totals = 60}",
    )
    max_registers_per_request: int | None = Field(
        default=None, ge=1, le=125, description="largest read; default: the profile's (usually 125)"
    )
    max_gap: int = Field(default=8, ge=0, le=124, description="unused registers one request may read across")
    forbidden: list[tuple[int, int]] = Field(
        default_factory=list, description="address ranges [first, last] the meter must not be asked for"
    )
    timeout_ms: int | None = Field(default=None, ge=10, le=60000, description="default: the bus's")
    retries: int | None = Field(default=None, ge=0, le=10, description="default: the bus's")
    backoff_max_s: float = Field(default=300.0, ge=1, description="cap of the exponential back-off of a failing device")
    enabled: bool = Field(default=True, description="false: keep the config, do not poll")

    _registers: tuple[Register, ...] = PrivateAttr(default=())
    _default_order: WordOrder = PrivateAttr(default=WordOrder.ABCD)
    _max_regs: int = PrivateAttr(default=125)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> DeviceConfig:
        search = (info.context or {}).get("profile_dirs") or [PROFILES_DIR]
        regs, order, max_regs, problems = resolve_registers(self.__dict__, search)
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "_registers", tuple(regs))
        object.__setattr__(self, "_default_order", self.word_order or order)
        object.__setattr__(self, "_max_regs", max_regs)
        return self

    @property
    def resolved_registers(self) -> tuple[Register, ...]:
        """The profile's registers with this device's overrides applied."""
        return self._registers

    @property
    def default_word_order(self) -> WordOrder:
        return self._default_order

    @property
    def max_registers(self) -> int:
        return self._max_regs


def cross_check(buses: list[Mapping[str, Any]], devices: list[Mapping[str, Any]]) -> list[str]:
    """Duplicate names, unknown buses and unit ids, over the buses' and devices' fields (validated,
    or raw from the file, so they are reported in the same run as type errors elsewhere)."""
    problems = []
    by_name: dict[str, Mapping[str, Any]] = {}
    for i, bus in enumerate(buses):
        if bus.get("name") in by_name:
            problems.append(f'buses[{i}] "{bus["name"]}": duplicate bus name')
        by_name[bus.get("name")] = bus
    names: dict[str, int] = {}
    units: dict[tuple[str, int], str] = {}
    for i, dev in enumerate(devices):
        where = f'devices[{i}] "{dev.get("name")}"'
        if dev.get("name") in names:
            problems.append(f"{where}: duplicate device name (also devices[{names[dev['name']]}])")
        names.setdefault(dev.get("name"), i)
        bus_name, unit_id = dev.get("bus"), dev.get("unit_id")
        if bus_name not in by_name:
            problems.append(f'{where}: bus "{bus_name}" is not defined (buses: {", ".join(map(str, by_name)) or "none"})')
            continue
        if (bus_name, unit_id) in units:
            problems.append(f'{where}: unit_id {unit_id} on bus "{bus_name}" is also used by "{units[(bus_name, unit_id)]}"')
        units.setdefault((bus_name, unit_id), dev.get("name"))
        serial = by_name[bus_name].get("transport") != Transport.TCP
        if serial and isinstance(unit_id, int) and not 1 <= unit_id <= 247:
            problems.append(f"{where}: unit_id {unit_id} is not a serial address (1..247)")
    return problems


class AgentConfig(FileConfig):
    """`greenmine agent run --config FILE`: one gateway of one site."""

    kind: Literal["agent"] = Field(default="agent", description="config kind, for check-config")
    site: str = Field(pattern=IDENT, description="site id, e.g. gs-jinchang-cu01; part of every topic")
    agent_id: str = Field(pattern=IDENT, description="this gateway's id, unique within the site")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="broker connection")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="durable store-and-forward outbox")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics on 127.0.0.1; absent: off")
    metrics_host: str = Field(default="127.0.0.1", description="address the /metrics endpoint binds to")
    profile_dirs: list[str] = Field(
        default_factory=list, description="extra folders searched for profiles before the shipped config/profiles"
    )
    buses: list[BusConfig] = Field(min_length=1, description="serial ports and TCP gateways, [[buses]]")
    devices: list[DeviceConfig] = Field(min_length=1, description="meters to poll, [[devices]]")
    clock: ClockConfig = Field(
        default_factory=ClockConfig,
        description="time written into readings and status; absent: the system clock. accelerated is for demos and tests "
        "(poll intervals stay real seconds)",
    )

    @model_validator(mode="after")
    def _cross(self) -> AgentConfig:
        problems = cross_check([b.__dict__ for b in self.buses], [d.__dict__ for d in self.devices])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def bus(self, name: str) -> BusConfig:
        return next(b for b in self.buses if b.name == name)

    def config_hash(self) -> str:
        doc = self.model_dump(mode="json", exclude={"mqtt": {"password"}})
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


_UNSIGNED_BITS = {DataType.UINT16: 16, DataType.UINT32: 32, DataType.UINT64: 64}


def counter_widths(cfg: AgentConfig) -> list[CounterWidth]:
    """The totals the status message announces with their register widths: every unsigned integer register
    of an enabled device whose metric ends in `_total` (the vocabulary's totals). Float totals do not wrap."""
    out = []
    for dev in cfg.devices:
        if dev.enabled:
            for reg in dev.resolved_registers:
                bits = _UNSIGNED_BITS.get(reg.data_type)
                if bits and reg.metric_name.endswith("_total"):
                    out.append(CounterWidth(device=dev.name, metric=reg.metric_name, width_bits=bits, scale=reg.scale))
    return out


def load_agent_config(path: str | Path, doc: dict | None = None) -> AgentConfig:
    """Load and validate an agent config. Raises ConfigError."""
    path = Path(path)
    from greenmine.configfile import read_toml

    if doc is None:
        doc = read_toml(path)
    dirs = [resolve_path(d, path.parent) for d in doc.get("profile_dirs", []) if isinstance(d, str)]
    dirs += [path.parent / "profiles", PROFILES_DIR]
    try:
        cfg = load_model(AgentConfig, path, context={"profile_dirs": dirs}, doc=doc)
    except ConfigError as exc:
        # pydantic skips a model's own checks when one of its fields is invalid: run them on the
        # raw file too, so every problem is reported in one run.
        more = [m for m in _raw_problems(doc, dirs) if m not in exc.messages]
        if more:
            raise ConfigError(path, exc.messages + more) from None
        raise
    cfg.loaded_from(path)
    return cfg


def _defaults(model: type[ConfigModel]) -> dict[str, Any]:
    return {name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items() if not f.is_required()}


def _raw_problems(doc: dict, dirs: list[Path]) -> list[str]:
    """The device and cross-reference checks over the raw file; a check whose input is itself
    malformed is left to the type errors already reported."""
    def items(key: str) -> list[tuple[int, dict]]:
        value = doc.get(key)
        return [(i, x) for i, x in enumerate(value) if isinstance(x, dict)] if isinstance(value, list) else []

    dev_defaults, bus_defaults = _defaults(DeviceConfig), _defaults(BusConfig)
    problems = []
    for i, dev in items("devices"):
        if not dev.keys() <= DeviceConfig.model_fields.keys():
            continue  # a typo'd field (poll_group) would show as every register's problem
        try:
            found = resolve_registers(dev_defaults | dev, dirs)[3]
        except (TypeError, ValueError, AttributeError, KeyError):
            continue
        if found:
            problems.append(f'devices[{i}] "{dev.get("name")}": ' + "; ".join(found))
    try:
        problems += cross_check([bus_defaults | b for _, b in items("buses")], [d for _, d in items("devices")])
    except (TypeError, ValueError, AttributeError, KeyError):
        pass
    return problems
