"""Every subcommand answers --help, quickly and without heavy imports."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = [
    [],
    ["agent"],
    ["agent", "run"],
    ["agent", "read"],
    ["agent", "plan"],
    ["server"],
    ["server", "run"],
    ["sim"],
    ["sim", "run"],
    ["demo"],
    ["check-config"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "greenmine")
def test_help(cmd):
    out = subprocess.run([sys.executable, "-m", "greenmine", *cmd, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: greenmine")
    assert len(out.stdout.splitlines()) > 3


def test_version():
    out = subprocess.run([sys.executable, "-m", "greenmine", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("greenmine ")


def test_log_format_json(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "agent"\nsite = 3\n')
    out = subprocess.run([sys.executable, "-m", "greenmine", "--log-format", "json", "check-config", str(bad)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
