"""Register codec: Modbus register words <-> engineering values.

Pure and dependency-free, so the simulators encode with exactly the rules the
agent decodes with (the simulators may import the agent's codec; tests/test_import_boundaries.py checks it). The
independent check that both are right is the simulator test that decodes raw
registers with rules written out separately from the meters' manuals.

Byte and word order name where the value's big-endian bytes A B C D (A most
significant) sit on the wire:

    ABCD  big-endian: registers AB CD              (Modbus default)
    CDAB  word-swapped: low word first: CD AB      (Eastron, many PLCs)
    BADC  byte-swapped within each word: BA DC
    DCBA  little-endian: DC BA

The same rule extends to 64-bit values (words reversed for CDAB/DCBA) and
collapses for 16-bit ones (BADC and DCBA swap the two bytes).
"""

from __future__ import annotations

import math
import struct
from enum import Enum


class RegisterType(str, Enum):
    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def is_bit(self) -> bool:
        return self in (RegisterType.COIL, RegisterType.DISCRETE)

    @property
    def read_function(self) -> int:
        return {"coil": 1, "discrete": 2, "holding": 3, "input": 4}[self.value]


class DataType(str, Enum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BIT = "bit"  # one bit of a register, or a coil / discrete input
    STRING = "string"


class WordOrder(str, Enum):
    ABCD = "ABCD"
    BADC = "BADC"
    CDAB = "CDAB"
    DCBA = "DCBA"


_WIDTH = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.BIT: 1,
}
_STRUCT = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}


class CodecError(ValueError):
    """Registers that cannot be decoded, or a value that cannot be encoded."""


def register_count(data_type: DataType, length: int | None = None) -> int:
    """How many 16-bit registers a value of this type occupies."""
    if data_type is DataType.STRING:
        if not length or length < 1:
            raise CodecError("a string needs a length in registers")
        return length
    return _WIDTH[data_type]


def _to_wire(value_bytes: bytes, order: WordOrder) -> bytes:
    """Big-endian value bytes -> wire byte sequence (and back: each order is an involution)."""
    if order is WordOrder.ABCD:
        return value_bytes
    if order is WordOrder.DCBA:
        return value_bytes[::-1]
    words = [value_bytes[i : i + 2] for i in range(0, len(value_bytes), 2)]
    if order is WordOrder.BADC:
        return b"".join(w[::-1] for w in words)
    # CDAB: word order reversed, bytes within a word kept
    return b"".join(reversed(words))


def _regs_to_bytes(registers: list[int]) -> bytes:
    try:
        return b"".join(int(r).to_bytes(2, "big") for r in registers)
    except OverflowError as exc:
        raise CodecError(f"register value out of 0..65535 in {registers}") from exc


def decode(
    registers: list[int],
    data_type: DataType,
    order: WordOrder = WordOrder.ABCD,
    *,
    bit: int | None = None,
) -> int | float | bool | str:
    """Decode raw register words to a raw (unscaled) value."""
    if data_type is DataType.BIT:
        if len(registers) != 1:
            raise CodecError(f"bit needs 1 register, got {len(registers)}")
        return bool((registers[0] >> (bit or 0)) & 1)
    wire = _regs_to_bytes(registers)
    if data_type is DataType.STRING:
        # Strings are ASCII, two characters per register; the order applies per word (BADC/DCBA swap).
        if order in (WordOrder.BADC, WordOrder.DCBA):
            wire = b"".join(wire[i : i + 2][::-1] for i in range(0, len(wire), 2))
        return wire.split(b"\x00", 1)[0].decode("ascii", errors="replace").strip()
    width = _WIDTH[data_type]
    if len(registers) != width:
        raise CodecError(f"{data_type.value} needs {width} registers, got {len(registers)}")
    return struct.unpack(_STRUCT[data_type], _to_wire(wire, order))[0]


def encode(
    value: int | float | bool | str,
    data_type: DataType,
    order: WordOrder = WordOrder.ABCD,
    *,
    length: int | None = None,
) -> list[int]:
    """Encode a raw (unscaled) value to register words. Integers wrap at their width."""
    if data_type is DataType.BIT:
        return [1 if value else 0]
    if data_type is DataType.STRING:
        n = register_count(data_type, length)
        raw = str(value).encode("ascii")[: 2 * n].ljust(2 * n, b"\x00")
        if order in (WordOrder.BADC, WordOrder.DCBA):
            raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    fmt = _STRUCT[data_type]
    if data_type in (DataType.FLOAT32, DataType.FLOAT64):
        value_bytes = struct.pack(fmt, float(value))
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise CodecError(f"cannot encode {value} as {data_type.value}")
        bits = 16 * _WIDTH[data_type]
        ivalue = int(value) % (1 << bits)  # wrap, as a hardware counter does
        if fmt[1].islower() and ivalue >= 1 << (bits - 1):
            ivalue -= 1 << bits
        value_bytes = struct.pack(fmt, ivalue)
    wire = _to_wire(value_bytes, order)
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]
