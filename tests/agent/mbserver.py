"""A small real Modbus server for the agent's tests: Modbus TCP (MBAP), RTU over TCP, RTU on a pty.

Each unit id has a behaviour that a test can change while the agent runs:
    ok         answer from its register tables (unset addresses read 0)
    silent     never answer (a dead meter)
    slow       answer after `delay_s`
    exception  answer with Modbus exception `code`
    drop       close the connection on a request (TCP only)
Addresses in `forbidden` answer exception 2, so a test sees if the planner touched them.
Every request is recorded (unit, function, address, count) for assertions.

It listens on real sockets; use `ServerThread` to run it beside a subprocess agent.
"""

from __future__ import annotations

import asyncio
import os
import struct
import termios
import threading
import tty
from dataclasses import dataclass, field


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@dataclass
class Unit:
    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    coils: dict[int, int] = field(default_factory=dict)
    discrete: dict[int, int] = field(default_factory=dict)
    behaviour: str = "ok"
    delay_s: float = 0.0
    code: int = 4
    forbidden: set[int] = field(default_factory=set)

    def set_words(self, table: str, address: int, words: list[int]) -> None:
        regs = getattr(self, table)
        for i, w in enumerate(words):
            regs[address + i] = w


class ModbusTestServer:
    def __init__(self, units: dict[int, Unit] | None = None, framing: str = "tcp") -> None:
        assert framing in ("tcp", "rtu")
        self.units: dict[int, Unit] = units if units is not None else {}
        self.framing = framing
        self.requests: list[tuple[int, int, int, int]] = []
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self.serial_ready = asyncio.Event()  # set once serve_serial listens on its pty

    # -- protocol core ------------------------------------------------------------------------------
    def _answer(self, unit_id: int, fc: int, address: int, count: int) -> bytes | None:
        """PDU of the answer, None for no answer, b'' to drop the connection."""
        self.requests.append((unit_id, fc, address, count))
        unit = self.units.get(unit_id)
        if unit is None or unit.behaviour == "silent":
            return None
        if unit.behaviour == "drop":
            return b""
        if unit.behaviour == "exception":
            return bytes([fc | 0x80, unit.code])
        if fc not in (1, 2, 3, 4):
            return bytes([fc | 0x80, 1])
        if any(a in unit.forbidden for a in range(address, address + count)):
            return bytes([fc | 0x80, 2])
        if fc in (3, 4):
            table = unit.holding if fc == 3 else unit.input
            words = [table.get(a, 0) & 0xFFFF for a in range(address, address + count)]
            return bytes([fc, 2 * count]) + b"".join(struct.pack(">H", w) for w in words)
        table = unit.coils if fc == 1 else unit.discrete
        bits = [1 if table.get(a, 0) else 0 for a in range(address, address + count)]
        data = bytearray((count + 7) // 8)
        for i, b in enumerate(bits):
            if b:
                data[i // 8] |= 1 << (i % 8)
        return bytes([fc, len(data)]) + bytes(data)

    async def _respond(self, unit_id: int, fc: int, address: int, count: int):
        pdu = self._answer(unit_id, fc, address, count)
        unit = self.units.get(unit_id)
        if pdu and unit is not None and unit.behaviour == "slow":
            await asyncio.sleep(unit.delay_s)
        return pdu

    # -- TCP ----------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                if self.framing == "tcp":
                    head = await reader.readexactly(7)
                    tid, _proto, length, unit_id = struct.unpack(">HHHB", head)
                    body = await reader.readexactly(length - 1)
                    fc, address, count = struct.unpack(">BHH", body[:5])
                else:
                    frame = await reader.readexactly(8)
                    if crc16(frame[:6]) != struct.unpack("<H", frame[6:])[0]:
                        continue
                    unit_id, fc, address, count = struct.unpack(">BBHH", frame[:6])
                pdu = await self._respond(unit_id, fc, address, count)
                if pdu is None:
                    continue
                if pdu == b"":
                    break
                if self.framing == "tcp":
                    writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit_id) + pdu)
                else:
                    adu = bytes([unit_id]) + pdu
                    writer.write(adu + struct.pack("<H", crc16(adu)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    # -- RTU on a serial device (one end of a socat pty pair) -------------------------------------
    async def serve_serial(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        loop = asyncio.get_running_loop()
        buf = bytearray()
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                queue.put_nowait(os.read(fd, 256))
            except BlockingIOError:
                pass

        loop.add_reader(fd, readable)
        self.serial_ready.set()
        try:
            while True:
                buf += await queue.get()
                while len(buf) >= 8:
                    frame = bytes(buf[:8])
                    if crc16(frame[:6]) != struct.unpack("<H", frame[6:])[0]:
                        del buf[0]  # resynchronise on garbage
                        continue
                    del buf[:8]
                    unit_id, fc, address, count = struct.unpack(">BBHH", frame[:6])
                    pdu = await self._respond(unit_id, fc, address, count)
                    if pdu:
                        adu = bytes([unit_id]) + pdu
                        os.write(fd, adu + struct.pack("<H", crc16(adu)))
        finally:
            loop.remove_reader(fd)
            os.close(fd)


class ServerThread:
    """Runs a ModbusTestServer (TCP) on its own event loop thread, e.g. beside a subprocess agent."""

    def __init__(self, server: ModbusTestServer, port: int = 0) -> None:
        self.server = server
        self._want_port = port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mbserver", daemon=True)

    def __enter__(self) -> ModbusTestServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(self._want_port), self.loop).result(10)
        return self.server

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
