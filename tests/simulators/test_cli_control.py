"""`greenmine sim run` as a subprocess, the example configs, and the HTTP control interface."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pyModbusTCP.client import ModbusClient

from greenmine.configfile import read_toml
from tests.simulators.conftest import make_runner, site_doc

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenmine", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, **kw)


def test_example_configs_pass_check_config():
    r = _cli("check-config", "config/site.example.toml", "config/agent.example.toml")
    assert r.returncode == 0, r.stderr


def test_demo_agent_config_polls_exactly_the_demo_site():
    from greenmine.agent.config import load_agent_config
    from greenmine.simulators.config import load_sim_config

    site = load_sim_config(ROOT / "config/site.example.toml")
    agent = load_agent_config(ROOT / "config/agent.example.toml")
    served = {(s.port, d.unit_id): (d.name, d.profile) for s, d in site.devices()}
    polled = {(agent.bus(d.bus).port, d.unit_id): (d.name, d.profile) for d in agent.devices}
    assert polled == served
    metrics = {d.name: {r.name: r.metric_name for r in d.resolved_registers} for d in agent.devices}
    roles = {d.name: d.role for _, d in site.devices()}
    for name, regs in metrics.items():
        if roles[name] in ("fresh", "reused", "discharge"):
            assert regs["forward_total"] == f"water_{roles[name]}_m3_total"


def test_list_scenarios():
    r = _cli("sim", "run", "--list-scenarios")
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert set(names) == {
        "normal", "reuse_drop", "dust_episode", "night_noise", "energy_overrun", "counter_rollover", "meter_replaced",
        "zero_glitch", "device_offline", "slow_device", "exception_replies", "flapping_link",
    }


def test_sim_run_serves_prints_the_table_and_stops_on_sigterm(tmp_path):
    doc = read_toml(ROOT / "config/site.example.toml")
    for server in doc["servers"]:
        server["port"] = 0
    doc.pop("control_port")
    site_file = tmp_path / "site.toml"
    site_file.write_text(_to_toml(doc))
    proc = subprocess.Popen(
        [sys.executable, "-m", "greenmine", "sim", "run", "--site", str(site_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("serving"):
                break
        table = "".join(lines)
        assert "crusher-meter" in table and "eastron-sdm630" in table and "rtu_over_tcp" in table
        row = next(ln for ln in lines if ln.startswith("crusher-meter"))
        port = int(row.split()[2].rsplit(":", 1)[1])
        c = ModbusClient("127.0.0.1", port, unit_id=1, timeout=2, auto_open=True)
        assert c.read_input_registers(72, 2) is not None
        c.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sim_run_with_a_bad_site_file_says_where(tmp_path):
    bad = tmp_path / "site.toml"
    bad.write_text('site = "x"\n[[servers]]\nname = "g"\nport = 1502\n[[servers.devices]]\nname = "m"\nunit_id = 1\nprofile = "nope"\n')
    r = _cli("sim", "run", "--site", str(bad))
    assert r.returncode == 2
    assert 'profile "nope" not found' in r.stderr


def _to_toml(doc: dict) -> str:
    """Just enough TOML writing for the example site (tables, arrays of tables, inline scalars)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + "}"
        return str(v)

    out = [f"{k} = {val(v)}" for k, v in doc.items() if not isinstance(v, (dict, list)) or (isinstance(v, list) and v and not isinstance(v[0], dict))]
    for k, v in doc.items():
        if isinstance(v, dict):
            out.append(f"[{k}]")
            out += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
    for server in doc["servers"]:
        out.append("[[servers]]")
        out += [f"{k} = {val(v)}" for k, v in server.items() if k != "devices"]
        for dev in server["devices"]:
            out.append("[[servers.devices]]")
            out += [f"{k} = {val(v)}" for k, v in dev.items()]
    return "\n".join(out) + "\n"


def _http(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_control_interface(tmp_path):
    with make_runner(tmp_path, site_doc(control_port=0)) as sim:
        port = sim.control_port
        status, state = _http(port, "GET", "/state")
        assert status == 200 and state["devices"]["sdm630"]["values"]["import_kwh"] > 1000
        assert _http(port, "POST", "/clock", {"time": "2025-06-02T23:30:00", "speed": 0})[1]["sim_time"].startswith(
            "2025-06-02T23:30:00"
        )
        assert _http(port, "POST", "/scenarios", {"scenarios": ["night_noise"]})[0] == 200
        assert _http(port, "POST", "/inject", {"device": "sdm630", "scenario": "exception_replies"})[0] == 200
        c = ModbusClient("127.0.0.1", sim.port("gw"), unit_id=1, timeout=1, auto_open=True)
        assert c.read_input_registers(72, 2) is None and c.last_except == 2
        assert _http(port, "POST", "/clear", {"device": "sdm630"})[0] == 200
        assert c.read_input_registers(72, 2) is not None
        c.close()
        state = _http(port, "GET", "/state")[1]
        assert state["scenarios"] == ["night_noise"] and state["devices"]["sdm630"]["scenarios"] == []
        status, err = _http(port, "POST", "/inject", {"device": "nope", "scenario": "device_offline"})
        assert status == 400 and 'no device "nope"' in err["error"]
        status, err = _http(port, "POST", "/scenarios", {"scenarios": ["device_offline"]})
        assert status == 400 and "acts on one device" in err["error"]
        assert _http(port, "POST", "/clock", {"speed": -1})[0] == 400
        assert _http(port, "GET", "/nope")[0] == 404


@pytest.mark.parametrize("bad", ["not json", "[1, 2]"])
def test_control_rejects_malformed_bodies(tmp_path, bad):
    with make_runner(tmp_path, site_doc(control_port=0)) as sim:
        req = urllib.request.Request(f"http://127.0.0.1:{sim.control_port}/scenarios", data=bad.encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=5)
        assert exc.value.code == 400


def test_control_unknown_method_and_oversized_body(tmp_path):
    from greenmine.simulators.control import MAX_BODY_BYTES

    with make_runner(tmp_path, site_doc(control_port=0)) as sim:
        port = sim.control_port
        status, err = _http(port, "GET", "/inject")  # a known path with the wrong method: no such endpoint
        assert status == 404 and err["error"] == "no such endpoint: GET /inject"
        req = urllib.request.Request(f"http://127.0.0.1:{port}/inject", data=b" " * (MAX_BODY_BYTES + 1), method="POST")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=5)
        assert exc.value.code == 413 and "body over" in json.loads(exc.value.read())["error"]
        # the site still answers after the refusals
        assert _http(port, "GET", "/state")[0] == 200
