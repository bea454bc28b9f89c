"""greenmine subcommands as child processes, the way an operator runs them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def spawn_greenmine(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m greenmine ARGS` from the repository root, output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "greenmine", *args], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """SIGTERM and wait for the exit code; a process that does not stop is killed and the test fails."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise
