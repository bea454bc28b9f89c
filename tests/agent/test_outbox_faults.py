"""Outbox faults: every lost reading counted by reason, damaged files moved aside, seq never backwards,
a damaged batch never published. The full disk is a real one (a small tmpfs, tests/support/fulldisk.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

from greenmine.agent.outbox import SEQ_RESERVE, Outbox
from greenmine.schemas import Reading, parse_telemetry
from tests.support.fulldisk import on_small_disk
from tests.support.processes import ROOT


def readings(n: int, t: float = 1_700_000_000.0) -> list[Reading]:
    ts = datetime.fromtimestamp(t, timezone.utc)
    return [Reading(device="m1", metric=f"m{i}", ts=ts, value=float(i), unit="kW") for i in range(n)]


def open_box(path: Path, **kw) -> Outbox:
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("max_age_s", 3600)
    return Outbox(path, site="s1", agent="gw1", **kw)


def filled(path: Path, n: int = 30, per: int = 20) -> list[int]:
    box = open_box(path, max_age_s=1e9)
    seqs = [box.commit(readings(per), 1000.0 + i).seq for i in range(n)]
    box.close()  # the last connection checkpoints: everything is in the main file
    assert not Path(f"{path}-wal").exists()
    return seqs


def aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".damaged-*"))


# --- drop reasons --------------------------------------------------------------------------------


def test_bound_drops_are_counted_by_reason_and_persist(tmp_path):
    box = open_box(tmp_path / "o.sqlite", max_bytes=16 * 1024, max_age_s=60)
    for i in range(20):
        box.commit(readings(20), 1000.0 + i)  # over max_bytes: outbox_full
    full = box.stats().dropped_by_reason["outbox_full"]
    assert full > 0 and full % 20 == 0
    box.commit(readings(5), 2000.0)  # every older batch is now past max_age_s
    st = box.stats()
    assert st.dropped_by_reason["max_age"] > 0
    assert st.dropped_readings == st.dropped_by_reason["outbox_full"] + st.dropped_by_reason["max_age"]
    box.close()
    again = open_box(tmp_path / "o.sqlite")
    assert again.stats().dropped_by_reason == st.dropped_by_reason and again.stats().dropped_readings == st.dropped_readings
    again.close()


_FULL_DISK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from datetime import datetime, timezone
    from pathlib import Path
    from greenmine.agent.errors import OutboxError
    from greenmine.agent.outbox import Outbox
    from greenmine.schemas import Reading
    from greenmine.sqlite import StateFull

    disk = Path(sys.argv[1])
    ballast = disk / "ballast"
    ballast.write_bytes(b"x" * 96 * 1024)  # freed later, so the count can be written
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [Reading(device="m1", metric=f"m{i}", ts=ts, value=float(i), unit="kW") for i in range(50)]
    box = Outbox(disk / "outbox.sqlite", site="s1", agent="gw1", max_bytes=1 << 30, max_age_s=1e9)
    stored = failed = 0
    cause = None
    while failed < 3 and stored < 10_000:
        try:
            box.commit(rows, 1000.0 + stored + failed)
            stored += 1
        except OutboxError as exc:
            failed += 1
            cause = type(exc.__cause__).__name__
    during = box.stats().dropped_by_reason["disk_full"]
    ballast.unlink()
    box.commit(rows[:1], 99_999.0)  # space again: this commit also writes the count
    box.close()
    again = Outbox(disk / "outbox.sqlite", site="s1", agent="gw1", max_bytes=1 << 30, max_age_s=1e9)
    st = again.stats()
    print(json.dumps({"stored": stored, "failed": failed, "cause": cause, "during": during,
                      "persisted": st.dropped_by_reason["disk_full"], "total": st.dropped_readings}))
    again.close()
""")


def test_a_full_disk_is_counted_as_disk_full_and_the_count_is_kept(tmp_path):
    disk = tmp_path / "disk"
    cmd = on_small_disk(disk, 512 * 1024, [sys.executable, "-c", _FULL_DISK_SCRIPT, str(disk)])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["stored"] > 0 and out["failed"] == 3 and out["cause"] == "StateFull"
    assert out["during"] == 3 * 50  # counted at once, while nothing could be written
    assert out["persisted"] == 3 * 50 and out["total"] == 3 * 50
    assert not any(disk.iterdir())  # the tmpfs was private to the child: nothing written here


# --- damaged files at start ----------------------------------------------------------------------


def test_a_zero_byte_outbox_is_moved_aside_and_seq_resumes_above_the_high_water_mark(tmp_path):
    path = tmp_path / "outbox.sqlite"
    seqs = filled(path, n=5)
    assert (tmp_path / "outbox.sqlite.seq").read_text().strip() == str(SEQ_RESERVE)  # written once, not per batch
    path.write_bytes(b"")
    box = open_box(path)
    assert box.moved_aside is not None and "0 bytes" in box.moved_aside.reason
    assert [p.stat().st_size for p in aside(path)] == [0]
    nxt = box.commit(readings(1), 2000.0).seq
    assert nxt > max(seqs) and nxt == SEQ_RESERVE
    box.close()


def test_a_deleted_outbox_resumes_above_the_high_water_mark(tmp_path):
    path = tmp_path / "outbox.sqlite"
    seqs = filled(path, n=3)
    path.unlink()
    box = open_box(path)
    assert box.moved_aside is None and box.commit(readings(1), 2000.0).seq > max(seqs)
    box.close()


def test_normal_restarts_keep_seq_contiguous(tmp_path):
    path = tmp_path / "outbox.sqlite"
    assert filled(path, n=3) == [0, 1, 2]
    box = open_box(path)
    assert box.commit(readings(1), 2000.0).seq == 3
    box.close()


def test_a_damaged_page_is_moved_aside_without_a_traceback(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    seqs = filled(path)
    data = bytearray(path.read_bytes())
    data[3 * 4096 : 3 * 4096 + 100] = b"\xab" * 100  # garble a b-tree page of the batch table
    path.write_bytes(bytes(data))
    box = open_box(path)
    assert box.moved_aside is not None and "integrity check" in box.moved_aside.reason
    assert aside(path)[0].read_bytes() == bytes(data)  # kept as it was, for inspection
    assert box.stats().depth == 0 and box.commit(readings(1), 2000.0).seq > max(seqs)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors and "moved aside" in errors[0].getMessage() and not any(r.exc_info for r in caplog.records)
    box.close()


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path):
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"not a database, just bytes " * 200)
    box = open_box(path)
    assert box.moved_aside is not None and "not a database" in box.moved_aside.reason
    assert box.commit(readings(1), 1.0).seq == 0
    box.close()


def test_a_torn_last_page_is_never_published(tmp_path):
    path = tmp_path / "outbox.sqlite"
    seqs = filled(path)
    data = path.read_bytes()
    path.write_bytes(data[:-2048])  # half of the last page lost: a torn write
    box = open_box(path)
    rows = box.fetch(-1, limit=100)
    assert box.moved_aside is None  # the structure survived, only the last batch's payload did not
    assert [r.seq for r in rows] == seqs[:-1]
    assert all(parse_telemetry(r.payload).seq == r.seq for r in rows)
    st = box.stats()
    assert st.dropped_by_reason["corrupt"] == 20 and st.depth == len(seqs) - 1
    box.close()
    again = open_box(path)
    assert again.stats().dropped_by_reason["corrupt"] == 20  # the count is kept
    again.close()


def test_a_batch_that_disagrees_with_its_row_is_dropped(tmp_path):
    path = tmp_path / "outbox.sqlite"
    filled(path, n=3)
    db = sqlite3.connect(path)
    payload = db.execute("SELECT payload FROM batch WHERE seq = 1").fetchone()[0]
    db.execute("UPDATE batch SET payload = ? WHERE seq = 1", (bytes(payload).replace(b'"seq":1', b'"seq":7'),))
    db.commit()
    db.close()
    box = open_box(path)
    assert [r.seq for r in box.fetch(-1)] == [0, 2]
    assert box.stats().dropped_by_reason["corrupt"] == 20
    box.close()


def test_a_damaged_high_water_mark_is_reported_and_the_outbox_counter_wins(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    filled(path, n=3)
    (tmp_path / "outbox.sqlite.seq").write_text("garbage")
    box = open_box(path)
    assert box.commit(readings(1), 2000.0).seq == 3
    assert any("high-water mark" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert int((tmp_path / "outbox.sqlite.seq").read_text()) > 3  # rewritten before seq 3 was used
    assert os.stat(tmp_path / "outbox.sqlite.seq").st_mode & 0o777 == 0o600
    box.close()
