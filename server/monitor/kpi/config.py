"""Config of the KPI engine: the `[kpi]` section of the server config.

Per-site limits live in `server.config.Limits` (SiteConfig.limits); this
section holds how KPIs are computed. Every default is the published figure (docs/kpi-alerts.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from greenmine.server.monitor.kpi.counters import CounterSpec
from greenmine.server.monitor.kpi.model import CATALOG
from greenmine.server.monitor.kpi.rounding import MAX_DECIMALS

#: Electricity and heat from secondary sources; the fuels are defaults to check against GB/T 2589-2020 (not seen).
DEFAULT_KGCE_PER_UNIT = {
    "electricity": 0.1229,  # kgce/kWh, equivalent value
    "heat": 0.03412,  # kgce/MJ
    "raw_coal": 0.7143,  # kgce/kg
    "diesel": 1.4571,  # kgce/kg
    "gasoline": 1.4714,  # kgce/kg
    "natural_gas": 1.2143,  # kgce/m3
}

DEFAULT_ENERGY_METRICS = {"energy_kwh_total": "electricity"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeterConfig(_Model):
    """How one totalizer behaves, for the counter rules."""

    site: str | None = Field(default=None, description="site id; absent: this device name at any site")
    device: str = Field(description="device name as the agent publishes it")
    metric: str = Field(description="cumulative metric, e.g. energy_kwh_total")
    width_bits: int | None = Field(
        default=None,
        description="register width for rollover: 16, 32 or 64; absent: the width the agent's status reports from the "
        "device profile, else no rollover (float totals). Given, it wins over the reported one (a disagreement is logged)",
    )
    scale: float = Field(default=1.0, gt=0, description="the register's scale: the wrap in engineering units is 2^width_bits x scale (litres -> m3: 0.001); with width_bits only")
    max_rate_per_h: float | None = Field(
        default=None, gt=0, description="largest plausible consumption per hour (max kW, m3/h, t/h); faster increments are spikes"
    )

    @model_validator(mode="after")
    def _bits(self) -> MeterConfig:
        if self.width_bits is not None and self.width_bits not in (16, 32, 64):
            raise ValueError(f"width_bits must be 16, 32 or 64, not {self.width_bits}")
        return self


class NoiseConfig(_Model):
    day_start_h: int = Field(default=6, ge=0, le=23, description="local hour the day period starts (GB 12348: 06; local government may shift it)")
    night_start_h: int = Field(default=22, ge=0, le=23, description="local hour the night period starts (22); night spans midnight")
    lmax_frequent_over_db: float = Field(default=10.0, ge=0, description="night frequent-noise Lmax may exceed the night limit by this much")
    lmax_sporadic_over_db: float = Field(default=15.0, ge=0, description="night sporadic-noise Lmax may exceed the night limit by this much")
    lmax_metric: str = Field(default="noise_laeq_db", description="metric whose maximum is the night Lmax (e.g. a LAFmax register)")

    @model_validator(mode="after")
    def _hours(self) -> NoiseConfig:
        if self.day_start_h == self.night_start_h:
            raise ValueError("day_start_h and night_start_h must differ")
        return self


class KpiConfig(_Model):
    counter_interval_s: float = Field(default=60.0, gt=0, description="expected interval between totalizer reads, for completeness")
    sample_interval_s: float = Field(default=60.0, gt=0, description="expected interval between dust/noise samples, for completeness")
    completeness_min_pct: float = Field(default=90.0, ge=0, le=100, description="below this share of expected intervals a period is incomplete and not judged")
    reset_ratio: float = Field(default=0.9, gt=0, lt=1, description="a drop below this share of the previous total is a meter reset")
    rolling_every_s: float = Field(default=900.0, gt=0, description="how often the rolling 24 h reuse rate is recomputed")
    counter_lookback_s: float = Field(default=86400.0, ge=0, description="reads before a period that are replayed to find the counter baseline")
    meters: list[MeterConfig] = Field(
        default_factory=list, description="per-meter width and max rate; the width can come from the agents' status instead"
    )
    kgce_per_unit: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_KGCE_PER_UNIT), description="standard coal coefficient per energy type (kgce per the meter's unit)"
    )
    energy_metrics: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ENERGY_METRICS), description="cumulative metric -> energy type, e.g. diesel_kg_total = diesel"
    )
    ore_metric: str = Field(default="ore_t_total", description="belt-scale totalizer, tonnes of ore processed")
    dust_pm10_limit_mgm3: float | None = Field(default=None, gt=0, description="optional PM10 1-hour limit; absent: PM10 is reported, not judged")
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="day/night hours and Lmax margins for GB 12348 noise")
    judge_decimals: dict[str, int] = Field(
        default_factory=dict,
        description="KPI name -> decimals its value is rounded to (GB/T 8170, half to even) before it is judged "
        "against its limit, e.g. dust_tsp_hourly = 3; absent: one decimal more than the limit is written with",
    )

    @model_validator(mode="after")
    def _check(self) -> KpiConfig:
        for kpi, d in self.judge_decimals.items():
            if kpi not in CATALOG:
                raise ValueError(f'judge_decimals "{kpi}": unknown KPI; known: {", ".join(sorted(CATALOG))}')
            if not 0 <= d <= MAX_DECIMALS:
                raise ValueError(f'judge_decimals "{kpi}" = {d}: decimals must be 0..{MAX_DECIMALS}')
        for metric, kind in self.energy_metrics.items():
            if kind not in self.kgce_per_unit:
                raise ValueError(f'energy_metrics "{metric}": energy type "{kind}" has no kgce_per_unit coefficient')
        seen = set()
        for i, m in enumerate(self.meters):
            key = (m.site, m.device, m.metric)
            if key in seen:
                raise ValueError(f'meters[{i}] "{m.device}" {m.metric}: duplicate meter')
            seen.add(key)
        return self

    def meter(self, site: str, device: str, metric: str) -> MeterConfig | None:
        """The [[kpi.meters]] entry for this meter: the one naming the site, else the one for any site."""
        best = None
        for m in self.meters:
            if m.device == device and m.metric == metric and m.site in (None, site):
                if best is None or m.site is not None:
                    best = m
        return best

    def counter_spec(self, site: str, device: str, metric: str,
                     reported: tuple[int, float] | None = None) -> CounterSpec:
        """reported: (width_bits, scale) from the agent's status (the device profile). A width in
        [[kpi.meters]] wins over it; without one, the reported width is used."""
        best = self.meter(site, device, metric)
        if best and best.width_bits:
            width = float(2**best.width_bits) * best.scale
        elif reported is not None:
            width = float(2 ** reported[0]) * reported[1]
        else:
            width = None
        rate = best.max_rate_per_h / 3600.0 if best and best.max_rate_per_h else None
        return CounterSpec(width=width, reset_ratio=self.reset_ratio, max_rate_per_s=rate)
