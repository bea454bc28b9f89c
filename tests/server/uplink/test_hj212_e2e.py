"""End to end: simulated dust and noise monitors -> agent -> Mosquitto -> server -> HJ 212 platform.

Everything is real: the SiteRunner serves the boling-dust and tranball-qm7903b
register maps over Modbus TCP, `greenmine agent run` polls them and publishes
to a real mosquitto, the server app ingests and stores them in SQLite, and
its HJ 212 service sends 2011 frames to the platform simulator over TCP.

RtdInterval cannot go below the standard's 30 s, so instead of waiting the
test asks the service to send a real-time frame now (`send_realtime`, the same
code path the RtdInterval loop runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from greenmine.server.config import load_server_config
from greenmine.server.store.base import StoredReading
from greenmine.server.uplink.hj212.codec import format_number
from tests.agent.helpers import toml_value
from tests.server.conftest import server_doc, write_toml
from tests.server.uplink.conftest import ThreadedPlatform
from tests.simulators.conftest import make_runner, site_doc
from tests.support.processes import stop_process
from tests.support.services import free_port, wait_for

ROOT = Path(__file__).resolve().parents[3]
SITE = "gs-demo"
MN = "010000A8900016F000169DC0"


def point_doc(tmp_path: Path, port: int, **kw) -> dict:
    return {
        "name": "boundary", "mn": MN, "pw": "100000", "st": "39", "site": SITE, "devices": ["dust", "noise"],
        "host": "127.0.0.1", "port": port, "reply_timeout_s": 2.0, "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5, "queue_path": str(tmp_path / "hj212-boundary.sqlite"), **kw,
    }


def write_agent_config(path: Path, broker_port: int, modbus_port: int) -> Path:
    lines = [
        'kind = "agent"', f'site = "{SITE}"', 'agent_id = "gw1"',
        "[mqtt]", 'host = "127.0.0.1"', f"port = {broker_port}", "reconnect_min_s = 1", "reconnect_max_s = 1",
        "status_interval_s = 5",
        "[outbox]", f"path = {toml_value(str(path.parent / 'outbox.sqlite'))}", "linger_ms = 10",
        "[[buses]]", 'name = "env"', 'transport = "tcp"', 'host = "127.0.0.1"', f"port = {modbus_port}",
        "timeout_ms = 200", "retries = 0",
    ]
    for name, unit, profile in (("dust", 1, "boling-dust"), ("noise", 2, "tranball-qm7903b")):
        lines += ["[[devices]]", f'name = "{name}"', 'bus = "env"', f"unit_id = {unit}", f'profile = "{profile}"',
                  "poll_groups = { default = 0.2 }", "backoff_max_s = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def cp_of(packet) -> dict[str, str]:
    return packet.cp_values()


def test_monitors_to_platform_values_codes_and_flags(tmp_path, mosquitto):
    from greenmine.server.app import App
    from greenmine.server.store.sqlite import SqliteReader

    devices = [("dust", "boling-dust", None, {}), ("noise", "tranball-qm7903b", None, {})]
    with make_runner(tmp_path, site_doc(devices)) as sim, ThreadedPlatform() as platform:
        doc = server_doc(tmp_path, mosquitto.port)
        doc["hj212"] = [point_doc(tmp_path, platform.port)]
        cfg = load_server_config(tmp_path / "server.toml", doc=doc)
        app = App(cfg)
        app.start()
        agent_cfg = write_agent_config(tmp_path / "agent.toml", mosquitto.port, sim.port("gw"))
        with open(tmp_path / "agent.log", "ab") as log:
            agent = subprocess.Popen([sys.executable, "-m", "greenmine", "agent", "run", "--config", str(agent_cfg)],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        reader = SqliteReader(tmp_path / "store.sqlite")
        try:
            svc = app.uplink.hj212
            metrics = ["dust_tsp_mgm3", "dust_pm10_mgm3", "dust_pm25_mgm3"]
            wait_for(lambda: all(svc.cache.get(SITE, "dust", m) for m in metrics) and svc.cache.get(SITE, "noise", "noise_laeq_db"),
                     timeout_s=10, what="dust and noise readings stored by the server")
            wait_for(lambda: svc.snapshot()["boundary"]["connected"], timeout_s=5, what="link to the platform")

            # -- all online: values as the monitors show them, flag N
            qn = svc.send_realtime("boundary")
            frame = wait_for(lambda: next((p for p in platform.of_cn("2011") if p.qn == qn), None),
                             timeout_s=5, what="2011 frame at the platform")
            assert (frame.st, frame.mn, frame.pw, frame.flag) == ("39", MN, "100000", 5)
            cp = cp_of(frame)
            expected = {
                "a34001": (sim.expected_value("dust", "tsp"), 3, "dust", "dust_tsp_mgm3"),
                "a34002": (sim.expected_value("dust", "pm10"), 3, "dust", "dust_pm10_mgm3"),
                "a34004": (sim.expected_value("dust", "pm25"), 3, "dust", "dust_pm25_mgm3"),
                "LA": (sim.expected_value("noise", "noise"), 1, "noise", "noise_laeq_db"),
            }
            for code, (value, decimals, device, metric) in expected.items():
                assert cp[f"{code}-Rtd"] == format_number(value, decimals), code
                assert cp[f"{code}-Flag"] == "N", code
                # ingest and the uplink consume the stream independently: the store may be a moment behind
                stored = wait_for(lambda: reader.latest(SITE, device, metric), timeout_s=10, what=f"{metric} stored")
                assert format_number(stored.value, decimals) == cp[f"{code}-Rtd"], code
            assert not any(k.startswith("a01") for k in cp), "no weather device on this point"
            assert len(cp["DataTime"]) == 14
            wait_for(lambda: svc.snapshot()["boundary"]["acked"] >= 1, timeout_s=5, what="9014 for the 2011")

            # -- the dust monitor stops answering: the agent reports it offline, dust goes B
            sim.inject("dust", "device_offline")
            wait_for(lambda: app.uplink.agents.device_state(SITE, "gw1", "dust") == "offline", timeout_s=10,
                     what="agent status: dust offline")
            qn = svc.send_realtime("boundary")
            frame = wait_for(lambda: next((p for p in platform.of_cn("2011") if p.qn == qn), None),
                             timeout_s=5, what="second 2011 frame")
            cp = cp_of(frame)
            for code in ("a34001", "a34002", "a34004"):
                assert cp[f"{code}-Flag"] == "B", code
                assert f"{code}-Rtd" not in cp, code
            assert cp["LA-Flag"] == "N" and cp["LA-Rtd"] == format_number(sim.expected_value("noise", "noise"), 1)

            wait_for(lambda: svc.snapshot()["boundary"]["acked"] >= 2, timeout_s=5, what="9014 for the second 2011")
            assert app.metrics.value("greenmine_hj212_packets_total", point="boundary", result="acked") >= 2
            assert app.metrics.value("greenmine_hj212_packets_total", point="boundary", result="failed") == 0
        finally:
            stop_process(agent)
            reader.close()
            app.stop()


def test_server_run_sends_realtime_to_configured_platform(tmp_path, mosquitto):
    """`greenmine server run` with a point configured: a 2011 frame reaches the platform (the first
    real-time frame goes out at start, then every RtdInterval), and /metrics counts it. The reading is in the
    uplink's replica from an earlier run: a restarted uplink reports it at once."""
    from greenmine.server.store.replica import SeriesReplica

    replica = SeriesReplica(tmp_path / "uplink-replica.sqlite")
    with replica.transaction() as con:
        replica.add([StoredReading(SITE, "gw1", "dust", "dust_tsp_mgm3", int(time.time() * 1000), 0.1234, "mg/m3", "good")], con)
    replica.close()
    http_port = free_port()
    with ThreadedPlatform() as platform:
        doc = server_doc(tmp_path, mosquitto.port)
        doc["http_port"] = http_port
        doc["hj212"] = [point_doc(tmp_path, platform.port)]
        cfg_file = write_toml(tmp_path / "server.toml", doc)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(tmp_path / "server.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "greenmine", "server", "run", "--config", str(cfg_file)],
                                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            frame = wait_for(lambda: next(iter(platform.of_cn("2011")), None), timeout_s=10, what="2011 from server run")
            cp = frame.cp_values()
            assert cp["a34001-Rtd"] == "0.123" and cp["a34001-Flag"] == "N"

            def acked() -> bool:
                text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
                return 'greenmine_hj212_packets_total{point="boundary",result="acked"} 1.0' in text

            wait_for(acked, timeout_s=5, what="acked counter on /metrics")
        finally:
            rc = stop_process(proc)
        assert rc == 0, (tmp_path / "server.log").read_text()
