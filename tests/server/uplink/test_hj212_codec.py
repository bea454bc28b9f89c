"""HJ 212 codec: CRC, length, round trips, splitting, rejections, fuzz, number format."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from greenmine.server.uplink.hj212.codec import (
    FLAG_D,
    MAX_DATA_BYTES,
    FrameError,
    Packet,
    decode_frame,
    encode_packet,
    encode_packets,
    format_number,
    parse_frame,
    split_packet,
)
from greenmine.server.uplink.hj212.crc import hj212_crc, hj212_crc_hex

STANDARD_EXAMPLE = (
    "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    "Flag=5;CP=&&RtdInterval=30&&1C80"
)
CASES = Path(__file__).resolve().parents[2] / "cases" / "hj212"
MN = "010000A8900016F000169DC0"


def reference_crc(data: bytes) -> int:
    """docs/hj212.md's CRC, transcribed independently of the module under test."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def modbus_crc(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_standard_example_length_and_crc() -> None:
    data = STANDARD_EXAMPLE[6:-4].encode()
    assert len(data) == 101
    assert hj212_crc_hex(data) == "1C80"
    assert hj212_crc(data) != modbus_crc(data), "must not be CRC-16/MODBUS"
    frame = parse_frame(STANDARD_EXAMPLE + "\r\n")
    assert (frame.length, frame.crc) == (101, "1C80")
    p = frame.packet
    assert (p.qn, p.st, p.cn, p.pw, p.mn, p.flag) == ("20160801085857223", "32", "1062", "100000", MN, 5)
    assert p.cp_values() == {"RtdInterval": "30"}
    assert p.reply_wanted and not p.is_split and p.flag_version == 1
    assert encode_packet(p) == (STANDARD_EXAMPLE + "\r\n").encode()


# Frames written out by hand from the standard's rules; length counted by hand,
# CRC pinned (and cross-checked against an independent transcription).
HAND_BUILT = [
    # 9014 data reply to the standard example
    ("QN=20160801085857223;ST=91;CN=9014;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&", 87),
    # 9011 request reply
    ("QN=20160801085857223;ST=91;CN=9011;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&QnRtn=1&&", 94),
    # 2011 real-time dust + noise
    ("QN=20260501100000000;ST=39;CN=2011;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
     "CP=&&DataTime=20260501100000;a34001-Rtd=0.123,a34001-Flag=N;LA-Rtd=55.3,LA-Flag=N&&", 163),
    # HJ/T 212-2005 style: no QN, no Flag, 14-character MN
    ("ST=32;CN=2011;PW=123456;MN=88888880000001;CP=&&DataTime=20040516021000;B01-Rtd=50.0&&", 85),
    # a vendor heartbeat
    ("QN=20260501100000000;ST=39;CN=8013;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&", 87),
]


@pytest.mark.parametrize("data,length", HAND_BUILT)
def test_hand_built_frames(data: str, length: int) -> None:
    raw = data.encode()
    assert len(raw) == length
    crc = f"{reference_crc(raw):04X}"
    assert hj212_crc_hex(raw) == crc
    frame = f"##{length:04d}{data}{crc}\r\n"
    decoded = decode_frame(frame)
    assert encode_packet(decoded).decode() == frame or decoded.qn is None


def test_lenient_2005_and_unknown_cn() -> None:
    old = HAND_BUILT[3][0]
    p = decode_frame(f"##{len(old):04d}{old}{hj212_crc_hex(old.encode())}")
    assert p.qn is None and p.flag is None and p.mn == "88888880000001"
    beat = HAND_BUILT[4][0]
    hb = decode_frame(f"##{len(beat):04d}{beat}{hj212_crc_hex(beat.encode())}")
    assert hb.cn == "8013" and hb.known is False and hb.command_name is None
    assert hb.to_dict()["command"] is None


def _upload(cn: str, n_codes: int = 3) -> Packet:
    items = [(("DataTime", "20260501100000"),)]
    for i in range(n_codes):
        code = f"a{34001 + i:05d}"
        if cn == "2011":
            items.append(((f"{code}-Rtd", "0.123"), (f"{code}-Flag", "N")))
        else:
            items.append(((f"{code}-Avg", "0.100"), (f"{code}-Min", "0.050"), (f"{code}-Max", "0.200"), (f"{code}-Flag", "N")))
    return Packet(qn="20260501100000123", st="39", cn=cn, pw="100000", mn=MN, flag=5, cp=tuple(items))


ROUND_TRIP = [
    _upload("2011"), _upload("2051"), _upload("2061"), _upload("2031"),
    Packet(qn="20260501100000123", st="39", cn="2031", pw="100000", mn=MN, flag=5,
           cp=((("DataTime", "20260430000000"),), (("Ld-DayData", "58.2"), ("Ld-Flag", "N")),
               (("Ln-NightData", "47.9"), ("Ln-Flag", "M")))),
    Packet(qn="20260501100000123", st="91", cn="9011", pw="100000", mn=MN, flag=4, cp=((("QnRtn", "1"),),)),
    Packet(qn="20260501100000123", st="91", cn="9012", pw="100000", mn=MN, flag=4, cp=((("ExeRtn", "1"),),)),
    Packet(qn="20260501100000123", st="91", cn="9013", pw="100000", mn=MN, flag=4),
    Packet(qn="20260501100000123", st="91", cn="9014", pw="100000", mn=MN, flag=4),
    Packet(qn="20260501100000123", st="39", cn="1011", pw="100000", mn=MN, flag=4, cp=((("SystemTime", "20260501100000"),),)),
    Packet(qn="20260501100000123", st="39", cn="1061", pw="100000", mn=MN, flag=4, cp=((("RtdInterval", "30"),),)),
    Packet(qn="20260501100000123", st="39", cn="1063", pw="100000", mn=MN, flag=4, cp=((("MinInterval", "10"),),)),
]


@pytest.mark.parametrize("packet", ROUND_TRIP, ids=lambda p: p.cn)
def test_round_trip(packet: Packet) -> None:
    frame = encode_packet(packet)
    assert frame.startswith(b"##") and frame.endswith(b"\r\n")
    assert int(frame[2:6]) == len(frame) - 12
    assert decode_frame(frame) == packet


@pytest.mark.parametrize("cn", ["2011", "2051", "2061", "2031"])
def test_split_round_trip(cn: str) -> None:
    big = _upload(cn, n_codes=60)
    assert len(big.data_segment()) > MAX_DATA_BYTES
    parts = split_packet(big)
    assert len(parts) > 1
    frames = encode_packets(big)
    seen: list[tuple[tuple[str, str], ...]] = []
    for n, frame in enumerate(frames, start=1):
        assert int(frame[2:6]) <= MAX_DATA_BYTES
        p = decode_frame(frame)
        assert p.is_split and p.flag == 5 | FLAG_D
        assert (p.pnum, p.pno) == (len(frames), n)
        assert p.qn == big.qn
        # each part stands alone: it starts with DataTime
        assert p.cp[0] == (("DataTime", "20260501100000"),)
        seen.extend(p.cp[1:])
    assert tuple(seen) == big.cp[1:]


def test_split_packet_keeps_small_packet_whole() -> None:
    small = _upload("2011")
    assert split_packet(small) == [small]


def test_split_exact_boundary() -> None:
    # Grow a message byte by byte past 1024 and check every part fits.
    for extra in range(0, 40):
        p = replace(_upload("2051", n_codes=10), pw="1" * (1 + extra % 9))
        for part in split_packet(p, max_bytes=400):
            assert len(part.data_segment().encode()) <= 400


def test_encode_refuses_oversize_and_reserved() -> None:
    with pytest.raises(FrameError, match="over the 1024-byte limit"):
        encode_packet(_upload("2051", n_codes=60))
    with pytest.raises(FrameError, match="reserved character ';'"):
        encode_packet(Packet(st="39", cn="2011", mn="A;B"))


def _cases() -> list[Path]:
    return sorted(d for d in CASES.iterdir() if d.is_dir())


@pytest.mark.parametrize("case", _cases(), ids=lambda d: d.name)
def test_rejections(case: Path) -> None:
    frame = (case / "frame.txt").read_text().rstrip("\n")
    expected = (case / "error.txt").read_text().strip()
    with pytest.raises(FrameError) as info:
        decode_frame(frame)
    assert str(info.value) == expected


def test_rejection_table_covers_the_issue() -> None:
    names = {d.name for d in _cases()}
    assert {"bad-crc", "bad-length", "truncated", "no-header", "no-cp", "non-numeric-length"} <= names


def test_fuzz_never_crashes() -> None:
    rng = random.Random(212)
    good = (STANDARD_EXAMPLE + "\r\n").encode()
    alphabet = b"#&;=,0123456789ABCDEFQNSTCPMW\r\n\xff\x00"
    for _ in range(3000):
        mode = rng.randrange(3)
        if mode == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 140)))
        elif mode == 1:
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 140)))
        else:
            raw = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            data = bytes(raw)
        try:
            decode_frame(data)
        except FrameError:
            pass


@pytest.mark.parametrize(
    "value,decimals,text",
    [
        (1e-5, 3, "0.000"),
        (0.0000123, 6, "0.000012"),
        (0.0125, 3, "0.013"),  # half up, on the decimal value
        (55.25, 1, "55.3"),
        (55.0, 1, "55.0"),
        (-0.0001, 2, "0.00"),
        (1.5e7, 1, "15000000.0"),
        (1e21, 0, "1000000000000000000000"),
        (359.6, 0, "360"),
        (-3.25, 1, "-3.3"),
    ],
)
def test_format_number(value: float, decimals: int, text: str) -> None:
    assert format_number(value, decimals) == text
    assert "e" not in text.lower()


def test_format_number_refuses_nan() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        format_number(float("nan"), 1)
