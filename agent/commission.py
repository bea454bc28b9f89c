"""`agent read`: one-shot read and decode of every register of one device, for commissioning."""

from __future__ import annotations

from greenmine.agent.acquisition import Bus
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
        for group, reqs in plan_device(dev).items():
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
                    })
    finally:
        bus.close()
    return rows, errors
