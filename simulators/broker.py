"""An in-process MQTT broker for demos and tests: pure asyncio, standard library only.

`greenmine demo` uses Mosquitto when it is installed and falls back to this
broker otherwise. It speaks enough MQTT 3.1.1 and 5.0 for greenmine's own
clients (paho-mqtt 2.x): persistent sessions, QoS 0 and 1, retained messages,
wills, keepalive, wildcards and shared subscriptions.

It is **for demos only**. What it does not do, on purpose:

- nothing survives a broker restart (sessions, queues and retained messages
  live in memory);
- no TLS, no authentication: any username and password are accepted;
- QoS 2 is accepted from publishers (PUBREC/PUBREL/PUBCOMP, duplicates
  suppressed) but delivered to subscribers at QoS 1 at most, and SUBACK grants
  at most QoS 1;
- no topic aliases, no enhanced authentication (AUTH), no bridging.

Every queue is bounded: a session's offline/overflow queue drops its oldest
message when full (counted in `stats["dropped_queued"]`); QoS 0 messages to a
client whose socket buffer is full are dropped (`stats["dropped_qos0"]`); new
retained topics beyond `max_retained_messages` are refused
(`stats["retained_refused"]`). A malformed or oversize packet closes that
client only, with a log line, and is counted in `stats["bad_packets"]`.

Use `DemoBroker` from asyncio code, or `DemoBrokerThread` (a context manager
that runs the broker's own event loop in a non-daemon thread, joined on exit)
from synchronous code such as the demo and the tests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEMO_ONLY_WARNING = (
    "using the in-process demo MQTT broker: for demos only "
    "(in-memory, no TLS, no auth, QoS 2 delivered as QoS 1); install mosquitto for real use"
)

# Packet types (MQTT 3.1.1 §2.2.1, 5.0 §2.1.2).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# Reason codes we send (5.0 §2.4); 3.1.1 CONNACK return codes are 0..5.
RC_MALFORMED = 0x81
RC_PROTOCOL_ERROR = 0x82
RC_KEEPALIVE_TIMEOUT = 0x8D
RC_SESSION_TAKEN_OVER = 0x8E
RC_TOPIC_FILTER_INVALID = 0x8F
RC_TOPIC_NAME_INVALID = 0x90
RC_TOPIC_ALIAS_INVALID = 0x94
RC_PACKET_TOO_LARGE = 0x95
RC_BAD_AUTH_METHOD = 0x8C
RC_SERVER_SHUTTING_DOWN = 0x8B
RC_NO_SUBSCRIPTION = 0x11

NEVER_EXPIRES = 0xFFFFFFFF  # session expiry interval meaning "never" (5.0 §3.1.2.11.2)
MAX_VARINT = 268_435_455

# MQTT 5 properties: id -> wire type (5.0 §2.2.2.2).
_PROP_TYPES = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "varint",
    0x11: "u32", 0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte",
    0x18: "u32", 0x19: "byte", 0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16",
    0x22: "u16", 0x23: "u16", 0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "u32",
    0x28: "byte", 0x29: "byte", 0x2A: "byte",
}
_CONNECT_PROPS = {0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16}
_WILL_PROPS = {0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26}
_PUBLISH_PROPS = {0x01, 0x02, 0x03, 0x08, 0x09, 0x23, 0x26}
_ACK_PROPS = {0x1F, 0x26}
_SUBSCRIBE_PROPS = {0x0B, 0x26}
_UNSUBSCRIBE_PROPS = {0x26}
_DISCONNECT_PROPS = {0x11, 0x1F, 0x26, 0x1C}
# Application properties a broker forwards unchanged (5.0 §3.3.2.3); expiry is recomputed.
_FORWARDED_PROPS = (0x01, 0x03, 0x08, 0x09, 0x26)


class PacketError(Exception):
    """A client sent something we cannot accept; its connection is closed."""

    def __init__(self, reason: str, code: int = RC_MALFORMED) -> None:
        super().__init__(reason)
        self.code = code


# ---------------------------------------------------------------- wire helpers


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _bin(b: bytes) -> bytes:
    return _u16(len(b)) + b


def _str(s: str) -> bytes:
    return _bin(s.encode("utf-8"))


def _packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + _varint(len(body)) + body


def _encode_props(props: list[tuple[int, Any]]) -> bytes:
    out = bytearray()
    for pid, value in props:
        kind = _PROP_TYPES[pid]
        out += _varint(pid)
        if kind == "byte":
            out.append(value)
        elif kind == "u16":
            out += _u16(value)
        elif kind == "u32":
            out += value.to_bytes(4, "big")
        elif kind == "varint":
            out += _varint(value)
        elif kind == "str":
            out += _str(value)
        elif kind == "bin":
            out += _bin(value)
        else:  # pair
            out += _str(value[0]) + _str(value[1])
    return _varint(len(out)) + bytes(out)


class _Buf:
    """Cursor over one packet's body; every short read is a malformed packet."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def _take(self, n: int) -> bytes:
        if self.i + n > len(self.data):
            raise PacketError("packet shorter than its fields")
        chunk = self.data[self.i:self.i + n]
        self.i += n
        return chunk

    def remaining(self) -> int:
        return len(self.data) - self.i

    def rest(self) -> bytes:
        return self._take(self.remaining())

    def byte(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def varint(self) -> int:
        value, mult = 0, 1
        for _ in range(4):
            b = self.byte()
            value += (b & 0x7F) * mult
            if not b & 0x80:
                return value
            mult *= 128
        raise PacketError("variable byte integer longer than 4 bytes")

    def bin(self) -> bytes:
        return self._take(self.u16())

    def str(self) -> str:
        raw = self.bin()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PacketError("string is not valid UTF-8") from None
        if "\x00" in s:
            raise PacketError("string contains U+0000")
        return s

    def props(self, allowed: set[int]) -> dict[int, Any]:
        length = self.varint()
        end = self.i + length
        if end > len(self.data):
            raise PacketError("properties longer than the packet")
        props: dict[int, Any] = {}
        while self.i < end:
            pid = self.varint()
            kind = _PROP_TYPES.get(pid)
            if kind is None:
                raise PacketError(f"unknown property 0x{pid:02x}")
            if pid not in allowed:
                raise PacketError(f"property 0x{pid:02x} not allowed in this packet", RC_PROTOCOL_ERROR)
            if kind == "byte":
                value: Any = self.byte()
            elif kind == "u16":
                value = self.u16()
            elif kind == "u32":
                value = self.u32()
            elif kind == "varint":
                value = self.varint()
            elif kind == "str":
                value = self.str()
            elif kind == "bin":
                value = self.bin()
            else:
                value = (self.str(), self.str())
            if pid == 0x26:
                props.setdefault(pid, []).append(value)
            elif pid in props:
                raise PacketError(f"property 0x{pid:02x} given twice", RC_PROTOCOL_ERROR)
            else:
                props[pid] = value
        if self.i != end:
            raise PacketError("properties overrun their length")
        return props


# ---------------------------------------------------------------- topics


def valid_topic_name(topic: str) -> bool:
    """A PUBLISH topic: non-empty, no wildcards (3.1.1 §4.7.3)."""
    return bool(topic) and "+" not in topic and "#" not in topic


def valid_topic_filter(flt: str) -> bool:
    """`#` only as the whole last level; `+` only as a whole level."""
    if not flt:
        return False
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(flt: str, topic: str) -> bool:
    """Spec matching (3.1.1 §4.7): `a/#` matches `a`; wildcards at the first
    level never match topics starting with `$` (such as `$SYS/...`)."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f_levels = flt.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def split_shared(flt: str) -> tuple[str | None, str]:
    """`$share/<group>/<filter>` -> (group, filter); other filters -> (None, filter).
    Raises PacketError(RC_TOPIC_FILTER_INVALID) for a malformed shared filter."""
    if not flt.startswith("$share/"):
        return None, flt
    parts = flt.split("/", 2)
    if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1] or not valid_topic_filter(parts[2]):
        raise PacketError(f"invalid shared subscription {flt!r}", RC_TOPIC_FILTER_INVALID)
    return parts[1], parts[2]


# ---------------------------------------------------------------- state


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: list[tuple[int, Any]] = field(default_factory=list)  # forwarded v5 properties
    expiry_s: int | None = None
    created: float = field(default_factory=time.monotonic)

    def remaining_expiry(self) -> int | None:
        if self.expiry_s is None:
            return None
        return self.expiry_s - int(time.monotonic() - self.created)


@dataclass
class _Delivery:
    msg: Message
    qos: int
    retain: bool
    sub_ids: list[int] = field(default_factory=list)


@dataclass
class _Sub:
    filter: str  # without the $share prefix
    qos: int
    group: str | None = None
    no_local: bool = False
    retain_as_published: bool = False
    sub_id: int | None = None


@dataclass
class _Will:
    msg: Message
    delay_s: int


class _SharedGroup:
    """Members of one `$share/<group>/<filter>`, served round-robin."""

    def __init__(self) -> None:
        self.members: dict[str, _Sub] = {}
        self.turn = 0


class _Session:
    def __init__(self, client_id: str, max_queued: int) -> None:
        self.client_id = client_id
        self.subs: dict[str, _Sub] = {}  # key: the filter as subscribed, $share prefix included
        self.inflight: OrderedDict[int, _Delivery] = OrderedDict()  # sent QoS 1, awaiting PUBACK
        self.queue: deque[_Delivery] = deque()  # waiting for a connection or an inflight slot
        self.max_queued = max_queued
        self.incoming_qos2: set[int] = set()  # PUBREC sent, PUBREL awaited
        self.expiry_s: int = 0
        self.conn: _Connection | None = None
        self.expiry_handle: asyncio.TimerHandle | None = None
        self.will_handle: asyncio.TimerHandle | None = None
        self.pending_will: _Will | None = None
        self.dropping = False
        self._pids = itertools.cycle(range(1, 65536))

    def next_pid(self) -> int:
        for _ in range(65535):
            pid = next(self._pids)
            if pid not in self.inflight:
                return pid
        raise RuntimeError("no free packet id")  # unreachable: inflight is bounded far below 65535


class _Connection:
    def __init__(self, broker: DemoBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.broker = broker
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.client_id = ""
        self.version = 4
        self.keepalive_s = 0
        self.will: _Will | None = None
        self.session: _Session | None = None
        self.clean_close = False  # DISCONNECT received (no will), or taken over / shut down
        self.closed = False
        self.max_packet_out = MAX_VARINT + 5
        self.inflight_max = broker.max_inflight_messages

    def __str__(self) -> str:
        return f"client {self.client_id!r} ({self.peer})" if self.client_id else f"connection {self.peer}"

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def send_disconnect(self, code: int) -> None:
        if self.version == 5 and not self.closed:
            self.send(_packet(DISCONNECT, 0, bytes([code]) + _encode_props([])))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


# ---------------------------------------------------------------- the broker


class DemoBroker:
    """An asyncio MQTT 3.1.1/5.0 broker. See the module docstring for its limits."""

    def __init__(
        self,
        *,
        max_packet_bytes: int = 1 << 20,
        max_queued_messages: int = 1000,
        max_inflight_messages: int = 100,
        max_retained_messages: int = 10_000,
        max_write_buffer_bytes: int = 8 << 20,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.max_packet_bytes = max_packet_bytes
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.max_retained_messages = max_retained_messages
        self.max_write_buffer_bytes = max_write_buffer_bytes
        self.connect_timeout_s = connect_timeout_s
        self.sessions: dict[str, _Session] = {}
        self.shared: dict[tuple[str, str], _SharedGroup] = {}
        self.retained: dict[str, Message] = {}
        self.stats: Counter[str] = Counter()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._conns: set[_Connection] = set()
        self._stopping = False
        self._assigned_ids = itertools.count(1)

    # -- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 = a free port) and return the bound port."""
        self._server = await asyncio.start_server(self._accept, host, port)
        bound = self._server.sockets[0].getsockname()[1]
        log.warning(DEMO_ONLY_WARNING)
        log.info("demo MQTT broker listening on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        """Close the listener and every connection; forget all state."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.send_disconnect(RC_SERVER_SHUTTING_DOWN)
            conn.clean_close = True
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for session in self.sessions.values():
            for handle in (session.expiry_handle, session.will_handle):
                if handle is not None:
                    handle.cancel()
        self.sessions.clear()
        self.shared.clear()
        log.info("demo MQTT broker stopped")

    # -- connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping:
            writer.close()
            return
        self._tasks.add(task)
        conn = _Connection(self, reader, writer)
        self._conns.add(conn)
        try:
            await self._serve(conn)
        except PacketError as exc:
            self.stats["bad_packets"] += 1
            log.warning("%s: %s; closing it", conn, exc)
            if conn.session is None:
                # Before CONNACK a v5 client is told why in the CONNACK (5.0 §3.2.2.2), not a DISCONNECT.
                if conn.version == 5:
                    conn.send(_packet(CONNACK, 0, bytes([0, exc.code]) + _encode_props([])))
            else:
                conn.send_disconnect(exc.code)
        except asyncio.TimeoutError:
            if conn.session is None:
                log.warning("%s: no CONNECT within %g s; closing it", conn, self.connect_timeout_s)
            else:
                self.stats["keepalive_timeouts"] += 1
                log.warning("%s: silent for 1.5 x keepalive (%d s); closing it", conn, conn.keepalive_s)
                conn.send_disconnect(RC_KEEPALIVE_TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.debug("%s: connection lost", conn)
        except asyncio.CancelledError:
            pass  # broker stopping
        except Exception:  # a bug here must cost one client, never the broker
            self.stats["internal_errors"] += 1
            log.exception("%s: internal error; closing it", conn)
        finally:
            self._conns.discard(conn)
            self._tasks.discard(task)
            self._closed(conn)
            conn.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass

    async def _read_packet(self, conn: _Connection) -> tuple[int, int, bytes]:
        header = (await conn.reader.readexactly(1))[0]
        if conn.session is None and header != CONNECT << 4:
            # Fail fast on a stranger (an HTTP probe, say) instead of waiting for its "body".
            raise PacketError(f"first packet is not CONNECT (header byte 0x{header:02x})", RC_PROTOCOL_ERROR)
        length, mult = 0, 1
        for size in range(1, 5):
            b = (await conn.reader.readexactly(1))[0]
            length += (b & 0x7F) * mult
            if not b & 0x80:
                break
            mult *= 128
        else:
            raise PacketError("remaining length longer than 4 bytes")
        if 1 + size + length > self.max_packet_bytes:
            raise PacketError(
                f"packet of {1 + size + length} bytes exceeds max_packet_bytes={self.max_packet_bytes}",
                RC_PACKET_TOO_LARGE,
            )
        body = await conn.reader.readexactly(length)
        return header >> 4, header & 0x0F, body

    async def _serve(self, conn: _Connection) -> None:
        ptype, flags, body = await asyncio.wait_for(self._read_packet(conn), self.connect_timeout_s)
        if not self._connect(conn, flags, body):
            conn.clean_close = True
            return
        while not conn.closed:
            timeout = conn.keepalive_s * 1.5 if conn.keepalive_s else None
            ptype, flags, body = await asyncio.wait_for(self._read_packet(conn), timeout)
            self._dispatch(conn, ptype, flags, body)
            if conn.closed:
                break
            # Backpressure on this client's own replies; a peer that stops reading
            # is eventually caught by its keepalive.
            await asyncio.wait_for(conn.writer.drain(), timeout)

    def _dispatch(self, conn: _Connection, ptype: int, flags: int, body: bytes) -> None:
        buf = _Buf(body)
        if ptype == PUBLISH:
            self._on_publish(conn, flags, buf)
            return
        expected_flags = 0b0010 if ptype in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
        if flags != expected_flags:
            raise PacketError(f"reserved flags 0x{flags:x} in packet type {ptype}")
        session = conn.session
        assert session is not None
        if ptype == PUBACK:
            pid = self._read_ack(conn, buf)
            if session.inflight.pop(pid, None) is not None:
                self._pump(session)
        elif ptype == PUBREL:
            pid = self._read_ack(conn, buf)
            session.incoming_qos2.discard(pid)
            conn.send(_packet(PUBCOMP, 0, _u16(pid)))
        elif ptype in (PUBREC, PUBCOMP):
            # We never send QoS 2, so these answer nothing.
            raise PacketError(f"unexpected packet type {ptype}", RC_PROTOCOL_ERROR)
        elif ptype == SUBSCRIBE:
            self._on_subscribe(conn, buf)
        elif ptype == UNSUBSCRIBE:
            self._on_unsubscribe(conn, buf)
        elif ptype == PINGREQ:
            conn.send(_packet(PINGRESP, 0, b""))
        elif ptype == DISCONNECT:
            self._on_disconnect(conn, buf)
        elif ptype == CONNECT:
            raise PacketError("second CONNECT", RC_PROTOCOL_ERROR)
        else:
            raise PacketError(f"unexpected packet type {ptype}", RC_PROTOCOL_ERROR)

    def _read_ack(self, conn: _Connection, buf: _Buf) -> int:
        pid = buf.u16()
        if conn.version == 5 and buf.remaining():
            buf.byte()  # reason code: a failed PUBACK still ends the exchange
            if buf.remaining():
                buf.props(_ACK_PROPS)
        if buf.remaining():
            raise PacketError("trailing bytes in acknowledgement")
        return pid

    # -- CONNECT

    def _connect(self, conn: _Connection, flags: int, body: bytes) -> bool:
        """Handle CONNECT; False if it was refused with a CONNACK."""
        if flags:
            raise PacketError("reserved flags in CONNECT")
        buf = _Buf(body)
        name = buf.str()
        level = buf.byte()
        if name not in ("MQTT", "MQIsdp"):
            raise PacketError(f"unknown protocol name {name!r}", RC_PROTOCOL_ERROR)
        if name != "MQTT" or level not in (4, 5):
            # Unknown version: answer in 3.1.1 form, which every version can read.
            log.warning("%s: unsupported protocol %s level %d; refused", conn, name, level)
            self.stats["refused_protocol_version"] += 1
            conn.send(_packet(CONNACK, 0, bytes([0, 0x01])))
            return False
        conn.version = level
        cflags = buf.byte()
        if cflags & 0x01:
            raise PacketError("reserved CONNECT flag set")
        clean = bool(cflags & 0x02)
        will_flag = bool(cflags & 0x04)
        will_qos = (cflags >> 3) & 0x03
        will_retain = bool(cflags & 0x20)
        has_password = bool(cflags & 0x40)
        has_user = bool(cflags & 0x80)
        if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
            raise PacketError("inconsistent will flags")
        if level == 4 and has_password and not has_user:
            raise PacketError("password without username")
        conn.keepalive_s = buf.u16()
        props = buf.props(_CONNECT_PROPS) if level == 5 else {}
        client_id = buf.str()
        will = None
        if will_flag:
            wprops = buf.props(_WILL_PROPS) if level == 5 else {}
            wtopic = buf.str()
            wpayload = buf.bin()
            if not valid_topic_name(wtopic):
                raise PacketError(f"invalid will topic {wtopic!r}", RC_TOPIC_NAME_INVALID)
            will = _Will(self._message(wtopic, wpayload, will_qos, will_retain, wprops), wprops.get(0x18, 0))
        if has_user:
            buf.str()  # any username is accepted: demo broker
        if has_password:
            buf.bin()
        if buf.remaining():
            raise PacketError("trailing bytes in CONNECT")

        if level == 5 and 0x15 in props:
            self._refuse(conn, RC_BAD_AUTH_METHOD, "enhanced authentication is not supported")
            return False
        ack_props: list[tuple[int, Any]] = []
        if not client_id:
            if level == 4 and not clean:
                self._refuse(conn, 0x02, "empty client id with a persistent session")
                return False
            client_id = f"greenmine-demo-{next(self._assigned_ids)}"
            if level == 5:
                ack_props.append((0x12, client_id))
        conn.client_id = client_id
        conn.will = will
        if level == 5:
            conn.inflight_max = max(1, min(self.max_inflight_messages, props.get(0x21, 65535)))
            conn.max_packet_out = props.get(0x27, conn.max_packet_out)
            ack_props.append((0x27, self.max_packet_bytes))
            expiry = props.get(0x11, 0)
        else:
            expiry = 0 if clean else NEVER_EXPIRES

        session = self.sessions.get(client_id)
        if session is not None and session.conn is not None:
            self._take_over(session.conn)
        if session is not None:
            self._cancel_timers(session)
            if session.pending_will is not None:  # reconnected within the will delay
                session.pending_will = None
        if session is not None and clean:
            self._end_session(session)
            session = None
        present = session is not None
        if session is None:
            session = _Session(client_id, self.max_queued_messages)
            self.sessions[client_id] = session
        session.expiry_s = expiry
        session.conn = conn
        conn.session = session

        body_out = bytes([1 if present else 0, 0])
        if level == 5:
            body_out += _encode_props(ack_props)
        conn.send(_packet(CONNACK, 0, body_out))
        log.info("%s connected (MQTT %s, keepalive %d s, session %s)",
                  conn, "5.0" if level == 5 else "3.1.1", conn.keepalive_s, "resumed" if present else "new")
        # Unacknowledged QoS 1 messages go again, marked DUP (3.1.1 §4.4, 5.0 §4.4).
        for pid, d in list(session.inflight.items()):
            if not self._send_publish(conn, d, pid, dup=True):
                del session.inflight[pid]
        self._pump(session)
        return True

    def _refuse(self, conn: _Connection, code: int, why: str) -> None:
        log.warning("%s: refused: %s", conn, why)
        self.stats["refused_connect"] += 1
        if conn.version == 5:
            conn.send(_packet(CONNACK, 0, bytes([0, code]) + _encode_props([])))
        else:
            conn.send(_packet(CONNACK, 0, bytes([0, code if code < 6 else 0x05])))

    def _take_over(self, old: _Connection) -> None:
        log.info("%s: taken over by a new connection with the same client id", old)
        self.stats["takeovers"] += 1
        old.send_disconnect(RC_SESSION_TAKEN_OVER)
        # The old connection did not DISCONNECT, so its will is due (5.0 §3.1.2.5).
        self._publish_will(old)
        old.clean_close = True
        if old.session is not None:
            old.session.conn = None
        old.close()

    # -- connection end and session lifetime

    def _closed(self, conn: _Connection) -> None:
        session = conn.session
        if self._stopping:
            return
        if not conn.clean_close:
            self._publish_will(conn)
        if session is None or session.conn is not conn:
            return
        session.conn = None
        log.info("%s disconnected", conn)
        if session.expiry_s == 0:
            self._end_session(session)
        elif session.expiry_s != NEVER_EXPIRES:
            session.expiry_handle = asyncio.get_running_loop().call_later(
                session.expiry_s, self._expire_session, session)

    def _publish_will(self, conn: _Connection) -> None:
        will, conn.will = conn.will, None
        if will is None:
            return
        session = conn.session
        if will.delay_s and session is not None and session.expiry_s != 0:
            # Delayed: published when the delay or the session ends, unless the client comes back.
            session.pending_will = will
            delay = min(will.delay_s, session.expiry_s)
            session.will_handle = asyncio.get_running_loop().call_later(delay, self._fire_pending_will, session)
            return
        log.info("%s: publishing its will on %s", conn, will.msg.topic)
        self.stats["wills_published"] += 1
        self._publish(will.msg, origin=None)

    def _fire_pending_will(self, session: _Session) -> None:
        will, session.pending_will = session.pending_will, None
        session.will_handle = None
        if will is not None:
            log.info("client %r: publishing its delayed will on %s", session.client_id, will.msg.topic)
            self.stats["wills_published"] += 1
            self._publish(will.msg, origin=None)

    def _cancel_timers(self, session: _Session) -> None:
        for name in ("expiry_handle", "will_handle"):
            handle = getattr(session, name)
            if handle is not None:
                handle.cancel()
                setattr(session, name, None)

    def _expire_session(self, session: _Session) -> None:
        log.info("client %r: session expired after %d s offline", session.client_id, session.expiry_s)
        self.stats["sessions_expired"] += 1
        self._end_session(session)

    def _end_session(self, session: _Session) -> None:
        if session.pending_will is not None:
            self._fire_pending_will(session)
        self._cancel_timers(session)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for sub in session.subs.values():
            if sub.group is not None:
                self._leave_group(session.client_id, sub)
        session.subs.clear()
        session.queue.clear()
        session.inflight.clear()

    def _leave_group(self, client_id: str, sub: _Sub) -> None:
        key = (sub.group, sub.filter)
        group = self.shared.get(key)  # type: ignore[arg-type]
        if group is not None:
            group.members.pop(client_id, None)
            if not group.members:
                del self.shared[key]  # type: ignore[arg-type]

    def _on_disconnect(self, conn: _Connection, buf: _Buf) -> None:
        code = 0
        if conn.version == 5 and buf.remaining():
            code = buf.byte()
            if buf.remaining():
                props = buf.props(_DISCONNECT_PROPS)
                session = conn.session
                if 0x11 in props and session is not None:
                    if session.expiry_s == 0 and props[0x11] != 0:
                        raise PacketError("session expiry raised from 0 at DISCONNECT", RC_PROTOCOL_ERROR)
                    session.expiry_s = props[0x11]
        if buf.remaining():
            raise PacketError("trailing bytes in DISCONNECT")
        # 0x04 = "disconnect with will message" (5.0 §3.14.2.1); otherwise the will is discarded.
        if code != 0x04:
            conn.will = None
        conn.clean_close = code != 0x04
        conn.close()

    # -- PUBLISH

    def _message(self, topic: str, payload: bytes, qos: int, retain: bool, props: dict[int, Any]) -> Message:
        forwarded = []
        for pid in _FORWARDED_PROPS:
            if pid == 0x26:
                forwarded += [(0x26, pair) for pair in props.get(0x26, [])]
            elif pid in props:
                forwarded.append((pid, props[pid]))
        return Message(topic, payload, qos, retain, forwarded, props.get(0x02))

    def _on_publish(self, conn: _Connection, flags: int, buf: _Buf) -> None:
        qos = (flags >> 1) & 0x03
        retain = bool(flags & 0x01)
        if qos == 3:
            raise PacketError("PUBLISH with QoS 3")
        topic = buf.str()
        pid = buf.u16() if qos else 0
        if qos and pid == 0:
            raise PacketError("PUBLISH with packet id 0")
        props = buf.props(_PUBLISH_PROPS) if conn.version == 5 else {}
        if 0x23 in props:
            # We advertise no Topic Alias Maximum, i.e. 0 (5.0 §3.2.2.3.8).
            raise PacketError("topic alias used but none allowed", RC_TOPIC_ALIAS_INVALID)
        if not valid_topic_name(topic):
            raise PacketError(f"invalid topic name {topic!r}", RC_TOPIC_NAME_INVALID)
        payload = buf.rest()
        session = conn.session
        assert session is not None
        msg = self._message(topic, payload, qos, retain, props)
        self.stats["messages_received"] += 1
        if qos == 2:
            # Exactly-once inbound: publish on the first PUBLISH, suppress repeats until PUBREL.
            if pid not in session.incoming_qos2:
                session.incoming_qos2.add(pid)
                self._publish(msg, origin=conn.client_id)
            conn.send(_packet(PUBREC, 0, _u16(pid)))
            return
        self._publish(msg, origin=conn.client_id)
        if qos == 1:
            conn.send(_packet(PUBACK, 0, _u16(pid)))

    def _publish(self, msg: Message, origin: str | None) -> None:
        if msg.retain:
            self._retain(msg)
        for session in list(self.sessions.values()):
            best: _Sub | None = None
            rap = False
            sub_ids: list[int] = []
            for sub in session.subs.values():
                if sub.group is not None or (sub.no_local and session.client_id == origin):
                    continue
                if topic_matches(sub.filter, msg.topic):
                    if best is None or sub.qos > best.qos:
                        best = sub
                    rap = rap or sub.retain_as_published
                    if sub.sub_id:
                        sub_ids.append(sub.sub_id)
            if best is not None:
                self._deliver(session, _Delivery(msg, min(msg.qos, best.qos, 1), msg.retain and rap, sub_ids))
        for (_, flt), group in list(self.shared.items()):
            if topic_matches(flt, msg.topic):
                self._deliver_shared(group, msg)

    def _deliver_shared(self, group: _SharedGroup, msg: Message) -> None:
        ids = list(group.members)
        online = [cid for cid in ids if self.sessions[cid].conn is not None]
        # Round-robin over online members; with none online, queue on a persistent member.
        candidates = online or ids
        cid = candidates[group.turn % len(candidates)]
        group.turn += 1
        sub = group.members[cid]
        self._deliver(self.sessions[cid], _Delivery(msg, min(msg.qos, sub.qos, 1), False,
                                                    [sub.sub_id] if sub.sub_id else []))

    def _retain(self, msg: Message) -> None:
        if not msg.payload:
            self.retained.pop(msg.topic, None)
        elif msg.topic in self.retained or len(self.retained) < self.max_retained_messages:
            self.retained[msg.topic] = msg
        else:
            self.stats["retained_refused"] += 1
            if self.stats["retained_refused"] == 1:
                log.warning("retained store full (%d topics): new retained topics refused",
                            self.max_retained_messages)

    # -- outgoing

    def _deliver(self, session: _Session, d: _Delivery) -> None:
        conn = session.conn
        if d.qos == 0:
            # QoS 0 is not queued for offline sessions (as Mosquitto's default).
            if conn is None:
                return
            if conn.writer.transport.get_write_buffer_size() > self.max_write_buffer_bytes:
                self.stats["dropped_qos0"] += 1
                return
            self._send_publish(conn, d, 0, dup=False)
            return
        if conn is not None and not session.queue and len(session.inflight) < conn.inflight_max:
            self._send_inflight(session, conn, d)
            return
        if len(session.queue) >= session.max_queued:
            session.queue.popleft()  # full-policy: drop_oldest
            self.stats["dropped_queued"] += 1
            if not session.dropping:
                session.dropping = True
                log.warning("client %r: queue full (%d messages): dropping oldest",
                            session.client_id, session.max_queued)
        session.queue.append(d)

    def _send_inflight(self, session: _Session, conn: _Connection, d: _Delivery) -> None:
        pid = session.next_pid()
        if self._send_publish(conn, d, pid, dup=False):
            session.inflight[pid] = d

    def _pump(self, session: _Session) -> None:
        conn = session.conn
        while conn is not None and session.queue and len(session.inflight) < conn.inflight_max:
            self._send_inflight(session, conn, session.queue.popleft())
        if not session.queue and session.dropping:
            session.dropping = False
            log.info("client %r: queue drained", session.client_id)

    def _send_publish(self, conn: _Connection, d: _Delivery, pid: int, dup: bool) -> bool:
        """Write one PUBLISH; False if it must be dropped (expired, or too large for the client)."""
        msg = d.msg
        remaining = msg.remaining_expiry()
        if remaining is not None and remaining <= 0:
            self.stats["dropped_expired"] += 1
            return False
        body = _str(msg.topic) + (_u16(pid) if d.qos else b"")
        if conn.version == 5:
            props = list(msg.props)
            if remaining is not None:
                props.append((0x02, remaining))
            props += [(0x0B, sid) for sid in d.sub_ids]
            body += _encode_props(props)
        body += msg.payload
        flags = (0x08 if dup else 0) | (d.qos << 1) | (1 if d.retain else 0)
        data = _packet(PUBLISH, flags, body)
        if len(data) > conn.max_packet_out:
            self.stats["dropped_too_large"] += 1
            return False
        conn.send(data)
        self.stats["messages_sent"] += 1
        return True

    # -- SUBSCRIBE / UNSUBSCRIBE

    def _on_subscribe(self, conn: _Connection, buf: _Buf) -> None:
        session = conn.session
        assert session is not None
        pid = buf.u16()
        props = buf.props(_SUBSCRIBE_PROPS) if conn.version == 5 else {}
        sub_id = props.get(0x0B)
        if sub_id == 0:
            raise PacketError("subscription identifier 0", RC_PROTOCOL_ERROR)
        requests = []
        while buf.remaining():
            flt = buf.str()
            opts = buf.byte()
            if opts & (0xC0 if conn.version == 5 else 0xFC) or (opts & 0x03) == 3 or (opts >> 4 & 0x03) == 3:
                raise PacketError(f"reserved subscription option bits 0x{opts:02x}")
            requests.append((flt, opts))
        if not requests:
            raise PacketError("SUBSCRIBE without topic filters", RC_PROTOCOL_ERROR)
        codes = []
        retained_out: list[tuple[_Sub, bool]] = []
        for flt, opts in requests:
            try:
                group, real = split_shared(flt)
            except PacketError:
                group, real = None, ""
            if not valid_topic_filter(real):
                codes.append(RC_TOPIC_FILTER_INVALID if conn.version == 5 else 0x80)
                continue
            no_local = bool(opts & 0x04)
            if group is not None and no_local:
                raise PacketError("no-local on a shared subscription", RC_PROTOCOL_ERROR)
            # Outgoing QoS 2 is not implemented: grant at most QoS 1 (see module docstring).
            sub = _Sub(real, min(opts & 0x03, 1), group, no_local, bool(opts & 0x08), sub_id)
            is_new = flt not in session.subs
            old = session.subs.get(flt)
            if old is not None and old.group is not None:
                self._leave_group(session.client_id, old)
            session.subs[flt] = sub
            if group is not None:
                self.shared.setdefault((group, real), _SharedGroup()).members[session.client_id] = sub
            else:
                handling = (opts >> 4) & 0x03
                if handling == 0 or (handling == 1 and is_new):
                    retained_out.append((sub, True))
            codes.append(sub.qos)
        body = _u16(pid) + (_encode_props([]) if conn.version == 5 else b"") + bytes(codes)
        conn.send(_packet(SUBACK, 0, body))
        for sub, _ in retained_out:
            for msg in list(self.retained.values()):
                if topic_matches(sub.filter, msg.topic):
                    self._deliver(session, _Delivery(msg, min(msg.qos, sub.qos), True,
                                                     [sub.sub_id] if sub.sub_id else []))

    def _on_unsubscribe(self, conn: _Connection, buf: _Buf) -> None:
        session = conn.session
        assert session is not None
        pid = buf.u16()
        if conn.version == 5:
            buf.props(_UNSUBSCRIBE_PROPS)
        filters = []
        while buf.remaining():
            filters.append(buf.str())
        if not filters:
            raise PacketError("UNSUBSCRIBE without topic filters", RC_PROTOCOL_ERROR)
        codes = []
        for flt in filters:
            sub = session.subs.pop(flt, None)
            if sub is not None and sub.group is not None:
                self._leave_group(session.client_id, sub)
            codes.append(0 if sub is not None else RC_NO_SUBSCRIPTION)
        body = _u16(pid) + (_encode_props([]) + bytes(codes) if conn.version == 5 else b"")
        conn.send(_packet(UNSUBACK, 0, body))


# ---------------------------------------------------------------- thread wrapper


class DemoBrokerThread:
    """Run a DemoBroker on its own event loop in a (non-daemon) thread.

    >>> with DemoBrokerThread() as broker:
    ...     connect_somewhere("127.0.0.1", broker.port)

    Leaving the block stops the broker and joins the thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **broker_options: Any) -> None:
        self.host = host
        self.port = port
        self.broker = DemoBroker(**broker_options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 10.0) -> int:
        """Start the thread and the broker; return the bound port."""
        if self._thread is not None:
            raise RuntimeError("demo broker thread already started")
        self._thread = threading.Thread(target=self._run, name="greenmine-demo-broker")
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"demo broker did not start within {timeout_s:g} s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"demo broker failed to start: {self._error}") from self._error
        return self.port

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            self.port = await self.broker.start(self.host, self.port)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self.broker.stop()

    def stop(self) -> None:
        """Stop the broker and join its thread (idempotent)."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:  # loop already finished
                pass
        self._thread.join()
        self._thread = None

    def stats(self) -> dict[str, int]:
        """A snapshot of the broker's counters (bad_packets, dropped_queued, wills_published, ...)."""
        if self._loop is None or self._thread is None:
            return dict(self.broker.stats)

        async def snapshot() -> dict[str, int]:
            return dict(self.broker.stats)

        # Copied on the broker's own loop: the counters change under it.
        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(5)

    def __enter__(self) -> DemoBrokerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
