"""Telemetry v1: a batch of readings from one agent.

`parse_telemetry` is the one way in from the wire: it turns raw bytes into a
`TelemetryBatch` or raises `WireError` with a reason from a closed set.
`parse_telemetry_rows` is the same contract for a consumer that wants flat
rows rather than model objects (the server's ingest): it accepts exactly what
`parse_telemetry` accepts, with the same reasons, at a fraction of the cost.

Both try a fast path first and use the slow, reason-classifying path only for
a payload the fast path did not accept, so a valid batch is paid for once in
pydantic-core and a rejected one still gets its exact reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Annotated, Any, Literal, NamedTuple

from typing_extensions import TypedDict

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, with_config

from greenmine.schemas.errors import WireError, WireRejectReason

TELEMETRY_SCHEMA_V1 = "greenmine.telemetry.v1"

#: Identifiers go into topics and line-protocol tags, so they are restricted.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]

#: The metric vocabulary the KPIs read (DESIGN.md). Other names are stored but not used by KPIs.
METRICS = frozenset(
    {
        "energy_kwh_total",
        "power_kw",
        "water_fresh_m3_total",
        "water_reused_m3_total",
        "water_flow_m3h",
        "dust_tsp_mgm3",
        "dust_pm10_mgm3",
        "dust_pm25_mgm3",
        "noise_laeq_db",
        "ore_t_total",
    }
)


class Quality(str, Enum):
    GOOD = "good"
    BAD = "bad"
    STALE = "stale"
    OUT_OF_RANGE = "out_of_range"


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Reading(_Wire):
    """One value of one metric of one device, at the time it was polled."""

    device: Identifier = Field(description="device name, unique within the site")
    metric: Identifier = Field(description="metric name, e.g. energy_kwh_total")
    ts: AwareDatetime = Field(description="time of the poll (not of sending), timezone-aware")
    # An int stays an int: a 64-bit counter above 2^53 is exact only as a JSON integer.
    value: int | Annotated[float, Field(allow_inf_nan=False)] = Field(
        description="engineering value after scale and offset (an integer for exact 64-bit counters)")
    unit: str = Field(default="", max_length=16, description="unit, e.g. kWh, m3, mg/m3, dB(A)")
    quality: Quality = Field(default=Quality.GOOD, description="good | bad | stale | out_of_range")


class TelemetryBatch(_Wire):
    """A batch of readings, published QoS 1 on greenmine/v1/{site}/{agent}/telemetry."""

    schema_: Literal["greenmine.telemetry.v1"] = Field(default=TELEMETRY_SCHEMA_V1, alias="schema")
    site: Identifier
    agent: Identifier
    seq: int = Field(ge=0, description="monotonic per agent, survives restarts")
    sent_at: AwareDatetime
    readings: list[Reading] = Field(min_length=1)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


@dataclass(frozen=True)
class WireLimits:
    """Bounds applied to incoming messages. The server config sets them."""

    max_payload_bytes: int = 512 * 1024
    max_readings: int = 10_000
    max_future_skew_s: float = 300.0


_ID_FIELDS = {"site", "agent", "device", "metric"}


def _classify(exc: ValidationError) -> WireError:
    order = [
        WireRejectReason.UNKNOWN_SCHEMA,
        WireRejectReason.NAN_OR_INF,
        WireRejectReason.BAD_IDENTIFIER,
        WireRejectReason.EMPTY_BATCH,
        WireRejectReason.INVALID,
    ]
    found: dict[WireRejectReason, str] = {}
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        where = ".".join(str(p) for p in loc) or "<root>"
        kind = err["type"]
        if loc == ("schema",):
            reason = WireRejectReason.UNKNOWN_SCHEMA
        elif kind == "finite_number":
            reason = WireRejectReason.NAN_OR_INF
        elif kind == "string_pattern_mismatch" and loc and loc[-1] in _ID_FIELDS:
            reason = WireRejectReason.BAD_IDENTIFIER
        elif loc == ("readings",) and kind == "too_short":
            reason = WireRejectReason.EMPTY_BATCH
        else:
            reason = WireRejectReason.INVALID
        found.setdefault(reason, f"{where}: {err['msg']}")
    for reason in order:
        if reason in found:
            return WireError(reason, found[reason])
    return WireError(WireRejectReason.INVALID, str(exc))  # pragma: no cover


def _load_json(payload: bytes | str, limits: WireLimits) -> Any:
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise WireError(WireRejectReason.OVERSIZE, f"payload is {size} bytes, limit {limits.max_payload_bytes}")
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(WireRejectReason.NOT_JSON, str(exc)[:200]) from None


def _has_non_finite(doc: Any) -> bool:
    if isinstance(doc, float):
        return not math.isfinite(doc)
    if isinstance(doc, dict):
        return any(_has_non_finite(v) for v in doc.values())
    if isinstance(doc, list):
        return any(_has_non_finite(v) for v in doc)
    return False


def parse_telemetry(
    payload: bytes | str,
    *,
    limits: WireLimits = WireLimits(),
    now: datetime | None = None,
) -> TelemetryBatch:
    """Validate a telemetry payload. Raises WireError; never anything else."""
    if len(payload) <= limits.max_payload_bytes:
        # Fast path: pydantic-core parses and validates in one pass. A model that
        # forbids extra fields and types every number (value forbids NaN/Inf) cannot
        # accept NaN/Inf, so the slow path's walk is not needed here. `by_name=False`
        # and the fields-set check make it as strict as the slow path about `schema`
        # (the field has a default and a name besides its alias).
        try:
            batch = TelemetryBatch.model_validate_json(payload, by_name=False)
        except ValidationError:
            pass
        else:
            if "schema_" in batch.model_fields_set and len(batch.readings) <= limits.max_readings:
                horizon = (now or datetime.now(timezone.utc)) + timedelta(seconds=limits.max_future_skew_s)
                if all(r.ts <= horizon for r in batch.readings):
                    return batch
    return _parse_slow(payload, limits, now)


def _parse_slow(payload: bytes | str, limits: WireLimits, now: datetime | None) -> TelemetryBatch:
    """Checks in a fixed order, so that a payload with several faults gets the first reason."""
    doc = _load_json(payload, limits)
    if not isinstance(doc, dict):
        raise WireError(WireRejectReason.INVALID, f"payload is a JSON {type(doc).__name__}, not an object")
    schema = doc.get("schema")
    if schema != TELEMETRY_SCHEMA_V1:
        raise WireError(WireRejectReason.UNKNOWN_SCHEMA, f"schema {schema!r} is not {TELEMETRY_SCHEMA_V1!r}")
    readings = doc.get("readings")
    if isinstance(readings, list) and len(readings) > limits.max_readings:
        raise WireError(WireRejectReason.OVERSIZE, f"{len(readings)} readings, limit {limits.max_readings}")
    if _has_non_finite(doc):
        raise WireError(WireRejectReason.NAN_OR_INF, "a value is NaN or Infinity")
    try:
        batch = TelemetryBatch.model_validate(doc)
    except ValidationError as exc:
        raise _classify(exc) from None
    horizon = (now or datetime.now(timezone.utc)) + timedelta(seconds=limits.max_future_skew_s)
    for i, reading in enumerate(batch.readings):
        if reading.ts > horizon:
            raise WireError(
                WireRejectReason.FUTURE_TIMESTAMP,
                f"readings.{i}.ts {reading.ts.isoformat()} is more than {limits.max_future_skew_s:g} s in the future",
            )
    return batch


# --- flat rows -------------------------------------------------------------


class TelemetryRows(NamedTuple):
    """A valid batch as flat rows: `rows` are (site, agent, device, metric, ts_ms, value, unit, quality)."""

    site: str
    agent: str
    seq: int
    rows: list[tuple[str, str, str, str, int, float, str, str]]


@with_config(ConfigDict(extra="forbid"))
class _LeanReading(TypedDict):
    # Reading with every field required and `ts` kept as the JSON string (each
    # distinct string is validated as AwareDatetime once, see _ts_us). Plain
    # dicts are cheaper to build than models or even slotted dataclasses (~20 %).
    device: Identifier
    metric: Identifier
    ts: Annotated[str, Field(strict=True)]
    value: Annotated[float, Field(allow_inf_nan=False)]
    unit: Annotated[str, Field(max_length=16)]
    quality: Literal["good", "bad", "stale", "out_of_range"]


@with_config(ConfigDict(extra="forbid"))
class _LeanBatch(TypedDict):
    schema: Literal["greenmine.telemetry.v1"]
    site: Identifier
    agent: Identifier
    seq: Annotated[int, Field(ge=0)]
    sent_at: AwareDatetime
    readings: Annotated[list[_LeanReading], Field(min_length=1)]


_LEAN = TypeAdapter(_LeanBatch)
_AWARE = TypeAdapter(AwareDatetime)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_MS = timedelta(milliseconds=1)
_ts_cache: dict[str, int] = {}


def _ts_us(ts: str) -> int | None:
    """Microseconds since the epoch of a JSON timestamp string, validated exactly as Reading.ts is; None if invalid."""
    us = _ts_cache.get(ts)
    if us is None:
        try:
            dt = _AWARE.validate_json(json.dumps(ts))
        except ValidationError:
            return None
        if len(_ts_cache) >= 4096:
            _ts_cache.clear()
        us = _ts_cache[ts] = (dt - _EPOCH) // _US
    return us


def parse_telemetry_rows(
    payload: bytes | str,
    *,
    limits: WireLimits = WireLimits(),
    now: datetime | None = None,
) -> TelemetryRows:
    """`parse_telemetry`, returning flat rows instead of a model. Raises WireError; never anything else.

    It accepts exactly what parse_telemetry accepts, with the same values and the
    same rejection reasons: the lean path below only accepts a subset of valid
    payloads (every reading field present, timestamps as strings) and anything
    else goes through parse_telemetry.
    """
    if len(payload) <= limits.max_payload_bytes:
        try:
            doc = _LEAN.validate_json(payload)
        except ValidationError:
            pass
        else:
            readings = doc["readings"]
            if len(readings) <= limits.max_readings:
                site, agent = doc["site"], doc["agent"]
                horizon_us = ((now or datetime.now(timezone.utc)) + timedelta(seconds=limits.max_future_skew_s) - _EPOCH) // _US
                rows = []
                append = rows.append
                latest = -(2**63)
                for r in readings:
                    us = _ts_us(r["ts"])
                    if us is None:
                        break
                    if us > latest:
                        latest = us
                    append((site, agent, r["device"], r["metric"], us // 1000, r["value"], r["unit"], r["quality"]))
                else:
                    if latest <= horizon_us:
                        return TelemetryRows(site, agent, doc["seq"], rows)
    batch = parse_telemetry(payload, limits=limits, now=now)
    site, agent = batch.site, batch.agent
    ms: dict[datetime, int] = {}  # the readings of one poll share a timestamp: convert it once
    return TelemetryRows(
        site,
        agent,
        batch.seq,
        [
            (site, agent, r.device, r.metric, ms.get(r.ts) or ms.setdefault(r.ts, (r.ts - _EPOCH) // _MS),
             r.value, r.unit, r.quality.value)
            for r in batch.readings
        ],
    )


def parse_status(payload: bytes | str, *, limits: WireLimits = WireLimits()):
    """Validate a status payload (birth or will). Raises WireError."""
    from greenmine.schemas.status import STATUS_SCHEMA_V1, AgentStatus

    doc = _load_json(payload, limits)
    if not isinstance(doc, dict):
        raise WireError(WireRejectReason.INVALID, f"payload is a JSON {type(doc).__name__}, not an object")
    if doc.get("schema") != STATUS_SCHEMA_V1:
        raise WireError(WireRejectReason.UNKNOWN_SCHEMA, f"schema {doc.get('schema')!r} is not {STATUS_SCHEMA_V1!r}")
    if _has_non_finite(doc):
        raise WireError(WireRejectReason.NAN_OR_INF, "a value is NaN or Infinity")
    try:
        return AgentStatus.model_validate(doc)
    except ValidationError as exc:
        raise _classify(exc) from None
