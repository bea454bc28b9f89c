"""A real RTU link (socat pty pair) with a third-party responder written here from the Modbus spec
(raw serial, CRC computed), issue 12 items 1 and 5:
- a reply that comes after the agent's timeout is never taken for the next request's;
- a dead meter on a shared bus costs the others at most one timeout per cycle, and is probed once
  per back-off window whatever its group count.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import serial

from greenmine.agent.acquisition import DevicePoller
from greenmine.agent.config import load_agent_config
from greenmine.agent.planner import plan_device
from greenmine.agent.runtime import build_buses
from greenmine.schemas import DeviceState
from tests.agent.helpers import write_config
from tests.support.services import need_binary, wait_for

TIMEOUT_S = 0.3


def crc(data: bytes) -> bytes:
    value = 0xFFFF
    for byte in data:
        value ^= byte
        for _ in range(8):
            value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
    return struct.pack("<H", value)


class Responder(threading.Thread):
    """Answers fc3 reads for `units` ({unit: {address: word}}) on one pty end, one request at a time,
    as a half-duplex slave does. The reply to the request for `late_address` is sent `late_s` late,
    once. Requests for units it does not hold get no answer (a dead meter)."""

    def __init__(self, path: str, units: dict[int, dict[int, int]], late_address: int | None = None,
                 late_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.port = serial.Serial(path, 9600, timeout=0.05)
        self.units, self.late_address, self.late_s = units, late_address, late_s
        self.requests: list[tuple[float, int, int, int]] = []  # (monotonic time, unit, address, count)
        self.late_sent = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        buf = b""
        while not self._halt.is_set():
            buf += self.port.read(64)
            while len(buf) >= 8:
                frame, buf = buf[:8], buf[8:]
                if crc(frame[:6]) != frame[6:]:
                    buf = frame[1:] + buf  # resynchronise on garbage
                    continue
                unit, fc, address, count = struct.unpack(">BBHH", frame[:6])
                self.requests.append((time.monotonic(), unit, address, count))
                if unit not in self.units or fc != 3:
                    continue
                words = [self.units[unit].get(a, 0) for a in range(address, address + count)]
                adu = bytes([unit, 3, 2 * count]) + struct.pack(f">{count}H", *words)
                if address == self.late_address and not self.late_sent.is_set():
                    time.sleep(self.late_s)  # busy: the late reply goes out, then the next request is read
                    self.late_sent.set()
                self.port.write(adu + crc(adu))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.port.close()


@pytest.fixture
def ptys(tmp_path):
    socat = need_binary("socat", "socat")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: a.exists() and b.exists(), 5, what="socat pty pair")
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


def config(tmp_path, port: str, devices: list[dict]):
    return load_agent_config(write_config(
        tmp_path / "agent.toml", broker_port=1883,
        buses=[{"name": "rs485", "transport": "rtu", "serial_port": port, "baudrate": 9600,
                "timeout_ms": int(TIMEOUT_S * 1000)}],
        devices=devices))


# power (fast) and energy (totals) are both one fc3 read of 2 registers of unit 5: same reply shape
METER = {"name": "meter", "bus": "rs485", "unit_id": 5, "poll_groups": {"fast": 1, "totals": 60}, "max_gap": 0,
         "registers": [
             {"name": "kw", "address": 0, "data_type": "uint32", "poll_group": "fast", "metric": "power_kw"},
             {"name": "kwh", "address": 100, "data_type": "uint32", "poll_group": "totals",
              "metric": "energy_kwh_total"}]}
HOLDS = {"power_kw": 1234, "energy_kwh_total": 987654}
WORDS = {0: 0, 1: 1234, 100: 987654 >> 16, 101: 987654 & 0xFFFF}


def test_a_late_reply_is_never_taken_for_the_next_request(tmp_path, ptys):
    server_end, agent_end = ptys
    responder = Responder(server_end, {5: WORDS}, late_address=0, late_s=TIMEOUT_S + 0.15)
    responder.start()
    cfg = config(tmp_path, agent_end, [METER])

    async def main():
        buses = build_buses(cfg)
        try:
            poller = DevicePoller(cfg.devices[0], buses["rs485"], plan_device(cfg.devices[0], cfg.buses[0]))
            t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
            got = []
            for i, group in enumerate(["fast", "totals", "fast", "totals"]):
                got += await poller.poll(group, t0 + timedelta(seconds=i))
            return got, poller
        finally:
            for bus in buses.values():
                bus.close()

    try:
        readings, poller = asyncio.run(main())
    finally:
        responder.stop()
    assert responder.late_sent.is_set()
    assert "timeout" in (poller.last_error or "timeout")  # the first poll timed out
    for r in readings:
        assert r.value == HOLDS[r.metric], f"{r.metric} published {r.value}, the meter holds {HOLDS[r.metric]}"
    assert {r.metric for r in readings} == {"power_kw", "energy_kwh_total"}  # later polls read both correctly


def test_a_dead_meter_costs_the_others_one_timeout_per_cycle_and_one_probe_per_window(tmp_path, ptys):
    server_end, agent_end = ptys
    responder = Responder(server_end, {5: WORDS})  # unit 9 is dead: never answers
    responder.start()
    dead = METER | {"name": "dead", "unit_id": 9, "backoff_max_s": 300}
    cfg = config(tmp_path, agent_end, [METER, dead])

    async def main():
        buses = build_buses(cfg)
        now = [1000.0]
        try:
            pollers = {d.name: DevicePoller(d, buses["rs485"], plan_device(d, cfg.buses[0]), clock=lambda: now[0])
                       for d in cfg.devices}
            t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
            cycles = []
            begin = time.monotonic()
            for cycle in range(6):
                ts = t0 + timedelta(seconds=cycle)
                # the cycles are 1 s apart, as the scheduler runs them
                await asyncio.sleep(max(0.0, begin + cycle - time.monotonic()))
                # one tick: every group of every device is due at once, as the scheduler fires them
                polls = [pollers[d].poll(g, ts) for d in ("dead", "meter") for g in ("fast", "totals")]
                start = time.monotonic()
                out = await asyncio.gather(*polls)
                cycles.append((time.monotonic() - start, sum(len(o) for o in out[2:])))
                now[0] += 1.0  # the back-off window is measured on the poller's clock
            return cycles, pollers
        finally:
            for bus in buses.values():
                bus.close()

    try:
        cycles, pollers = asyncio.run(main())
    finally:
        responder.stop()
    dead_requests = [t for t, unit, _, _ in responder.requests if unit == 9]
    # cycle 0 and 1: one timeout each (retries = 1), offline after the second failed poll; it is then
    # probed once per back-off window (1 s, then 2 s): at cycles 2 and 4, each one request
    assert pollers["dead"].state is DeviceState.OFFLINE
    assert len(dead_requests) == 4, dead_requests
    for elapsed, healthy_readings in cycles:
        assert healthy_readings == 2  # the healthy meter read both groups every cycle
        assert elapsed < 2 * TIMEOUT_S, f"a cycle took {elapsed:.2f} s: more than one of the dead meter's timeouts"
