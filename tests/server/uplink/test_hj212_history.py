"""`StoreHistory` over a real SQLite store: minute/hour/day records, energy-averaged noise, Ld/Ln, flags."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from greenmine.server.store.base import StoredReading
from greenmine.server.store.sqlite import SqliteStore
from greenmine.server.uplink.hj212.codec import encode_packet
from greenmine.server.uplink.hj212.config import PointConfig
from greenmine.server.uplink.hj212.messages import DataFlag, NoiseDayNight, PeriodKind, period_packet
from greenmine.server.uplink.hj212.service import LatestCache, PointRealtime, StoreHistory

TZ = ZoneInfo("Asia/Shanghai")
SITE = "gs-demo"


def point(**kw) -> PointConfig:
    base = dict(name="p1", mn="010000A8900016F000169DC0", pw="100000", st="39", site=SITE,
                devices=["dust", "noise"], host="127.0.0.1", port=9000)
    return PointConfig(**{**base, **kw})


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "store.sqlite", site_timezones={SITE: "Asia/Shanghai"})
    yield s
    s.close()


def rows(device, metric, start: datetime, every_s: int, values, quality="good", unit="mg/m3"):
    out = []
    for i, v in enumerate(values):
        ts = start + timedelta(seconds=i * every_s)
        q = quality(i) if callable(quality) else quality
        out.append(StoredReading(SITE, "gw1", device, metric, int(ts.timestamp() * 1000), float(v), unit, q))
    return out


def energy(levels):
    return 10 * math.log10(sum(10 ** (x / 10) for x in levels) / len(levels))


def test_minute_periods_from_raw_rows_with_local_period_start(store):
    t0 = datetime(2026, 5, 1, 10, 0, tzinfo=TZ)
    tsp = [0.1 + (i % 6) * 0.01 for i in range(120)]  # every 10 s for 20 minutes
    store.write(rows("dust", "dust_tsp_mgm3", t0, 10, tsp))
    p = point()
    records = StoreHistory(p, store).periods(PeriodKind.MINUTE, t0, t0 + timedelta(minutes=10), 10)
    assert [r.start for r in records] == [t0, t0 + timedelta(minutes=10)]
    first = records[0].values["dust_tsp_mgm3"]
    assert first.flag is DataFlag.N
    assert first.avg == pytest.approx(sum(tsp[:60]) / 60)
    assert (first.min, first.max) == (pytest.approx(0.1), pytest.approx(0.15))
    frame = encode_packet(period_packet(p, PeriodKind.MINUTE, records[1], qn="20260501102100000")).decode()
    # DataTime is the period start in local time
    assert "CN=2051" in frame and "DataTime=20260501101000;" in frame and "a34001-Flag=N" in frame
    # a window with no data gives no record
    assert StoreHistory(p, store).periods(PeriodKind.MINUTE, t0 - timedelta(hours=2), t0 - timedelta(hours=1), 10) == []


def test_hourly_noise_is_an_energy_average_and_flags_follow_quality(store):
    t0 = datetime(2026, 5, 1, 9, 0, tzinfo=TZ)
    levels = [50.0 if i % 2 else 70.0 for i in range(360)]  # every 10 s for one hour
    store.write(rows("noise", "noise_laeq_db", t0, 10, levels, unit="dB(A)"))
    # dust: one out-of-range sample in an otherwise complete hour -> T
    store.write(rows("dust", "dust_tsp_mgm3", t0, 10, [0.2] * 360, quality=lambda i: "out_of_range" if i == 5 else "good"))
    (rec,) = StoreHistory(point(), store).periods(PeriodKind.HOUR, t0, t0, 10)
    leq = rec.values["noise_laeq_db"]
    assert leq.avg == pytest.approx(energy(levels)) and leq.avg == pytest.approx(67.03, abs=0.01)
    assert leq.avg != pytest.approx(60.0)  # not the arithmetic mean
    assert rec.values["dust_tsp_mgm3"].flag is DataFlag.T
    frame = encode_packet(period_packet(point(), PeriodKind.HOUR, rec, qn="20260501100100000")).decode()
    assert "CN=2061" in frame and "DataTime=20260501090000;" in frame and "Leq-Data=67.0,Leq-Flag=N" in frame


def test_gaps_flag_b_and_maintenance_flags_m(store):
    t0 = datetime(2026, 5, 1, 9, 0, tzinfo=TZ)
    # dust answered for the first 10 minutes of the hour only (the monitor went offline): B
    store.write(rows("dust", "dust_tsp_mgm3", t0, 10, [0.2] * 60))
    store.write(rows("dust", "dust_tsp_mgm3", t0 + timedelta(hours=1), 10, [0.2] * 360))
    store.write(rows("noise", "noise_laeq_db", t0, 10, [55.0] * 720, unit="dB(A)"))
    p = point(maintenance=[{"device": "noise", "start": (t0 + timedelta(hours=1)).isoformat(),
                            "end": (t0 + timedelta(hours=2)).isoformat()}])
    first, second = StoreHistory(p, store).periods(PeriodKind.HOUR, t0, t0 + timedelta(hours=1), 10)
    assert first.values["dust_tsp_mgm3"].flag is DataFlag.B
    assert first.values["dust_tsp_mgm3"].avg == pytest.approx(0.2)  # the valid part is still reported
    assert first.values["noise_laeq_db"].flag is DataFlag.N
    assert second.values["dust_tsp_mgm3"].flag is DataFlag.N
    assert second.values["noise_laeq_db"].flag is DataFlag.M


def test_daily_noise_splits_day_and_night_in_local_time(store):
    day0 = datetime(2026, 5, 1, 0, 0, tzinfo=TZ)
    levels = []
    for minute in range(24 * 60):  # one reading a minute all day: night 40 dB, day 60 dB
        hour = minute // 60
        levels.append(60.0 if 6 <= hour < 22 else 40.0)
    store.write(rows("noise", "noise_laeq_db", day0, 60, levels, unit="dB(A)"))
    (rec,) = StoreHistory(point(), store).periods(PeriodKind.DAY, day0, day0, 10)
    dn = rec.values["noise_laeq_db"]
    assert isinstance(dn, NoiseDayNight)
    assert dn.day.avg == pytest.approx(60.0) and dn.night.avg == pytest.approx(40.0)
    assert dn.day.flag is DataFlag.N and dn.night.flag is DataFlag.N
    frame = encode_packet(period_packet(point(), PeriodKind.DAY, rec, qn="20260502000100000")).decode()
    assert "CN=2031" in frame and "DataTime=20260501000000;" in frame
    assert "Ld-DayData=60.0,Ld-Flag=N;Ln-NightData=40.0,Ln-Flag=N" in frame
    # the local government moved the night to 23:00: 22:00-23:00 counts as day now
    shifted = StoreHistory(point(noise_night_start_h=23), store).periods(PeriodKind.DAY, day0, day0, 10)[0]
    assert shifted.values["noise_laeq_db"].night.avg == pytest.approx(40.0)
    assert shifted.values["noise_laeq_db"].day.avg == pytest.approx(energy([60.0] * 960 + [40.0] * 60))


def test_realtime_source_flags_offline_device_b():
    cache = LatestCache([(SITE, "dust", "dust_tsp_mgm3"), (SITE, "noise", "noise_laeq_db")])
    now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    cache.on_stored([
        StoredReading(SITE, "gw1", "dust", "dust_tsp_mgm3", now_ms, 0.3, "mg/m3", "good"),
        StoredReading(SITE, "gw1", "dust", "dust_tsp_mgm3", now_ms - 5000, 0.9, "mg/m3", "good"),  # late, older
        StoredReading(SITE, "gw1", "noise", "noise_laeq_db", now_ms, 55.5, "dB(A)", "out_of_range"),
        StoredReading(SITE, "gw1", "other", "dust_tsp_mgm3", now_ms, 9.9, "mg/m3", "good"),  # not this point's
    ])
    offline: set[str] = set()
    src = PointRealtime(point(), cache, lambda site, agent, device: device not in offline)
    values = src.latest()
    assert values["dust_tsp_mgm3"].value == 0.3 and values["noise_laeq_db"].quality == "out_of_range"
    offline.add("dust")
    values = src.latest()
    assert values["dust_tsp_mgm3"].value is None and values["dust_tsp_mgm3"].quality == "stale"
    assert PointRealtime(point(devices=["weather"]), cache, lambda *a: True).latest() is None
