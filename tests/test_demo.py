"""`greenmine demo --duration N` runs the whole chain and exits 0 by itself."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import need_binary

ROOT = Path(__file__).resolve().parent.parent


def run_demo(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = subprocess.run(
        [sys.executable, "-m", "greenmine", "demo", "--duration", "12", "--data-dir", str(tmp_path), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    m = re.search(r"writing everything under (\S+)", out.stdout)
    assert m, out.stdout + out.stderr
    return out, Path(m.group(1))


def stored(run_dir: Path) -> int:
    con = sqlite3.connect(run_dir / "greenmine.sqlite")
    try:
        return con.execute("SELECT count(*) FROM readings").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("broker", ["mosquitto", "builtin"])
def test_demo_runs_and_stores_readings(tmp_path, broker):
    if broker == "mosquitto":
        need_binary("mosquitto", "mosquitto")
    out, run_dir = run_demo(tmp_path, "--broker", broker)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "demo finished" in out.stdout
    m = re.search(r"demo finished: (\d+) readings flowed", out.stdout)
    assert m and int(m.group(1)) > 0
    assert stored(run_dir) > 0, "readings flowed but none reached the server's store"
    if broker == "builtin":
        assert "for demos only" in out.stdout
    # A second run writes to a different folder.
    assert run_dir.parent == tmp_path and run_dir.name.startswith("demo-")
    for name in ("site.toml", "agent.toml", "server.toml", "server.log", "agent.log"):
        assert (run_dir / name).exists(), name
