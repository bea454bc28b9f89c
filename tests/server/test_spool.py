"""server.spool on its own: the dead-letter bound holds for ingest's rejections and for the store's."""

from __future__ import annotations

from greenmine.server.spool.deadletter import dead_letter
from greenmine.server.spool.spool import Spool, SpoolEntry, pack_readings


def _dead(i: int):
    return dead_letter("greenmine/v1/s1/gw1/telemetry", b"x" * 10, "not_json", f"#{i}", i, 4096)


def test_dead_letters_stay_within_their_bound_from_commits_and_from_deletes(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite", dead_letter_max_rows=100)
    try:
        spool.commit([], [_dead(i) for i in range(150)])  # ingest's rejections
        assert sum(spool.dead_letter_counts().values()) == 100
        body = pack_readings([("s1", "gw1", "m1", "power_kw", 1, 1.0, "kW", "good")])
        spool.commit([SpoolEntry(1, "s1", "gw1", 1, 1, body)])
        batches = spool.peek(10)
        spool.delete(batches, [_dead(1000 + i) for i in range(30)])  # the store refused them
        assert sum(spool.dead_letter_counts().values()) == 100
        newest = spool.dead_letters(limit=1)[0]
        assert newest[4] == "#1029"  # the oldest went, not the newest
        assert spool.depth()[0] == 0
    finally:
        spool.close()
