"""Modbus I/O: the only agent module that talks to meters; the only one that imports pymodbus.

`ModbusLink` is one bus's connection (TCP, RTU on a serial port, or RTU framing over TCP).
It performs one read at a time and turns every failure into one of `agent.errors`' Modbus
exceptions (ModbusConnectError, ModbusTimeout, ModbusExceptionReply(code), ModbusProtocolError).

Modbus TCP goes through pymodbus: MBAP transaction ids pair each reply with its request. Its own
retries and reconnect task are switched off: the agent decides when to retry
(errors.ModbusError.retry_now) and when to back off, and a reconnect is just the next request's
connect. pymodbus 3.16 API: `device_id=` (renamed from `slave=` in 3.10).

RTU has no transaction id, so `_RtuLink` frames it itself (on the serial port, or on the TCP
socket of an rtu_over_tcp gateway) and matches replies to requests by this rule:
- before each request the input is discarded until the line has been silent for the
  inter-frame gap (3.5 character times; 1.75 ms above 19200 bit/s);
- a reply is accepted only if its unit id, function code, byte count and CRC are those of the
  request; any other complete frame (a late reply to an earlier request, another master's traffic)
  is discarded and the wait goes on; a frame with a bad CRC or an unknown function code fails the
  request as garbled (retried at once), after a drain;
- a reply late for a request that timed out would match the next request of the same unit,
  function and count exactly: such a request is held until that late reply has come (and been
  discarded) or one more timeout has passed. A reply later than twice the timeout cannot be told
  from a fresh one; RTU offers nothing to tell them apart.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import time

import serial

from pymodbus import FramerType
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from greenmine.agent.codec import RegisterType
from greenmine.agent.config import BusConfig, Transport
from greenmine.agent.errors import (
    ModbusConnectError,
    ModbusError,
    ModbusExceptionReply,
    ModbusProtocolError,
    ModbusTimeout,
)

log = logging.getLogger(__name__)


class ModbusLink:
    """One bus's pymodbus client. Not concurrency-safe by design: the caller serialises."""

    def __init__(self, bus: BusConfig, *, max_timeout_s: float) -> None:
        self.bus = bus
        # pymodbus' own deadline is kept above every device's, so ours always fires first.
        self._lib_timeout_s = max_timeout_s + 1.0
        self._client: AsyncModbusTcpClient | None = None
        self._rtu = _RtuLink(bus) if bus.transport is not Transport.TCP else None

    def _make_client(self):
        return AsyncModbusTcpClient(self.bus.host, port=self.bus.port or 502, framer=FramerType.SOCKET,
                                    timeout=self._lib_timeout_s, retries=0, reconnect_delay=0, name=self.bus.name)

    @property
    def connected(self) -> bool:
        if self._rtu is not None:
            return self._rtu.connected
        return self._client is not None and self._client.connected

    async def _ensure_connected(self, timeout_s: float) -> None:
        if self.connected:
            return
        self.close()
        client = self._make_client()
        # A dead gateway must not hold the bus longer than one timeout.
        client.set_max_no_responses(1 << 30)
        try:
            ok = await asyncio.wait_for(client.connect(), timeout_s)
        except asyncio.TimeoutError:
            client.close()
            raise ModbusTimeout(f"{self.bus.endpoint}: no connection within {timeout_s:g} s") from None
        except (OSError, ModbusException) as exc:
            client.close()
            raise ModbusConnectError(f"{self.bus.endpoint}: {exc}") from exc
        if not ok:
            client.close()
            raise ModbusConnectError(f"{self.bus.endpoint}: cannot connect: {await self._why_not(timeout_s)}")
        self._client = client

    async def _why_not(self, timeout_s: float) -> str:
        """The cause pymodbus' connect() swallows, found by trying once more ourselves."""
        try:
            _, writer = await _open_tcp(self.bus, timeout_s)
        except ModbusError as exc:
            return str(exc).split("cannot connect: ", 1)[-1]
        writer.close()
        return f"{self.bus.host}:{self.bus.port or 502} accepts connections now: the first attempt failed"

    async def read(self, unit_id: int, rtype: RegisterType, address: int, count: int, timeout_s: float) -> list[int]:
        """Read `count` registers (or bits, as 0/1) from `address`. Raises ModbusError."""
        if self._rtu is not None:
            return await self._rtu.read(unit_id, rtype, address, count, timeout_s)
        await self._ensure_connected(timeout_s)
        client = self._client
        assert client is not None
        call = {
            RegisterType.COIL: client.read_coils,
            RegisterType.DISCRETE: client.read_discrete_inputs,
            RegisterType.HOLDING: client.read_holding_registers,
            RegisterType.INPUT: client.read_input_registers,
        }[rtype]
        where = f"unit {unit_id} fc{rtype.read_function} {address}+{count}"
        try:
            resp = await asyncio.wait_for(call(address, count=count, device_id=unit_id), timeout_s)
        except asyncio.TimeoutError:
            raise ModbusTimeout(f"{where}: no reply within {timeout_s:g} s") from None
        except ConnectionException as exc:
            self.close()
            raise ModbusConnectError(f"{where}: {exc}") from exc
        except ModbusIOException as exc:
            raise ModbusProtocolError(f"{where}: {exc}") from exc
        except ModbusException as exc:
            raise ModbusProtocolError(f"{where}: {exc}") from exc
        except OSError as exc:
            self.close()
            raise ModbusConnectError(f"{where}: {exc}") from exc
        if resp is None:
            raise ModbusProtocolError(f"{where}: no response object")
        if resp.isError():
            code = getattr(resp, "exception_code", 0)
            if code:
                raise ModbusExceptionReply(code, where)
            raise ModbusProtocolError(f"{where}: error response {resp}")
        if rtype.is_bit:
            bits = list(resp.bits or [])
            if len(bits) < count:
                raise ModbusProtocolError(f"{where}: {len(bits)} bits in reply")
            return [1 if b else 0 for b in bits[:count]]
        regs = list(resp.registers or [])
        if len(regs) != count:
            raise ModbusProtocolError(f"{where}: {len(regs)} registers in reply")
        return regs

    def close(self) -> None:
        if self._rtu is not None:
            self._rtu.close()
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a half-open link must never mask the failure being handled
                log.debug("closing %s", self.bus.name, exc_info=True)
            self._client = None


async def _open_tcp(bus: BusConfig, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the bus's endpoint; a failure names its cause."""
    host, port = bus.host, bus.port or 502
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except asyncio.TimeoutError:
        raise ModbusTimeout(f"{bus.endpoint}: cannot connect: timeout: no answer within {timeout_s:g} s") from None
    except socket.gaierror as exc:
        raise ModbusConnectError(f"{bus.endpoint}: cannot connect: unknown host {host} ({exc.strerror})") from exc
    except ConnectionRefusedError as exc:
        raise ModbusConnectError(f"{bus.endpoint}: cannot connect: connection refused (nothing listens there)") from exc
    except OSError as exc:
        cause = "no route to host" if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else exc.strerror or str(exc)
        raise ModbusConnectError(f"{bus.endpoint}: cannot connect: {cause}") from exc


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class _Garbled(Exception):
    """Bytes that are no frame of a read reply: a bad CRC or an unknown function code."""


class _RtuLink:
    """RTU framing on a serial port or an rtu_over_tcp socket, with the reply-matching rule (module docstring)."""

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        bits = 1 + bus.bytesize + (bus.parity != "N") + bus.stopbits
        # Modbus over serial line V1.02 §2.5.1.1: 3.5 character times, fixed at 1.75 ms above 19200 bit/s.
        self.gap_s = 0.00175 if bus.baudrate > 19200 else 3.5 * bits / bus.baudrate
        self._buf = bytearray()
        self._arrived = asyncio.Event()
        self._last_rx = 0.0
        self._broken: str | None = None
        self._serial: serial.Serial | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump_task: asyncio.Task | None = None
        # (unit, function, byte count) of timed-out requests -> until when their reply may still come
        self._late: dict[tuple[int, int, int], float] = {}

    @property
    def connected(self) -> bool:
        return self._serial is not None or self._writer is not None

    async def _open(self, timeout_s: float) -> None:
        if self.connected:
            return
        self._buf.clear()
        self._broken = None
        if self.bus.transport is Transport.RTU:
            try:
                port = serial.Serial(self.bus.serial_port, baudrate=self.bus.baudrate, bytesize=self.bus.bytesize,
                                     parity=self.bus.parity, stopbits=self.bus.stopbits, timeout=0)
            except (OSError, ValueError) as exc:
                cause = os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)
                raise ModbusConnectError(f"{self.bus.endpoint}: cannot open serial port {self.bus.serial_port}: "
                                         f"{cause}") from exc
            asyncio.get_running_loop().add_reader(port.fileno(), self._on_readable)
            self._serial = port
        else:
            reader, self._writer = await _open_tcp(self.bus, timeout_s)
            self._pump_task = asyncio.create_task(self._pump(reader))

    def _on_readable(self) -> None:
        assert self._serial is not None
        try:
            data = os.read(self._serial.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            data, self._broken = b"", f"serial port: {exc.strerror or exc}"
        if not data:
            self._broken = self._broken or "serial port closed"
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
        self._received(data)

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(4096):
                self._received(data)
            self._broken = "connection closed by the gateway"
        except OSError as exc:
            self._broken = f"connection lost: {exc.strerror or exc}"
        self._arrived.set()

    def _received(self, data: bytes) -> None:
        self._buf += data
        self._last_rx = time.monotonic()
        self._arrived.set()

    async def _wait(self, until: float) -> bool:
        """Wait for more bytes until the monotonic time `until`; False if none came."""
        left = until - time.monotonic()
        if left <= 0:
            return False
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), left)
        except asyncio.TimeoutError:
            return False
        return True

    def _check_broken(self, where: str) -> None:
        if self._broken is not None:
            cause = self._broken
            self.close()
            raise ModbusConnectError(f"{where}: {cause}")

    async def _drain(self, where: str, timeout_s: float) -> None:
        """Discard the input until the line has been silent for the inter-frame gap."""
        give_up = time.monotonic() + timeout_s
        while True:
            self._buf.clear()
            quiet_at = self._last_rx + self.gap_s
            if time.monotonic() >= quiet_at:
                return
            if time.monotonic() >= give_up:
                raise ModbusProtocolError(f"{where}: the line is never silent for {self.gap_s * 1000:.1f} ms")
            await self._wait(min(quiet_at, give_up))
            self._check_broken(where)

    async def _await_late_reply(self, shape: tuple[int, int, int], where: str) -> None:
        """Hold a request while a timed-out request of the same shape may still be answered."""
        now = time.monotonic()
        for old in [k for k, until in self._late.items() if until <= now]:
            del self._late[old]
        until = self._late.pop(shape, None)
        if until is None:
            return
        want = 5 + shape[2]
        while time.monotonic() < until:
            if len(self._buf) >= want and time.monotonic() >= self._last_rx + self.gap_s:
                log.debug("%s: discarded the late reply %s", where, bytes(self._buf).hex())
                return  # the late reply came: the drain that follows discards it
            await self._wait(min(until, self._last_rx + self.gap_s) if self._buf else until)
            self._check_broken(where)

    def _take_reply(self, shape: tuple[int, int, int], where: str) -> bytes | None:
        """The request's reply data from the input, discarding complete frames that are not it;
        None while it is incomplete. Raises ModbusExceptionReply, or _Garbled."""
        buf = self._buf
        while len(buf) >= 2:
            unit, fc = buf[0], buf[1]
            if fc in (0x81, 0x82, 0x83, 0x84):
                length = 5
            elif fc in (1, 2, 3, 4):
                if len(buf) < 3:
                    return None
                length = 5 + buf[2]
            else:
                raise _Garbled(f"function code {fc} in a reply")
            if len(buf) < length:
                return None
            frame = bytes(buf[:length])
            del buf[:length]
            if struct.unpack("<H", frame[-2:])[0] != crc16(frame[:-2]):
                raise _Garbled(f"CRC error in {frame.hex()}")
            if (unit, fc) == (shape[0], shape[1] | 0x80):
                raise ModbusExceptionReply(frame[2], where)
            if (unit, fc, frame[2]) == shape:
                return frame[3:-2]
            log.debug("%s: discarded a frame that is not its reply: %s", where, frame.hex())
        return None

    async def read(self, unit_id: int, rtype: RegisterType, address: int, count: int, timeout_s: float) -> list[int]:
        await self._open(timeout_s)
        fc = rtype.read_function
        shape = (unit_id, fc, -(-count // 8) if rtype.is_bit else 2 * count)
        where = f"unit {unit_id} fc{fc} {address}+{count}"
        await self._await_late_reply(shape, where)
        await self._drain(where, timeout_s)
        body = struct.pack(">BBHH", unit_id, fc, address, count)
        self._send(body + struct.pack("<H", crc16(body)), where)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                data = self._take_reply(shape, where)
            except _Garbled as exc:
                await self._drain(where, timeout_s)
                raise ModbusProtocolError(f"{where}: garbled reply: {exc}") from None
            if data is not None:
                break
            self._check_broken(where)
            if not await self._wait(deadline):
                self._check_broken(where)
                self._late[shape] = time.monotonic() + timeout_s
                raise ModbusTimeout(f"{where}: no reply within {timeout_s:g} s")
        if rtype.is_bit:
            return [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
        return list(struct.unpack(f">{count}H", data))

    def _send(self, frame: bytes, where: str) -> None:
        try:
            if self._serial is not None:
                self._serial.write(frame)
            else:
                assert self._writer is not None
                self._writer.write(frame)
        except OSError as exc:
            self.close()
            raise ModbusConnectError(f"{where}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._serial is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._serial.fileno())
            except RuntimeError:  # closed outside the loop (at shutdown): no reader left to remove
                pass
            self._serial.close()
            self._serial = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._pump_task is not None:
            self._pump_task.cancel()
            self._pump_task = None


__all__ = ["ModbusLink", "ModbusError"]
