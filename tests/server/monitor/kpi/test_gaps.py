"""Reading gaps and out-of-order delivery across midnight and month ends (issue 12 item 9, issue 13 defect 10).

An energy meter is read once a minute and sent in 10-minute batches to the monitor as the server runs it
(replica -> KPI store), ticking with driven time, so a day is computed as soon as it closes, before the read
that closes a gap across its end has arrived. The increment over the gap must be shared out in proportion
to time between the periods it spans, and the earlier period must be recomputed when that read arrives.
"""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from greenmine.schemas.telemetry import Reading, TelemetryBatch
from greenmine.server.config import SiteConfig
from greenmine.server.monitor.alerts.config import AlertsConfig, DeadmanRule
from greenmine.server.monitor.alerts.service import Monitor
from greenmine.server.monitor.kpi.config import KpiConfig
from greenmine.server.store.replica import SeriesReplica

TZ = ZoneInfo("Asia/Shanghai")
QUIET = [DeadmanRule(name="device_offline", target="device", silence_s=1e9),
         DeadmanRule(name="agent_offline", target="agent", silence_s=1e9)]


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def meter_reads(day0, gap_from, gap_to, gap_kwh, until):
    """(ts, total) once a minute from day0 00:00 to `until`: 1 kWh a minute, and `gap_kwh` over the gap
    (gap_from, gap_to), which has no reads."""
    out, t, total = [], day0, 10_000.0
    while t <= until:
        if not (gap_from < t < gap_to):
            out.append((t, total))
        nxt = t + timedelta(minutes=1)
        total += gap_kwh / ((gap_to - gap_from) / timedelta(minutes=1)) if gap_from <= t < gap_to else 1.0
        t = nxt
    return out


def run(tmp_path, reads, deliveries, end_clock):
    """Deliver `reads` as batches; `deliveries` is a list of (delivery time, [reads]) in delivery order."""
    clock = Clock(deliveries[0][0].timestamp())
    mon = Monitor(sites=[SiteConfig(id="s1")], replica=SeriesReplica(tmp_path / "replica.sqlite"),
                  kpi_db=tmp_path / "kpi.sqlite", alerts_db=tmp_path / "alerts.sqlite", eml_dir=tmp_path / "mail",
                  kpi=KpiConfig(), alerts=AlertsConfig(rules=QUIET), clock=clock)
    for seq, (at, batch) in enumerate(deliveries, 1):
        clock.t = at.timestamp()
        if batch:
            readings = [Reading(device="m1", metric="energy_kwh_total", ts=ts, value=v, unit="kWh") for ts, v in batch]
            mon.on_messages([TelemetryBatch(site="s1", agent="gw1", seq=seq, sent_at=at, readings=readings)], [])
        mon.tick(force=True)  # periods close as time passes, before the later reads arrive
    clock.t = end_clock.timestamp()
    mon.tick(force=True)
    out = {(v.period_kind, v.period_label): v.value for kpi in ("energy_kwh_daily", "energy_kwh_monthly")
           for v in mon.kpi_store.values("s1", kpi, subject="m1")}
    mon.close()
    return out


def live(reads, start, until, every_min=30):
    """Sent as they are read: every `every_min` minutes, the reads since the last batch."""
    out, t = [], start
    while t <= until:
        out.append((t + timedelta(seconds=5), [r for r in reads if t - timedelta(minutes=every_min) < r[0] <= t]))
        t += timedelta(minutes=every_min)
    return out


#: after the last delivery time runs on to the new year, so every day and month touched has closed
NEW_YEAR = datetime(2027, 1, 1, 0, 5, tzinfo=TZ)


@pytest.mark.parametrize("gap_from, gap_to, gap_kwh, before, after", [
    # 2 h gap 23:00 -> 01:00 with 240 kWh in it: 120 kWh each side of midnight.
    # day 1: 23 h x 60 + 120 = 1500; day 2: 120 + 01:00 -> 03:00 at 60/h = 240
    ((23, 0), (1, 0), 240.0, 1500.0, 240.0),
    # 20 min gap 23:50 -> 00:10 with 30 kWh: 15 each side.
    # day 1: 1430 + 15 = 1445; day 2: 15 + 00:10 -> 03:00 (170 min) = 185
    ((23, 50), (0, 10), 30.0, 1445.0, 185.0),
])
@pytest.mark.parametrize("day1", [datetime(2026, 11, 27, tzinfo=TZ), datetime(2026, 11, 30, tzinfo=TZ)],
                         ids=["midnight", "month-end"])
def test_gap_across_midnight_is_shared_by_time(tmp_path, day1, gap_from, gap_to, gap_kwh, before, after):
    day2 = day1 + timedelta(days=1)
    g0 = day1.replace(hour=gap_from[0], minute=gap_from[1])
    g1 = day2.replace(hour=gap_to[0], minute=gap_to[1])
    until = day2.replace(hour=3)
    reads = meter_reads(day1, g0, g1, gap_kwh, until)
    got = run(tmp_path, reads, live(reads, day1, until), NEW_YEAR)
    assert got[("day", day1.date().isoformat())] == pytest.approx(before)
    assert got[("day", day2.date().isoformat())] == pytest.approx(after)
    if day2.month != day1.month:
        # November held only its last day of data, December its first 3 hours: the months split as the days do
        assert got[("month", "2026-11")] == pytest.approx(before)
        assert got[("month", "2026-12")] == pytest.approx(after)
    else:
        assert got[("month", "2026-11")] == pytest.approx(before + after)


def test_backlog_resent_alongside_live_data_counts_as_in_order(tmp_path):
    """An agent crash at 22:30: its outbox (22:30 -> 01:30) is re-sent from 01:30 on, oldest first, interleaved
    with live batches (delivery order is not a promise). The day totals are those of in-order delivery."""
    day1 = datetime(2026, 11, 30, tzinfo=TZ)
    day2 = day1 + timedelta(days=1)
    until = day2.replace(hour=3)
    reads = meter_reads(day1, day1, day1, 0.0, until)  # no gap: 1 kWh a minute throughout
    crash, back = day1.replace(hour=22, minute=30), day2.replace(hour=1, minute=30)
    backlog = [r for r in reads if crash < r[0] <= back]
    deliveries = [(at, [r for r in batch if not crash < r[0] <= back]) for at, batch in live(reads, day1, until)]
    at = back + timedelta(seconds=5)
    mixed = []
    for i, (t, batch) in enumerate(d for d in deliveries if d[0] > at):
        mixed.append((t, batch))  # a live batch, then the next 60 minutes of backlog
        chunk = backlog[60 * i:60 * (i + 1)]
        if chunk:
            mixed.append((t + timedelta(seconds=1), chunk[30:] + chunk[:30]))  # and out of order inside a batch
    order = [d for d in deliveries if d[0] <= at] + mixed
    assert sum(len(b) for _, b in order) == len(reads)
    got = run(tmp_path, reads, order, NEW_YEAR)
    assert got[("day", "2026-11-30")] == pytest.approx(1440.0)
    assert got[("day", "2026-12-01")] == pytest.approx(180.0)
    assert got[("month", "2026-11")] == pytest.approx(1440.0) and got[("month", "2026-12")] == pytest.approx(180.0)
