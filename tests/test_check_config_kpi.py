"""`check-config` warns about a [[kpi.meters]] entry that can never apply, judged from the agent configs given."""

from __future__ import annotations

import subprocess
import sys

from greenmine.configfile import dump_toml, read_toml
from tests.support.processes import ROOT

SERVER = ROOT / "config" / "server.example.toml"
AGENT = ROOT / "config" / "agent.example.toml"


def _check(*files):
    out = subprocess.run([sys.executable, "-m", "greenmine", "check-config", *map(str, files)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    return out.returncode, [line for line in out.stderr.splitlines() if ": warning: " in line]


def _server(tmp_path, meters, sites=None):
    doc = read_toml(SERVER)
    doc["kpi"]["meters"] = meters
    if sites is not None:
        doc["sites"] = sites
        doc["alerts"].pop("maintenance", None)  # the example's windows name the example's site
    path = tmp_path / "server.toml"
    path.write_text(dump_toml(doc))
    return path


def test_the_example_site_checks_clean():
    assert _check(SERVER, AGENT) == (0, [])


def test_a_meter_no_agent_publishes_or_no_kpi_reads_is_warned_about(tmp_path):
    site = read_toml(SERVER)["sites"][0]
    other = {"id": "gs-other", "timezone": "Asia/Shanghai"}
    server = _server(tmp_path, [
        {"device": "fresh-intake", "metric": "water_fresh_m3_total", "width_bits": 32, "scale": 0.001},  # right
        {"device": "fresh-intak", "metric": "water_fresh_m3_total", "width_bits": 32},  # a typo'd device
        {"device": "reuse-return", "metric": "water_reused_m3_total", "width_bits": 32, "scale": 0.001},  # right
        {"device": "crusher-meter", "metric": "power_kw", "width_bits": 32},  # not a total any KPI reads
        {"site": "gs-nowhere", "device": "x", "metric": "energy_kwh_total", "width_bits": 32},
        {"site": "gs-other", "device": "y", "metric": "energy_kwh_total", "width_bits": 32},  # no agent given: unknown
    ], sites=[site, other])
    status, warnings = _check(server, AGENT)
    assert status == 0  # warnings, not errors
    assert [w.split(": warning: ", 1)[1] for w in warnings] == [
        'kpi.meters[1] "fresh-intak" water_fresh_m3_total: no agent config given for gs-jinchang-cu01 publishes '
        "water_fresh_m3_total from a device named 'fresh-intak'; water_fresh_m3_total comes from fresh-intake",
        'kpi.meters[3] "crusher-meter" power_kw: no KPI reads power_kw as a total (the totals read: energy_kwh_total, '
        "ore_t_total, water_fresh_m3_total, water_reused_m3_total)",
        "kpi.meters[4] \"x\" energy_kwh_total: site 'gs-nowhere' is not configured (sites: gs-jinchang-cu01, gs-other)",
    ]
    # the server config alone: only what it can know by itself
    status, alone = _check(server)
    assert status == 0 and len(alone) == 2 and "power_kw" in alone[0] and "gs-nowhere" in alone[1]


def test_a_width_that_disagrees_with_the_agents_profile_is_warned_about(tmp_path):
    server = _server(tmp_path, [
        {"device": "fresh-intake", "metric": "water_fresh_m3_total", "width_bits": 16, "scale": 0.001},
        {"device": "reuse-return", "metric": "water_reused_m3_total", "max_rate_per_h": 400},  # no width: the profile's
    ])
    status, warnings = _check(server, AGENT)
    assert status == 0 and [w.split(": warning: ", 1)[1] for w in warnings] == [
        'kpi.meters[0] "fresh-intake" water_fresh_m3_total: width_bits 16 x scale 0.001 disagrees with the profile at '
        "gs-jinchang-cu01 (32 bits x 0.001); the configured width is used"]


def test_an_agent_of_a_site_the_server_rejects_is_warned_about(tmp_path):
    server = _server(tmp_path, [], sites=[{"id": "gs-other", "timezone": "Asia/Shanghai"}])
    status, warnings = _check(server, AGENT)
    assert status == 0 and len(warnings) == 1
    assert "site 'gs-jinchang-cu01' of" in warnings[0] and "its telemetry is rejected" in warnings[0]


def test_the_documented_vocabulary_is_the_one_the_kpis_read():
    import re

    from greenmine.server.monitor.kpi.config import KpiConfig
    from greenmine.server.monitor.kpi.vocabulary import kpis_by_metric

    doc = (ROOT / "docs" / "kpi-alerts.md").read_text()
    table = doc.split("## Metric vocabulary", 1)[1].split("\n\n- ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = re.findall(r"`([a-z0-9_]+)`", cells[3])
    assert rows == kpis_by_metric(KpiConfig())
