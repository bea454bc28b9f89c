"""Modbus I/O: the only agent module that imports pymodbus (STYLE.md §4).

`ModbusLink` is one bus's connection (TCP, RTU on a serial port, or RTU framing over TCP).
It performs one read at a time and turns every failure channel of pymodbus into one of
`agent.errors`' Modbus exceptions:

- exceptions: ConnectionException -> ModbusConnectError; ModbusIOException (no reply,
  wrong transaction or unit id) -> ModbusProtocolError; OSError -> ModbusConnectError;
  our own deadline -> ModbusTimeout; any other ModbusException -> ModbusProtocolError;
- responses with isError(): exception code -> ModbusExceptionReply(code);
- None or a short response -> ModbusProtocolError.

pymodbus' own retries and reconnect task are switched off: the agent decides when to retry
(errors.ModbusError.retry_now) and when to back off, and a reconnect is just the next
request's connect. pymodbus 3.16 API: `device_id=` (renamed from `slave=` in 3.10).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
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
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None

    def _make_client(self):
        common = dict(timeout=self._lib_timeout_s, retries=0, reconnect_delay=0, name=self.bus.name)
        if self.bus.transport is Transport.RTU:
            return AsyncModbusSerialClient(
                self.bus.serial_port,
                framer=FramerType.RTU,
                baudrate=self.bus.baudrate,
                bytesize=self.bus.bytesize,
                parity=self.bus.parity,
                stopbits=self.bus.stopbits,
                **common,
            )
        framer = FramerType.RTU if self.bus.transport is Transport.RTU_OVER_TCP else FramerType.SOCKET
        return AsyncModbusTcpClient(self.bus.host, port=self.bus.port or 502, framer=framer, **common)

    @property
    def connected(self) -> bool:
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
        if self.bus.transport is Transport.RTU:
            try:
                os.close(os.open(self.bus.serial_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
            except OSError as exc:
                return f"serial port {self.bus.serial_port}: {exc.strerror or exc}"
            return f"serial port {self.bus.serial_port} opens, but not as a serial line"
        host, port = self.bus.host, self.bus.port or 502
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except socket.gaierror as exc:
            return f"unknown host {host} ({exc.strerror or exc})"
        except ConnectionRefusedError:
            return f"connection refused by {host}:{port} (nothing listens there)"
        except asyncio.TimeoutError:
            return f"timeout: no answer from {host}:{port} within {timeout_s:g} s"
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return f"no route to {host}"
            return f"{host}:{port}: {exc.strerror or exc}"
        writer.close()
        return f"{host}:{port} accepts connections now: the first attempt failed"

    async def read(self, unit_id: int, rtype: RegisterType, address: int, count: int, timeout_s: float) -> list[int]:
        """Read `count` registers (or bits, as 0/1) from `address`. Raises ModbusError."""
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
            if self.bus.transport is not Transport.TCP:
                # Without transaction ids a late RTU reply could be taken for the next request's:
                # start the next request on a fresh link instead.
                self.close()
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
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a half-open link must never mask the failure being handled
                log.debug("closing %s", self.bus.name, exc_info=True)
            self._client = None


__all__ = ["ModbusLink", "ModbusError"]
