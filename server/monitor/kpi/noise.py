"""Boundary noise, GB 12348-2008: Leq per hour and per day/night period,
limits from the site's functional-area class, night Lmax.

Leq is an *energy* average, 10·log10(mean(10^(L/10))), never the arithmetic
mean of dB values. Samples are equally weighted, which is right for a fixed
poll interval (the agent's case); gaps lower the completeness instead.
"""

from __future__ import annotations

import math

from greenmine.server.monitor.kpi.model import KpiValue, SampleStats, energy
from greenmine.server.monitor.kpi.periods import Period

LAEQ = "noise_laeq_db"

#: GB 12348-2008 Table 1, dB(A): class -> (day, night). [std]
CLASS_LIMITS_DB: dict[int, tuple[float, float]] = {
    0: (50, 40),
    1: (55, 45),
    2: (60, 50),
    3: (65, 55),
    4: (70, 55),
}


def leq(levels: list[float]) -> float:
    """Energy-average equivalent level of equally weighted samples."""
    if not levels:
        raise ValueError("Leq of no samples")
    return 10.0 * math.log10(sum(energy(x) for x in levels) / len(levels))


def limit_db(noise_class: int, night: bool) -> float:
    day_db, night_db = CLASS_LIMITS_DB[noise_class]
    return night_db if night else day_db


#: the default citation; a site's own is `limits.noise_standard` ({noise_class}, {period} 昼间/夜间, {limit} in dB(A))
STANDARD = "GB 12348-2008 {noise_class}类 {period} {limit:g} dB(A)"


def standard_text(noise_class: int, night: bool, limit: float | None = None, standard: str = STANDARD) -> str:
    lim = limit_db(noise_class, night) if limit is None else limit
    return standard.format(noise_class=noise_class, period="夜间" if night else "昼间", limit=lim)


def is_night_hour(local_hour: int, day_start_h: int = 6, night_start_h: int = 22) -> bool:
    if day_start_h < night_start_h:
        return not (day_start_h <= local_hour < night_start_h)
    return night_start_h <= local_hour < day_start_h


def leq_kpis(
    site: str,
    period: Period,
    stats: list[SampleStats],
    *,
    noise_class: int,
    night: bool,
    standard: str = STANDARD,
    completeness_min_pct: float = 90.0,
) -> list[KpiValue]:
    """Leq per monitor over `period` (an hour, a day period or a night period), from `model.sample_stats` of it."""
    kpi = {"hour": "noise_leq_hourly", "noise_day": "noise_leq_day", "noise_night": "noise_leq_night"}[period.kind]
    lim = limit_db(noise_class, night)
    out = []
    for st in stats:
        c = st.completeness
        out.append(KpiValue(
            site=site, kpi=kpi, subject=st.device, period_kind=period.kind, period_start=period.start,
            period_end=period.end, period_label=period.label, value=st.leq, unit="dB(A)", completeness=c,
            complete=c * 100.0 >= completeness_min_pct - 1e-9, devices=(st.device,), limit=lim, comparison=">",
            standard=standard_text(noise_class, night, standard=standard),
            extra={"arithmetic_mean_db": st.mean, "samples": st.n, "night": night},
        ))
    return out


def lmax_night(
    site: str,
    night: Period,
    stats: list[SampleStats],
    *,
    noise_class: int,
    standard: str = STANDARD,
    frequent_over_db: float = 10.0,
    sporadic_over_db: float = 15.0,
    completeness_min_pct: float = 90.0,
) -> list[KpiValue]:
    """Night Lmax per monitor, judged against limit + 10 (frequent); limit + 15 (sporadic) in `extra`."""
    base = limit_db(noise_class, True)
    out = []
    for st in stats:
        c, top, dev = st.completeness, st.top, st.device
        out.append(KpiValue(
            site=site, kpi="noise_lmax_night", subject=dev, period_kind=night.kind, period_start=night.start,
            period_end=night.end, period_label=night.label, value=top, unit="dB(A)", completeness=c,
            complete=c * 100.0 >= completeness_min_pct - 1e-9, devices=(dev,), limit=base + frequent_over_db,
            comparison=">", standard=standard_text(noise_class, True, base, standard) + f" + {frequent_over_db:g} (频发 Lmax)",
            extra={
                "night_limit_db": base,
                "sporadic_limit_db": base + sporadic_over_db,
                "over_frequent": top > base + frequent_over_db,
                "over_sporadic": top > base + sporadic_over_db,
                "lmax_ts": st.top_ts,
            },
        ))
    return out
