"""`greenmine hj212 decode`, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKTREE = Path(__file__).resolve().parents[3]
GOOD = ("##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
        "Flag=5;CP=&&RtdInterval=30&&1C80")
BAD = GOOD[:-4] + "1C81"


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greenmine", "hj212", "decode", *args],
        cwd=WORKTREE, input=stdin, capture_output=True, text=True, timeout=30,
    )


def test_decode_args() -> None:
    result = _run(GOOD, BAD)
    assert result.returncode == 2
    (line,) = result.stdout.splitlines()
    decoded = json.loads(line)
    assert decoded["cn"] == "1062" and decoded["crc"] == "1C80" and decoded["length"] == 101
    assert decoded["cp"] == [{"RtdInterval": "30"}]
    assert result.stderr.strip() == "frame 2: CRC mismatch: got 1C81, computed 1C80"


def test_decode_stdin_ok() -> None:
    result = _run(stdin=GOOD + "\n\n" + GOOD + "\\r\\n\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
