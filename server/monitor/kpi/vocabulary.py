"""The metric vocabulary the KPIs read: which metric feeds which KPI, under a given `[kpi]` config.

docs/kpi-alerts.md ("Metric vocabulary") shows it for the default config (a test keeps the two
in step), and `greenmine check-config` uses it to warn about a `[[kpi.meters]]` entry no KPI
reads, or whose metric no agent config given beside the server config publishes.
"""

from __future__ import annotations

from greenmine.server.monitor.kpi import dust, noise, water
from greenmine.server.monitor.kpi.config import KpiConfig

_WATER = ("water_reuse_daily", "water_reuse_24h")


def kpis_by_metric(cfg: KpiConfig) -> dict[str, list[str]]:
    """metric -> the KPIs computed from it (increments of the totals; samples of dust and noise)."""
    out: dict[str, list[str]] = {}

    def add(metric: str, *kpis: str) -> None:
        have = out.setdefault(metric, [])
        have += [k for k in kpis if k not in have]

    add(water.FRESH, *_WATER)
    add(water.REUSED, *_WATER)
    for metric, kind in cfg.energy_metrics.items():
        if kind == "electricity":
            add(metric, "energy_kwh_daily", "energy_kwh_monthly")
        add(metric, "energy_kgce_daily", "energy_kgce_monthly", "energy_intensity_daily", "energy_intensity_monthly")
    add(cfg.ore_metric, "energy_intensity_daily", "energy_intensity_monthly")
    add(dust.TSP, "dust_tsp_hourly")
    add(dust.PM10, "dust_pm10_hourly")
    add(noise.LAEQ, "noise_leq_hourly", "noise_leq_day", "noise_leq_night")
    add(cfg.noise.lmax_metric, "noise_lmax_night")
    return out


def counter_metrics(cfg: KpiConfig) -> set[str]:
    """The cumulative metrics (totalizers) the KPIs read as increments: what `[[kpi.meters]]` describes."""
    return {water.REUSED, water.FRESH, cfg.ore_metric, *cfg.energy_metrics}


def meter_warnings(cfg: KpiConfig, site_ids: list[str], published: dict[str, dict[str, set[str]]] | None = None,
                   any_device: set[str] | None = None,
                   widths: dict[tuple[str, str, str], tuple[int, float]] | None = None) -> list[str]:
    """Warnings about `[[kpi.meters]]` entries that can never apply (a config that loads may still say nothing).

    published: site -> device -> metrics, from the agent configs given beside the server config;
    a site with no agent config given is not judged (what it sends cannot be known).
    any_device: metrics of device profiles given alone (no site, no device name): a meter with one of
    these metrics is not warned about.
    widths: (site, device, metric) -> (width_bits, scale) the agents will report from their profiles: a
    `width_bits` in the meter that disagrees is warned about (the configured one wins at run time).
    """
    published = published or {}
    widths = widths or {}
    any_device = any_device or set()
    counters = counter_metrics(cfg)
    out = []
    for i, m in enumerate(cfg.meters):
        where = f'kpi.meters[{i}] "{m.device}" {m.metric}'
        if m.metric not in counters:
            out.append(f"{where}: no KPI reads {m.metric} as a total (the totals read: {', '.join(sorted(counters))})")
            continue
        if m.site is not None and m.site not in site_ids:
            out.append(f"{where}: site {m.site!r} is not configured (sites: {', '.join(site_ids) or 'none'})")
            continue
        sites = [m.site] if m.site is not None else list(site_ids)
        known = [s for s in sites if s in published]
        if not known or m.metric in any_device:
            continue  # no agent config of these sites given: what they send cannot be known here
        if not any(m.metric in published[s].get(m.device, ()) for s in known):
            devices = sorted({d for s in known for d, metrics in published[s].items() if m.metric in metrics})
            hint = f"; {m.metric} comes from {', '.join(devices)}" if devices else f"; no device there publishes {m.metric}"
            out.append(f"{where}: no agent config given for {', '.join(known)} publishes {m.metric} from a device "
                       f"named {m.device!r}{hint}")
            continue
        if m.width_bits:
            for s in known:
                reported = widths.get((s, m.device, m.metric))
                if reported and reported != (m.width_bits, m.scale):
                    out.append(f"{where}: width_bits {m.width_bits} x scale {m.scale:g} disagrees with the profile at "
                               f"{s} ({reported[0]} bits x {reported[1]:g}); the configured width is used")
    return out
