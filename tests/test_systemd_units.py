"""deploy/systemd: a unit for the agent, for every server role, and one for all roles; each verified.

The units are parsed here for what docs/operations.md promises (Type=notify with a watchdog,
Restart=on-failure, the greenmine user, ProtectSystem=strict, a StateDirectory, UMask=0077),
their ExecStart is parsed by the real `greenmine` argument parser (a renamed flag would fail
here, not at a site), and `systemd-analyze verify` checks the files as systemd reads them.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from greenmine.cli import build_parser
from greenmine.server.app import ROLES
from tests.support.processes import ROOT
from tests.support.services import need_binary

UNITS = ROOT / "deploy" / "systemd"
BINARY = "/opt/greenmine/bin/greenmine"


def parse_unit(path: Path) -> dict[str, list[str]]:
    """`Key` -> every value it is given (systemd allows repeats), over all sections; comments skipped."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def units() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def test_there_is_a_unit_for_the_agent_every_role_and_all_roles():
    names = {p.name for p in units()}
    assert {"greenmine-agent.service", "greenmine-server.service"} <= names
    roles = {}
    for p in units():
        argv = shlex.split(parse_unit(p)["ExecStart"][0].replace("%i", "1").replace("$GREENMINE_MONITOR_ARGS", ""))
        if argv[1:].count("server"):
            given = [argv[i + 1] for i, a in enumerate(argv) if a == "--role"]
            roles[p.name] = given or ["all"]
    assert roles["greenmine-server.service"] == ["all"]
    assert sorted(r for v in roles.values() for r in v if r != "all") == sorted(ROLES)
    for role in ("ingest", "monitor"):  # the roles that run several times are templates, one file per instance
        unit = f"greenmine-{role}@.service"
        assert roles[unit] == [role] and "--instance %i" in parse_unit(UNITS / unit)["ExecStart"][0]


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_a_unit_runs_hardened_under_the_watchdog(unit):
    u = parse_unit(unit)
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    assert u["Restart"] == ["on-failure"]
    assert u["User"] == ["greenmine"] and u["Group"] == ["greenmine"]
    assert u["ProtectSystem"] == ["strict"] and u["StateDirectory"] == ["greenmine"]
    assert u["UMask"] == ["0077"] and u["NoNewPrivileges"] == ["yes"]
    assert u["WatchdogSec"] and u["WatchdogSec"][0].endswith("s")
    assert any(v.startswith("mqtt_password:") for v in u["LoadCredential"])
    assert u["ExecStart"][0].startswith(BINARY + " ") and u["ExecStartPre"][0].startswith(f"{BINARY} check-config ")


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_a_units_command_line_is_one_the_cli_accepts(unit):
    u = parse_unit(unit)
    for cmd in u["ExecStart"] + u["ExecStartPre"]:
        argv = shlex.split(cmd.replace("%i", "m0").replace("$GREENMINE_MONITOR_ARGS", "--partition 0/2"))
        assert argv[0] == BINARY
        args = build_parser().parse_args(argv[1:])  # argparse exits (SystemExit) on an unknown flag
        assert callable(args.func)


def test_systemd_analyze_verifies_every_unit(tmp_path):
    analyze = need_binary("systemd-analyze", "systemd")
    greenmine = Path(__import__("sys").executable).with_name("greenmine")
    assert greenmine.exists(), greenmine
    copies = []
    for unit in units():  # verify checks that ExecStart exists: point it at this checkout's greenmine
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(BINARY, str(greenmine)))
        copies.append(str(copy))
    out = subprocess.run([analyze, "verify", "--man=no", *copies], capture_output=True, text=True, timeout=120)
    # verify exits 0 on unknown keys and bad values, printing them: any output is a problem
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 0 and not problems, "\n".join(problems)
