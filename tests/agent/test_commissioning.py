"""Commissioning output (issue 12 item 7): `agent read` precision and connect causes, `agent plan`
with disabled devices, bus time, and a closed pipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyModbusTCP.server import DataBank, ModbusServer

from tests.agent.helpers import write_config
from tests.support.services import free_port, port_open, wait_for

REPO = Path(__file__).resolve().parents[2]


def greenmine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenmine", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def bus(port: int) -> dict:
    return {"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": port, "timeout_ms": 500}


def test_read_shows_values_at_their_registers_precision(tmp_path):
    port = free_port()
    srv = ModbusServer("127.0.0.1", port, no_block=True, data_bank=DataBank())
    srv.start()
    try:
        wait_for(lambda: port_open(port), 5, what="pyModbusTCP server")
        # 12400.25 as float32 is 0x4641C100; 123456789 = 0x075BCD15; 124002 = 0x0001E462
        srv.data_bank.set_holding_registers(0, [0x4641, 0xC100, 0x075B, 0xCD15, 0x0001, 0xE462])
        cfg = write_config(tmp_path / "agent.toml", broker_port=1883, buses=[bus(port)], devices=[{
            "name": "m", "bus": "gw", "unit_id": 1, "registers": [
                {"name": "kwh", "address": 0, "data_type": "float32", "unit": "kWh"},
                {"name": "pulses", "address": 2, "data_type": "uint32"},
                {"name": "m3", "address": 4, "data_type": "uint32", "scale": 0.01, "unit": "m3"},
            ]}])
        out = greenmine("agent", "read", str(cfg), "--device", "m")
    finally:
        srv.stop()
    assert out.returncode == 0, out.stderr
    shown = {line.split()[0]: line.split()[2] for line in out.stdout.splitlines()[1:]}
    assert shown == {"kwh": "12400.25", "pulses": "123456789", "m3": "1240.02"}


def test_cannot_connect_names_its_cause(tmp_path):
    cfg = write_config(tmp_path / "agent.toml", broker_port=1883, buses=[
        bus(free_port()), {"name": "rs485", "transport": "rtu", "serial_port": str(tmp_path / "ttyUSB9")},
    ], devices=[{"name": "m", "bus": "gw", "unit_id": 1, "registers": [{"name": "a", "address": 0}]},
                {"name": "s", "bus": "rs485", "unit_id": 1, "registers": [{"name": "a", "address": 0}]}])
    refused = greenmine("agent", "read", str(cfg), "--device", "m")
    assert refused.returncode == 1 and "connection refused" in refused.stderr, refused.stderr
    missing = greenmine("agent", "read", str(cfg), "--device", "s")
    assert missing.returncode == 1 and "ttyUSB9: No such file or directory" in missing.stderr, missing.stderr


def test_plan_marks_disabled_devices_and_leaves_them_out_of_the_totals(tmp_path):
    regs = [{"name": "a", "address": 0}, {"name": "b", "address": 10}]
    cfg = write_config(tmp_path / "agent.toml", broker_port=1883,
                       buses=[{"name": "rs485", "transport": "rtu", "serial_port": "/dev/ttyUSB0"}],
                       devices=[{"name": "on", "bus": "rs485", "unit_id": 1, "registers": regs, "max_gap": 12},
                                {"name": "off", "bus": "rs485", "unit_id": 2, "registers": regs, "enabled": False}])
    doc = json.loads(greenmine("agent", "plan", str(cfg), "--json").stdout)
    assert doc["requests_per_cycle"] == 2 and doc["one_per_register"] == 2
    # RTU at 9600 8N1: each one-register request is 3.5 + 8 + 7 characters of 10 bits
    assert doc["bus_time_s"] == pytest.approx(2 * 18.5 * 10 / 9600)
    text = greenmine("agent", "plan", str(cfg)).stdout
    (off_line,) = [line for line in text.splitlines() if line.startswith("off ")]
    assert "DISABLED" in off_line
    assert "total: 2 requests per cycle" in text and "38.5 ms of bus time" in text


def test_plan_into_a_closed_pipe_gives_no_traceback(tmp_path):
    regs = [{"name": f"r{i}", "address": 2 * i} for i in range(500)]
    cfg = write_config(tmp_path / "agent.toml", broker_port=1883, buses=[bus(502)],
                       devices=[{"name": f"d{n}", "bus": "gw", "unit_id": n, "registers": regs, "max_gap": 0}
                                for n in range(1, 6)])  # 2500 request lines: more than a pipe holds
    res = subprocess.run(f"{sys.executable} -m greenmine agent plan {cfg} | head -1", shell=True, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.startswith("d1 ")
    assert res.stderr == "", res.stderr
