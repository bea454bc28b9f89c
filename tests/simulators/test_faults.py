"""Every fault scenario is seen by a real client (pyModbusTCP) as that fault."""

from __future__ import annotations

import socket
import struct
import time

from pyModbusTCP.client import ModbusClient
from pyModbusTCP.constants import MB_TIMEOUT_ERR

from tests.simulators.conftest import make_runner, site_doc
from tests.support.services import wait_for

METERS = [("a", "eastron-sdm630", None, {}), ("b", "eastron-sdm630", None, {})]


def client(sim, unit: int, timeout: float = 0.4) -> ModbusClient:
    return ModbusClient("127.0.0.1", sim.port("gw"), unit_id=unit, timeout=timeout, auto_open=True)


def test_offline_device_times_out_and_its_neighbour_still_answers(tmp_path):
    with make_runner(tmp_path, site_doc(METERS)) as sim:
        a, b = client(sim, 1), client(sim, 2)
        try:
            sim.inject("a", "device_offline")
            t = time.monotonic()
            assert a.read_input_registers(72, 2) is None
            assert a.last_error == MB_TIMEOUT_ERR
            assert time.monotonic() - t >= 0.35
            assert b.read_input_registers(72, 2) is not None  # one dead meter behind a gateway stalls no other
            sim.clear("a")
            assert a.read_input_registers(72, 2) is not None
        finally:
            a.close()
            b.close()


def test_slow_device_answers_after_the_timeout(tmp_path):
    with make_runner(tmp_path, site_doc(METERS)) as sim:
        a = client(sim, 1)
        try:
            sim.inject("a", "slow_device")
            assert a.read_input_registers(72, 2) is None
            assert a.last_error == MB_TIMEOUT_ERR
        finally:
            a.close()


def test_exception_replies_give_codes_2_4_6(tmp_path):
    with make_runner(tmp_path, site_doc(METERS)) as sim:
        a = client(sim, 1)
        try:
            sim.inject("a", "exception_replies")
            codes = []
            for _ in range(3):
                assert a.read_input_registers(72, 2) is None
                codes.append(a.last_except)
            assert codes == [2, 4, 6]
        finally:
            a.close()


def _raw_read(sock: socket.socket, tid: int, unit: int) -> bytes:
    sock.sendall(struct.pack(">HHHBBHH", tid, 0, 6, unit, 4, 72, 2))
    return sock.recv(256)


def test_flapping_link_drops_the_connection(tmp_path):
    with make_runner(tmp_path, site_doc(METERS)) as sim:
        with socket.create_connection(("127.0.0.1", sim.port("gw")), timeout=2) as sock:
            assert len(_raw_read(sock, 1, 1)) == 13  # MBAP 7 + fc 1 + count 1 + 4 bytes
            sim.inject("a", "flapping_link")  # open connections are dropped at once

            def dropped():
                try:
                    return sock.recv(16) == b""
                except ConnectionResetError:
                    return True
                except TimeoutError:
                    return False

            wait_for(dropped, 5, what="the link to drop")
        # then every 3rd request to the meter drops the connection: 1st drops, 2nd and 3rd answer, 4th drops
        outcomes = []
        for i in range(4):
            with socket.create_connection(("127.0.0.1", sim.port("gw")), timeout=2) as sock:
                try:
                    outcomes.append("ok" if len(_raw_read(sock, i, 1)) == 13 else "drop")
                except ConnectionResetError:
                    outcomes.append("drop")
        assert outcomes == ["drop", "ok", "ok", "drop"]


def test_unknown_unit_id_on_a_gateway_is_exception_0x0b(tmp_path):
    with make_runner(tmp_path, site_doc(METERS)) as sim:
        c = client(sim, 9)
        try:
            assert c.read_input_registers(72, 2) is None
            assert c.last_except == 0x0B
        finally:
            c.close()


def test_reads_across_gaps_work_and_past_the_map_are_illegal_addresses(tmp_path):
    with make_runner(tmp_path, site_doc(METERS)) as sim:
        c = client(sim, 1)
        try:
            words = c.read_input_registers(0, 74)  # voltage_l1 .. import_kwh, gaps read as 0
            assert words is not None and words[12:52] == [0] * 40
            assert c.read_input_registers(0, 76) is None
            assert c.last_except == 2
        finally:
            c.close()
