"""Configuration of one HJ 212 monitoring point (`PointConfig`).

The server config embeds it as `hj212: list[PointConfig]`, i.e. TOML
`[[hj212]]` tables (see docs/hj212.md). Loading is pure: nothing here opens a
socket or a file, and every mistake fails at load naming the field.

Values the standard's text does not fix are settings with defaults, not constants.
"""

from __future__ import annotations

import re

from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

#: MinInterval values HJ 212-2017 allows: the divisors of 60 from 1 to 30, so
#: minute periods tile the hour.
MIN_INTERVALS_MIN = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)
MinIntervalMin = Literal[1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30]

#: Protocol editions this uplink can speak. HJ 212-2025 replaces 2017 from
#: 2026-01-01 but its differences are not yet known, so it is refused at
#: load rather than guessed.
SUPPORTED_VERSIONS = ("2017",)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricMapping(_Model):
    """How one greenmine metric becomes one HJ 212 pollutant code."""

    metric: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="greenmine metric name, e.g. dust_tsp_mgm3")
    code: str = Field(pattern=r"^[A-Za-z0-9]{1,12}$", description="HJ 212 pollutant code, e.g. a34001 or LA")
    scale: float = Field(
        default=1.0, allow_inf_nan=False,
        description="factor applied before sending, for a platform that wants other units "
        "(mg/m3 -> ug/m3 is 1000)",
    )
    decimals: int = Field(ge=0, le=6, description="decimal places sent, per the code's field definition (N3.1 -> 1)")
    kind: Literal["value", "noise"] = Field(
        default="value",
        description="'noise' sends {code}-Rtd in real time but Leq-Data for minute/hourly "
        "and Ld-DayData/Ln-NightData for daily data, as HJ 212 does for acoustic levels",
    )

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v


def _default_metrics() -> list[MetricMapping]:
    # Decimals follow the usual field definitions: particulates in mg/m3 need
    # 3 places (1.0 mg/m3 is the limit, 0.08 a typical clean value); noise
    # and weather are N3.1 / N4.2-style; wind direction is whole degrees.
    rows = [
        ("dust_tsp_mgm3", "a34001", 3, "value"),
        ("dust_pm10_mgm3", "a34002", 3, "value"),
        ("dust_pm25_mgm3", "a34004", 3, "value"),
        ("noise_laeq_db", "LA", 1, "noise"),
        ("air_temp_c", "a01001", 1, "value"),
        ("humidity_pct", "a01002", 1, "value"),
        ("pressure_kpa", "a01006", 2, "value"),
        ("wind_speed_ms", "a01007", 1, "value"),
        ("wind_dir_deg", "a01008", 0, "value"),
    ]
    return [MetricMapping(metric=m, code=c, decimals=d, kind=k) for m, c, d, k in rows]


class MaintenanceWindow(_Model):
    """A time when a device is under maintenance: its data is flagged M."""

    device: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="greenmine device name")
    start: AwareDatetime = Field(description="window start, with UTC offset, e.g. 2026-05-01T08:00:00+08:00")
    end: AwareDatetime = Field(description="window end (exclusive), with UTC offset")
    note: str = Field(default="", description="why, for the operator")

    @model_validator(mode="after")
    def _ordered(self) -> MaintenanceWindow:
        if self.end <= self.start:
            raise ValueError(f"maintenance window for {self.device!r}: end {self.end} is not after start {self.start}")
        return self


class PointConfig(_Model):
    """One monitoring point (one MN) reporting to one HJ 212 platform."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="name used in logs and metrics")
    mn: str = Field(
        pattern=r"^[A-Za-z0-9]{1,24}$",
        description="device unique code MN assigned by the platform (24 characters in 2017; "
        "older platforms issue 13-15)",
    )
    pw: str = Field(pattern=r"^[A-Za-z0-9]{1,9}$", description="access password PW assigned by the platform")
    st: str = Field(
        pattern=r"^\d{2}$",
        description="system code ST: 22 air quality, 23 acoustic environment, 31 air pollution "
        "source, 32 water pollution source, 36 noise source, 39 construction-site dust",
    )
    site: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="greenmine site id whose readings this point reports")
    devices: list[str] = Field(
        min_length=1,
        description="the site's devices this point reports (its boundary dust, noise and weather devices); a metric "
        "is taken from the first listed device that has readings of it",
    )
    host: str = Field(min_length=1, description="platform host name or address")
    port: int = Field(ge=1, le=65535, description="platform TCP port")
    protocol_version: str = Field(default="2017", description="HJ 212 edition; only 2017 is supported")
    timezone: str = Field(
        default="Asia/Shanghai",
        description="zone of QN, DataTime and period boundaries (platforms expect local time)",
    )
    rtd_interval_s: int = Field(default=30, ge=30, le=3600, description="real-time (2011) interval; the platform may change it with CN=1062")
    min_interval_min: MinIntervalMin = Field(default=10, description="minute-data (2051) period; the platform may change it with CN=1064")
    realtime_enabled: bool = Field(default=True, description="send 2011 real-time data at start (the platform toggles it with 2011/2012)")
    reply_timeout_s: float = Field(default=10.0, gt=0, le=600, description="wait for the 9014 reply to each upload")
    max_tries: int = Field(default=3, ge=1, le=20, description="sends of one packet before it is left queued for later")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP connect timeout")
    reconnect_initial_s: float = Field(default=1.0, gt=0, description="first reconnect delay; doubles per failure")
    reconnect_max_s: float = Field(default=300.0, gt=0, description="cap of the reconnect delay")
    queue_path: Path | None = Field(
        default=None, description="SQLite file of unacknowledged packets; default data/hj212/<name>.sqlite",
    )
    queue_max_packets: int = Field(
        default=200_000, ge=1,
        description="queue bound; when full the oldest packet is dropped (and counted) to make room",
    )
    realtime_max_age_s: int = Field(
        default=3600, ge=0,
        description="queued real-time (2011) packets older than this are dropped unsent: platforms "
        "treat late real-time data as stale; minute/hour/day data never expire",
    )
    realtime_stale_s: float = Field(
        default=120.0, gt=0, description="a latest value older than this is sent flagged B (device offline)",
    )
    history_max_span_h: int = Field(
        default=31 * 24, ge=1, description="longest BeginTime..EndTime window a history request may ask for",
    )
    history_max_age_d: int = Field(
        default=366, ge=1,
        description="a history request whose BeginTime is older than this many days is refused (QnRtn=2)",
    )
    max_clock_offset_s: int = Field(
        default=86_400, ge=0, le=366 * 86_400,
        description="a 1012 set-time whose SystemTime is further than this from the server's clock is refused "
        "(QnRtn=2) and the offset kept; 0 refuses every 1012",
    )
    max_frame_bytes: int = Field(
        default=4096, ge=1040, le=1_048_576,
        description="a frame from the platform longer than this (## to CRLF; the standard's largest is 1036) "
        "is dropped unparsed and counted; the link stays up",
    )
    max_frames_per_s: float = Field(
        default=20.0, gt=0, le=10_000,
        description="frames per second accepted from the platform (token bucket); the excess is dropped "
        "unparsed and counted; the link stays up",
    )
    frame_burst: int = Field(
        default=100, ge=1, le=100_000, description="frames the platform may send at once above max_frames_per_s",
    )
    noise_day_start_h: int = Field(
        default=6, ge=0, le=23,
        description="local hour the noise day (Ld) starts; GB 12348: 06:00, local government may shift it",
    )
    noise_night_start_h: int = Field(
        default=22, ge=0, le=23,
        description="local hour the noise night (Ln) starts; GB 12348: 22:00; night runs to noise_day_start_h",
    )
    metrics: list[MetricMapping] = Field(default_factory=_default_metrics, description="metric -> HJ 212 code map")
    maintenance: list[MaintenanceWindow] = Field(default_factory=list, description="per-device maintenance windows (data flagged M)")

    @field_validator("protocol_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"protocol_version {v!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)}); "
                "HJ 212-2025's differences are not confirmed yet"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @field_validator("st")
    @classmethod
    def _not_system(cls, v: str) -> str:
        if v == "91":
            raise ValueError("ST 91 is for system replies, not a monitoring point")
        return v

    @model_validator(mode="after")
    def _unique(self) -> PointConfig:
        seen_m: dict[str, int] = {}
        seen_c: dict[str, int] = {}
        for i, m in enumerate(self.metrics):
            if m.metric in seen_m:
                raise ValueError(f"metrics[{i}]: metric {m.metric!r} already mapped in metrics[{seen_m[m.metric]}]")
            if m.code in seen_c:
                raise ValueError(f"metrics[{i}]: code {m.code!r} already used by metrics[{seen_c[m.code]}]")
            seen_m[m.metric] = i
            seen_c[m.code] = i
        noise = [m.metric for m in self.metrics if m.kind == "noise"]
        if len(noise) > 1:
            raise ValueError(f"only one noise metric per point (Leq-Data has one code), got {noise}")
        for i, d in enumerate(self.devices):
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", d):
                raise ValueError(f"devices[{i}]: {d!r} is not a device name")
            if d in self.devices[:i]:
                raise ValueError(f"devices[{i}]: {d!r} is listed twice")
        if self.noise_day_start_h >= self.noise_night_start_h:
            raise ValueError(
                f"noise_day_start_h {self.noise_day_start_h} must be before noise_night_start_h {self.noise_night_start_h}"
            )
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s is smaller than reconnect_initial_s")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def queue_file(self) -> Path:
        return self.queue_path if self.queue_path is not None else Path("data") / "hj212" / f"{self.name}.sqlite"

    def mapping_for(self, metric: str) -> MetricMapping | None:
        for m in self.metrics:
            if m.metric == metric:
                return m
        return None

    def is_day(self, local_hour: int) -> bool:
        """Whether a local hour belongs to the noise day (Ld) rather than the night (Ln)."""
        return self.noise_day_start_h <= local_hour < self.noise_night_start_h

    def in_maintenance(self, device: str | None, at: datetime) -> bool:
        """Whether `device` is in one of its maintenance windows at `at` (aware)."""
        if device is None:
            return False
        return any(w.device == device and w.start <= at < w.end for w in self.maintenance)


def check_unique_points(points: list[PointConfig]) -> None:
    """Names and MNs must be unique across points (a duplicate would mix two queues or two identities)."""
    names: dict[str, int] = {}
    mns: dict[str, int] = {}
    for i, p in enumerate(points):
        if p.name in names:
            raise ValueError(f"hj212[{i}] {p.name!r}: name already used by hj212[{names[p.name]}]")
        if p.mn in mns:
            raise ValueError(f"hj212[{i}] {p.name!r}: MN {p.mn} already used by hj212[{mns[p.mn]}]")
        names[p.name] = i
        mns[p.mn] = i


def check_points(points: list[PointConfig], known_sites: set[str] | None) -> None:
    """`check_unique_points`, and every point's site must be configured (`known_sites`;
    None when the server accepts unknown sites): a point on a site whose telemetry
    is rejected would only ever send empty frames."""
    check_unique_points(points)
    if known_sites is None:
        return
    for i, p in enumerate(points):
        if p.site not in known_sites:
            raise ValueError(f"hj212[{i}] {p.name!r}: site {p.site!r} is not in sites")
