"""What HJ 212 messages say: data flags, period aggregation, message builders.

Owns the meaning layer on top of `codec` (which owns syntax):
- `DataFlag` and the mapping from greenmine reading quality to it;
- `aggregate`, the rule that gives a period its values and its flag
  (documented with its reasons in docs/hj212.md);
- builders for the uploads greenmine sends (2011, 2051, 2061, 2031), the
  answers to platform "get" commands, and the 9011/9012/9013/9014 replies.

Pure: times come in as arguments, QNs are made by the caller.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, IntEnum
from zoneinfo import ZoneInfo

from greenmine.server.uplink.hj212.codec import CpItem, Packet, format_data_time, format_number, make_flag
from greenmine.server.uplink.hj212.config import MetricMapping, PointConfig

ST_SYSTEM = "91"


class DataFlag(str, Enum):
    """HJ 212-2017 data flags (`code-Flag`)."""

    N = "N"  # normal
    F = "F"  # source stopped
    M = "M"  # maintenance
    S = "S"  # manually entered
    D = "D"  # instrument fault
    C = "C"  # calibrating
    T = "T"  # over the upper limit
    B = "B"  # communication fault


#: Flags whose value is a real measurement and counts toward a period's statistics.
VALID_FLAGS = frozenset({DataFlag.N, DataFlag.T})
#: Tie-break among invalid flags, most informative first: a communication or
#: instrument fault explains a gap better than the maintenance around it.
INVALID_PRIORITY = (DataFlag.B, DataFlag.D, DataFlag.F, DataFlag.C, DataFlag.M, DataFlag.S)

#: Share of a period's expected samples that must be valid for the period to be
#: valid. 0.75 is HJ 75's "45 minutes of an hour"; HJ 212 does not fix it, so
#: it is a parameter.
DEFAULT_MIN_COVERAGE = 0.75


class QnRtn(IntEnum):
    """9011 request-reply codes."""

    READY = 1
    REJECTED = 2
    PW_ERROR = 3
    MN_ERROR = 4
    ST_ERROR = 5
    FLAG_ERROR = 6
    QN_ERROR = 7
    CN_ERROR = 8
    CRC_ERROR = 9
    UNKNOWN = 100


class ExeRtn(IntEnum):
    """9012 execution-result codes."""

    SUCCESS = 1
    FAILED = 2
    CONDITION_ERROR = 3
    TIMEOUT = 4
    BUSY = 5
    FAULT = 6
    NO_DATA = 100


class PeriodKind(Enum):
    """The period uploads, by CN."""

    MINUTE = "2051"
    HOUR = "2061"
    DAY = "2031"

    @property
    def cn(self) -> str:
        return self.value


@dataclass(frozen=True)
class RealtimeValue:
    """The latest reading of one metric, as a `RealtimeSource` reports it.

    `quality` is greenmine's reading quality (`good`, `bad`, `stale`,
    `out_of_range`); `device` lets maintenance windows apply; `ts` lets a
    value that stopped updating be flagged B.
    """

    value: float | None
    quality: str = "good"
    device: str | None = None
    ts: datetime | None = None


@dataclass(frozen=True)
class Sample:
    """One value inside a period, with its flag; input to `aggregate`."""

    value: float | None
    flag: DataFlag = DataFlag.N


@dataclass(frozen=True)
class PeriodValue:
    """One metric over one period. Noise: `avg` is the energy-average Leq."""

    flag: DataFlag
    avg: float | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class NoiseDayNight:
    """Daily noise: day Ld and night Ln equivalent levels (energy averages)."""

    day: PeriodValue
    night: PeriodValue


@dataclass(frozen=True)
class PeriodRecord:
    """Everything one period upload carries: its start and its values per greenmine metric."""

    start: datetime
    values: Mapping[str, PeriodValue | NoiseDayNight]


# --------------------------------------------------------------------------- flags and aggregation


def flag_from_quality(quality: str, *, in_maintenance: bool = False) -> DataFlag:
    """greenmine quality -> HJ 212 flag. Maintenance wins: it explains the rest."""
    if in_maintenance:
        return DataFlag.M
    if quality == "good":
        return DataFlag.N
    if quality == "out_of_range":
        return DataFlag.T
    if quality in ("stale", "bad"):
        # Both mean greenmine got no fresh reading from the device: to the
        # platform that is a communication fault, not an instrument fault.
        return DataFlag.B
    raise ValueError(f"unknown reading quality {quality!r}")


def energy_average(levels: Sequence[float]) -> float:
    """Equivalent level of dB values: 10·log10(mean(10^(L/10))), not their arithmetic mean."""
    if not levels:
        raise ValueError("energy average of no levels")
    return 10.0 * math.log10(math.fsum(10.0 ** (lv / 10.0) for lv in levels) / len(levels))


def aggregate(
    samples: Sequence[Sample],
    *,
    expected: int | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    energy: bool = False,
) -> PeriodValue:
    """A period's value and flag from its samples.

    The rule (docs/hj212.md explains why):
    1. Valid samples are those flagged N or T with a value; `expected` (the
       number the period should hold) defaults to the number given, and
       missing samples count as B.
    2. Avg/Min/Max are computed over valid samples (Avg as energy average for
       noise); they are absent when no sample is valid.
    3. If valid samples cover at least `min_coverage` of `expected`, the
       period is valid: flag T if any valid sample was T, else N.
    4. Otherwise the period takes the most frequent invalid flag, ties broken
       B > D > F > C > M > S.
    """
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage {min_coverage} is not in (0, 1]")
    n_expected = max(expected if expected is not None else len(samples), len(samples))
    values: list[float] = []
    any_t = False
    invalid: Counter[DataFlag] = Counter()
    for s in samples:
        if s.flag in VALID_FLAGS and s.value is not None and math.isfinite(s.value):
            values.append(float(s.value))
            any_t = any_t or s.flag is DataFlag.T
        else:
            # A "valid" flag without a usable value is a reading that never came.
            invalid[DataFlag.B if s.flag in VALID_FLAGS else s.flag] += 1
    invalid[DataFlag.B] += n_expected - len(samples)
    if values:
        avg = energy_average(values) if energy else math.fsum(values) / len(values)
        lo, hi = min(values), max(values)
    else:
        avg = lo = hi = None
    if n_expected and len(values) / n_expected >= min_coverage:
        flag = DataFlag.T if any_t else DataFlag.N
    else:
        if not invalid:  # no samples and no expectation: nothing arrived
            invalid[DataFlag.B] = 1
        flag = max(INVALID_PRIORITY, key=lambda f: (invalid[f], -INVALID_PRIORITY.index(f)))
    return PeriodValue(flag=flag, avg=avg, min=lo, max=hi)


# --------------------------------------------------------------------------- periods


def period_start(kind: PeriodKind, at: datetime, tz: ZoneInfo, min_interval_min: int = 10) -> datetime:
    """Start (local, aware) of the period containing `at`. Minute periods align to the hour."""
    local = at.astimezone(tz)
    if kind is PeriodKind.DAY:
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind is PeriodKind.HOUR:
        return local.replace(minute=0, second=0, microsecond=0)
    return local.replace(minute=local.minute - local.minute % min_interval_min, second=0, microsecond=0)


def period_length(kind: PeriodKind, min_interval_min: int = 10) -> timedelta:
    return {
        PeriodKind.MINUTE: timedelta(minutes=min_interval_min),
        PeriodKind.HOUR: timedelta(hours=1),
        PeriodKind.DAY: timedelta(days=1),
    }[kind]


# --------------------------------------------------------------------------- builders


def _scaled(mapping: MetricMapping, value: float) -> str:
    return format_number(value * mapping.scale, mapping.decimals)


def realtime_packet(
    point: PointConfig,
    values: Mapping[str, RealtimeValue],
    *,
    now: datetime,
    qn: str,
    reply_wanted: bool = True,
) -> Packet:
    """2011 real-time data: `DataTime`, then `code-Rtd,code-Flag` per mapped metric present.

    Metrics the source does not report are left out (a site without a
    weather station sends no a01xxx); metrics it reports without a value are
    sent as a flag alone, so the platform sees why the value is missing.
    """
    tz = point.tz
    items: list[CpItem] = [(("DataTime", format_data_time(now.astimezone(tz))),)]
    for mapping in point.metrics:
        rv = values.get(mapping.metric)
        if rv is None:
            continue
        when = rv.ts if rv.ts is not None else now
        flag = flag_from_quality(rv.quality, in_maintenance=point.in_maintenance(rv.device, when))
        if flag is DataFlag.N and rv.ts is not None and (now - rv.ts).total_seconds() > point.realtime_stale_s:
            flag = DataFlag.B
        fields: list[tuple[str, str]] = []
        if rv.value is not None and math.isfinite(rv.value):
            fields.append((f"{mapping.code}-Rtd", _scaled(mapping, rv.value)))
        elif flag is DataFlag.N:
            flag = DataFlag.B
        fields.append((f"{mapping.code}-Flag", flag.value))
        items.append(tuple(fields))
    return Packet(
        qn=qn, st=point.st, cn="2011", pw=point.pw, mn=point.mn,
        flag=make_flag(reply_wanted=reply_wanted), cp=tuple(items),
    )


def period_packet(
    point: PointConfig,
    kind: PeriodKind,
    record: PeriodRecord,
    *,
    qn: str,
    reply_wanted: bool = True,
) -> Packet:
    """2051/2061/2031 data: `DataTime` = period start (local), then per mapped metric
    `code-Avg,code-Min,code-Max,code-Flag`; noise `Leq-Data,Leq-Flag` (minute, hour)
    or `Ld-DayData,Ld-Flag;Ln-NightData,Ln-Flag` (day). Absent values are left
    out, the flag is always sent.
    """
    items: list[CpItem] = [(("DataTime", format_data_time(record.start.astimezone(point.tz))),)]
    for mapping in point.metrics:
        pv = record.values.get(mapping.metric)
        if pv is None:
            continue
        if mapping.kind == "noise":
            if kind is PeriodKind.DAY:
                if not isinstance(pv, NoiseDayNight):
                    raise ValueError(f"daily noise {mapping.metric!r} needs NoiseDayNight, got {type(pv).__name__}")
                items.append(_noise_item(mapping, "Ld", "DayData", pv.day))
                items.append(_noise_item(mapping, "Ln", "NightData", pv.night))
            else:
                if not isinstance(pv, PeriodValue):
                    raise ValueError(f"noise {mapping.metric!r} needs a PeriodValue, got {type(pv).__name__}")
                items.append(_noise_item(mapping, "Leq", "Data", pv))
            continue
        if not isinstance(pv, PeriodValue):
            raise ValueError(f"{mapping.metric!r} needs a PeriodValue, got {type(pv).__name__}")
        fields = [
            (f"{mapping.code}-{name}", _scaled(mapping, v))
            for name, v in (("Avg", pv.avg), ("Min", pv.min), ("Max", pv.max))
            if v is not None
        ]
        fields.append((f"{mapping.code}-Flag", pv.flag.value))
        items.append(tuple(fields))
    return Packet(
        qn=qn, st=point.st, cn=kind.cn, pw=point.pw, mn=point.mn,
        flag=make_flag(reply_wanted=reply_wanted), cp=tuple(items),
    )


def _noise_item(mapping: MetricMapping, code: str, field: str, pv: PeriodValue) -> CpItem:
    fields = []
    if pv.avg is not None:
        fields.append((f"{code}-{field}", _scaled(mapping, pv.avg)))
    fields.append((f"{code}-Flag", pv.flag.value))
    return tuple(fields)


def data_reply(upload: Packet) -> Packet:
    """9014, the platform's answer to an upload: same QN, `ST=91;CN=9014;...;Flag=4;CP=&&&&`."""
    return Packet(qn=upload.qn, st=ST_SYSTEM, cn="9014", pw=upload.pw, mn=upload.mn, flag=make_flag(reply_wanted=False))


def request_reply(request: Packet, point: PointConfig, qn_rtn: QnRtn) -> Packet:
    """9011: whether a platform request will be executed (`QnRtn`), same QN."""
    return Packet(
        qn=request.qn, st=ST_SYSTEM, cn="9011", pw=point.pw, mn=point.mn,
        flag=make_flag(reply_wanted=False), cp=((("QnRtn", str(int(qn_rtn))),),),
    )


def execution_result(request: Packet, point: PointConfig, exe_rtn: ExeRtn) -> Packet:
    """9012: how a platform request ended (`ExeRtn`), same QN."""
    return Packet(
        qn=request.qn, st=ST_SYSTEM, cn="9012", pw=point.pw, mn=point.mn,
        flag=make_flag(reply_wanted=False), cp=((("ExeRtn", str(int(exe_rtn))),),),
    )


def notification_reply(notice: Packet, point: PointConfig) -> Packet:
    """9013: receipt of a platform notification (e.g. 2012 stop real-time), same QN."""
    return Packet(qn=notice.qn, st=ST_SYSTEM, cn="9013", pw=point.pw, mn=point.mn, flag=make_flag(reply_wanted=False))


def answer_packet(request: Packet, point: PointConfig, cp: Sequence[CpItem]) -> Packet:
    """The data answering a platform "get" request (1011, 1061, 1063, history): the
    request's QN and CN, our ST; no 9014 wanted, the exchange ends with 9012."""
    return Packet(
        qn=request.qn, st=point.st, cn=request.cn, pw=point.pw, mn=point.mn,
        flag=make_flag(reply_wanted=False), cp=tuple(cp),
    )
