"""RTU on a serial device (a socat pty pair) and RTU-over-TCP, framed by hand here."""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest
import serial

from tests.simulators.conftest import make_runner, site_doc
from tests.support.services import need_binary, wait_for

MILL = [("mill", "chint-dtsu666", None, {"rated_kw": 2200})]
START = 0x2046 - 125  # 125 registers ending with Freq (2044H-2045H), Pt (2012H) inside


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_request(unit: int, fc: int, address: int, count: int) -> bytes:
    body = struct.pack(">BBHH", unit, fc, address, count)
    return body + struct.pack("<H", crc16_modbus(body))


def read_reply(port: serial.Serial, count: int) -> bytes:
    want = 5 + 2 * count
    data = b""
    deadline = time.monotonic() + 5
    while len(data) < want and time.monotonic() < deadline:
        data += port.read(want - len(data))
    return data


@pytest.fixture
def pty_pair(tmp_path):
    socat = need_binary("socat", "socat")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: a.exists() and b.exists(), 10, what="socat ptys")
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(10)


def timed_read(port: serial.Serial, count: int) -> tuple[float, bytes]:
    port.reset_input_buffer()
    t = time.monotonic()
    port.write(rtu_request(1, 3, START, count))
    reply = read_reply(port, count)
    return time.monotonic() - t, reply


def test_rtu_over_a_pty_with_emulated_9600_baud(tmp_path, pty_pair):
    sim_end, client_end = pty_pair
    doc = site_doc(MILL, transport="rtu", extra_server={"port": None, "serial_port": sim_end, "emulate_baud": True, "baudrate": 9600})
    with make_runner(tmp_path, doc) as sim, serial.Serial(client_end, 9600, timeout=0.5) as port:
        elapsed, reply = timed_read(port, 125)
        assert len(reply) == 255 and reply[:3] == bytes([1, 3, 250])
        assert struct.unpack("<H", reply[-2:])[0] == crc16_modbus(reply[:-2])
        pt = struct.unpack(">f", reply[3 + 2 * (0x2012 - START) : 3 + 2 * (0x2012 - START) + 4])[0] * 0.1 / 1000
        assert pt == pytest.approx(sim.expected_value("mill", "pt"), rel=1e-6)
        # 8-byte request + 255-byte reply + two 3.5-char gaps, 10 bits a character at 9600 bit/s
        wire_s = (8 + 255 + 7) * 10 / 9600
        assert 0.8 < elapsed / wire_s < 2.0, f"{elapsed:.3f} s for a {wire_s:.3f} s frame pair"
        small, _ = timed_read(port, 2)
        assert small < elapsed / 4

        # an address nobody has on the line: silence, as on RS-485
        port.write(rtu_request(9, 3, START, 2))
        assert port.read(5) == b""


def test_rtu_without_baud_emulation_is_fast(tmp_path, pty_pair):
    sim_end, client_end = pty_pair
    doc = site_doc(MILL, transport="rtu", extra_server={"port": None, "serial_port": sim_end})
    with make_runner(tmp_path, doc), serial.Serial(client_end, 9600, timeout=0.5) as port:
        elapsed, reply = timed_read(port, 125)
        assert len(reply) == 255
        assert elapsed < 0.2


def test_rtu_over_tcp(tmp_path):
    with make_runner(tmp_path, site_doc(MILL, transport="rtu_over_tcp")) as sim:
        with socket.create_connection(("127.0.0.1", sim.port("gw")), timeout=2) as sock:
            sock.sendall(rtu_request(1, 3, 0x101E, 2))
            reply = b""
            while len(reply) < 9:
                reply += sock.recv(64)
        assert reply[:3] == bytes([1, 3, 4])
        assert struct.unpack("<H", reply[-2:])[0] == crc16_modbus(reply[:-2])
        assert struct.unpack(">f", reply[3:7])[0] == pytest.approx(sim.expected_value("mill", "imp_ep"), rel=1e-7)
