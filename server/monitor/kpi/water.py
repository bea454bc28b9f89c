"""Beneficiation water reuse rate: R = reused / (reused + fresh) × 100 %.

Inputs are increments of the `water_reused_m3_total` and
`water_fresh_m3_total` totalizers; several meters of one role are summed.
Completeness is the share of expected read intervals present, taken as the
*worst* meter's: one dead fresh-water meter would otherwise flatter the rate.
An incomplete period is reported but not judged.
"""

from __future__ import annotations

from greenmine.server.monitor.kpi.model import KpiValue, MeterData
from greenmine.server.monitor.kpi.periods import Period

REUSED = "water_reused_m3_total"
FRESH = "water_fresh_m3_total"
#: the default citation; a site's own is `limits.water_reuse_standard` ({limit} is the floor)
STANDARD = "甘肃省绿色矿山建设实施方案 选矿废水循环利用率 ≥ {limit:g}%"


def reuse_rate(
    site: str,
    period: Period,
    reused: list[MeterData],
    fresh: list[MeterData],
    *,
    interval_s: float = 60.0,
    completeness_min_pct: float = 90.0,
    limit_pct: float = 85.0,
    standard: str = STANDARD,
    kpi: str | None = None,
) -> KpiValue:
    v_reused = sum(m.used(period.start, period.end) for m in reused)
    v_fresh = sum(m.used(period.start, period.end) for m in fresh)
    meters = reused + fresh
    per_meter = {m.device: m.completeness(period.start, period.end, interval_s) for m in meters}
    comp = min(per_meter.values()) if reused and fresh else 0.0
    total = v_reused + v_fresh
    value = 100.0 * v_reused / total if total > 0 else None
    return KpiValue(
        site=site,
        kpi=kpi or ("water_reuse_24h" if period.kind == "rolling24h" else "water_reuse_daily"),
        subject="site",
        period_kind=period.kind,
        period_start=period.start,
        period_end=period.end,
        period_label=period.label,
        value=value,
        unit="%",
        completeness=comp,
        complete=comp * 100.0 >= completeness_min_pct - 1e-9,
        devices=tuple(m.device for m in meters),
        limit=limit_pct,
        comparison="<",
        standard=standard.format(limit=limit_pct),
        extra={"reused_m3": round(v_reused, 6), "fresh_m3": round(v_fresh, 6), "completeness_by_meter": per_meter},
    )
