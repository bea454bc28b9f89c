"""The agent against a Modbus server greenmine does not use for decoding (pyModbusTCP's), issue 12 items 2-4.

The words the server holds are written out here by hand from the byte-order definitions,
not produced by greenmine's codec.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pyModbusTCP.server import DataBank, ModbusServer

from greenmine.agent.commission import read_device
from greenmine.agent.config import load_agent_config
from greenmine.configfile import ConfigError
from greenmine.schemas import Reading
from tests.agent.helpers import write_config
from tests.support.services import free_port, wait_for, port_open

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server():
    port = free_port()
    srv = ModbusServer("127.0.0.1", port, no_block=True, data_bank=DataBank())
    srv.start()
    try:
        wait_for(lambda: port_open(port), 5, what="pyModbusTCP server")
        yield srv, port
    finally:
        srv.stop()


def _cfg(tmp_path, port, registers, **dev):
    return write_config(tmp_path / "agent.toml", broker_port=1883,
                        buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": port, "timeout_ms": 500}],
                        devices=[{"name": "m", "bus": "gw", "unit_id": 1, "registers": registers} | dev])


def _read(path):
    cfg = load_agent_config(path)
    rows, errors = asyncio.run(read_device(cfg, cfg.devices[0]))
    assert errors == []
    return {r["register"]: r for r in rows}


def test_float32_nan_marker_matches_in_the_registers_own_type(tmp_path, server):
    srv, port = server
    # -9999.9 as float32 is 0xC61C3F9A; the meter writes it when it has no measurement.
    srv.data_bank.set_holding_registers(0, [0xC61C, 0x3F9A, 0x3F9A, 0xC61C, 0xFFFF])
    rows = _read(_cfg(tmp_path, port, [
        {"name": "dust", "address": 0, "data_type": "float32", "nan_value": -9999.9},
        {"name": "dust_cdab", "address": 2, "data_type": "float32", "word_order": "CDAB", "nan_value": -9999.9},
        {"name": "flow", "address": 4, "data_type": "uint16", "nan_value": 65535},
    ]))
    for name in ("dust", "dust_cdab", "flow"):
        assert rows[name]["value"] is None and rows[name]["note"] == "nan_value marker", rows[name]


def test_a_marker_the_registers_type_cannot_hold_is_a_load_error(tmp_path):
    path = _cfg(tmp_path, 5020, [
        {"name": "t", "address": 0, "data_type": "int16", "nan_value": 32768},
        {"name": "u", "address": 1, "data_type": "uint16", "nan_value": 1.5},
        {"name": "f", "address": 2, "data_type": "float32", "nan_value": 1e39},
    ])
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert info.value.messages == [
        'devices[0] "m": registers[0] "t": nan_value 32768 cannot be held by an int16 (-32768..32767); '
        'registers[1] "u": nan_value 1.5 cannot be held by a uint16 (0..65535); '
        'registers[2] "f": nan_value 1e+39 cannot be held by a float32 (it rounds to infinity)',
    ]


def test_64_bit_counters_stay_exact_to_the_wire(tmp_path, server):
    srv, port = server
    big = 2**53 + 1  # the first integer a float64 cannot hold
    words = [(big >> s) & 0xFFFF for s in (48, 32, 16, 0)]  # ABCD
    srv.data_bank.set_holding_registers(0, words + words[::-1] + [0xFFFF] * 4)
    path = _cfg(tmp_path, port, [
        {"name": "wh", "address": 0, "data_type": "uint64", "unit": "Wh", "metric": "energy_wh_total"},
        {"name": "wh_cdab", "address": 4, "data_type": "uint64", "word_order": "CDAB", "unit": "Wh"},
        {"name": "top", "address": 8, "data_type": "uint64"},
    ])
    rows = _read(path)
    assert rows["wh"]["value"] == big and isinstance(rows["wh"]["value"], int)
    assert rows["wh_cdab"]["value"] == big
    assert rows["top"]["value"] == 2**64 - 1
    # the wire keeps it a JSON integer, and the schema accepts it back exactly
    r = Reading(device="m", metric="energy_wh_total", ts=datetime(2026, 1, 1, tzinfo=timezone.utc), value=rows["wh"]["value"])
    doc = json.loads(r.model_dump_json())
    assert doc["value"] == big and Reading.model_validate_json(r.model_dump_json()).value == big
    out = subprocess.run([sys.executable, "-m", "greenmine", "agent", "read", str(path), "--device", "m"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert str(big) in out.stdout and str(2**64 - 1) in out.stdout


def test_unplannable_registers_are_load_errors_naming_the_register(tmp_path, server):
    srv, port = server
    path = _cfg(tmp_path, port, [
        {"name": "serial", "address": 0, "data_type": "string", "length": 20, "publish": False},
        {"name": "last", "address": 65535, "data_type": "float32"},
    ], max_registers_per_request=16)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert info.value.messages == [
        'devices[0] "m": registers[1] "last": a float32 at 65535 ends at address 65536, past the last address 65535; '
        'register "serial" (0..19) is 20 registers, wider than max_registers_per_request 16',
    ]
    for cmd in (["check-config", str(path)], ["agent", "plan", str(path)], ["agent", "read", str(path), "--device", "m"]):
        res = subprocess.run([sys.executable, "-m", "greenmine", *cmd], cwd=REPO, capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (cmd, res.stderr)
        assert 'register "serial" (0..19) is 20 registers' in res.stderr
