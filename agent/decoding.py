"""Raw words of one read request -> engineering values with a quality.

Rules (docs/agent.md "Acquisition"):
- value = raw * scale + offset;
- a raw value equal to the register's `nan_value` marker (compared in the register's own type:
  a float32 marker is rounded to float32 first), or a float that is NaN or infinite, means
  "no measurement": no reading is produced (a reading that could not be taken is not invented);
- a 64-bit integer with an integral scale and offset stays a Python int, exact beyond 2^53
  (a float64 holds every integer only up to 2^53); every other value is a float;
- a value outside [valid_min, valid_max] keeps its value and gets quality `out_of_range`
  (never clamped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from greenmine.agent.codec import CodecError, DataType, WordOrder, decode
from greenmine.agent.planner import ReadRequest
from greenmine.agent.registermap import Register
from greenmine.schemas import Quality


_EXACT = (DataType.INT64, DataType.UINT64)


@dataclass(frozen=True)
class Decoded:
    register: Register
    raw: int | float | bool | str | None
    raw_registers: tuple[int, ...]
    value: int | float | None  # None: no measurement (nan marker, NaN/Inf, undecodable)
    quality: Quality | None
    note: str = ""


def decode_register(reg: Register, words: list[int], default_order: WordOrder) -> Decoded:
    """Decode one register from its own words (bits for coils/discrete inputs: [0|1])."""
    raw_regs = tuple(int(w) for w in words)
    if reg.type.is_bit:
        raw: int | float | bool | str = bool(words[0])
    else:
        try:
            raw = decode(list(words), reg.data_type, reg.order(default_order), bit=reg.bit)
        except CodecError as exc:
            return Decoded(reg, None, raw_regs, None, None, f"undecodable: {exc}")
    if reg.data_type is DataType.STRING:
        return Decoded(reg, raw, raw_regs, None, None, "string")
    if reg.nan_value is not None and raw == reg.nan_raw:
        return Decoded(reg, raw, raw_regs, None, None, "nan_value marker")
    if not math.isfinite(raw):
        return Decoded(reg, raw, raw_regs, None, None, "not a finite number")
    if reg.data_type in _EXACT and reg.scale.is_integer() and reg.offset.is_integer():
        value: int | float = int(raw) * int(reg.scale) + int(reg.offset)
    else:
        value = float(raw) * reg.scale + reg.offset
    if not math.isfinite(value):
        return Decoded(reg, raw, raw_regs, None, None, "scaled value is not finite")
    out = (reg.valid_min is not None and value < reg.valid_min) or (reg.valid_max is not None and value > reg.valid_max)
    return Decoded(reg, raw, raw_regs, value, Quality.OUT_OF_RANGE if out else Quality.GOOD)


def decode_request(req: ReadRequest, data: list[int], default_order: WordOrder) -> list[Decoded]:
    """Split a request's response (words, or bits as 0/1) among its registers and decode each."""
    out = []
    for reg in req.registers:
        start = reg.address - req.address
        out.append(decode_register(reg, data[start : start + reg.count], default_order))
    return out
