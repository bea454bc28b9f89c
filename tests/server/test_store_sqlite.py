"""The embedded SQLite store on its own: idempotent writes, rollups, range queries, retention."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from greenmine.server.store.base import StoredReading
from greenmine.server.store.sqlite import SqliteReader, SqliteStore, to_ms

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


def test_a_reading_repeated_within_one_write_is_stored_and_counted_once_first_copy_wins(store):
    t = datetime(2026, 1, 5, 10, 0, tzinfo=SH)
    store.write([r(t, 1.0), r(t + timedelta(seconds=1), 2.0), r(t, 99.0, quality="bad"), r(t + timedelta(seconds=1), -5.0)])
    assert [(p.value, p.quality) for p in store.query_series("gs-demo", "m1", "power_kw", t, t + timedelta(hours=1))] == [
        (1.0, "good"), (2.0, "good")]
    h = store.rollup_at("gs-demo", "m1", "power_kw", "hour", t)
    assert (h.count, h.sum, h.min, h.max, h.first, h.last, h.not_good) == (2, 3.0, 1.0, 2.0, 1.0, 2.0, 0)


def test_ids_of_a_rolled_back_write_are_not_reused_for_another_series(store):
    """A write that fails after creating a series id rolls the id back; SQLite may hand that number to
    the next new series, so the writer must not keep it for the first."""
    from greenmine.server.errors import StoreRejected

    t = datetime(2026, 1, 5, 10, 0, tzinfo=SH)
    with pytest.raises(StoreRejected):
        store.write([r(t, None, device="x")])  # NOT NULL value: rejected by the insert, after the ids were made
    store.write([r(t, 2.0, device="y")])
    store.write([r(t, 1.0, device="x")])
    assert [p.value for p in store.query_series("gs-demo", "x", "power_kw", t, t + timedelta(seconds=1))] == [1.0]
    assert [p.value for p in store.query_series("gs-demo", "y", "power_kw", t, t + timedelta(seconds=1))] == [2.0]
    assert store.rollup_at("gs-demo", "x", "power_kw", "hour", t).sum == 1.0
    # a second writer on the same file learns ids made by the first (and vice versa)
    other = SqliteStore(store.path, site_timezones={"gs-demo": "Asia/Shanghai"})
    try:
        store.write([r(t, 3.0, device="z")])
        other.write([r(t + timedelta(seconds=1), 4.0, device="z"), r(t, 5.0, device="w")])
        store.write([r(t + timedelta(seconds=2), 6.0, device="w")])
    finally:
        other.close()
    for device, values in (("z", [3.0, 4.0]), ("w", [5.0, 6.0]), ("x", [1.0]), ("y", [2.0])):
        assert [p.value for p in store.query_series("gs-demo", device, "power_kw", t, t + timedelta(hours=1))] == values


def test_readings_view_has_the_old_columns(store):
    t = datetime(2026, 1, 5, 10, 0, tzinfo=SH)
    store.write([r(t, 1.0), r(t, 2.0, device="m2", quality="stale"), r(t + timedelta(seconds=1), 3.0)])
    con = store._con()
    assert con.execute("SELECT type FROM sqlite_master WHERE name = 'readings'").fetchone() == ("view",)
    assert con.execute("SELECT count(*), count(DISTINCT device) FROM readings").fetchone() == (3, 2)
    assert con.execute("SELECT site, device, metric, ts_ms, value, unit, quality, agent FROM readings "
                       "WHERE device = 'm2'").fetchall() == [("gs-demo", "m2", "power_kw", to_ms(t), 2.0, "kW", "stale", "gw1")]
    # a series' range is still a search of the primary key, through the view too
    plan = " / ".join(row[3] for row in con.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM readings WHERE site = 'gs-demo' AND device = 'm1' AND metric = 'power_kw' "
        "AND ts_ms >= 0 AND ts_ms < 1"))
    assert "SEARCH sa USING PRIMARY KEY (series=? AND ts_ms>? AND ts_ms<?)" in plan, plan


def test_query_series_and_latest_are_range_searches_of_the_primary_key(store):
    from greenmine.server.store.sqlite import _POINTS

    con = store._con()
    for sql in (f"{_POINTS} AND sa.ts_ms >= ? AND sa.ts_ms < ? ORDER BY sa.ts_ms", f"{_POINTS} ORDER BY sa.ts_ms DESC LIMIT 1"):
        plan = [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql, ("s", "d", "m", 0, 1)[: sql.count("?")])]
        assert plan[0].startswith("SEARCH sa USING PRIMARY KEY (series=?"), plan
        assert not any(p.startswith("SCAN") or "TEMP B-TREE" in p for p in plan), plan


# The layout before samples/series/labels: readings was a table. Copied here as it was, so that the
# migration is tested against a file that version really wrote.
_OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    site    TEXT    NOT NULL,
    device  TEXT    NOT NULL,
    metric  TEXT    NOT NULL,
    ts_ms   INTEGER NOT NULL,
    value   REAL    NOT NULL,
    unit    TEXT    NOT NULL,
    quality TEXT    NOT NULL,
    agent   TEXT    NOT NULL,
    PRIMARY KEY (site, device, metric, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups (
    site        TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    metric      TEXT    NOT NULL,
    period      TEXT    NOT NULL CHECK (period IN ('hour', 'day')),
    start_ms    INTEGER NOT NULL,
    end_ms      INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    total       REAL    NOT NULL,
    vmin        REAL,
    vmax        REAL,
    first_ts_ms INTEGER,
    v_first     REAL,
    last_ts_ms  INTEGER,
    v_last      REAL,
    not_good    INTEGER NOT NULL,
    PRIMARY KEY (site, device, metric, period, start_ms)
) WITHOUT ROWID;
"""


def test_a_store_written_by_the_previous_layout_is_migrated_once_on_open(tmp_path, caplog):
    import logging
    import sqlite3

    t = datetime(2026, 1, 5, 10, 0, tzinfo=SH)
    path = tmp_path / "old.sqlite"
    old = [r(t + timedelta(seconds=i), float(i), device=f"m{i % 3}", metric=("power_kw", "energy_kwh_total")[i % 2],
             quality=("good", "good", "bad")[i % 3]) for i in range(30)]
    old.append(StoredReading("other-site", "gw9", "m1", "power_kw", to_ms(t), 7.5, "MW", "stale"))
    con = sqlite3.connect(path)
    con.executescript(_OLD_SCHEMA)
    con.executemany("INSERT INTO readings (site, agent, device, metric, ts_ms, value, unit, quality) VALUES (?,?,?,?,?,?,?,?)", old)
    con.execute("INSERT INTO rollups VALUES ('gs-demo', 'm0', 'power_kw', 'hour', ?, ?, 4, 36.0, 0.0, 18.0, ?, 0.0, ?, 18.0, 1)",
                (to_ms(t), to_ms(t) + 3_600_000, to_ms(t), to_ms(t) + 18_000))
    con.commit()
    con.close()

    with caplog.at_level(logging.INFO, logger="greenmine.server.store.sqlite"):
        store = SqliteStore(path, site_timezones={"gs-demo": "Asia/Shanghai"})
    try:
        migrated = [rec for rec in caplog.records if "migrated" in rec.getMessage()]
        assert len(migrated) == 1 and migrated[0].levelno == logging.INFO and "31" in migrated[0].getMessage()
        con = store._con()
        assert con.execute("SELECT type FROM sqlite_master WHERE name = 'readings'").fetchone() == ("view",)
        assert store.count() == 31
        assert sorted(con.execute("SELECT site, agent, device, metric, ts_ms, value, unit, quality FROM readings")) == sorted(old)
        for device in ("m0", "m1", "m2"):
            for metric in ("power_kw", "energy_kwh_total"):
                want = [(x.ts_ms, x.value, x.unit, x.quality, x.agent) for x in old
                        if (x.site, x.device, x.metric) == ("gs-demo", device, metric)]
                assert store.query_series("gs-demo", device, metric, t, t + timedelta(hours=1)) == want
        assert store.latest("other-site", "m1", "power_kw") == (to_ms(t), 7.5, "MW", "stale", "gw9")
        before = store.rollups("gs-demo", "m0", "power_kw", "hour", t, t + timedelta(hours=1))
        assert [(x.count, x.sum, x.not_good) for x in before] == [(4, 36.0, 1)]
        # migrated readings keep their identity: redelivered, they change nothing; new ones are added
        store.write(old[:10] + [old[0]._replace(value=100.0)])
        assert store.count() == 31
        assert store.rollups("gs-demo", "m0", "power_kw", "hour", t, t + timedelta(hours=1)) == before
        store.write([r(t + timedelta(minutes=5), 50.0, device="m0"), r(t, 1.0, device="new")])
        assert store.count() == 33
        assert store.rollup_at("gs-demo", "m0", "power_kw", "hour", t).count == 5
        assert store.latest("gs-demo", "new", "power_kw").value == 1.0
    finally:
        store.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="greenmine.server.store.sqlite"):
        SqliteStore(path).close()
    assert not [rec for rec in caplog.records if "migrated" in rec.getMessage()], "only once"


def test_rollups_of_a_stream_of_small_writes_equal_the_reference(tmp_path):
    """The usual shape (each write a few seconds of every series, mostly all good) takes the inline path;
    across hour and local-midnight boundaries, with a non-good reading now and then, it agrees with the
    reading-by-reading reference too."""
    import random

    rnd = random.Random("stream")
    t0 = datetime(2026, 1, 5, 23, 40, tzinfo=SH)  # crosses midnight in Shanghai
    s = SqliteStore(tmp_path / "s.sqlite", site_timezones={"s1": "Asia/Shanghai"})
    readings = []
    try:
        for w in range(150):  # 150 writes of 20 s each: 50 minutes
            batch = [r(t0 + timedelta(seconds=w * 20 + k), round(rnd.uniform(0, 100), 2), device=f"m{d}", site="s1",
                       quality="good" if w % 7 or rnd.random() < 0.8 else "stale")
                     for k in range(20) for d in range(5)]
            readings += batch
            s.write(batch)
        want = _reference_rollups(readings, "Asia/Shanghai")
        got = {}
        for _site, device, metric in s.series("s1"):
            for period in ("hour", "day"):
                for x in s.rollups("s1", device, metric, period, t0 - timedelta(days=1), t0 + timedelta(days=1)):
                    got[(x.site, x.device, x.metric, x.period, x.start_ms)] = (
                        x.end_ms, x.count, pytest.approx(x.sum, rel=1e-12), x.min, x.max, x.first_ts_ms, x.first,
                        x.last_ts_ms, x.last, x.not_good)
        assert got == want
        assert sum(v[9] for k, v in want.items() if k[3] == "day") > 0
    finally:
        s.close()
