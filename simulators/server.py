"""The Modbus side of the simulators: the only module that imports pymodbus.

Built on pymodbus 3.16's SimDevice API: every device is a `SimDevice` whose
async `action` callback recomputes the requested registers from the physics at
the simulated time of the request, and applies the device's faults (offline:
never answer; slow: answer late; exception codes; one read of zeros).

Two things the SimDevice path cannot do, so a small request-handler subclass
does them (pymodbus/server/requesthandler.py, 3.16.1):

- `ServerRequestHandler.handle_request` reads `self.last_pdu` again *after*
  awaiting the datastore, so a slow reply would go out with the transaction id
  and unit id of whatever request arrived meanwhile (another meter's data under
  the wrong unit id). The subclass captures the request before awaiting.
- faults of the link rather than the meter: dropping the TCP connection
  (flapping_link), answering an unknown unit id as a gateway does (exception
  0x0B on TCP, silence on a serial line; SimCore raises KeyError instead, which
  `ignore_missing_devices` does not catch), and holding each reply for its
  frame time at the configured baud rate (emulate_baud).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from pymodbus.transaction import TransactionManager

from greenmine.agent.codec import RegisterType

log = logging.getLogger(__name__)

# A request handler's reply, decided by the device: None = serve normally.
DROP = "drop"  # close the connection (TCP) / stay silent (serial)


def frame_time_s(n_bytes: int, baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """Seconds a serial line needs for n_bytes, plus the 3.5-character silent interval that ends an RTU frame."""
    bits_per_char = 1 + bytesize + (0 if parity == "N" else 1) + stopbits
    return (n_bytes + 3.5) * bits_per_char / baudrate


class _Handler(ServerRequestHandler):
    """One connection (or the serial line). Handles each request as its own task, with the request pinned."""

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        try:
            used_len = TransactionManager.callback_data(self, data, addr)
        except ModbusIOException as exc:
            response = ExceptionResponse(
                exc.fcode or 0, exception_code=ExcCodes.ILLEGAL_FUNCTION, device_id=exc.dev_id, transaction=exc.transaction_id
            )
            self.server_send(response, addr)
            return len(data)
        if self.last_pdu:
            self.server.spawn(self._handle(self.last_pdu, self.last_addr))
        return used_len

    async def _handle(self, pdu, addr) -> None:
        srv: _SimServerMixin = self.server  # type: ignore[assignment]
        dev_id = pdu.dev_id
        hooks = srv.link_hooks.get(dev_id)
        if hooks is None:
            if srv.serial_line:
                return  # nobody at that address on an RS-485 line answers
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        else:
            if hooks() == DROP:
                if srv.serial_line:
                    return
                if self.transport is not None:
                    self.transport.abort()  # RST: the client sees the link drop mid-request
                return
            try:
                response = await pdu.datastore_update(srv.context, dev_id)
            except Exception:  # the datastore must never take the server down
                log.exception("simulated device %s failed a request", dev_id)
                response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = dev_id
        if srv.baud is not None:
            # On the wire a request and its reply each take their frame time; a pty or socket does not.
            rtu_bytes = (len(pdu.encode()) + 4) + (len(response.encode()) + 4)
            await asyncio.sleep(frame_time_s(rtu_bytes, *srv.baud))
        if self.transport is None:
            return
        self.server_send(response, addr)


class _SimServerMixin:
    link_hooks: dict[int, Callable[[], str | None]]
    serial_line: bool
    baud: tuple[int, int, str, int] | None
    _tasks: set[asyncio.Task]

    def callback_new_connection(self):
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[attr-defined]

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drop_connections(self) -> int:
        """Close every open client connection (flapping link). Returns how many."""
        conns = list(getattr(self, "active_connections", {}).values())
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()
        return len(conns)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.shutdown()  # type: ignore[attr-defined]


class SimTcpServer(_SimServerMixin, ModbusTcpServer):
    pass


class SimSerialServer(_SimServerMixin, ModbusSerialServer):
    pass


def _bits_placeholder() -> list[SimData]:
    # SimDevice's separate-blocks mode needs at least one entry per block; our meters have no coils, so a
    # block far above any profile address keeps every real coil/discrete address illegal (exception 2).
    return [SimData(65520, count=16, values=False, datatype=SimType.BITS)]


def _register_block(ranges: list[tuple[int, int]]) -> list[SimData]:
    if not ranges:
        return [SimData(65534, datatype=SimType.INVALID)]
    lo = min(a for a, _ in ranges)
    hi = max(b for _, b in ranges)
    # One block over the whole span: addresses between registers read 0, as on most meters, so the agent's
    # planner may read across gaps. Outside the span: exception 2 (illegal data address).
    return [SimData(lo, count=hi - lo + 1, values=0, datatype=SimType.REGISTERS)]


def build_simdevice(unit_id: int, spans: dict[RegisterType, list[tuple[int, int]]], action) -> SimDevice:
    """A SimDevice with separate holding and input register spaces, served through `action`."""
    return SimDevice(
        id=unit_id,
        simdata=(
            _bits_placeholder(),
            _bits_placeholder(),
            _register_block(spans.get(RegisterType.HOLDING, [])),
            _register_block(spans.get(RegisterType.INPUT, [])),
        ),
        action=action,
    )


async def start_server(
    *,
    transport: str,
    host: str,
    port: int | None,
    serial_port: str | None,
    devices: list[SimDevice],
    link_hooks: dict[int, Callable[[], str | None]],
    baudrate: int,
    bytesize: int,
    parity: str,
    stopbits: int,
    emulate_baud: bool,
) -> tuple[_SimServerMixin, int | None]:
    """Start one listening endpoint. Returns the server and its bound TCP port (None for serial)."""
    if transport == "rtu":
        server: _SimServerMixin = SimSerialServer(
            devices, framer=FramerType.RTU, port=serial_port or "", baudrate=baudrate,
            bytesize=bytesize, parity=parity, stopbits=stopbits,
        )
    else:
        framer = FramerType.RTU if transport == "rtu_over_tcp" else FramerType.SOCKET
        server = SimTcpServer(devices, framer=framer, address=(host, port or 0))
    server.link_hooks = link_hooks
    server.serial_line = transport == "rtu"
    server.baud = (baudrate, bytesize, parity, stopbits) if emulate_baud else None
    server._tasks = set()
    await server.serve_forever(background=True)  # type: ignore[attr-defined]
    bound = None
    if transport != "rtu":
        sockets = getattr(server.transport, "sockets", None)  # type: ignore[attr-defined]
        bound = sockets[0].getsockname()[1] if sockets else port
    return server, bound


def exc_code(code: int) -> ExcCodes:
    return ExcCodes(code)


# Re-exported so the device logic in simulators.site need not import pymodbus.
ILLEGAL_VALUE = ExcCodes.ILLEGAL_VALUE
ILLEGAL_FUNCTION = ExcCodes.ILLEGAL_FUNCTION
