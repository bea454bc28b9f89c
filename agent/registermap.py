"""The register-map model: device profiles as data (config/profiles/*.toml).

One model serves the agent (which decodes) and the simulators (which encode),
so a profile is written once. Loading is pure and strict: overlapping
registers, duplicate names and impossible values are errors at load.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from greenmine.agent.codec import DataType, RegisterType, WordOrder, register_count
from greenmine.configbase import IDENT, ConfigModel
from greenmine.configfile import ConfigError, format_validation_error, read_toml


_INT_RANGE = {
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.UINT16: (0, (1 << 16) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
}


def _as_float32(value: float) -> float:
    """`value` rounded to the nearest float32 (infinity when it is out of float32's range)."""
    try:
        return struct.unpack(">f", struct.pack(">f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


class Register(ConfigModel):
    """One value a meter serves: where it is, how it is encoded, what it means."""

    name: str = Field(pattern=IDENT, description="register name, unique within the device")
    address: int = Field(ge=0, le=65535, description="0-based protocol address (manual's 30073 -> input register 72)")
    type: RegisterType = Field(default=RegisterType.HOLDING, description="coil | discrete | holding | input")
    data_type: DataType = Field(default=DataType.UINT16, description="int16 ... float64, bit, string")
    word_order: WordOrder | None = Field(default=None, description="ABCD | BADC | CDAB | DCBA; default: the profile's")
    bit: int | None = Field(default=None, ge=0, le=15, description="bit index for data_type = bit in a register")
    length: int | None = Field(default=None, ge=1, le=125, description="length in registers, for data_type = string")
    scale: float = Field(default=1.0, allow_inf_nan=False, description="value = raw * scale + offset")
    offset: float = Field(default=0.0, allow_inf_nan=False, description="value = raw * scale + offset")
    unit: str = Field(default="", max_length=16, description="unit of the scaled value, e.g. kWh, m3, mg/m3, dB(A)")
    metric: str | None = Field(default=None, pattern=IDENT, description="metric published; default: the register name")
    poll_group: str = Field(default="default", pattern=IDENT, description="which poll group (interval) reads it")
    nan_value: int | float | None = Field(
        default=None, allow_inf_nan=False,
        description="raw value meaning 'no measurement', compared in the register's own type (e.g. 65535 on a uint16, "
        "-9999.9 on a float32: the marker rounded to float32)",
    )
    valid_min: float | None = Field(default=None, description="lowest plausible scaled value; below it quality=out_of_range")
    valid_max: float | None = Field(default=None, description="highest plausible scaled value; above it quality=out_of_range")
    counter_width_bits: int | None = Field(
        default=None, description="for cumulative totalizers: the raw counter width it wraps at (16, 32 or 64)"
    )
    publish: bool = Field(default=True, description="false: readable with 'agent read' but not published")

    @model_validator(mode="after")
    def _check(self) -> Register:
        if self.type.is_bit and self.data_type is not DataType.BIT:
            raise ValueError(f"a {self.type.value} is one bit: data_type must be 'bit', not '{self.data_type.value}'")
        if self.data_type is DataType.STRING and self.length is None:
            raise ValueError("data_type 'string' needs length (in registers)")
        if self.data_type is not DataType.STRING and self.length is not None:
            raise ValueError("length is only for data_type 'string'")
        if self.bit is not None and (self.data_type is not DataType.BIT or self.type.is_bit):
            raise ValueError("bit is only for data_type 'bit' in a holding or input register")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.counter_width_bits is not None and self.counter_width_bits not in (16, 32, 64):
            raise ValueError("counter_width_bits must be 16, 32 or 64")
        if self.valid_min is not None and self.valid_max is not None and self.valid_min > self.valid_max:
            raise ValueError(f"valid_min {self.valid_min} is above valid_max {self.valid_max}")
        if self.data_type is DataType.STRING and self.publish:
            raise ValueError("string registers cannot be published as telemetry; set publish = false")
        if not self.type.is_bit and self.end > 65535:
            raise ValueError(f"a {self.data_type.value} at {self.address} ends at address {self.end}, "
                             "past the last address 65535")
        if self.nan_value is not None:
            self._check_nan_value()
        return self

    def _check_nan_value(self) -> None:
        marker, dt = self.nan_value, self.data_type
        if dt in (DataType.STRING, DataType.BIT):
            raise ValueError(f"nan_value is not for data_type '{dt.value}'")
        article = "an" if dt.value.startswith("int") else "a"
        if dt in _INT_RANGE:
            lo, hi = _INT_RANGE[dt]
            if marker != int(marker) or not lo <= int(marker) <= hi:
                raise ValueError(f"nan_value {marker!r} cannot be held by {article} {dt.value} ({lo}..{hi})")
        elif dt is DataType.FLOAT32 and not math.isfinite(_as_float32(marker)):
            raise ValueError(f"nan_value {marker!r} cannot be held by a float32 (it rounds to infinity)")

    @property
    def nan_raw(self) -> int | float | None:
        """`nan_value` in the register's own type, to compare with the decoded raw value exactly."""
        if self.nan_value is None:
            return None
        if self.data_type in _INT_RANGE:
            return int(self.nan_value)
        if self.data_type is DataType.FLOAT32:
            return _as_float32(self.nan_value)
        return float(self.nan_value)

    @property
    def count(self) -> int:
        """Registers (or bits, for coils and discrete inputs) occupied."""
        return 1 if self.type.is_bit else register_count(self.data_type, self.length)

    @property
    def end(self) -> int:
        """Last address occupied (inclusive)."""
        return self.address + self.count - 1

    @property
    def metric_name(self) -> str:
        return self.metric or self.name

    def order(self, default: WordOrder) -> WordOrder:
        return self.word_order or default


def check_register_layout(registers: list[Register] | tuple[Register, ...]) -> list[str]:
    """Duplicate names, duplicate metrics and overlapping addresses, as messages naming both parties."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    metrics: dict[str, str] = {}
    for i, reg in enumerate(registers):
        if reg.name in seen:
            problems.append(f'registers[{i}] "{reg.name}": duplicate name (also registers[{seen[reg.name]}])')
        seen.setdefault(reg.name, i)
        if reg.publish:
            other = metrics.get(reg.metric_name)
            if other is not None:
                problems.append(f'registers[{i}] "{reg.name}": metric "{reg.metric_name}" is also published by "{other}"')
            metrics.setdefault(reg.metric_name, reg.name)
    by_type: dict[RegisterType, list[Register]] = {}
    for reg in registers:
        by_type.setdefault(reg.type, []).append(reg)
    for regs in by_type.values():
        regs = sorted(regs, key=lambda r: (r.address, r.end))
        for a, b in zip(regs, regs[1:]):
            if b.address <= a.end:
                # Several bits of one register are not an overlap.
                if a.data_type is DataType.BIT and b.data_type is DataType.BIT and not a.type.is_bit:
                    if a.address == b.address and a.bit != b.bit:
                        continue
                span = f"{b.address}" if b.count == 1 else f"{b.address}..{b.end}"
                problems.append(
                    f'register "{a.name}" ({a.address}..{a.end}) overlaps "{b.name}" ({span})'
                    if a.count > 1
                    else f'register "{a.name}" ({a.address}) overlaps "{b.name}" ({span})'
                )
    return problems


class Profile(ConfigModel):
    """A meter model's register map, from its public manual."""

    manufacturer: str = Field(description="manufacturer, e.g. Eastron")
    model: str = Field(description="model, e.g. SDM630")
    kind: str = Field(description="energy_meter | flowmeter | dust_monitor | noise_meter | belt_scale | weather | other")
    source: str = Field(description="the manual and table the register map is taken from")
    word_order: WordOrder = Field(default=WordOrder.ABCD, description="default byte and word order of multi-register values")
    max_registers_per_request: int = Field(default=125, ge=1, le=125, description="largest read the meter accepts")
    registers: tuple[Register, ...] = Field(min_length=1, description="the register map, [[registers]]")

    @model_validator(mode="after")
    def _layout(self) -> Profile:
        problems = check_register_layout(self.registers)
        problems += [f'register "{r.name}" ({r.address}..{r.end}) is {r.count} registers, '
                     f"wider than max_registers_per_request {self.max_registers_per_request}"
                     for r in self.registers if not r.type.is_bit and r.count > self.max_registers_per_request]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def profile_path(name: str, search: list[Path]) -> Path | None:
    for folder in search:
        candidate = folder / f"{name}.toml"
        if candidate.is_file():
            return candidate
    return None


def load_profile(name: str, search: list[Path]) -> Profile:
    """Find `<name>.toml` on the search path and load it. Raises ConfigError."""
    path = profile_path(name, search)
    if path is None:
        where = ", ".join(str(p) for p in search)
        raise ConfigError(name, [f'profile "{name}" not found (looked for {name}.toml in {where})'])
    doc = read_toml(path)
    try:
        return Profile.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(path, format_validation_error(exc, doc)) from None


def merge_registers(
    base: tuple[Register, ...], overrides: list[dict[str, Any]], exclude: list[str]
) -> tuple[list[Register], list[str]]:
    """A device's registers: its profile's, minus `exclude`, with overrides applied by name.

    An override whose name is not in the profile adds a register; one that is
    replaces just the fields it sets. Returns the registers that are valid and the
    problems of the others, so the caller can report them with its own checks at once.
    """
    by_name = {r.name: r for r in base}
    problems: list[str] = []
    for name in exclude:
        if name not in by_name:
            problems.append(f'exclude: profile has no register "{name}"')
        by_name.pop(name, None)
    for i, ov in enumerate(overrides):
        name = ov.get("name")
        if not isinstance(name, str):
            problems.append(f"registers[{i}]: an override or extra register needs a name")
            continue
        merged = by_name[name].model_dump(exclude_unset=True) | ov if name in by_name else ov
        try:
            by_name[name] = Register.model_validate(merged)
        except ValidationError as exc:
            for msg in format_validation_error(exc, merged):
                problems.append(f'registers[{i}] "{name}": {msg}')
    return list(by_name.values()), problems
