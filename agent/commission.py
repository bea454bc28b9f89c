"""`agent read`: one-shot read and decode of every register of one device, for commissioning,
and how a value is shown: at the precision its register has."""

from __future__ import annotations

import struct
from decimal import Decimal

from greenmine.agent.acquisition import Bus
from greenmine.agent.codec import DataType
from greenmine.agent.config import AgentConfig, DeviceConfig
from greenmine.agent.decoding import decode_request
from greenmine.agent.errors import ModbusError
from greenmine.agent.planner import plan_device


async def read_device(cfg: AgentConfig, dev: DeviceConfig) -> tuple[list[dict], list[str]]:
    """Every register (published or not) of `dev`, decoded. Returns (rows, errors)."""
    from greenmine.agent.modbus import ModbusLink

    bus_cfg = cfg.bus(dev.bus)
    timeout_s = (dev.timeout_ms or bus_cfg.timeout_ms) / 1000
    bus = Bus(bus_cfg, ModbusLink(bus_cfg, max_timeout_s=timeout_s))
    rows, errors = [], []
    try:
        for group, reqs in plan_device(dev, bus_cfg).items():
            for req in reqs:
                try:
                    data = await bus.read(dev.unit_id, req, timeout_s)
                except ModbusError as exc:
                    errors.append(f"{group}: fc{req.function} {req.address}+{req.count} "
                                  f"({', '.join(r.name for r in req.registers)}): {exc.kind}: {exc}")
                    continue
                for d in decode_request(req, data, dev.default_word_order):
                    rows.append({
                        "register": d.register.name,
                        "metric": d.register.metric_name,
                        "group": group,
                        "value": d.value if d.value is not None else (d.raw if isinstance(d.raw, str) else None),
                        "unit": d.register.unit,
                        "quality": d.quality.value if d.quality else None,
                        "note": d.note,
                        "raw_registers": list(d.raw_registers),
                        "shown": show_value(d.register, d.raw) if d.value is not None else (
                            d.raw if isinstance(d.raw, str) else "-"),
                    })
    finally:
        bus.close()
    return rows, errors


def _shortest_float32(value: float) -> str:
    """The fewest significant digits that read back as the same float32."""
    target = struct.pack(">f", value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if struct.pack(">f", float(text)) == target:
            return text
    return repr(value)


def show_value(reg, raw: int | float | bool) -> str:
    """A register's value at the precision it has, positional (never e-notation), computed in decimal
    from its raw value: an integer register gets the decimals of its scale and offset (raw 124002 with
    scale 0.01 -> 1240.02), a float32 the digits a float32 holds (12400.25, not 12400.2)."""
    if reg.data_type is DataType.FLOAT32:
        exact = Decimal(_shortest_float32(raw))
    elif reg.data_type is DataType.FLOAT64:
        exact = Decimal(repr(raw))
    else:
        exact = Decimal(int(raw))
    exact = exact * Decimal(repr(reg.scale)).normalize() + Decimal(repr(reg.offset)).normalize()
    return format(exact, "f")
