"""Readings lost to a real full disk reach the status message and /metrics, counted as disk_full.

The agent runs as a subprocess with its outbox on a 256 KiB tmpfs of its own (tests/support/fulldisk.py),
the broker down, so the outbox fills the disk; then the broker comes back and the status is read.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from tests.agent.helpers import Collector, write_config
from tests.agent.mbserver import ModbusTestServer, ServerThread, Unit
from tests.support.fulldisk import on_small_disk
from tests.support.processes import ROOT, stop_process
from tests.support.services import free_port, wait_for


@pytest.fixture
def broker(mosquitto):
    return mosquitto


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_readings_lost_to_a_full_disk_are_in_the_status_and_the_metrics(tmp_path, broker):
    broker.stop()
    disk = tmp_path / "disk"
    regs = [{"name": f"r{i}", "address": i, "data_type": "uint16", "poll_group": "fast"} for i in range(60)]
    metrics_port = free_port()
    log = tmp_path / "agent.log"
    with ServerThread(ModbusTestServer({1: Unit(holding={i: i for i in range(60)})})) as server:
        cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port,
                           buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": server.port}],
                           devices=[{"name": "m1", "bus": "gw", "unit_id": 1, "registers": regs,
                                     "poll_groups": {"fast": 0.05}}],
                           outbox={"path": str(disk / "outbox.sqlite"), "linger_ms": 0},
                           top={"metrics_port": metrics_port})
        with open(log, "ab") as out:
            agent = subprocess.Popen(on_small_disk(disk, 256 * 1024, [sys.executable, "-m", "greenmine", "agent", "run",
                                                                      "--config", str(cfg)]),
                                     cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        collector = None
        try:
            wait_for(lambda: "readings lost" in log.read_text(), 30, interval_s=0.1, what="the disk to fill")
            broker.start()
            collector = Collector(broker.port)

            def lost():
                st = collector.last_status()
                return st if st and st.get("dropped_readings_by_reason", {}).get("disk_full", 0) > 0 else None

            status = wait_for(lost, 20, interval_s=0.1, what="a status that counts disk_full")
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        finally:
            code = stop_process(agent)
            if collector is not None:
                collector.close()
    assert code == 0, log.read_text()[-3000:]
    assert status["schema"] == "greenmine.status.v2"
    by_reason = status["dropped_readings_by_reason"]
    assert by_reason["disk_full"] % 60 == 0  # whole polls
    assert status["dropped_readings"] >= sum(by_reason.values())
    assert _metric(text, 'greenmine_agent_dropped_readings{reason="disk_full"}') > 0
    assert 'greenmine_agent_dropped_readings{reason="outbox_full"}' in text
