"""The KPI value every calculator returns, and the catalog of KPI names.

A `KpiValue` carries everything an alert and its email need: the value and
unit, the limit that applies and the standard it comes from, the period, the
devices and the data completeness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from greenmine.server.monitor.kpi.periods import SLOT_S, allocate, completeness


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
    """One meter's increments and the times it was read (for completeness) over a window, from a replay of
    its reads (`KpiEngine`, `kpi recompute`)."""

    device: str
    incs: list = field(default_factory=list)  # list[Increment]
    read_ts: list = field(default_factory=list)  # list[float]

    def used(self, start: float, end: float) -> float:
        """Consumption inside [start, end)."""
        return allocate(self.incs, start, end)

    def completeness(self, start: float, end: float, interval_s: float) -> float:
        """Share of the expected read intervals in [start, end) that hold a read (0..1)."""
        return completeness(self.read_ts, start, end, interval_s)


@dataclass(frozen=True)
class SlotMeterData:
    """One meter from the monitor's rollups (`server.monitor.kpi.rollups`): per SLOT_S slot, the consumption
    in it and a bitmask of the `interval_s` read intervals that hold a read. Answers like MeterData: exactly
    for a period whose edges fall on slots (every calendar period does), prorated by time inside a slot
    otherwise (the rolling 24 h)."""

    device: str
    slots: tuple = ()  # ((slot_start, consumption, mask), ...) in time order
    interval_s: float = 60.0

    def used(self, start: float, end: float) -> float:
        out = 0.0
        for s, inc, _mask in self.slots:
            if not inc or s >= end or s + SLOT_S <= start:
                continue
            if start <= s and s + SLOT_S <= end:
                out += inc
            else:
                out += inc * (min(s + SLOT_S, end) - max(s, start)) / SLOT_S
        return out

    def completeness(self, start: float, end: float, interval_s: float) -> float:
        expected = max(1, round((end - start) / interval_s))
        n = 0
        for s, _inc, mask in self.slots:
            if s >= end or s + SLOT_S <= start:
                continue
            if start <= s and s + SLOT_S <= end:
                n += mask.bit_count()
            else:
                n += sum(1 for b in range(mask.bit_length()) if mask >> b & 1 and start <= s + b * self.interval_s < end)
        return min(1.0, n / expected)


@dataclass(frozen=True)
class Sample:
    """One good-quality sample of a non-cumulative metric (dust, noise)."""

    device: str
    ts: float
    value: float


def energy(level_db: float) -> float:
    """10^(L/10), the sound energy a level stands for (what Leq averages); levels are clamped to
    -100..300 dB so a hostile value neither overflows nor vanishes."""
    return 10.0 ** (min(300.0, max(-100.0, level_db)) / 10.0)


@dataclass(frozen=True)
class SampleStats:
    """One monitor's samples over a period, as the dust and noise KPIs read them: count, sum, energy sum,
    the largest value and when it came first, and the share of expected intervals that hold a sample."""

    device: str
    n: int
    total: float
    esum: float  # sum of energy(value): Leq = 10 log10(esum / n)
    top: float
    top_ts: float
    completeness: float

    @property
    def mean(self) -> float:
        return self.total / self.n

    @property
    def leq(self) -> float:
        return 10.0 * math.log10(self.esum / self.n)


def sample_stats(samples: list[Sample], start: float, end: float, interval_s: float) -> list[SampleStats]:
    """Per device, the stats of its samples inside [start, end), in device order."""
    by: dict[str, list[Sample]] = {}
    for s in samples:
        if start <= s.ts < end:
            by.setdefault(s.device, []).append(s)
    out = []
    for dev, ss in sorted(by.items()):
        top = max(ss, key=lambda s: (s.value, -s.ts))
        out.append(SampleStats(dev, len(ss), sum(s.value for s in ss), sum(energy(s.value) for s in ss), top.value,
                               top.ts, completeness([s.ts for s in ss], start, end, interval_s)))
    return out
