"""Delivery order is not a promise (issue 13 defect 10): the counter tracker and the deadman with out-of-order input.

The KPI side through the monitor is in kpi/test_gaps.py (a backlog re-sent alongside live data, across a month end).
"""

import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from greenmine.schemas.telemetry import Reading, TelemetryBatch
from greenmine.server.config import SiteConfig
from greenmine.server.monitor.alerts.service import Monitor
from greenmine.server.monitor.kpi.counters import CounterSpec, CounterTracker, IncrementFlag, increments, total
from greenmine.server.store.replica import SeriesReplica

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 27, 8, tzinfo=TZ)


def test_counter_series_in_any_order_gives_the_same_increments():
    spec = CounterSpec(width=65536.0, max_rate_per_s=5.0)
    pts, v = [], 65000.0
    for i in range(300):
        v = (v + 1.5) % 65536  # wraps once
        pts.append((60.0 * i, v))
    pts[100] = (pts[100][0], 0.0)  # a zero read
    in_order = increments(pts, spec)
    shuffled = pts[:]
    random.Random(7).shuffle(shuffled)
    assert increments(shuffled, spec) == in_order
    assert total(in_order[0]) == pytest.approx(1.5 * 299)


def test_a_late_read_fed_to_a_live_tracker_is_not_a_reset_or_a_dip():
    tr = CounterTracker(CounterSpec())
    assert tr.feed(0, 100.0) == ([], [])
    incs, _ = tr.feed(120, 102.0)
    assert [i.value for i in incs] == [2.0]
    # a backlog read from before the baseline arrives now: lower total, older time. Not a drop of the meter.
    assert tr.feed(60, 101.0) == ([], [])
    assert tr.feed(120, 102.0) == ([], [])  # and a redelivery changes nothing
    incs, events = tr.feed(180, 103.0)
    assert [(i.value, i.flag) for i in incs] == [(1.0, IncrementFlag.OK)] and events == []


def batch(seq, device, ts_list, value=1.0):
    readings = [Reading(device=device, metric="power_kw", ts=ts, value=value, unit="kW") for ts in ts_list]
    return TelemetryBatch(site="s1", agent="gw1", seq=seq, sent_at=max(ts_list), readings=readings)


def test_deadman_with_backlog_resent_alongside_live_data(tmp_path):
    clock_t = [T0.timestamp()]
    mon = Monitor(sites=[SiteConfig(id="s1", recipients=["officer@example.test"])],
                  replica=SeriesReplica(tmp_path / "replica.sqlite"), kpi_db=tmp_path / "kpi.sqlite",
                  alerts_db=tmp_path / "alerts.sqlite", eml_dir=tmp_path / "mail", clock=lambda: clock_t[0])

    def at(dt, batches=()):
        clock_t[0] = (T0 + dt).timestamp()
        if batches:
            mon.on_messages(list(batches), [])
        mon.tick(force=True)

    def offline():
        return sorted(a.subject for a in mon.alerts.alerts(("firing",)) if a.rule == "device_offline")

    seq = iter(range(1, 1000))
    # live: meter-a every minute; meter-b stops at 08:05
    for m in range(0, 20):
        live = [batch(next(seq), "meter-a", [T0 + timedelta(minutes=m)])]
        if m <= 5:
            live.append(batch(next(seq), "meter-b", [T0 + timedelta(minutes=m)]))
        at(timedelta(minutes=m, seconds=5), live)
    assert offline() == ["meter-b"]  # silent since 08:05, 300 s passed at 08:10

    # the agent's outbox is re-sent alongside live data: meter-a's and meter-b's readings from 07:00-07:30,
    # after the live ones of 08:20. An old reading moves no device's last time backwards or forwards.
    old = [T0 - timedelta(minutes=60 - i) for i in range(30)]
    at(timedelta(minutes=20, seconds=5), [batch(next(seq), "meter-a", [T0 + timedelta(minutes=20)]),
                                         batch(next(seq), "meter-a", old[::-1]), batch(next(seq), "meter-b", old)])
    at(timedelta(minutes=24, seconds=50))  # 4 min 45 s after meter-a's last live reading
    assert offline() == ["meter-b"]  # meter-a is not made silent by its old backlog; meter-b not revived by it
    # meter-b's backlog from just before now (inside its silence_s) is real news: it is alive again
    at(timedelta(minutes=25), [batch(next(seq), "meter-b", [T0 + timedelta(minutes=23), T0 + timedelta(minutes=21)]),
                               batch(next(seq), "meter-a", [T0 + timedelta(minutes=25)])])
    assert offline() == []
    last = {n: ts for _s, t, n, ts, _o in mon.alerts.db.execute("SELECT site, target, name, last_ts, reported_offline "
                                                                 "FROM seen WHERE target='device'")}
    assert last == {"meter-a": (T0 + timedelta(minutes=25)).timestamp(),
                    "meter-b": (T0 + timedelta(minutes=23)).timestamp()}
    mon.close()
