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
    ["hj212"],
    ["hj212", "decode"],
    ["users"],
    ["users", "add"],
    ["users", "token", "create"],
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


def test_log_format_json():
    code = (
        "import logging, sys\n"
        "from greenmine.cli import build_parser\n"
        "from greenmine.logs import setup_logging\n"
        "args = build_parser().parse_args(['--log-format', 'json', 'check-config', 'x.toml'])\n"
        "setup_logging(args.log_format, args.log_level)\n"
        "logging.getLogger('greenmine.test').warning('meter %s 离线', 'crusher-1')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    import json

    doc = json.loads(out.stderr.strip().splitlines()[-1])
    assert doc["level"] == "warning" and doc["msg"] == "meter crusher-1 离线" and doc["logger"] == "greenmine.test"
