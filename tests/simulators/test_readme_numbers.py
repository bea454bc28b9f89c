"""The README's commissioning table: each mbpoll command, run against the
simulated demo site with the documented frozen clock, prints the documented number."""

from __future__ import annotations

import re
import shlex
import subprocess
from datetime import datetime
from pathlib import Path

from tests.support.services import need_binary

ROOT = Path(__file__).resolve().parents[2]
START = datetime.fromisoformat("2026-06-01T10:00:00+08:00")


def readme_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| [^|]+ \| `(mbpoll [^`]+)` \| ([^|]+) \|$", text, flags=re.M)
    assert len(rows) >= 5, "README lost its commissioning table"
    assert "--start 2026-06-01T10:00:00+08:00 --speed 0" in text
    return [(cmd, value.strip()) for cmd, value in rows]


def test_readme_mbpoll_numbers():
    from greenmine.configfile import read_toml
    from greenmine.simulators.config import load_sim_config
    from greenmine.simulators.site import SiteRunner

    mbpoll = need_binary("mbpoll", "mbpoll")
    path = ROOT / "config" / "site.example.toml"
    doc = read_toml(path)
    old_ports = {}
    for srv in doc["servers"]:
        old_ports[srv["port"]] = srv["name"]
        srv["port"] = 0
    doc.pop("control_port", None)
    cfg = load_sim_config(path, doc)
    with SiteRunner(cfg, start=START, speed=0) as sim:
        for cmd, expected in readme_rows():
            argv = shlex.split(cmd)
            i = argv.index("-p")
            argv[i + 1] = str(sim.port(old_ports[int(argv[i + 1])]))
            argv[0] = mbpoll
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            values = re.findall(r"^\[\d+\]:\s+(\S+)$", out.stdout, flags=re.M)
            assert values and values[0] == expected, f"{cmd}: got {values or out.stdout + out.stderr}, README says {expected}"
