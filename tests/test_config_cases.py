"""Table tests over tests/cases/: error cases and decode cases.

An error case holds one bad config and error.txt: `check-config` must exit 2 and
print exactly its lines (each prefixed by the file's path). `{config_dir}` and
`{profiles_dir}` in error.txt stand for the case's folder and the shipped profiles folder.

A decode case holds agent.toml (one device on a TCP bus) and expected.jsonl: per
register, the words a meter holds at its address and the value, quality or note
`agent read` must give for them, exactly (an int stays an int). The words are served by
pyModbusTCP's server, not by greenmine, and read over the wire.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenmine import PROFILES_DIR
from greenmine.checkcmd import load_any
from greenmine.configfile import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted(p for p in (ROOT / "tests" / "cases").iterdir() if (p / "error.txt").exists())
DECODE_CASES = sorted(p for p in (ROOT / "tests" / "cases").iterdir() if (p / "expected.jsonl").exists())


def _case_file(case: Path) -> Path:
    (cfg,) = [p for p in case.iterdir() if p.suffix == ".toml"]
    return cfg


def _expected(case: Path) -> list[str]:
    text = (case / "error.txt").read_text(encoding="utf-8")
    text = text.replace("{config_dir}", str(case)).replace("{profiles_dir}", str(PROFILES_DIR))
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_config_gives_exact_message(case: Path, monkeypatch):
    monkeypatch.delenv("GREENMINE_TEST_UNSET_PASSWORD", raising=False)
    cfg = _case_file(case)
    with pytest.raises(ConfigError) as info:
        load_any(cfg)
    assert info.value.messages == _expected(case)
    assert str(info.value).splitlines()[0].startswith(f"{cfg}: ")


def test_check_config_cli_exit_codes(tmp_path):
    case = ROOT / "tests" / "cases" / "agent_overlap"
    env = {k: v for k, v in os.environ.items() if k != "GREENMINE_TEST_UNSET_PASSWORD"}
    bad = subprocess.run(
        [sys.executable, "-m", "greenmine", "check-config", str(_case_file(case))],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=60,
    )
    assert bad.returncode == 2
    assert 'register "kwh_total" (40012..40013) overlaps "kw_avg" (40013)' in bad.stderr
    good = subprocess.run(
        [sys.executable, "-m", "greenmine", "check-config", *map(str, sorted((ROOT / "config").glob("*.toml")))],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=60,
    )
    assert good.returncode == 0, good.stderr
    unknown = tmp_path / "x.toml"
    unknown.write_text('hello = "world"\n')
    res = subprocess.run(
        [sys.executable, "-m", "greenmine", "check-config", str(unknown)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=60,
    )
    assert res.returncode == 2 and "cannot tell the config kind" in res.stderr


def test_secrets_come_from_environment(tmp_path, monkeypatch):
    from greenmine.agent.config import load_agent_config

    cfg_file = ROOT / "tests" / "cases" / "agent_unset_env" / "agent.toml"
    monkeypatch.setenv("GREENMINE_TEST_UNSET_PASSWORD", "s3cret")
    cfg = load_agent_config(cfg_file)
    assert cfg.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_a_config_of_another_kind_is_named_as_such():
    from greenmine.agent.config import load_agent_config
    from greenmine.server.config import load_server_config

    with pytest.raises(ConfigError) as info:
        load_agent_config(ROOT / "config" / "server.example.toml")
    assert info.value.messages == ['this is a server config (kind = "server"), not an agent config']
    with pytest.raises(ConfigError) as info:
        load_server_config(ROOT / "config" / "site.example.toml")
    assert info.value.messages == ['this is a sim config (kind = "sim"), not a server config']


@pytest.mark.parametrize("case", DECODE_CASES, ids=[c.name for c in DECODE_CASES])
def test_decode_case(case: Path):
    import asyncio
    import json

    from pyModbusTCP.server import DataBank, ModbusServer

    from greenmine.agent.commission import read_device
    from greenmine.agent.config import load_agent_config
    from greenmine.configfile import read_toml
    from tests.support.services import free_port, port_open, wait_for

    expected = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines() if line.strip()]
    path = case / "agent.toml"
    doc = read_toml(path)
    port = free_port()
    doc["buses"][0]["port"] = port
    cfg = load_agent_config(path, doc)
    (dev,) = cfg.devices
    address = {r.name: r.address for r in dev.resolved_registers}
    assert sorted(address) == sorted(e["register"] for e in expected), "expected.jsonl covers every register"
    server = ModbusServer("127.0.0.1", port, no_block=True, data_bank=DataBank())
    server.start()
    try:
        wait_for(lambda: port_open(port), 5, what="pyModbusTCP server")
        for e in expected:
            server.data_bank.set_holding_registers(address[e["register"]], e["words"])
        rows, errors = asyncio.run(read_device(cfg, dev))
    finally:
        server.stop()
    assert errors == []
    got = {r["register"]: r for r in rows}
    for e in expected:
        row = got[e["register"]]
        assert row["raw_registers"] == e["words"], e["register"]
        assert (row["value"], type(row["value"])) == (e["value"], type(e["value"])), (e["register"], row)
        if "quality" in e:
            assert row["quality"] == e["quality"], (e["register"], row)
        if "note" in e:
            assert row["note"] == e["note"], (e["register"], row)
