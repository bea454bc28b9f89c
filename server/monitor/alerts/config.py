"""Alert rules and the `[alerts]` section of the server config.

Rules have a discriminated `kind`:

- `threshold`: a KPI (or a raw metric) compared with a limit, for a duration,
  cleared with hysteresis. Without `limit`/`comparison` the KPI's own site
  limit applies (e.g. the site's reuse floor, its GB 12348 class limit).
- `deadman`: no data from a device or an agent for `silence_s`, or the agent
  reported itself offline and did not come back within `for_s`.
- `energy_consistency`: when a month energy KPI (site or meter kWh, site kgce)
  is computed or recomputed, the sum of that month's day values differs from
  it by more than `tolerance_pct` (the energy-platform data-quality rule).

Maintenance windows (`maintenance`, `server.monitor.alerts.maintenance`) hold
the alerts that begin inside them.

The shipped default set (`DEFAULT_RULES`) is on unless `default_rules = false`;
a configured rule with the same name replaces the default one.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from greenmine.server.monitor.alerts.maintenance import MaintenanceWindow
from greenmine.server.monitor.kpi.rounding import MAX_DECIMALS

IDENT = r"^[A-Za-z0-9_-]{1,64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class ThresholdRule(_Model):
    kind: Literal["threshold"] = Field(default="threshold", description="rule kind: threshold")
    name: str = Field(pattern=IDENT, description="rule name, unique; names the alert in emails and the CLI")
    source: Literal["kpi", "metric"] = Field(default="kpi", description="kpi: a computed KPI series; metric: raw readings")
    series: str = Field(description="KPI name (e.g. water_reuse_daily) or metric name (e.g. power_kw)")
    comparison: Literal["<", "<=", ">", ">="] | None = Field(
        default=None, description="the breach test; absent: the KPI's own (e.g. reuse '<', dust '>')"
    )
    limit: float | None = Field(default=None, description="absent: the site's limit that the KPI carries")
    for_s: float = Field(default=0.0, ge=0, description="the breach must last this long (by data time) before firing")
    clear_hysteresis: float = Field(
        default=0.0, ge=0, description="a firing alert clears only this far on the good side of the limit (value units)"
    )
    judge_decimals: int | None = Field(
        default=None, ge=0, le=MAX_DECIMALS,
        description="round the value to this many decimals (GB/T 8170, half to even) before judging it; absent: the "
        "KPI's own ([kpi] judge_decimals), else one decimal more than the limit is written with",
    )
    require_complete: bool = Field(default=True, description="ignore KPI periods whose data completeness is below the threshold")
    severity: Severity = Field(default=Severity.WARNING, description="info | warning | critical")
    recipients: list[str] = Field(default_factory=list, description="extra recipients, besides the site's")
    sites: list[str] = Field(default_factory=list, description="only these site ids; empty: every site")
    devices: list[str] = Field(default_factory=list, description="only these devices (KPI subjects); empty: every one")
    title_zh: str | None = Field(default=None, max_length=80, description="what is breached, in Chinese, for emails; default: the series name (KPIs bring their own)")
    title_en: str | None = Field(default=None, max_length=80, description="what is breached, in English, for emails; default: the series name")


class DeadmanRule(_Model):
    kind: Literal["deadman"] = Field(default="deadman", description="rule kind: deadman")
    name: str = Field(pattern=IDENT, description="rule name, unique")
    target: Literal["device", "agent"] = Field(description="device: no good reading from it; agent: no message or status offline")
    silence_s: float = Field(default=300.0, gt=0, description="fire after this long without data")
    for_s: float = Field(
        default=300.0, ge=0,
        description="grace for a reported offline status (an agent's will or a graceful stop): it fires only if "
        "no online status follows within this long; 0: at once. Silence is judged by silence_s alone",
    )
    severity: Severity = Field(default=Severity.WARNING, description="info | warning | critical")
    recipients: list[str] = Field(default_factory=list, description="extra recipients, besides the site's")
    sites: list[str] = Field(default_factory=list, description="only these site ids; empty: every site")
    devices: list[str] = Field(default_factory=list, description="only these devices or agents; empty: every one")


class EnergyConsistencyRule(_Model):
    kind: Literal["energy_consistency"] = Field(default="energy_consistency", description="rule kind: energy_consistency")
    name: str = Field(pattern=IDENT, description="rule name, unique")
    series: list[Literal["energy_kwh_monthly", "energy_kgce_monthly"]] = Field(
        default_factory=lambda: ["energy_kwh_monthly", "energy_kgce_monthly"], min_length=1,
        description="the month KPIs checked against the sum of their day KPIs (energy_kwh_monthly, energy_kgce_monthly)",
    )
    tolerance_pct: float = Field(
        default=5.0, ge=0, le=100,
        description="fires when the month value and the sum of its day values differ by more than this, in % of the larger",
    )
    severity: Severity = Field(default=Severity.WARNING, description="info | warning | critical")
    recipients: list[str] = Field(default_factory=list, description="extra recipients, besides the site's")
    sites: list[str] = Field(default_factory=list, description="only these site ids; empty: every site")
    devices: list[str] = Field(default_factory=list, description="only these KPI subjects (site, or a meter); empty: every one")


Rule = Annotated[ThresholdRule | DeadmanRule | EnergyConsistencyRule, Field(discriminator="kind")]
AnyRule = ThresholdRule | DeadmanRule | EnergyConsistencyRule

DEFAULT_RULES: list[AnyRule] = [
    ThresholdRule(name="water_reuse_daily", series="water_reuse_daily", clear_hysteresis=1.0, severity=Severity.CRITICAL),
    ThresholdRule(name="dust_tsp_hourly", series="dust_tsp_hourly", clear_hysteresis=0.05, severity=Severity.WARNING),
    ThresholdRule(name="noise_night_leq", series="noise_leq_night", clear_hysteresis=1.0, severity=Severity.WARNING),
    ThresholdRule(name="noise_day_leq", series="noise_leq_day", clear_hysteresis=1.0, severity=Severity.WARNING),
    ThresholdRule(name="noise_night_lmax", series="noise_lmax_night", clear_hysteresis=1.0, severity=Severity.INFO),
    ThresholdRule(name="energy_intensity_daily", series="energy_intensity_daily", severity=Severity.WARNING),
    DeadmanRule(name="device_offline", target="device", silence_s=300.0, severity=Severity.WARNING),
    DeadmanRule(name="agent_offline", target="agent", silence_s=300.0, severity=Severity.CRITICAL),
    EnergyConsistencyRule(name="energy_consistency", severity=Severity.WARNING),
]


class AlertsConfig(_Model):
    db_path: str = Field(default="alerts.sqlite", description="alert state and email outbox (SQLite); relative to the config file")
    default_rules: bool = Field(default=True, description="include the shipped rule set (a rule of the same name overrides one)")
    rules: list[Rule] = Field(default_factory=list, description="rules, [[alerts.rules]] with kind = threshold | deadman | energy_consistency")
    min_renotify_s: float = Field(
        default=1800.0, ge=0, description="a key fires by email at most once in this interval; brief re-breaches inside it stay quiet"
    )
    reminder_interval_s: float = Field(default=86400.0, ge=0, description="remind about unacknowledged firing alerts this often; 0: never")
    tick_interval_s: float = Field(default=30.0, gt=0, description="how often deadman, reminders and KPI runs are checked")
    maintenance: list[MaintenanceWindow] = Field(
        default_factory=list,
        description="maintenance windows, [[alerts.maintenance]]: alerts of the site (or device) that begin inside "
        "one are held, not emailed; more from 'greenmine alerts maintenance add'",
    )

    @model_validator(mode="after")
    def _unique(self) -> AlertsConfig:
        seen = set()
        for i, r in enumerate(self.rules):
            if r.name in seen:
                raise ValueError(f'rules[{i}] "{r.name}": duplicate rule name')
            seen.add(r.name)
        return self

    def effective_rules(self) -> list[AnyRule]:
        mine = {r.name for r in self.rules}
        base = [r for r in DEFAULT_RULES if r.name not in mine] if self.default_rules else []
        return base + list(self.rules)
