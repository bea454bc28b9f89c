"""Local calendar periods (days from 00:00, months, hours, day/night noise periods).

All times inside the KPI code are epoch seconds (float); a period is the
half-open interval [start, end). Local time comes from the site's time zone,
so a Shanghai day is 16:00 UTC to 16:00 UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from greenmine.server.monitor.kpi.counters import Increment

#: Every period boundary (local hours, days, months, the noise day and night, which start on whole
#: hours) falls on a multiple of this many seconds of UTC, because UTC offsets and DST shifts do.
#: So all timestamps of one such slot lie in the same periods.
SLOT_S = 900


@dataclass(frozen=True)
class Period:
    kind: str  # hour | day | month | noise_day | noise_night | rolling24h
    start: float
    end: float
    label: str  # e.g. 2026-11-27, 2026-11, 2026-11-27T13, 2026-11-27 night

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _ts(d: date, h: int, tz: ZoneInfo) -> float:
    return datetime.combine(d, time(h), tzinfo=tz).timestamp()


@lru_cache(maxsize=4096)
def day(d: date, tz: str) -> Period:
    z = ZoneInfo(tz)
    return Period("day", _ts(d, 0, z), _ts(d + timedelta(days=1), 0, z), d.isoformat())


@lru_cache(maxsize=1024)
def month(year: int, mon: int, tz: str) -> Period:
    z = ZoneInfo(tz)
    first = date(year, mon, 1)
    nxt = date(year + (mon == 12), mon % 12 + 1, 1)
    return Period("month", _ts(first, 0, z), _ts(nxt, 0, z), f"{year:04d}-{mon:02d}")


def year(y: int, tz: str) -> Period:
    """The local calendar year (the energy platform's statType 3)."""
    return Period("year", month(y, 1, tz).start, month(y + 1, 1, tz).start, f"{y:04d}")


def hour(ts: float, tz: str) -> Period:
    """The local clock hour containing ts."""
    z = ZoneInfo(tz)
    lt = datetime.fromtimestamp(ts, z).replace(minute=0, second=0, microsecond=0)
    start = lt.timestamp()
    return Period("hour", start, start + 3600, lt.strftime("%Y-%m-%dT%H"))


def noise_day(d: date, tz: str, day_start_h: int = 6, night_start_h: int = 22) -> Period:
    z = ZoneInfo(tz)
    return Period("noise_day", _ts(d, day_start_h, z), _ts(d, night_start_h, z), f"{d.isoformat()} day")


def noise_night(d: date, tz: str, day_start_h: int = 6, night_start_h: int = 22) -> Period:
    """The night that *starts* on local date d; with defaults 22:00 d to 06:00 d+1."""
    z = ZoneInfo(tz)
    end_day = d + timedelta(days=1) if day_start_h <= night_start_h else d
    return Period("noise_night", _ts(d, night_start_h, z), _ts(end_day, day_start_h, z), f"{d.isoformat()} night")


def rolling24h(end_ts: float) -> Period:
    return Period("rolling24h", end_ts - 86400, end_ts, "rolling 24 h")


def local_date(ts: float, tz: str) -> date:
    # every local midnight falls on a multiple of SLOT_S of UTC: one conversion per slot
    return _slot_date(int(ts // SLOT_S), tz)


@lru_cache(maxsize=16384)
def _slot_date(slot: int, tz: str) -> date:
    return datetime.fromtimestamp(slot * SLOT_S, ZoneInfo(tz)).date()


def fmt_local(ts: float, tz: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def allocate(incs: list[Increment], start: float, end: float) -> float:
    """Consumption inside [start, end): increments spanning an edge are prorated linearly by time."""
    out = 0.0
    for i in incs:
        if i.end_ts <= start or i.start_ts >= end or i.value == 0:
            continue
        span = i.end_ts - i.start_ts
        if span <= 0:
            out += i.value if start <= i.end_ts < end else 0.0
            continue
        overlap = min(i.end_ts, end) - max(i.start_ts, start)
        out += i.value * overlap / span
    return out


def completeness(timestamps: list[float], start: float, end: float, interval_s: float) -> float:
    """Share of expected intervals in [start, end) that hold at least one reading (0..1)."""
    expected = max(1, round((end - start) / interval_s))
    slots = {int((t - start) // interval_s) for t in timestamps if start <= t < end}
    return min(1.0, len(slots) / expected)
