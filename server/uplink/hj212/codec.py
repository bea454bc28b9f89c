"""HJ 212-2017 frames: encode, decode, split. Pure: no I/O, no clock.

This module owns the wire syntax and nothing else:

    ##dddd<data segment>CCCC\\r\\n
    data segment = QN=..;ST=..;CN=..;PW=..;MN=..;Flag=..;[PNUM=..;PNO=..;]CP=&&..&&

CP holds items separated by `;`; one item holds the fields of one code
separated by `,` (`a34001-Rtd=0.123,a34001-Flag=N`); each field is `key=value`.

Decoding is strict where a wrong guess would corrupt data (CRC, length,
structure) and lenient where field receivers are (missing QN or Flag as in
HJ/T 212-2005, a QN of epoch milliseconds, MN of any length, unknown CNs such
as vendor heartbeats).
Every malformed frame raises `FrameError` with a message that names the
culprit; nothing else escapes `decode_frame`, whatever the bytes.

What a message *means* (which CP fields a 2011 upload carries, how flags
aggregate) lives in `messages.py`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from greenmine.server.uplink.hj212.crc import hj212_crc, hj212_crc_hex

#: The data segment limit of HJ 212-2017 §6.3; longer messages are split (PNUM/PNO).
MAX_DATA_BYTES = 1024

#: QNs accepted from a platform. The standard's form is 17 digits YYYYMMDDhhmmsszzz (and that is the
#: only form we generate), but platforms in the field send epoch milliseconds (13 digits), and a QN
#: is only an id echoed in the reply: any 13 to 20 digits are accepted and echoed as sent.
QN_MIN_DIGITS = 13
QN_MAX_DIGITS = 20

#: Flag bits, high to low `V5..V0 D A`.
FLAG_A = 0b01  # a reply is wanted
FLAG_D = 0b10  # the packet is one of several (carries PNUM and PNO)
#: Version bits 000001 = HJ 212-2017.
FLAG_VERSION_2017 = 1

#: Commands this codec can name. Others decode fine and report `known=False`.
COMMANDS: dict[str, str] = {
    "1000": "set timeout and retries",
    "1011": "get on-site time",
    "1012": "set on-site time",
    "1013": "time calibration request",
    "1061": "get real-time data interval",
    "1062": "set real-time data interval",
    "1063": "get minute data interval",
    "1064": "set minute data interval",
    "1072": "set on-site password",
    "2011": "real-time data",
    "2012": "stop real-time data",
    "2021": "equipment running state",
    "2022": "stop equipment running state",
    "2031": "daily data",
    "2041": "daily equipment running time",
    "2051": "minute data",
    "2061": "hourly data",
    "2081": "restart time",
    "9011": "request reply",
    "9012": "execution result",
    "9013": "notification reply",
    "9014": "data reply",
}

_HEADER_ORDER = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
# Characters that are syntax somewhere in a frame; a value containing one
# would silently change the frame's structure, so encoding refuses it.
_RESERVED = re.compile(r"[;,=&\r\n]")

CpItem = tuple[tuple[str, str], ...]
"""One `;`-separated CP item: its `key=value` fields in order."""


class FrameError(ValueError):
    """A frame that cannot be decoded, or a packet that cannot be encoded.

    The message is meant for a field engineer: it names what is wrong and
    shows the offending text, e.g. `CRC mismatch: got 1C81, computed 1C80`.
    """


@dataclass(frozen=True)
class Packet:
    """One HJ 212 packet: the decoded fields of one data segment.

    `qn` and `flag` are None when absent (HJ/T 212-2005 style); `pnum` and
    `pno` are set only on split packets.
    """

    st: str
    cn: str
    cp: tuple[CpItem, ...] = ()
    qn: str | None = None
    pw: str | None = None
    mn: str | None = None
    flag: int | None = None
    pnum: int | None = None
    pno: int | None = None

    @property
    def command_name(self) -> str | None:
        """What CN means, or None for a command this codec does not know (e.g. vendor 8013)."""
        return COMMANDS.get(self.cn)

    @property
    def known(self) -> bool:
        return self.cn in COMMANDS

    @property
    def reply_wanted(self) -> bool:
        return self.flag is not None and bool(self.flag & FLAG_A)

    @property
    def is_split(self) -> bool:
        return self.flag is not None and bool(self.flag & FLAG_D)

    @property
    def flag_version(self) -> int | None:
        return None if self.flag is None else self.flag >> 2

    def cp_values(self) -> dict[str, str]:
        """All CP fields flattened into one dict (first occurrence wins)."""
        out: dict[str, str] = {}
        for item in self.cp:
            for key, value in item:
                out.setdefault(key, value)
        return out

    def data_segment(self) -> str:
        """The data segment text, fields in the standard's order. Validates as it goes."""
        parts = []
        values = {
            "QN": self.qn, "ST": self.st, "CN": self.cn, "PW": self.pw, "MN": self.mn,
            "Flag": None if self.flag is None else str(self.flag),
            "PNUM": None if self.pnum is None else str(self.pnum),
            "PNO": None if self.pno is None else str(self.pno),
        }
        for name in _HEADER_ORDER:
            value = values[name]
            if value is None:
                continue
            _check_value(name, value)
            parts.append(f"{name}={value}")
        items = []
        for item in self.cp:
            fields = []
            for key, value in item:
                if not key:
                    raise FrameError("CP field with an empty key")
                _check_value("CP key", key)
                _check_value(f"CP field {key}", value)
                fields.append(f"{key}={value}")
            items.append(",".join(fields))
        parts.append("CP=&&" + ";".join(items) + "&&")
        return ";".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as the decode tool prints it."""
        return {
            "qn": self.qn,
            "st": self.st,
            "cn": self.cn,
            "command": self.command_name,
            "known": self.known,
            "pw": self.pw,
            "mn": self.mn,
            "flag": None if self.flag is None else {
                "value": self.flag,
                "version": self.flag_version,
                "split": self.is_split,
                "reply_wanted": self.reply_wanted,
            },
            "pnum": self.pnum,
            "pno": self.pno,
            "cp": [dict(item) for item in self.cp],
        }


@dataclass(frozen=True)
class Frame:
    """A decoded frame together with what was on the wire around the packet."""

    packet: Packet
    length: int
    crc: str
    data_segment: str = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"length": self.length, "crc": self.crc, **self.packet.to_dict()}


def _check_value(name: str, value: str) -> None:
    match = _RESERVED.search(value)
    if match:
        raise FrameError(f"{name} value {value!r} contains reserved character {match.group()!r}")


# --------------------------------------------------------------------------- encode


def encode_packet(packet: Packet) -> bytes:
    """The whole frame for one packet, `##` to `\\r\\n`.

    Raises FrameError if the data segment is over 1024 bytes (use
    `split_packet`) or a value contains a reserved character.
    """
    data = packet.data_segment().encode("utf-8")
    if len(data) > MAX_DATA_BYTES:
        raise FrameError(
            f"data segment is {len(data)} bytes, over the {MAX_DATA_BYTES}-byte limit: split it first"
        )
    return b"##%04d%s%s\r\n" % (len(data), data, hj212_crc_hex(data).encode("ascii"))


def split_packet(packet: Packet, max_bytes: int = MAX_DATA_BYTES) -> list[Packet]:
    """Split a packet whose data segment is too long into numbered packets.

    A packet that fits is returned alone and unchanged. Otherwise every part
    gets the D bit, PNUM (total) and PNO (1-based), the same QN, and whole CP
    items only, so each part can be read on its own. Leading CP items without
    a `code-field` key (`DataTime`, `BeginTime` ...) are context and repeated
    in every part for the same reason.
    """
    if len(packet.data_segment().encode("utf-8")) <= max_bytes:
        return [packet]
    if packet.flag is None:
        raise FrameError("a split packet needs a Flag to carry the D bit")
    n_context = 0
    for item in packet.cp:
        if any("-" in key for key, _ in item):
            break
        n_context += 1
    context, body = packet.cp[:n_context], packet.cp[n_context:]
    flag = packet.flag | FLAG_D
    # PNUM/PNO lengthen the header, and how much depends on how many parts
    # there are. Size every part as if PNUM and PNO had `width` digits and
    # widen until the count fits in that many digits.
    for width in range(1, 5):
        widest = 10**width - 1
        groups: list[list[CpItem]] = []
        current: list[CpItem] = []
        for item in body:
            trial = replace(packet, flag=flag, pnum=widest, pno=widest, cp=(*context, *current, item))
            if len(trial.data_segment().encode("utf-8")) <= max_bytes:
                current.append(item)
                continue
            trial = replace(packet, flag=flag, pnum=widest, pno=widest, cp=(*context, item))
            if len(trial.data_segment().encode("utf-8")) > max_bytes:
                keys = ",".join(k for k, _ in item)
                raise FrameError(f"CP item {keys!r} alone does not fit in {max_bytes} bytes")
            groups.append(current)
            current = [item]
        if current:
            groups.append(current)
        if len(groups) <= widest:
            return [
                replace(packet, flag=flag, pnum=len(groups), pno=i, cp=(*context, *items))
                for i, items in enumerate(groups, start=1)
            ]
    raise FrameError("message needs more than 9999 packets")


def encode_packets(packet: Packet, max_bytes: int = MAX_DATA_BYTES) -> list[bytes]:
    """`split_packet` then `encode_packet` each part."""
    return [encode_packet(p) for p in split_packet(packet, max_bytes)]


# --------------------------------------------------------------------------- decode


def decode_frame(frame: bytes | str) -> Packet:
    """Decode one frame into a Packet, or raise FrameError. See `parse_frame`."""
    return parse_frame(frame).packet


def parse_frame(frame: bytes | str) -> Frame:
    """Decode one frame; the trailing `\\r\\n` is optional (frames pasted by hand lack it).

    Checks run in the order a receiver needs them: header, length, CRC, then
    the structure of the data segment, so the first error reported is the one
    that explains the others.
    """
    if isinstance(frame, str):
        try:
            raw = frame.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FrameError(f"frame text cannot be encoded: {exc.reason}") from exc
    elif isinstance(frame, (bytes, bytearray, memoryview)):
        raw = bytes(frame)
    else:
        raise FrameError(f"frame must be bytes or str, not {type(frame).__name__}")
    raw = raw.rstrip(b"\r\n")
    if not raw:
        raise FrameError("empty frame")
    if not raw.startswith(b"##"):
        raise FrameError(f"missing '##' header: frame starts with {_show(raw[:8])}")
    if len(raw) < 6:
        raise FrameError(f"truncated frame: {len(raw)} bytes, the header alone needs 6")
    length_text = raw[2:6]
    if not (length_text.isdigit() and length_text.isascii()):
        raise FrameError(f"non-numeric length {_show(length_text)}")
    declared = int(length_text)
    rest = raw[6:]
    if len(rest) == declared + 4:
        data, crc_text = rest[:declared], rest[declared:]
        if not _HEX4.fullmatch(crc_text.decode("latin-1")):
            raise FrameError(f"CRC {_show(crc_text)} is not 4 hex digits")
    elif len(rest) > declared + 4 and rest[:declared].endswith(b"&&") and _HEX4.fullmatch(
        rest[declared : declared + 4].decode("latin-1")
    ):
        # A whole frame of the declared size, then more: bytes were appended, the length is right.
        extra = rest[declared + 4 :]
        raise FrameError(f"{len(extra)} unexpected bytes after the CRC: {_show(extra[:16])}")
    else:
        # Whatever came between the header and the line end, less a 4-character CRC: a frame cut
        # short and a header with a wrong length look the same from here, so name the numbers.
        raise FrameError(f"length mismatch: header says {length_text.decode()}, got {max(len(rest) - 4, 0)}")
    computed = hj212_crc(data)
    got = int(crc_text, 16)
    if got != computed:
        raise FrameError(f"CRC mismatch: got {crc_text.decode().upper()}, computed {computed:04X}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Some platforms put GBK text in CP (e.g. Chinese info strings).
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise FrameError(f"data segment is neither UTF-8 nor GB18030 text (byte {exc.start})") from exc
    packet = parse_data_segment(text)
    return Frame(packet=packet, length=declared, crc=f"{computed:04X}", data_segment=text)


def parse_data_segment(text: str) -> Packet:
    """Parse a data segment (no `##`, length or CRC) into a Packet."""
    start = text.find("CP=&&")
    if start < 0 or not text.endswith("&&") or len(text) < start + 7:
        raise FrameError("missing CP=&&...&& section")
    header_text, cp_text = text[:start], text[start + 5 : -2]
    header: dict[str, str] = {}
    if header_text:
        if not header_text.endswith(";"):
            raise FrameError(f"expected ';' before CP=, got {header_text[-10:]!r}")
        for part in header_text[:-1].split(";"):
            key, sep, value = part.partition("=")
            if not sep:
                raise FrameError(f"header field {part!r} has no '='")
            if key not in _HEADER_ORDER:
                raise FrameError(f"unknown header field {key!r}")
            if key in header:
                raise FrameError(f"duplicate header field {key!r}")
            header[key] = value
    for required in ("ST", "CN"):
        if required not in header:
            raise FrameError(f"missing {required} field")
    qn = header.get("QN")
    if qn is not None and not (QN_MIN_DIGITS <= len(qn) <= QN_MAX_DIGITS and qn.isdigit() and qn.isascii()):
        raise FrameError(f"QN {qn!r} is not {QN_MIN_DIGITS} to {QN_MAX_DIGITS} digits (YYYYMMDDhhmmsszzz, or epoch ms)")
    st, cn = header["ST"], header["CN"]
    if not (st.isdigit() and st.isascii()):
        raise FrameError(f"ST {st!r} is not numeric")
    if not (cn.isdigit() and cn.isascii()):
        raise FrameError(f"CN {cn!r} is not numeric")
    flag = _parse_int(header, "Flag", 0, 255)
    pnum = _parse_int(header, "PNUM", 1, 9999)
    pno = _parse_int(header, "PNO", 1, 9999)
    if (pnum is None) != (pno is None):
        raise FrameError("PNUM and PNO must appear together")
    if pnum is not None and pno is not None and pno > pnum:
        raise FrameError(f"PNO {pno} is greater than PNUM {pnum}")
    if flag is not None:
        if flag & FLAG_D and pnum is None:
            raise FrameError(f"Flag={flag} marks a split packet (D bit) but PNUM/PNO are missing")
        if pnum is not None and not flag & FLAG_D:
            raise FrameError(f"PNUM/PNO present but Flag={flag} lacks the D bit")
    mn = header.get("MN")
    if mn is not None and not mn:
        raise FrameError("MN is empty")
    return Packet(
        st=st, cn=cn, cp=_parse_cp(cp_text), qn=qn, pw=header.get("PW"), mn=mn,
        flag=flag, pnum=pnum, pno=pno,
    )


def _parse_int(header: dict[str, str], key: str, low: int, high: int) -> int | None:
    text = header.get(key)
    if text is None:
        return None
    if not (text.isdigit() and text.isascii()) or not low <= int(text) <= high:
        raise FrameError(f"{key} {text!r} is not an integer {low}..{high}")
    return int(text)


def _parse_cp(cp_text: str) -> tuple[CpItem, ...]:
    if "&&" in cp_text:
        raise FrameError("unexpected '&&' inside CP")
    items: list[CpItem] = []
    for n, item_text in enumerate(cp_text.split(";"), start=1):
        if not item_text:
            # An empty item (`&&&&`, or a trailing ';' that some loggers
            # write) carries nothing; skipping it loses nothing.
            continue
        fields: list[tuple[str, str]] = []
        seen: set[str] = set()
        for field_text in item_text.split(","):
            key, sep, value = field_text.partition("=")
            if not sep:
                raise FrameError(f"CP item {n}: field {field_text!r} has no '='")
            if not key:
                raise FrameError(f"CP item {n}: field {field_text!r} has an empty key")
            if key in seen:
                raise FrameError(f"CP item {n}: duplicate key {key!r}")
            seen.add(key)
            fields.append((key, value))
        items.append(tuple(fields))
    return tuple(items)


def _show(raw: bytes) -> str:
    return repr(raw.decode("latin-1"))


# --------------------------------------------------------------------------- field formats


def make_flag(*, reply_wanted: bool, version: int = FLAG_VERSION_2017) -> int:
    """Flag for an unsplit packet: version bits, then A. (split_packet adds D.)"""
    if not 0 <= version <= 63:
        raise ValueError(f"flag version {version} is not 0..63")
    return (version << 2) | (FLAG_A if reply_wanted else 0)


def format_qn(moment: datetime) -> str:
    """QN `YYYYMMDDhhmmsszzz` for a (local) time."""
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


def format_data_time(moment: datetime) -> str:
    """`YYYYMMDDhhmmss` as used by DataTime, SystemTime, BeginTime, EndTime."""
    return moment.strftime("%Y%m%d%H%M%S")


def parse_data_time(text: str) -> datetime:
    """Parse `YYYYMMDDhhmmss` into a naive datetime (the caller attaches the zone)."""
    if not (len(text) == 14 and text.isdigit() and text.isascii()):
        raise FrameError(f"time {text!r} is not 14 digits YYYYMMDDhhmmss")
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError as exc:
        raise FrameError(f"time {text!r} is not a valid date: {exc}") from exc


def format_number(value: float, decimals: int) -> str:
    """A measured value as the field definitions write it: fixed point, never `1e-05`.

    Rounds half up (四舍五入), on the shortest decimal repr of the float, so
    0.0125 with 3 decimals is 0.013 and not the binary-rounded 0.012.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot send non-finite value {value!r}")
    if not 0 <= decimals <= 9:
        raise ValueError(f"decimals {decimals} is not 0..9")
    try:
        quantum = Decimal(1).scaleb(-decimals)
        rounded = Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP)
    except InvalidOperation as exc:  # only for absurdly large values
        raise ValueError(f"cannot format {value!r} with {decimals} decimals") from exc
    if rounded.is_zero():
        rounded = abs(rounded)  # "-0.0" would be read as a sign error
    return f"{rounded:f}"
