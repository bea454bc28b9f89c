"""Outbox: seq survives restarts, delete only on ack, bound drops oldest and persists the count."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from greenmine.agent.outbox import Outbox
from greenmine.schemas import Reading, parse_telemetry


def readings(n: int, t: float = 1_700_000_000.0) -> list[Reading]:
    ts = datetime.fromtimestamp(t, timezone.utc)
    return [Reading(device="m1", metric=f"m{i}", ts=ts, value=float(i), unit="kW") for i in range(n)]


def open_box(tmp_path, **kw) -> Outbox:
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("max_age_s", 3600)
    return Outbox(tmp_path / "outbox.sqlite", site="s1", agent="gw1", **kw)


def test_seq_is_monotonic_across_restarts_even_when_empty(tmp_path):
    box = open_box(tmp_path)
    seqs = [box.commit(readings(2), 1000.0 + i).seq for i in range(3)]
    assert seqs == [0, 1, 2]
    assert box.ack_many(seqs) == 3
    assert box.ack_many([1]) == 0  # acked twice: already gone
    assert box.stats().depth == 0
    box.close()
    box = open_box(tmp_path)
    assert box.commit(readings(1), 2000.0).seq == 3
    rows = box.fetch(-1)
    assert [r.seq for r in rows] == [3]
    batch = parse_telemetry(rows[0].payload)
    assert batch.seq == 3 and batch.site == "s1" and batch.agent == "gw1"
    box.close()


def test_bound_by_bytes_drops_oldest_counts_and_persists(tmp_path):
    box = open_box(tmp_path, max_bytes=64 * 1024)
    for i in range(40):
        box.commit(readings(20), 1000.0 + i)
    st = box.stats()
    assert st.bytes <= 64 * 1024 and st.dropped_batches > 0
    assert st.dropped_readings == 20 * st.dropped_batches
    remaining = [r.seq for r in box.fetch(-1, limit=100)]
    assert remaining == list(range(st.dropped_batches, 40))  # the oldest went, the newest stayed, in order
    box.close()
    box = open_box(tmp_path, max_bytes=64 * 1024)
    assert box.stats().dropped_batches == st.dropped_batches  # the count survives a restart
    assert box.stats().depth == st.depth and box.stats().bytes == st.bytes
    box.close()


def test_bound_by_age_and_newest_always_kept(tmp_path):
    box = open_box(tmp_path, max_age_s=60)
    box.commit(readings(1), 1000.0)
    box.commit(readings(1), 1030.0)
    box.commit(readings(1), 1070.0)  # the first is now older than 60 s
    assert [r.seq for r in box.fetch(-1)] == [1, 2] and box.stats().dropped_batches == 1
    box.close()
    tiny = Outbox(tmp_path / "tiny.sqlite", site="s1", agent="gw1", max_bytes=10, max_age_s=3600)
    tiny.commit(readings(5), 1.0)
    tiny.commit(readings(5), 2.0)
    assert [r.seq for r in tiny.fetch(-1)] == [1]  # never blocks, never refuses the newest
    tiny.close()


def test_ack_many_deletes_delivered_batches_in_one_go(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", site="s", agent="a", max_bytes=1 << 20, max_age_s=3600)
    batches = [box.commit(readings(2), 1000.0 + i) for i in range(4)]
    assert [b.seq for b in batches] == [0, 1, 2, 3] and all(b.payload for b in batches)
    assert box.ack_many([0, 2, 2, 99]) == 2  # acked twice or unknown: counted as gone, no error
    assert box.stats().depth == 2
    box.close()
    again = Outbox(tmp_path / "o.sqlite", site="s", agent="a", max_bytes=1 << 20, max_age_s=3600)
    assert [b.seq for b in again.fetch(-1)] == [1, 3] and again.stats().next_seq == 4
    again.close()


def test_a_new_outbox_file_is_private(tmp_path):
    box = open_box(tmp_path)
    box.commit(readings(1), 1000.0)
    for name in ("outbox.sqlite", "outbox.sqlite-wal"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    box.close()
