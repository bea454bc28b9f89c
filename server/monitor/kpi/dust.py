"""Boundary dust: hourly average TSP and PM10 per monitor, judged against the
site's limit (default 1.0 mg/m³ as any 1-hour average, GB 16297-1996 Table 2).
"""

from __future__ import annotations

from greenmine.server.monitor.kpi.model import KpiValue, Sample
from greenmine.server.monitor.kpi.periods import Period, completeness

TSP = "dust_tsp_mgm3"
PM10 = "dust_pm10_mgm3"
#: the default citation; a site's own is `limits.dust_standard` ({limit} is the limit)
STANDARD = "GB 16297-1996 表2 无组织排放监控浓度限值 {limit:g} mg/m³ (1小时均值)"


def hourly_average(
    site: str,
    hour: Period,
    metric: str,
    samples: list[Sample],
    *,
    limit_mgm3: float | None,
    standard: str = STANDARD,
    interval_s: float = 60.0,
    completeness_min_pct: float = 90.0,
) -> list[KpiValue]:
    """One KpiValue per monitor (device) with samples in the hour."""
    kpi = "dust_tsp_hourly" if metric == TSP else "dust_pm10_hourly" if metric == PM10 else f"{metric}_hourly"
    by_dev: dict[str, list[Sample]] = {}
    for s in samples:
        if hour.start <= s.ts < hour.end:
            by_dev.setdefault(s.device, []).append(s)
    out = []
    for dev, ss in sorted(by_dev.items()):
        c = completeness([s.ts for s in ss], hour.start, hour.end, interval_s)
        out.append(KpiValue(
            site=site, kpi=kpi, subject=dev, period_kind="hour", period_start=hour.start, period_end=hour.end,
            period_label=hour.label, value=sum(s.value for s in ss) / len(ss), unit="mg/m³", completeness=c,
            complete=c * 100.0 >= completeness_min_pct - 1e-9, devices=(dev,),
            limit=limit_mgm3, comparison=">" if limit_mgm3 is not None else None,
            standard=standard.format(limit=limit_mgm3) if limit_mgm3 is not None else "",
            extra={"max": max(s.value for s in ss), "samples": len(ss)},
        ))
    return out
