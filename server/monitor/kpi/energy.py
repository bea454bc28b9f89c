"""Energy: kWh per day and month (per meter and per site), standard coal
equivalent (kgce) with configurable coefficients, and intensity in kgce per
tonne of ore from the belt-scale increments. `day_month_deviation` is the
consistency check (a month against the sum of its days).
"""

from __future__ import annotations

from collections.abc import Iterable

from greenmine.server.monitor.kpi.config import DEFAULT_ENERGY_METRICS, DEFAULT_KGCE_PER_UNIT
from greenmine.server.monitor.kpi.model import KpiValue, MeterData
from greenmine.server.monitor.kpi.periods import Period

_SUFFIX = {"day": "daily", "month": "monthly"}
#: the default citation; a site's own is `limits.energy_intensity_standard` ({limit} is the limit)
INTENSITY_STANDARD = "单位矿石综合能耗限值 {limit:g} kgce/t (站点配置)"


def energy_kpis(
    site: str,
    period: Period,
    by_metric: dict[str, list[MeterData]],
    ore: list[MeterData],
    *,
    kgce_per_unit: dict[str, float] | None = None,
    energy_metrics: dict[str, str] | None = None,
    interval_s: float = 60.0,
    completeness_min_pct: float = 90.0,
    intensity_limit_kgce_t: float | None = None,
    intensity_standard: str = INTENSITY_STANDARD,
) -> list[KpiValue]:
    kgce_per_unit = DEFAULT_KGCE_PER_UNIT if kgce_per_unit is None else kgce_per_unit
    energy_metrics = DEFAULT_ENERGY_METRICS if energy_metrics is None else energy_metrics
    suffix = _SUFFIX.get(period.kind, period.kind)

    def comp(meters: list[MeterData]) -> float:
        vals = [m.completeness(period.start, period.end, interval_s) for m in meters]
        return min(vals) if vals else 0.0

    def kv(kpi, subject, value, unit, c, devices, **kw) -> KpiValue:
        return KpiValue(
            site=site, kpi=kpi, subject=subject, period_kind=period.kind, period_start=period.start,
            period_end=period.end, period_label=period.label, value=value, unit=unit, completeness=c,
            complete=c * 100.0 >= completeness_min_pct - 1e-9, devices=tuple(devices), **kw,
        )

    out: list[KpiValue] = []
    kgce_total = 0.0
    energy_meters: list[MeterData] = []
    by_type: dict[str, float] = {}
    for metric, meters in sorted(by_metric.items()):
        kind = energy_metrics.get(metric)
        if kind is None:
            continue
        energy_meters += meters
        amount = 0.0
        for m in meters:
            v = m.used(period.start, period.end)
            amount += v
            if kind == "electricity":
                c = m.completeness(period.start, period.end, interval_s)
                out.append(kv(f"energy_kwh_{suffix}", m.device, v, "kWh", c, [m.device]))
        if kind == "electricity":
            out.append(kv(f"energy_kwh_{suffix}", "site", amount, "kWh", comp(meters), [m.device for m in meters]))
        by_type[kind] = by_type.get(kind, 0.0) + amount
        kgce_total += amount * kgce_per_unit[kind]
    if not energy_meters:
        return out
    c_energy = comp(energy_meters)
    devices = [m.device for m in energy_meters]
    out.append(kv(f"energy_kgce_{suffix}", "site", kgce_total, "kgce", c_energy, devices,
                  extra={"by_type": by_type, "kgce_per_unit": {k: kgce_per_unit[k] for k in by_type}}))
    if ore:
        tonnes = sum(m.used(period.start, period.end) for m in ore)
        c = min(c_energy, comp(ore))
        out.append(kv(
            f"energy_intensity_{suffix}", "site", kgce_total / tonnes if tonnes > 0 else None, "kgce/t", c,
            devices + [m.device for m in ore],
            limit=intensity_limit_kgce_t, comparison=">" if intensity_limit_kgce_t is not None else None,
            standard=intensity_standard.format(limit=intensity_limit_kgce_t) if intensity_limit_kgce_t else "",
            extra={"kgce": kgce_total, "ore_t": tonnes},
        ))
    return out


#: the month energy KPIs whose days must add up to them (intensity is a ratio: its days do not sum)
SUMMED_MONTHLY = ("energy_kwh_monthly", "energy_kgce_monthly")


def daily_of(monthly_kpi: str) -> str:
    """The day KPI whose values add up to a month KPI: energy_kwh_monthly -> energy_kwh_daily."""
    return monthly_kpi.removesuffix("_monthly") + "_daily"


def day_month_deviation(month_value: float, day_values: Iterable[float]) -> tuple[float, float]:
    """(deviation in %, the day sum): how far a month total and the sum of its day values are apart, relative
    to the larger of the two (0 when both are 0). The one check both the monitor's `energy_consistency` alert
    rule and the energy uplink's pre-send check use, so they agree."""
    total = sum(day_values)
    ref = max(abs(month_value), abs(total))
    return (abs(month_value - total) / ref * 100.0 if ref > 0 else 0.0), total
