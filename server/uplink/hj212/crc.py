"""The HJ 212-2017 frame checksum.

HJ 212 uses its own CRC, not CRC-16/MODBUS: the running value is shifted
right by 8 *before* the byte is XORed in. With the same polynomial (0xA001)
and seed (0xFFFF) the two give different results, and a platform rejects a
frame carrying the Modbus CRC. The standard's example
(`...CP=&&RtdInterval=30&&`, 101 bytes) must give 1C80; the tests pin it.
"""

from __future__ import annotations


def hj212_crc(data: bytes) -> int:
    """Return the HJ 212 CRC of `data` (the data segment only) as an int 0..0xFFFF."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


def hj212_crc_hex(data: bytes) -> str:
    """The CRC as it is written in a frame: 4 uppercase hex digits."""
    return f"{hj212_crc(data):04X}"
