"""Ports from the command line or the environment: a second instance runs on the same config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from greenmine.ports import PortError, port_override
from tests.agent.helpers import write_config
from tests.server.conftest import server_doc, write_toml
from tests.support.processes import ROOT, stop_process
from tests.support.services import free_port, wait_for


def test_the_flag_wins_over_the_environment_which_wins_over_the_file():
    env = {"GREENMINE_HTTP_PORT": "9200"}
    assert port_override("--http-port", 9300, "GREENMINE_HTTP_PORT", env=env) == 9300
    assert port_override("--http-port", None, "GREENMINE_HTTP_PORT", env=env) == 9200
    assert port_override("--http-port", None, "GREENMINE_HTTP_PORT", env={}) is None
    assert port_override("--http-port", None, "GREENMINE_HTTP_PORT", env={"GREENMINE_HTTP_PORT": " "}) is None


@pytest.mark.parametrize("given,value,message", [
    (None, "nine", "environment variable GREENMINE_HTTP_PORT: 'nine' is not a port number"),
    (None, "70000", "environment variable GREENMINE_HTTP_PORT: 70000 is not a port (0..65535)"),
    (-1, "", "--http-port: -1 is not a port (0..65535)"),
])
def test_a_bad_port_names_the_flag_or_the_variable(given, value, message):
    with pytest.raises(PortError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.") + "$"):
        port_override("--http-port", given, "GREENMINE_HTTP_PORT", env={"GREENMINE_HTTP_PORT": value})


def _get(url: str):
    try:
        return urllib.request.urlopen(url, timeout=2)
    except OSError:
        return None


def _run(args, log, env):
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "greenmine", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env})


def test_two_servers_on_one_config_file_serve_on_the_ports_the_environment_gives(tmp_path, mosquitto):
    cfg = write_toml(tmp_path / "server.toml", server_doc(tmp_path, 1) | {"http_port": free_port()})  # a wrong broker port
    ports = [free_port(), free_port()]
    procs = [_run(["server", "run", "--config", str(cfg), "--role", "ingest", "--instance", str(i)], tmp_path / f"s{i}.log",
                  {"GREENMINE_HTTP_PORT": str(port), "GREENMINE_MQTT_PORT": str(mosquitto.port)})
             for i, port in enumerate(ports)]
    try:
        for i, port in enumerate(ports):
            def healthy(port=port):
                r = _get(f"http://127.0.0.1:{port}/health")
                return r is not None and json.load(r)["mqtt_connected"]
            wait_for(healthy, 20, what=f"server {i} healthy on port {port}: {(tmp_path / f's{i}.log').read_text()}")
    finally:
        assert [stop_process(p) for p in procs] == [0, 0]
    bad = subprocess.run([sys.executable, "-m", "greenmine", "server", "run", "--config", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={**os.environ, "GREENMINE_HTTP_PORT": "x"})
    assert bad.returncode == 2 and "environment variable GREENMINE_HTTP_PORT: 'x' is not a port number" in bad.stderr


def test_the_agent_takes_its_ports_from_the_environment_and_the_flag_wins(tmp_path, mosquitto):
    cfg = write_config(tmp_path / "agent.toml", broker_port=1,  # a wrong broker port: the environment gives the right one
                       buses=[{"name": "plant", "transport": "tcp", "host": "127.0.0.1", "port": free_port()}],
                       devices=[{"name": "pump-3", "bus": "plant", "unit_id": 3, "profile": "eastron-sdm630",
                                 "poll_groups": {"fast": 1, "totals": 60}}],
                       top={"metrics_port": free_port()})
    env_port, flag_port = free_port(), free_port()
    env = {"GREENMINE_METRICS_PORT": str(env_port), "GREENMINE_MQTT_PORT": str(mosquitto.port)}
    agent = _run(["agent", "run", "--config", str(cfg), "--metrics-port", str(flag_port)], tmp_path / "a.log", env)
    try:
        def connected():
            r = _get(f"http://127.0.0.1:{flag_port}/metrics")
            return r is not None and "greenmine_agent_broker_connected 1.0" in r.read().decode()
        wait_for(connected, 20, what=f"agent /metrics on {flag_port}, connected: {(tmp_path / 'a.log').read_text()}")
        assert _get(f"http://127.0.0.1:{env_port}/metrics") is None
    finally:
        assert stop_process(agent) == 0
