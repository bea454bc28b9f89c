"""`greenmine kpi recompute|show` over a real SQLite store, as a subprocess."""

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from greenmine.server.store.base import StoredReading
from greenmine.server.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[4]
TZ = ZoneInfo("Asia/Shanghai")


def run(*args):
    return subprocess.run([sys.executable, "-m", "greenmine", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_recompute_a_past_day_and_show_it(tmp_path):
    cfg = tmp_path / "server.toml"
    cfg.write_text('[store]\nkind = "sqlite"\npath = "store.sqlite"\n[[sites]]\nid = "s1"\n'
                   '[alerts]\ndb_path = "alerts.sqlite"\n[kpi]\ncounter_interval_s = 300\n', encoding="utf-8")
    store = SqliteStore(tmp_path / "store.sqlite", site_timezones={"s1": "Asia/Shanghai"})
    t0 = datetime(2026, 11, 20, tzinfo=TZ)
    rows = []
    for i in range(24 * 12 + 1):  # every 5 min over the day, closing at 24:00
        ts = int((t0 + timedelta(minutes=5 * i)).timestamp() * 1000)
        rows.append(StoredReading("s1", "gw1", "r1", "water_reused_m3_total", ts, 100 + 4.0 * i, "m3", "good"))
        rows.append(StoredReading("s1", "gw1", "f1", "water_fresh_m3_total", ts, 50 + 1.0 * i, "m3", "good"))
    store.write(rows)
    store.close()

    out = run("kpi", "recompute", "--config", str(cfg), "--site", "s1", "--from", "2026-11-20")
    assert out.returncode == 0, out.stderr
    assert "water_reuse_daily" in out.stdout and "80.00 %" in out.stdout and "BREACH" in out.stdout
    out = run("kpi", "show", "--config", str(cfg), "--site", "s1", "--from", "2026-11-20")
    assert out.returncode == 0, out.stderr
    assert "2026-11-20" in out.stdout and "80.00 %" in out.stdout and "completeness 100.0 %" in out.stdout

    assert run("kpi", "recompute", "--config", str(cfg), "--site", "nope", "--from", "2026-11-20").returncode == 2
    assert "bad date" in run("kpi", "show", "--config", str(cfg), "--site", "s1", "--from", "20-11-2026").stderr


def test_recompute_refuses_while_the_monitor_runs_naming_it_and_runs_once_it_stopped(tmp_path):
    """The monitor owns its replica (an flock on `<replica>.lock`): `kpi recompute` would rebuild rollups under it
    that it then overwrites from memory, so it refuses, saying which process to stop. A second monitor on the same
    replica is refused at start the same way."""
    import os

    import pytest

    from greenmine.server.config import load_server_config
    from greenmine.server.errors import StateInUse
    from greenmine.server.monitor.alerts.service import Monitor

    cfg = tmp_path / "server.toml"
    cfg.write_text('[store]\nkind = "sqlite"\npath = "store.sqlite"\n[[sites]]\nid = "s1"\n'
                   '[alerts]\ndb_path = "alerts.sqlite"\n', encoding="utf-8")
    store = SqliteStore(tmp_path / "store.sqlite", site_timezones={"s1": "Asia/Shanghai"})
    t0 = int(datetime(2026, 11, 20, tzinfo=TZ).timestamp() * 1000)
    store.write([StoredReading("s1", "gw1", "r1", "water_reused_m3_total", t0 + i * 60_000, 100.0 + i, "m3", "good")
                 for i in range(0, 24 * 60 + 1, 15)])
    store.close()
    monitor = Monitor.from_config(load_server_config(cfg))  # what `server run --role monitor` builds
    try:
        out = run("kpi", "recompute", "--config", str(cfg), "--site", "s1", "--from", "2026-11-20")
        assert out.returncode == 1, out.stderr
        assert f"in use by process {os.getpid()} (monitor)" in out.stderr and "Stop the monitor" in out.stderr
        assert "KPI values" not in out.stdout  # nothing was computed
        with pytest.raises(StateInUse, match=r"monitor-replica.sqlite is in use by process \d+ \(monitor\); each process "
                                              r"that writes a replica needs its own .*--instance NAME"):
            Monitor.from_config(load_server_config(cfg))
    finally:
        monitor.close()
    out = run("kpi", "recompute", "--config", str(cfg), "--site", "s1", "--from", "2026-11-20")
    assert out.returncode == 0, out.stderr
    assert "2026-11-20:" in out.stdout
