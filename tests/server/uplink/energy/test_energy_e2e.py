"""End to end, every part real: a simulated meter (a real Modbus server) → `greenmine agent run` → Mosquitto →
`greenmine server run --role ingest --role monitor` and `greenmine server run --role energy` (separate
processes, each its own session) → two energy-platform simulators over HTTPS with a generated test CA.

All processes share one accelerated clock (x3600: a simulated hour per real second; the agent polls every
0.125 s, a read every 7.5 simulated minutes). Along the way one centre is down for a simulated hour, and the
energy process is SIGKILLed while an upload is in flight (the centre holds its reply) and started again.
"""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from greenmine.configfile import dump_toml
from greenmine.simulators.energy_platform import EnergyPlatformSim
from tests.server.uplink.energy.conftest import CODE_KGCE, CODE_M1, CODE_SITE, ENTERPRISE, SECRET, SITE, TZ, items
from tests.support.processes import spawn_greenmine, stop_process
from tests.support.services import free_port, wait_for

ROOT = Path(__file__).resolve().parents[4]
SPEED = 3600.0
START = datetime(2026, 11, 29, 23, 0, tzinfo=TZ)
POLL_S = 0.125


def sim_ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp()


def test_meter_to_two_centres_with_outage_and_sigkill(tmp_path, mosquitto):
    from greenmine.simulators.config import load_sim_config
    from greenmine.simulators.site import SiteRunner

    # simulated START is a little ahead in real time: the processes start (several seconds on a loaded
    # machine) while the clock still reads Nov 29 evening
    real0 = math.ceil(time.time()) + 12.0
    to_real = lambda ts: real0 + (ts - START.timestamp()) / SPEED  # noqa: E731
    clock = {"mode": "accelerated", "sim_start": START.isoformat(), "real_start_epoch_s": real0, "speed": SPEED}
    site_doc = {"kind": "sim", "site": SITE, "clock": {"start": START.isoformat(), "speed": SPEED, "real_start_epoch_s": real0},
                "servers": [{"name": "gw", "transport": "tcp", "port": 0, "devices": [
                    {"name": "meter-1", "unit_id": 1, "profile": "eastron-sdm630", "role": "crusher"}]}]}
    (tmp_path / "site.toml").write_text(dump_toml(site_doc))
    dc1 = EnergyPlatformSim(profile="variant-a-sm4", tls_dir=tmp_path / "tls", secret_key=SECRET, upload_time="03:00:00")
    dc2 = EnergyPlatformSim(profile="variant-a", tls_dir=tmp_path / "tls", upload_time="00:00:00")
    procs: dict[str, subprocess.Popen] = {}
    with SiteRunner(load_sim_config(tmp_path / "site.toml")) as sim, dc1, dc2:
        agent_doc = {
            "kind": "agent", "site": SITE, "agent_id": "gw1", "clock": clock,
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
            "outbox": {"path": str(tmp_path / "outbox.sqlite"), "linger_ms": 10},
            "buses": [{"name": "lan", "transport": "tcp", "host": "127.0.0.1", "port": sim.port("gw")}],
            "devices": [{"name": "meter-1", "bus": "lan", "unit_id": 1, "profile": "eastron-sdm630",
                         "poll_groups": {"fast": 5.0, "totals": POLL_S}}],
        }
        centres = [
            {"name": "dc1", "url": dc1.url, "profile": "variant-a-sm4", "ca_file": str(dc1.ca_file),
             "connect_timeout_s": 2, "read_timeout_s": 5, "retry_initial_s": 0.05, "retry_max_s": 0.3},
            {"name": "dc2", "url": dc2.url, "profile": "variant-a", "ca_file": str(dc2.ca_file),
             "connect_timeout_s": 2, "read_timeout_s": 5, "retry_initial_s": 0.05, "retry_max_s": 0.3},
        ]
        server_doc = {
            "kind": "server", "clock": clock,
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "e2e-energy", "keepalive_s": 5, "reconnect_max_s": 1},
            "ingest": {"spool_path": str(tmp_path / "spool.sqlite")},
            "store": {"kind": "sqlite", "path": str(tmp_path / "store.sqlite")},
            "sites": [{"id": SITE, "timezone": "Asia/Shanghai"}],
            "kpi": {"counter_interval_s": POLL_S * SPEED},
            "alerts": {"db_path": str(tmp_path / "alerts.sqlite")},
            "energy": {"state_dir": str(tmp_path / "energy"), "replica_path": str(tmp_path / "energy-replica.sqlite"),
                       "close_delay_s": 1800, "late_data_wait_s": 12 * 3600, "tick_s": 0.05, "centres": centres,
                       "enterprises": [{"site": SITE, "enterprise_code": ENTERPRISE, "region": "620300", "items": items()}]},
        }
        (tmp_path / "agent.toml").write_text(dump_toml(agent_doc))
        cfg = tmp_path / "server.toml"
        cfg.write_text(dump_toml(server_doc))
        http_port = free_port()
        energy_cmd = ["server", "run", "--config", str(cfg), "--role", "energy", "--instance", "e", "--http-port", str(http_port)]
        try:
            procs["main"] = spawn_greenmine(["server", "run", "--config", str(cfg), "--role", "ingest", "--role", "monitor"],
                                            tmp_path / "server.log")
            procs["energy"] = spawn_greenmine(energy_cmd, tmp_path / "energy.log")
            procs["agent"] = spawn_greenmine(["agent", "run", "--config", str(tmp_path / "agent.toml")], tmp_path / "agent.log")

            def log() -> str:
                return "\n".join(f"--- {n}\n" + (tmp_path / f"{n}.log").read_text()[-3000:]
                                 for n in ("server", "energy", "agent") if (tmp_path / f"{n}.log").exists())

            wait_for(lambda: "energy: reporting" in (tmp_path / "energy.log").read_text(), timeout_s=30,
                     what="the energy role started")
            assert time.time() < to_real(sim_ts("2026-11-30 00:00")), "the processes started too late for the test's clock"
            # -- dc2 down for a simulated hour, Nov 30 06:00..07:00
            wait_for(lambda: time.time() >= to_real(sim_ts("2026-11-30 06:00")), timeout_s=30, what="Nov 30 06:00")
            assert dc1.records, log()
            dc2.down()
            wait_for(lambda: time.time() >= to_real(sim_ts("2026-11-30 07:00")), timeout_s=5, what="Nov 30 07:00")
            dc2_back = time.time()
            dc2.up()

            # -- SIGKILL the energy process while both centres hold an upload's reply (in flight, not yet accepted)
            wait_for(lambda: time.time() >= to_real(sim_ts("2026-11-30 12:00")), timeout_s=10, what="Nov 30 12:00")
            dc1.fault("timeout")
            dc2.fault("timeout")
            wait_for(lambda: dc1.state.held_requests >= 1 and dc2.state.held_requests >= 1, timeout_s=5,
                     what="an upload in flight at each centre")
            procs["energy"].send_signal(signal.SIGKILL)
            procs["energy"].wait(5)
            dc1.fault(None)
            dc2.fault(None)
            procs["energy"] = spawn_greenmine(energy_cmd, tmp_path / "energy.log")

            # -- everything of Nov 30 and the month of November at both centres
            def arrived(platform) -> bool:
                return all(k in platform.records for k in (
                    (ENTERPRISE, CODE_M1, 1, "2026-11-30 00:00:00"), (ENTERPRISE, CODE_M1, 2, "2026-11-01 00:00:00"),
                    (ENTERPRISE, CODE_KGCE, 2, "2026-11-01 00:00:00")))

            wait_for(lambda: arrived(dc1) and arrived(dc2), timeout_s=40, what="the day and month records at both centres")
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
            for centre_name in ("dc1", "dc2"):
                assert f'greenmine_energy_queue_depth{{centre="{centre_name}"}}' in metrics
                assert f'greenmine_energy_oldest_unsent_age_seconds{{centre="{centre_name}"}}' in metrics
                acked = re.search(rf'greenmine_energy_records_acked_total{{centre="{centre_name}"}} ([0-9.e+]+)', metrics)
                assert acked and float(acked.group(1)) > 0, metrics
        finally:
            for name in ("agent", "energy", "main"):
                if name in procs:
                    stop_process(procs[name])

        for platform in (dc1, dc2):
            recs = platform.records
            slots = sorted((k[3], v) for k, v in recs.items() if k[1] == CODE_M1 and k[2] == 0 and k[3].startswith("2026-11-30"))
            assert [d for d, _ in slots] == [f"2026-11-30 {h:02d}:{m:02d}:00" for h in range(24) for m in (0, 15, 30, 45)]
            day = recs[(ENTERPRISE, CODE_M1, 1, "2026-11-30 00:00:00")]
            site_day = recs[(ENTERPRISE, CODE_SITE, 1, "2026-11-30 00:00:00")]
            assert sum(float(v.value) for _, v in slots) == pytest.approx(float(day.value), abs=96 * 5e-4)
            assert float(site_day.value) == float(day.value)  # one meter
            assert float(recs[(ENTERPRISE, CODE_KGCE, 1, "2026-11-30 00:00:00")].value) == pytest.approx(
                float(day.value) * 0.1229 / 1000, abs=2e-6)
            assert float(day.value) > 0
            assert platform.duplicates == 0, ("a record accepted twice", platform.variant, platform.encrypted,
                                              sorted((k, v.times) for k, v in recs.items() if v.times > 1))
            # every record the energy role produced arrived (one centre's outage, the SIGKILL: nothing lost)
        from greenmine.server.uplink.energy.queue import EnergyState

        state = EnergyState(tmp_path / "energy-e" / "energy.sqlite")
        try:
            produced = {(ENTERPRISE, r.code, r.stat_type, datetime.fromtimestamp(r.period_start, TZ).strftime("%Y-%m-%d %H:%M:%S"))
                        for r in state.records(SITE)}
            for name, platform in (("dc1", dc1), ("dc2", dc2)):
                missing = produced - set(platform.records)
                # the very last records may still be queued when the processes stopped; everything up to Dec 1 is there
                assert not {k for k in missing if k[3] < "2026-12-01"}, (name, sorted(missing)[:5])
                assert set(platform.records) <= produced
        finally:
            state.close()
        # dc1 was not held up by dc2's outage: the slots produced during it (a slot is produced close_delay_s = 30 min
        # after it ends) reached dc1 before dc2 returned
        during = [k for k in dc1.records if k[2] == 0 and "2026-11-30 05:30:00" <= k[3] < "2026-11-30 06:00:00"]
        assert during and all(dc1.records[k].received_at < dc2_back for k in during)
        assert all(dc2.records[k].received_at >= dc2_back for k in during)
        # the upload slot: dc1 assigned 03:00, so its day record came after Dec 1 03:00 (simulated); dc2 assigned
        # 00:00, so its came as soon as the day closed
        assert dc1.records[(ENTERPRISE, CODE_M1, 1, "2026-11-30 00:00:00")].received_at >= to_real(sim_ts("2026-12-01 03:00"))
        assert dc2.records[(ENTERPRISE, CODE_M1, 1, "2026-11-30 00:00:00")].received_at < to_real(sim_ts("2026-12-01 03:00"))
        # encrypted at dc1 (it decrypted them), plain at dc2: the same values
        assert dc1.records[(ENTERPRISE, CODE_M1, 1, "2026-11-30 00:00:00")].value == day.value

        # `greenmine kpi show` (the monitor's KPI store) agrees with the day record
        out = subprocess.run([sys.executable, "-m", "greenmine", "kpi", "show", "--config", str(cfg), "--site", SITE,
                              "--kpi", "energy_kwh_daily", "--from", "2026-11-30"], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        line = next(ln for ln in out.stdout.splitlines() if " meter-1 " in ln)
        shown = float(re.search(r"meter-1\s+([0-9.]+) kWh", line).group(1))
        assert shown == pytest.approx(float(day.value), abs=0.006), (line, day.value)
