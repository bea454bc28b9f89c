"""Log lines carry the date and the zone (ISO 8601 with the UTC offset), in text and JSON modes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from tests.support.processes import ROOT

CODE = (
    "import logging\n"
    "from greenmine.cli import build_parser\n"
    "from greenmine.logs import setup_logging\n"
    "args = build_parser().parse_args(['--log-format', '{fmt}', 'check-config', 'x.toml'])\n"
    "setup_logging(args.log_format, args.log_level)\n"
    "logging.getLogger('greenmine.test').warning('meter crusher-1 offline')\n"
)
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def _line(fmt: str, tz: str) -> str:
    env = {**os.environ, "TZ": tz}
    out = subprocess.run([sys.executable, "-c", CODE.format(fmt=fmt)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("tz,offset", [("Asia/Shanghai", "+08:00"), ("UTC", "+00:00"), ("America/Sao_Paulo", "-03:00")])
def test_a_log_line_has_the_date_and_the_local_offset(fmt, tz, offset):
    line = _line(fmt, tz)
    if fmt == "json":
        stamp = json.loads(line)["ts"]
        assert json.loads(line)["msg"] == "meter crusher-1 offline"
    else:
        m = re.match(rf"({ISO}) WARNING greenmine.test: meter crusher-1 offline$", line)
        assert m, line
        stamp = m.group(1)
    assert re.fullmatch(ISO, stamp) and stamp.endswith(offset), stamp
    # and it is now, not some other day: the stamp parses back to within a minute of the test's clock
    assert abs(datetime.fromisoformat(stamp) - datetime.now().astimezone()) < timedelta(minutes=1)
