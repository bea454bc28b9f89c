"""server.spool on its own: the dead-letter bound holds for ingest's rejections and for the store's."""

from __future__ import annotations

from greenmine.server.spool.batches import SpoolEntry, pack_readings
from greenmine.server.spool.spool import Spool


def _dead(spool: Spool, i: int):
    return spool.dead_letters.letter("greenmine/v1/s1/gw1/telemetry", b"x" * 10, "not_json", f"#{i}", i)


def test_dead_letters_stay_within_their_bound_from_commits_and_from_deletes(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite", dead_letter_max_rows=100)
    try:
        spool.commit([], [_dead(spool, i) for i in range(150)])  # ingest's rejections
        assert sum(spool.dead_letters.counts().values()) == 100
        body = pack_readings([("s1", "gw1", "m1", "power_kw", 1, 1.0, "kW", "good")])
        spool.commit([SpoolEntry(1, "s1", "gw1", 1, 1, body)])
        batches = spool.queue.peek(10)
        spool.delete(batches, [_dead(spool, 1000 + i) for i in range(30)])  # the store refused them
        assert sum(spool.dead_letters.counts().values()) == 100
        newest = spool.dead_letters.newest(limit=1)[0]
        assert newest[4] == "#1029"  # the oldest went, not the newest
        assert spool.queue.depth()[0] == 0
    finally:
        spool.close()


def test_agent_states_and_batches_survive_a_reopen_and_rejections_keep_only_their_bound_of_payload(tmp_path):
    from greenmine.server.spool.agents import AgentInfo

    info = AgentInfo("s1", "gw1", "online", 1, 2, 3, "1.0", "abc", 0, 0, 0)
    spool = Spool(tmp_path / "spool.sqlite", keep_bytes=4)
    try:
        dl = spool.dead_letters.letter("t", b"0123456789", "not_json", "x", 5)
        assert (dl.payload, dl.payload_bytes) == (b"0123", 10)
        body = pack_readings([("s1", "gw1", "m1", "power_kw", 1, 1.0, "kW", "good")])
        spool.commit([SpoolEntry(1, "s1", "gw1", 1, 1, body)], [dl], [info])
    finally:
        spool.close()
    spool = Spool(tmp_path / "spool.sqlite")
    try:
        assert spool.agents.load() == [info]
        assert spool.queue.depth() == (1, 1, len(body))
        assert spool.queue.peek(10)[0].readings()[0][3] == "power_kw"
        assert spool.dead_letters.counts() == {"not_json": 1}
    finally:
        spool.close()


def test_every_exception_of_the_spool_transaction_is_a_spool_error_and_the_file_stays_usable(tmp_path):
    """Issue 13, defect 1: OverflowError (an int SQLite cannot hold) and UnicodeEncodeError (a lone surrogate)
    escaped as themselves and killed the ingest thread. Each is SpoolRejected now, nothing is half-written."""
    import pytest

    from greenmine.server.errors import SpoolRejected
    from greenmine.server.spool.agents import AgentInfo

    spool = Spool(tmp_path / "spool.sqlite")
    try:
        body = pack_readings([("s1", "gw1", "m1", "power_kw", 1, 1.0, "kW", "good")])
        with pytest.raises(SpoolRejected, match="too large"):
            spool.commit([SpoolEntry(1, "s1", "gw1", 2**64, 1, body)], [_dead(spool, 1)])
        info = AgentInfo("s1", "gw1", "online", 1, 1, 1, "v\ud800", None, None, None, None)
        with pytest.raises(SpoolRejected, match="UnicodeEncodeError"):
            spool.commit([SpoolEntry(1, "s1", "gw1", 1, 1, body)], [], [info])
        assert spool.queue.depth() == (0, 0, 0) and spool.dead_letters.counts() == {}  # rolled back
        spool.commit([SpoolEntry(1, "s1", "gw1", 1, 1, body)])
        assert spool.queue.depth()[0] == 1
    finally:
        spool.close()
