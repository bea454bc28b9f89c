"""The KPI value every calculator returns, and the catalog of KPI names.

A `KpiValue` carries everything an alert and its email need: the value and
unit, the limit that applies and the standard it comes from, the period, the
devices and the data completeness.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KpiValue:
    site: str
    kpi: str  # catalog name, e.g. water_reuse_daily
    subject: str  # "site" or a device name
    period_kind: str
    period_start: float
    period_end: float
    period_label: str
    value: float | None  # None: nothing to compute from (e.g. no ore processed)
    unit: str  # `value` is the judged value: rounded to `decimals` when there is a limit (rounding.py)
    completeness: float  # 0..1
    complete: bool
    devices: tuple[str, ...] = ()
    limit: float | None = None
    comparison: str | None = None  # the *breach* test: "<" or ">"
    standard: str = ""  # e.g. "GB 12348-2008 2类 夜间 50 dB(A)"
    extra: dict = field(default_factory=dict)
    #: the value as computed, before rounding for judging (`value` is the judged one); None: not rounded
    raw_value: float | None = None
    #: the decimals `value` was rounded to for judging its limit (server.monitor.kpi.rounding); None: not judged
    decimals: int | None = None

    @property
    def breached(self) -> bool | None:
        """True/False when judged against its own limit; None when not judgeable."""
        if self.value is None or self.limit is None or self.comparison is None or not self.complete:
            return None
        return self.value < self.limit if self.comparison == "<" else self.value > self.limit

    def to_dict(self) -> dict:
        # not dataclasses.asdict: its deep copy was most of the cost of storing a KPI value
        d = dict(self.__dict__)
        d["devices"] = list(self.devices)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> KpiValue:
        d = dict(d)
        d["devices"] = tuple(d.get("devices") or ())
        return cls(**d)


@dataclass(frozen=True)
class KpiInfo:
    title_zh: str
    title_en: str
    resolves_zh: str
    resolves_en: str


CATALOG: dict[str, KpiInfo] = {
    "water_reuse_daily": KpiInfo(
        "选矿废水循环利用率(日)", "beneficiation water reuse rate (daily)",
        "某一完整日的循环利用率回到限值以上", "a complete day's reuse rate back above the limit",
    ),
    "water_reuse_24h": KpiInfo(
        "选矿废水循环利用率(滚动24小时)", "beneficiation water reuse rate (rolling 24 h)",
        "滚动24小时循环利用率回到限值以上", "the rolling 24 h reuse rate back above the limit",
    ),
    "energy_kwh_daily": KpiInfo("日用电量", "electricity per day", "—", "—"),
    "energy_kwh_monthly": KpiInfo("月用电量", "electricity per month", "—", "—"),
    "energy_kgce_daily": KpiInfo("日综合能耗(标准煤)", "energy per day (standard coal)", "—", "—"),
    "energy_kgce_monthly": KpiInfo("月综合能耗(标准煤)", "energy per month (standard coal)", "—", "—"),
    "energy_intensity_daily": KpiInfo(
        "单位矿石能耗(日)", "energy intensity per tonne of ore (daily)",
        "某一完整日的单位矿石能耗回到限值以下", "a complete day's intensity back below the limit",
    ),
    "energy_intensity_monthly": KpiInfo(
        "单位矿石能耗(月)", "energy intensity per tonne of ore (monthly)",
        "某一完整月的单位矿石能耗回到限值以下", "a complete month's intensity back below the limit",
    ),
    "dust_tsp_hourly": KpiInfo(
        "厂界颗粒物(TSP)小时均值", "boundary dust (TSP) 1-hour average",
        "某一完整小时的均值回到限值以下", "a complete hour's average back below the limit",
    ),
    "dust_pm10_hourly": KpiInfo(
        "厂界PM10小时均值", "boundary PM10 1-hour average",
        "某一完整小时的均值回到限值以下", "a complete hour's average back below the limit",
    ),
    "noise_leq_hourly": KpiInfo(
        "厂界噪声小时等效声级", "boundary noise hourly Leq",
        "某一完整小时的等效声级回到限值以下", "a complete hour's Leq back below the limit",
    ),
    "noise_leq_day": KpiInfo(
        "厂界噪声昼间等效声级", "boundary noise day-time Leq",
        "某一完整昼间的等效声级回到限值以下", "a complete day period's Leq back below the limit",
    ),
    "noise_leq_night": KpiInfo(
        "厂界噪声夜间等效声级", "boundary noise night-time Leq",
        "某一完整夜间的等效声级回到限值以下", "a complete night's Leq back below the limit",
    ),
    "noise_lmax_night": KpiInfo(
        "厂界噪声夜间最大声级", "boundary noise night-time Lmax",
        "某一夜间最大声级不超过限值", "a night's Lmax within the limit",
    ),
}


def info(kpi: str) -> KpiInfo:
    return CATALOG.get(kpi) or KpiInfo(kpi, kpi, "数值回到限值以内", "the value back within the limit")


@dataclass(frozen=True)
class MeterData:
    """One meter's increments and the times it was read (for completeness) over a window."""

    device: str
    incs: list = field(default_factory=list)  # list[Increment]
    read_ts: list = field(default_factory=list)  # list[float]


@dataclass(frozen=True)
class Sample:
    """One good-quality sample of a non-cumulative metric (dust, noise)."""

    device: str
    ts: float
    value: float
