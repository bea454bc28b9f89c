"""Transports: RTU on a socat pty pair, RTU over TCP; and the commissioning CLI (`agent read`, `agent plan`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from greenmine.agent.acquisition import Bus, DevicePoller
from greenmine.agent.commission import read_device
from greenmine.agent.config import load_agent_config
from greenmine.agent.planner import plan_device
from tests.agent.helpers import write_config
from tests.agent.mbserver import ModbusTestServer, ServerThread, Unit
from tests.support.services import need_binary, wait_for

REPO = Path(__file__).resolve().parents[2]

REGS = [
    {"name": "kw", "address": 0, "data_type": "float32", "word_order": "CDAB", "unit": "kW", "metric": "power_kw"},
    {"name": "kwh", "address": 2, "data_type": "uint32", "scale": 0.1, "unit": "kWh", "metric": "energy_kwh_total"},
    {"name": "temp", "address": 6, "data_type": "int16", "scale": 0.1, "valid_max": 80, "unit": "C"},
    {"name": "run", "address": 3, "type": "coil", "data_type": "bit"},
]


def meter_unit() -> Unit:
    u = Unit()
    u.set_words("holding", 0, [0x0000, 0x41C8])  # 25.0 as CDAB
    u.set_words("holding", 2, [0x0001, 0x86A0])  # 100000 -> 10000.0 kWh
    u.set_words("holding", 6, [950])  # 95.0 C: above valid_max -> out_of_range, not clamped
    u.coils[3] = 1
    return u


def device(bus: str, unit: int = 1, name: str = "m1") -> dict:
    return {"name": name, "bus": bus, "unit_id": unit, "registers": REGS, "max_gap": 4}


def check_rows(rows):
    by = {r["register"]: r for r in rows}
    assert by["kw"]["value"] == 25.0 and by["kw"]["quality"] == "good"
    assert by["kwh"]["value"] == 10000.0
    assert by["temp"]["value"] == 95.0 and by["temp"]["quality"] == "out_of_range"
    assert by["run"]["value"] == 1.0
    assert by["temp"]["raw_registers"] == [950]


def test_rtu_over_socat_pty_pair(tmp_path):
    socat = need_binary("socat", "socat")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: a.exists() and b.exists(), 5, what="socat pty pair")
        server = ModbusTestServer({7: meter_unit(), 8: Unit(behaviour="silent")}, framing="rtu")
        cfg = load_agent_config(write_config(
            tmp_path / "agent.toml", broker_port=1883,
            buses=[{"name": "rs485", "transport": "rtu", "serial_port": str(b), "baudrate": 9600, "timeout_ms": 300}],
            devices=[device("rs485", 7), device("rs485", 8, "dead")]))

        async def main():
            serve = asyncio.create_task(server.serve_serial(str(a)))
            await asyncio.wait_for(server.serial_ready.wait(), 5)
            try:
                rows, errors = await read_device(cfg, cfg.devices[0])
                assert errors == []
                check_rows(rows)
                # the poll path on the same serial bus: a silent unit times out, the good one still reads
                from greenmine.agent.runtime import build_buses

                buses = build_buses(cfg)
                try:
                    good = DevicePoller(cfg.devices[0], buses["rs485"], plan_device(cfg.devices[0]))
                    dead = DevicePoller(cfg.devices[1], buses["rs485"], plan_device(cfg.devices[1]))
                    from datetime import datetime, timezone

                    ts = datetime.now(timezone.utc)
                    out = await asyncio.gather(dead.poll("default", ts), good.poll("default", ts))
                    assert out[0] == [] and "timeout" in dead.last_error
                    assert {r.metric for r in out[1]} == {"power_kw", "energy_kwh_total", "temp", "run"}
                finally:
                    for bus in buses.values():
                        bus.close()
            finally:
                serve.cancel()
                await asyncio.gather(serve, return_exceptions=True)

        asyncio.run(main())
        assert (7, 3, 0, 7) in server.requests and (7, 1, 3, 1) in server.requests  # planned: one fc3 read of 0..6
    finally:
        proc.terminate()
        proc.wait(5)


def test_rtu_over_tcp(tmp_path):
    server = ModbusTestServer({3: meter_unit()}, framing="rtu")

    async def main():
        port = await server.start()
        cfg = load_agent_config(write_config(
            tmp_path / "agent.toml", broker_port=1883,
            buses=[{"name": "gw", "transport": "rtu_over_tcp", "host": "127.0.0.1", "port": port, "timeout_ms": 500}],
            devices=[device("gw", 3)]))
        try:
            rows, errors = await read_device(cfg, cfg.devices[0])
        finally:
            await server.stop()
        assert errors == []
        check_rows(rows)

    asyncio.run(main())


def test_cli_read_and_plan_json(tmp_path):
    with ServerThread(ModbusTestServer({1: meter_unit(), 2: Unit(behaviour="exception", code=2)})) as server:
        cfg = write_config(tmp_path / "agent.toml", broker_port=1883,
                           buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": server.port,
                                   "timeout_ms": 500}],
                           devices=[device("gw", 1), device("gw", 2, "broken")])
        out = subprocess.run([sys.executable, "-m", "greenmine", "agent", "read", str(cfg), "--device", "m1", "--json"],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        check_rows(json.loads(out.stdout)["readings"])
        table = subprocess.run([sys.executable, "-m", "greenmine", "agent", "read", str(cfg), "--device", "m1"],
                               cwd=REPO, capture_output=True, text=True, timeout=30)
        assert "out_of_range" in table.stdout and "power_kw" in table.stdout
        bad = subprocess.run([sys.executable, "-m", "greenmine", "agent", "read", str(cfg), "--device", "broken"],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1 and "illegal data address" in bad.stderr
    plan = subprocess.run([sys.executable, "-m", "greenmine", "agent", "plan", str(cfg), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    reqs = doc["devices"][0]["groups"][0]["requests"]
    assert [(r["function"], r["address"], r["count"]) for r in reqs] == [(1, 3, 1), (3, 0, 7)]
    assert doc["requests_per_cycle"] == 4 and doc["one_per_register"] == 8
    text = subprocess.run([sys.executable, "-m", "greenmine", "agent", "plan", str(cfg)],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert "fc3" in text.stdout and "total: 4 requests per cycle" in text.stdout
