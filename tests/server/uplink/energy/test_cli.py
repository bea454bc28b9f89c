"""`greenmine energy status|preview|resend|register` on a real state file and a real HTTPS simulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from greenmine.configfile import dump_toml
from greenmine.server.config import load_server_config
from greenmine.server.store.replica import SeriesReplica
from greenmine.server.uplink.energy.service import EnergyService
from greenmine.simulators.energy_platform import EnergyPlatformSim, sm4_decrypt
from tests.server.uplink.energy.conftest import (
    CODE_M1, ENTERPRISE, SECRET, SITE, Clock, centre, energy_doc, fill, local, meter_reads,
)

ROOT = Path(__file__).resolve().parents[4]
DAY0 = local("2026-11-30 00:00:00")


def energy(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenmine", "energy", *args, "--config", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_status_preview_resend_register(tmp_path):
    with EnergyPlatformSim(profile="variant-a-sm4", tls_dir=tmp_path / "tls", secret_key=SECRET) as sim:
        doc = {"kind": "server", "sites": [{"id": SITE, "timezone": "Asia/Shanghai"}],
               "energy": energy_doc(tmp_path, [centre("dc1", sim, "variant-a-sm4")])}
        path = tmp_path / "server.toml"
        path.write_text(dump_toml(doc))
        cfg = load_server_config(path)
        replica = SeriesReplica(tmp_path / "energy-replica.sqlite")
        clock = Clock(DAY0 - 600)
        svc = EnergyService(cfg, replica, clock=clock)
        try:
            svc.produce_due()
            fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY0 + 3600), svc)
            clock.t = DAY0 + 1800 + 300
            svc.produce_due()
        finally:
            svc.close()
            replica.close()

        out = energy(path, "status", "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)["centres"]["dc1"]
        assert st["queue_depth"] == 9 and st["last_ack"] is None

        out = energy(path, "register", "--site", SITE)
        assert out.returncode == 0, out.stderr
        assert "GM-DEVICE-0001" in out.stdout and SECRET not in out.stdout and sim.state.registrations == 1

        out = energy(path, "preview", "--site", SITE, "--period", "2026-11-30T00:15")
        assert out.returncode == 0, out.stderr
        plain, enc = [json.loads(block) for block in _json_blocks(out.stdout)]
        row = next(r for r in plain["data"] if r["dataCode"] == CODE_M1)
        assert row["statType"] == 0 and row["statDate"] == "2026-11-30 00:15:00" and float(row["dataValue"]) == 30.0
        erow = next(r for r in enc["data"] if r["dataCode"] == CODE_M1)
        assert sm4_decrypt(SECRET, erow["dataValue"]) == row["dataValue"] and plain["deviceId"] == "GM-DEVICE-0001"

        out = energy(path, "resend", "--site", SITE, "--from", "2026-11-30")
        assert out.returncode == 0 and "queued 4 record(s)" in out.stdout, out.stdout + out.stderr

        out = energy(path, "preview", "--site", "nowhere", "--period", "2026-11-30")
        assert out.returncode == 2 and "no [[energy.enterprises]] entry" in out.stderr
        out = energy(path, "preview", "--site", SITE, "--period", "2026-11-30T00:10")
        assert out.returncode == 2 and "multiple of 15 minutes" in out.stderr
    assert sim.records == {}  # nothing was sent by the tools themselves


def _json_blocks(text: str) -> list[str]:
    blocks, cur = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            if cur:
                blocks.append("\n".join(cur))
                cur = []
            continue
        cur.append(line)
    if cur:
        blocks.append("\n".join(cur))
    return blocks
