"""The embedded SQLite store on its own: idempotent writes, rollups, range queries, retention."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from server.store.base import StoredReading
from server.store.sqlite import SqliteReader, SqliteStore, to_ms

SH = timezone(timedelta(hours=8))


def r(ts: datetime, value: float, *, device="m1", metric="power_kw", quality="good", site="gs-demo") -> StoredReading:
    return StoredReading(site, "gw1", device, metric, to_ms(ts), value, "kW", quality)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "store.sqlite", site_timezones={"gs-demo": "Asia/Shanghai"})
    yield s
    s.close()


def test_same_batch_twice_leaves_one_row_and_rollups_unchanged(store):
    t = datetime(2026, 1, 5, 10, 0, tzinfo=SH)
    batch = [r(t + timedelta(seconds=i), float(i)) for i in range(10)]
    store.write(batch)
    before = store.rollups("gs-demo", "m1", "power_kw", "hour", t, t + timedelta(hours=1))
    store.write(batch)
    store.write(batch + batch)  # duplicates inside one write too
    assert store.count() == 10
    points = store.query_series("gs-demo", "m1", "power_kw", t, t + timedelta(hours=1))
    assert [p.value for p in points] == [float(i) for i in range(10)]
    assert store.rollups("gs-demo", "m1", "power_kw", "hour", t, t + timedelta(hours=1)) == before
    assert before[0].count == 10


def test_a_partly_stored_batch_adds_only_its_new_readings_to_the_rollups(store):
    """A write where some readings are stored already (a redelivery overlapping new data) or repeated within
    the write counts each new reading once: the rollups equal those of writing every reading exactly once."""
    t = datetime(2026, 1, 5, 10, 0, tzinfo=SH)
    all_ = [r(t + timedelta(seconds=i), float(i), quality="good" if i % 3 else "bad") for i in range(20)]
    store.write(all_[:8])
    store.write(all_[5:14] + all_[12:14])
    store.write(all_)
    assert store.count() == 20
    ref = SqliteStore(store.path.parent / "ref.sqlite", site_timezones={"gs-demo": "Asia/Shanghai"})
    try:
        ref.write(all_)
        for period in ("hour", "day"):
            got = store.rollups("gs-demo", "m1", "power_kw", period, t - timedelta(days=1), t + timedelta(days=1))
            assert got == ref.rollups("gs-demo", "m1", "power_kw", period, t - timedelta(days=1), t + timedelta(days=1))
            assert got[0].count + got[0].not_good == 20
    finally:
        ref.close()


def test_first_write_of_a_reading_wins(store):
    t = datetime(2026, 1, 5, 10, 0, tzinfo=SH)
    store.write([r(t, 1.0)])
    store.write([r(t, 99.0)])
    assert [p.value for p in store.query_series("gs-demo", "m1", "power_kw", t, t + timedelta(seconds=1))] == [1.0]


def test_hourly_and_local_daily_rollups(store):
    # Two readings in the 23:00 hour of 5 Jan (Shanghai) and two after local midnight, written out of order.
    a = datetime(2026, 1, 5, 23, 10, tzinfo=SH)
    b = datetime(2026, 1, 5, 23, 50, tzinfo=SH)
    c = datetime(2026, 1, 6, 0, 5, tzinfo=SH)
    d = datetime(2026, 1, 6, 0, 30, tzinfo=SH)
    store.write([r(b, 5.0), r(d, 7.0)])
    store.write([r(a, 3.0), r(c, 1.0), r(c + timedelta(seconds=1), 100.0, quality="bad")])

    h = store.rollup_at("gs-demo", "m1", "power_kw", "hour", a)
    assert (h.count, h.min, h.max, h.mean, h.first, h.last) == (2, 3.0, 5.0, 4.0, 3.0, 5.0)
    assert h.start == datetime(2026, 1, 5, 23, 0, tzinfo=SH)
    assert h.end_ms - h.start_ms == 3_600_000

    day5 = store.rollup_at("gs-demo", "m1", "power_kw", "day", b)
    day6 = store.rollup_at("gs-demo", "m1", "power_kw", "day", d)
    assert day5.start == datetime(2026, 1, 5, tzinfo=SH), "daily periods start at local midnight"
    assert (day5.count, day5.first, day5.last) == (2, 3.0, 5.0)
    # the bad reading is counted apart and stays out of the aggregates
    assert (day6.count, day6.min, day6.max, day6.first, day6.last, day6.not_good) == (2, 1.0, 7.0, 1.0, 7.0, 1)
    days = store.rollups("gs-demo", "m1", "power_kw", "day", datetime(2026, 1, 1, tzinfo=SH), datetime(2026, 2, 1, tzinfo=SH))
    assert [x.start_ms for x in days] == [day5.start_ms, day6.start_ms]
    assert store.series("gs-demo") == [("gs-demo", "m1", "power_kw")]


def test_query_series_is_half_open_and_per_series(store):
    t = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
    store.write([r(t, 1.0), r(t + timedelta(seconds=1), 2.0), r(t, 9.0, device="m2"), r(t, 8.0, metric="energy_kwh_total")])
    got = store.query_series("gs-demo", "m1", "power_kw", t, t + timedelta(seconds=1))
    assert [(p.ts, p.value, p.quality) for p in got] == [(t, 1.0, "good")]
    assert store.latest("gs-demo", "m1", "power_kw").value == 2.0
    with pytest.raises(ValueError):
        store.query_series("gs-demo", "m1", "power_kw", datetime(2026, 1, 1), t)


def test_retention_deletes_old_raw_rows_and_keeps_rollups(tmp_path):
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    store = SqliteStore(tmp_path / "s.sqlite", raw_retention_days=30, clock=lambda: now.timestamp())
    try:
        old, new = now - timedelta(days=31), now - timedelta(days=1)
        store.write([r(old, 1.0), r(new, 2.0)])
        assert store.maintain() == 1
        assert store.count() == 1
        assert store.rollup_at("gs-demo", "m1", "power_kw", "day", old).count == 1
    finally:
        store.close()


def test_a_reader_in_another_connection_sees_committed_rows(store, tmp_path):
    t = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
    reader = SqliteReader(tmp_path / "store.sqlite")
    try:
        store.write([r(t, 1.0)])
        assert reader.count() == 1
    finally:
        reader.close()


def test_process_store_writes_in_a_child_and_survives_its_death(tmp_path):
    """SqliteProcessStore: same results as SqliteStore; readable before the first write; if the child dies, a
    write in flight raises StoreUnavailable (unless it was committed), the next write starts a new child, and
    close() leaves no process."""
    import os
    import signal

    from server.errors import StoreUnavailable
    from server.store.process import SqliteProcessStore

    t = datetime(2026, 1, 5, 10, 0, tzinfo=SH)
    batch = [r(t + timedelta(seconds=i), float(i)) for i in range(10)]
    s = SqliteProcessStore(tmp_path / "p.sqlite", site_timezones={"gs-demo": "Asia/Shanghai"})
    try:
        assert s.count() == 0
        from server.spool import pack_readings

        s.write(batch[:3])
        s.write_spooled_async([pack_readings([tuple(x) for x in batch[3:5]])])()  # the spool holds plain tuples
        # the digest the child computes is the one this process would compute from the same rows
        from server.digest import DigestSpec, digest

        spec = DigestSpec(frozenset({"power_kw"}), frozenset({"power_kw"}))
        rows = [tuple(x) for x in batch[5:7]]
        assert s.write_spooled_async([pack_readings(rows)], digests=[spec])() == [digest(rows, spec)]
        s.write_async(batch)()
        assert s.count() == 10
        assert s.rollups("gs-demo", "m1", "power_kw", "hour", t, t + timedelta(hours=1))[0].count == 10
        child = s._child._run.proc
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        s.write(batch)  # a new child
        wait = s.write_async([r(t + timedelta(seconds=20 + i), 1.0) for i in range(5)])
        os.kill(s._child.pid, signal.SIGKILL)
        try:
            wait()
        except StoreUnavailable:
            pass  # killed before its commit: the writer would retry, as here
        rest = batch + [r(t + timedelta(seconds=20 + i), 1.0) for i in range(5)] + [r(t + timedelta(seconds=30), 30.0)]
        try:
            s.write(rest)
        except StoreUnavailable:  # the killed child was not reaped yet when this write was sent: retry, as the writer does
            s.write(rest)
        assert s.count() == 16
        assert s.maintain(now_s=t.timestamp()) == 0
        proc = s._child._run.proc
    finally:
        s.close()
    assert proc.poll() is not None
