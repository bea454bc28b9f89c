"""docs/operations.md's backup command makes a consistent copy of a live WAL state file."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

from greenmine.sqlite import connect, transaction
from tests.support.processes import ROOT

DOC = ROOT / "docs" / "operations.md"


def _python_backup_command() -> str:
    text = DOC.read_text()
    m = re.search(r"/opt/greenmine/bin/python -c '([^']+)'", text)
    assert m, "docs/operations.md shows no Python backup command"
    return m.group(1)


def test_the_documented_backup_copies_commits_still_in_the_wal(tmp_path):
    live = connect(tmp_path / "greenmine.sqlite", synchronous="full")
    live.execute("PRAGMA wal_autocheckpoint=0")  # every commit stays in the -wal file, as between checkpoints
    live.execute("CREATE TABLE readings (ts INTEGER PRIMARY KEY, value REAL)")
    with transaction(live):
        live.executemany("INSERT INTO readings VALUES (?, ?)", [(i, i * 0.5) for i in range(5000)])
    try:
        assert (tmp_path / "greenmine.sqlite-wal").stat().st_size > 0
        # a copy of the main file alone misses them: the reason the doc forbids cp
        (tmp_path / "cp.sqlite").write_bytes((tmp_path / "greenmine.sqlite").read_bytes())
        with sqlite3.connect(tmp_path / "cp.sqlite") as cp:
            assert not cp.execute("SELECT name FROM sqlite_master WHERE name='readings'").fetchall()

        out = subprocess.run([sys.executable, "-c", _python_backup_command(), str(tmp_path / "greenmine.sqlite"),
                              str(tmp_path / "backup.sqlite")], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    finally:
        live.close()
    copy = sqlite3.connect(tmp_path / "backup.sqlite")
    try:
        assert copy.execute("PRAGMA quick_check").fetchone() == ("ok",)
        assert copy.execute("SELECT count(*), sum(value) FROM readings").fetchone() == (5000, sum(i * 0.5 for i in range(5000)))
    finally:
        copy.close()
