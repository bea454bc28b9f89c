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
        s.write_async(batch)()
        assert s.count() == 10
        assert s.rollups("gs-demo", "m1", "power_kw", "hour", t, t + timedelta(hours=1))[0].count == 10
        os.kill(s._proc.pid, signal.SIGKILL)
        s._proc.wait()
        s.write(batch)  # a new child
        wait = s.write_async([r(t + timedelta(seconds=20 + i), 1.0) for i in range(5)])
        os.kill(s._proc.pid, signal.SIGKILL)
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
        proc = s._proc
    finally:
        s.close()
    assert proc.poll() is not None


def _reference_rollups(readings: list[StoredReading], tz_name: str) -> dict[tuple, tuple]:
    """Rollups the obvious way, one reading at a time, from each reading's local hour and day."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(tz_name)
    acc: dict[tuple, dict] = {}
    for x in sorted(readings, key=lambda x: x.ts_ms):
        local = datetime.fromtimestamp(x.ts_ms / 1000, tz)
        hour = local.replace(minute=0, second=0, microsecond=0)
        day = datetime(local.year, local.month, local.day, tzinfo=tz)
        nxt = local.date() + timedelta(days=1)
        for period, start, end in (("hour", to_ms(hour), to_ms(hour) + 3_600_000),
                                   ("day", to_ms(day), to_ms(datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)))):
            a = acc.setdefault((x.site, x.device, x.metric, period, start), {"end": end, "good": [], "not_good": 0})
            if x.quality == "good":
                a["good"].append((x.ts_ms, x.value))
            else:
                a["not_good"] += 1
    out = {}
    for key, a in acc.items():
        good = a["good"]
        vs = [v for _, v in good]
        out[key] = (a["end"], len(vs), sum(vs), min(vs, default=None), max(vs, default=None),
                    good[0][0] if good else None, good[0][1] if good else None,
                    good[-1][0] if good else None, good[-1][1] if good else None, a["not_good"])
    return out


@pytest.mark.parametrize("tz_name, t0", [
    ("Asia/Shanghai", datetime(2026, 1, 5, 21, 0, tzinfo=SH)),
    ("Europe/Berlin", datetime(2026, 3, 28, 22, 0, tzinfo=timezone.utc)),  # DST starts 29 March, 01:00 UTC
    ("Australia/Lord_Howe", datetime(2026, 4, 4, 13, 0, tzinfo=timezone.utc)),  # DST ends: 02:00 -> 01:30
    ("Australia/Lord_Howe", datetime(2026, 10, 3, 13, 0, tzinfo=timezone.utc)),  # DST starts: 02:00 -> 02:30
])
def test_rollups_equal_a_reading_by_reading_reference_on_random_data(tmp_path, tz_name, t0):
    """Random readings of several series, some not good, across hour and local-day boundaries and DST changes
    (Lord Howe's are half an hour, so an hour's bucket may end inside the next one), written in shuffled
    batches with repeats: the stored rollups equal a reading-by-reading computation over the readings stored
    once."""
    import random

    rnd = random.Random(f"rollups-{tz_name}-{t0}")
    qualities = ["good"] * 6 + ["bad", "stale", "out_of_range"]
    all_: dict[tuple, StoredReading] = {}
    for device in ("m1", "m2", "m3"):
        for metric in ("power_kw", "energy_kwh_total"):
            bad_only = device == "m3" and metric == "power_kw"  # a series with no good reading at all
            for _ in range(600):
                ts = t0 + timedelta(seconds=rnd.randrange(0, 30 * 3600))
                x = r(ts, round(rnd.uniform(-50, 50), 3), device=device, metric=metric, site="s1",
                      quality="bad" if bad_only else rnd.choice(qualities))
                all_.setdefault((device, metric, x.ts_ms), x)  # the first of two with one identity is stored
    readings = list(all_.values())
    rnd.shuffle(readings)
    # redeliveries of stored readings, with other values that must be neither stored nor counted
    early = [x._replace(value=x.value + 1000) for x in rnd.sample(readings[:1500], 300)]
    late = [x._replace(value=x.value + 1000) for x in rnd.sample(readings, 800)]
    s = SqliteStore(tmp_path / "s.sqlite", site_timezones={"s1": tz_name})
    try:
        # each phase in shuffled writes, the second overlapping the first, the third all repeats
        for phase in (readings[:1500], early + readings[1000:] + readings[1000:1100], late + readings[:200]):
            phase = list(phase)
            rnd.shuffle(phase)
            for i in range(0, len(phase), 700):
                s.write(phase[i : i + 700])
        assert s.count() == len(readings)
        want = _reference_rollups(readings, tz_name)
        got = {}
        for _site, device, metric in s.series("s1"):
            for period in ("hour", "day"):
                for x in s.rollups("s1", device, metric, period, t0 - timedelta(days=2), t0 + timedelta(days=3)):
                    got[(x.site, x.device, x.metric, x.period, x.start_ms)] = (
                        x.end_ms, x.count, pytest.approx(x.sum, rel=1e-12, abs=1e-9), x.min, x.max, x.first_ts_ms,
                        x.first, x.last_ts_ms, x.last, x.not_good)
        assert set(got) == set(want)
        assert got == want
        assert any(v[1] == 0 and v[9] > 0 for v in want.values()), "some buckets hold no good reading"
        assert len({k[4] for k in want if k[3] == "day"}) >= 2, "the data crosses a local midnight"
    finally:
        s.close()
