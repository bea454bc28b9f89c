"""Damaged state files at start: the spool, the alert and KPI databases and the monitor replica are
checked (quick_check); a damaged or 0-byte one is moved aside, logged at error, counted, and the part
starts with a fresh file. (The outbox: tests/agent/test_outbox_faults.py; the HJ 212 queue below.)"""

from __future__ import annotations

import logging
from pathlib import Path

from greenmine.server.app import App
from greenmine.server.monitor.alerts.service import kpi_db_path
from greenmine.server.spool.spool import Spool
from greenmine.server.uplink.hj212.queue import PacketQueue
from tests.server.conftest import make_config


def _garble_a_page(path: Path, page: int = 2) -> bytes:
    data = bytearray(path.read_bytes())
    assert len(data) > (page + 1) * 4096, "the file needs more pages"
    data[page * 4096 : page * 4096 + 200] = b"\xab" * 200
    path.write_bytes(bytes(data))
    return bytes(data)


def _aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".damaged-*"))


def test_a_zero_byte_spool_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "spool.sqlite"
    Spool(path).close()
    path.write_bytes(b"")
    for p in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR):
        spool = Spool(path)
    try:
        assert spool.moved_aside is not None and "0 bytes" in spool.moved_aside.reason
        assert [p.stat().st_size for p in _aside(path)] == [0]
        assert spool.queue.depth()[0] == 0
        assert any("moved aside" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    finally:
        spool.close()


def test_a_damaged_spool_page_is_moved_aside_without_a_traceback(tmp_path):
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    spool._in.execute("CREATE TABLE ballast (x BLOB)")  # pages to damage (the spool's own tables are tiny when empty)
    spool._in.executemany("INSERT INTO ballast VALUES (?)", [(b"z" * 3000,) for _ in range(20)])
    spool.close()
    data = _garble_a_page(path)
    spool = Spool(path)
    try:
        assert spool.moved_aside is not None and "quick_check" in spool.moved_aside.reason
        assert _aside(path)[0].read_bytes() == data
    finally:
        spool.close()


def test_a_damaged_hj212_queue_is_moved_aside(tmp_path):
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"\x00garbage\x00" * 1000)
    seen = []
    with PacketQueue(path, on_moved=seen.append) as q:
        assert len(q) == 0 and [m.what for m in seen] == ["hj212_queue"]


def test_the_server_counts_every_file_it_moves_aside(tmp_path):
    cfg = make_config(tmp_path, 1)  # the broker is never reached: the app is built, not started
    files = {
        "spool": cfg.resolve(cfg.ingest.spool_path),
        "alerts": cfg.resolve(cfg.alerts.db_path),
        "kpi": kpi_db_path(cfg),
        "replica": cfg.resolve(cfg.monitor.replica_path),
    }
    for f in files.values():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    files["alerts"].write_bytes(b"this is not SQLite " * 300)
    app = App(cfg, roles=("ingest", "monitor"))
    try:
        for what, f in files.items():
            assert app.metrics.value("greenmine_state_files_moved_aside_total", file=what) == 1, what
            assert len(_aside(f)) == 1, what
    finally:
        app.stop()
    app = App(cfg, roles=("ingest", "monitor"))  # the fresh files are sound: nothing more is moved
    try:
        assert sum(app.metrics.value("greenmine_state_files_moved_aside_total", file=w) for w in files) == 0
    finally:
        app.stop()
