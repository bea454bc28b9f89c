"""Boundary dust: hourly average TSP and PM10 per monitor, judged against the
site's limit (default 1.0 mg/m³ as any 1-hour average, GB 16297-1996 Table 2).
"""

from __future__ import annotations

from greenmine.server.monitor.kpi.model import KpiValue, SampleStats
from greenmine.server.monitor.kpi.periods import Period

TSP = "dust_tsp_mgm3"
PM10 = "dust_pm10_mgm3"
#: the default citation; a site's own is `limits.dust_standard` ({limit} is the limit)
STANDARD = "GB 16297-1996 表2 无组织排放监控浓度限值 {limit:g} mg/m³ (1小时均值)"


def hourly_average(
    site: str,
    hour: Period,
    metric: str,
    stats: list[SampleStats],
    *,
    limit_mgm3: float | None,
    standard: str = STANDARD,
    completeness_min_pct: float = 90.0,
) -> list[KpiValue]:
    """One KpiValue per monitor (device) with samples in the hour (`model.sample_stats` of the hour)."""
    kpi = "dust_tsp_hourly" if metric == TSP else "dust_pm10_hourly" if metric == PM10 else f"{metric}_hourly"
    out = []
    for st in stats:
        c = st.completeness
        out.append(KpiValue(
            site=site, kpi=kpi, subject=st.device, period_kind="hour", period_start=hour.start, period_end=hour.end,
            period_label=hour.label, value=st.mean, unit="mg/m³", completeness=c,
            complete=c * 100.0 >= completeness_min_pct - 1e-9, devices=(st.device,),
            limit=limit_mgm3, comparison=">" if limit_mgm3 is not None else None,
            standard=standard.format(limit=limit_mgm3) if limit_mgm3 is not None else "",
            extra={"max": st.top, "samples": st.n},
        ))
    return out
