"""Telemetry v1: a batch of readings from one agent.

`parse_telemetry` is the one way in from the wire: it turns raw bytes into a
`TelemetryBatch` or raises `WireError` with a reason from a closed set.

It tries a fast path first and uses the slow, reason-classifying path only for
a payload the fast path did not accept, so a valid batch is paid for once in
pydantic-core and a rejected one still gets its exact reason.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, Strict, ValidationError

from greenmine.schemas.errors import WireError, WireRejectReason

TELEMETRY_SCHEMA_V1 = "greenmine.telemetry.v1"

#: Integer bounds: what the stores hold. SQLite's INTEGER (the spool's seq, the agent table's counters) is a
#: signed 64-bit integer; a reading's value may also be an agent's uint64 counter (stored as the nearest float64).
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

#: Strict types: the wire never coerces. "12.5", true or "7" is not a number, and an epoch integer is not a
#: timestamp (JSON input: an ISO 8601 string with an offset; Python input: an aware datetime).
Count = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]
Timestamp = Annotated[AwareDatetime, Strict()]
Value = Annotated[int, Strict(), Field(ge=INT64_MIN, le=UINT64_MAX)] | Annotated[float, Strict(), Field(allow_inf_nan=False)]

#: Identifiers go into topics and line-protocol tags, so they are restricted.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]

#: A unit reaches emails, reports and the console, so it is a strict character
#: class: letters and digits of any script, space, and the symbols units are
#: written with (kWh, m³/h, mg/m³, dB(A), %, ℃, μg/m³, 吨). No control, format or
#: line/paragraph-separator character (\r \n \x0b \x85 U+2028 U+2029 ...) can pass.
UNIT_PATTERN = r"^[\p{L}\p{N} %‰/().,·°℃*^+_'\[\]-]*$"
Unit = Annotated[str, Field(max_length=16, pattern=UNIT_PATTERN)]
_UNIT_SYMBOLS = "%‰/().,·°℃*^+_'[]-"

#: The metric vocabulary the KPIs read (docs/kpi-alerts.md). Other names are stored but not used by KPIs.
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
    ts: Timestamp = Field(description="time of the poll (not of sending): an ISO 8601 string with a UTC offset")
    # An int stays an int: a 64-bit counter above 2^53 is exact only as a JSON integer.
    value: Value = Field(
        description="engineering value after scale and offset: a JSON number, finite (an integer for exact 64-bit "
        "counters, from -2^63 to 2^64-1)")
    unit: Unit = Field(default="", description="unit, e.g. kWh, m3, mg/m3, dB(A): letters, digits, space and " + _UNIT_SYMBOLS)
    quality: Quality = Field(default=Quality.GOOD, description="good | bad | stale | out_of_range")


class TelemetryBatch(_Wire):
    """A batch of readings, published QoS 1 on greenmine/v1/{site}/{agent}/telemetry."""

    schema_: Literal["greenmine.telemetry.v1"] = Field(default=TELEMETRY_SCHEMA_V1, alias="schema")
    site: Identifier
    agent: Identifier
    seq: Count = Field(description="monotonic per agent, survives restarts; 0 to 2^63-1")
    sent_at: Timestamp
    readings: list[Reading] = Field(min_length=1)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


@dataclass(frozen=True)
class WireLimits:
    """Bounds applied to incoming messages. The server config sets them."""

    max_payload_bytes: int = 512 * 1024
    max_readings: int = 10_000
    max_future_skew_s: float = 300.0
    #: readings older than this are `too_old` (None: no bound); the server sets it to the store's retention
    max_past_age_s: float | None = None
    #: most nesting of JSON arrays and objects; a v1 message needs 3
    max_depth: int = 16

    def window(self, now: datetime | None) -> tuple[datetime, datetime]:
        """(oldest, newest) reading timestamp accepted at `now`."""
        now = now or datetime.now(timezone.utc)
        newest = now + timedelta(seconds=self.max_future_skew_s)
        if self.max_past_age_s is None:
            return _OLDEST, newest
        try:
            return max(now - timedelta(seconds=self.max_past_age_s), _OLDEST), newest
        except OverflowError:
            return _OLDEST, newest


_OLDEST = datetime(1, 1, 2, tzinfo=timezone.utc)  # a day after datetime.min, so any offset stays in range


@functools.lru_cache(maxsize=8)
def _window_at(limits: WireLimits, now: datetime) -> tuple[datetime, datetime]:
    return limits.window(now)


def _window(limits: WireLimits, now: datetime | None) -> tuple[datetime, datetime]:
    """`limits.window(now)`, computed once per (limits, now): ingest validates a whole group of messages at one
    `now`. Without a `now` it is the current time's, never cached."""
    return limits.window(None) if now is None else _window_at(limits, now)


_TS = operator.attrgetter("ts")


_ID_FIELDS = {"site", "agent", "device", "metric"}


def _classify(exc: ValidationError) -> WireError:
    order = [
        WireRejectReason.NOT_JSON,
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
        elif kind == "string_pattern_mismatch" and loc and loc[-1] == "unit":
            reason = WireRejectReason.INVALID
            found.setdefault(reason, f"{where}: {err['input']!r} has a character other than letters, digits, space and {_UNIT_SYMBOLS}")
        elif loc == ("readings",) and kind == "too_short":
            reason = WireRejectReason.EMPTY_BATCH
        elif kind == "json_invalid":
            reason = WireRejectReason.NOT_JSON
        elif kind in ("int_type", "float_type", "datetime_type") or kind.startswith(("less_than", "greater_than")):
            # a value of the wrong type (or out of range) fails every member of a union: name the field once
            msg = err["msg"]
            if len(loc) > 1 and loc[-1] in ("int", "float", "constrained-int", "constrained-float"):
                where = ".".join(str(p) for p in loc[:-1])
                msg = "Input should be a JSON number"
            elif kind == "datetime_type":
                msg = "Input should be an ISO 8601 date-time string with a UTC offset"
            reason = WireRejectReason.INVALID
            found.setdefault(reason, f"{where}: {msg} (got {_short(err['input'])})")
        else:
            reason = WireRejectReason.INVALID
        found.setdefault(reason, f"{where}: {err['msg']}")
    for reason in order:
        if reason in found:
            return WireError(reason, found[reason])
    return WireError(WireRejectReason.INVALID, str(exc))  # pragma: no cover


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# A JSON string (with escapes), written as an unrolled loop so that a long one costs one pass.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(payload: bytes | str) -> int:
    """How deeply arrays and objects nest in a JSON text (brackets inside strings do not count), without
    parsing it: a cheap scan to run before a recursive parser."""
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    if data.count(b"[") + data.count(b"{") <= 1:
        return data.count(b"[") + data.count(b"{")
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _load_json(payload: bytes | str, limits: WireLimits) -> Any:
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise WireError(WireRejectReason.OVERSIZE, f"payload is {size} bytes, limit {limits.max_payload_bytes}")
    if not payload:
        raise WireError(WireRejectReason.NOT_JSON, "empty payload")
    depth = json_depth(payload)
    if depth > limits.max_depth:
        raise WireError(WireRejectReason.TOO_DEEP, f"arrays and objects nest {depth} deep, limit {limits.max_depth}")
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError(WireRejectReason.NOT_JSON, str(exc)[:200]) from None


def _validate(model: type[BaseModel], doc: dict) -> Any:
    """Validate a parsed document as JSON input (the strict fields take ISO strings from JSON only)."""
    try:
        text = json.dumps(doc, allow_nan=False)
    except (ValueError, RecursionError) as exc:  # pragma: no cover - NaN and depth were refused before
        raise WireError(WireRejectReason.INVALID, str(exc)[:200]) from None
    try:
        return model.model_validate_json(text, by_name=False)
    except ValidationError as exc:
        raise _classify(exc) from None


def _check_times(batch: TelemetryBatch, limits: WireLimits, now: datetime | None) -> None:
    oldest, newest = limits.window(now)
    for i, reading in enumerate(batch.readings):
        if reading.ts > newest:
            raise WireError(
                WireRejectReason.FUTURE_TIMESTAMP,
                f"readings.{i}.ts {reading.ts.isoformat()} is more than {limits.max_future_skew_s:g} s in the future",
            )
        if reading.ts < oldest:
            raise WireError(
                WireRejectReason.TOO_OLD,
                f"readings.{i}.ts {reading.ts.isoformat()} is more than {limits.max_past_age_s:g} s old "
                "(older than the store keeps)",
            )


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
            readings = batch.readings
            if "schema_" in batch.model_fields_set and len(readings) <= limits.max_readings:
                oldest, newest = _window(limits, now)
                # min and max in C: a per-reading Python comparison was a fifth of this function's own cost
                if oldest <= min(map(_TS, readings)) and max(map(_TS, readings)) <= newest:
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
    batch = _validate(TelemetryBatch, doc)
    _check_times(batch, limits, now)
    return batch


def parse_status(payload: bytes | str, *, limits: WireLimits = WireLimits()):
    """Validate a status payload (birth or will). Raises WireError."""
    from greenmine.schemas.status import STATUS_SCHEMAS, AgentStatus

    doc = _load_json(payload, limits)
    if not isinstance(doc, dict):
        raise WireError(WireRejectReason.INVALID, f"payload is a JSON {type(doc).__name__}, not an object")
    if doc.get("schema") not in STATUS_SCHEMAS:
        raise WireError(WireRejectReason.UNKNOWN_SCHEMA, f"schema {doc.get('schema')!r} is not one of {STATUS_SCHEMAS}")
    if _has_non_finite(doc):
        raise WireError(WireRejectReason.NAN_OR_INF, "a value is NaN or Infinity")
    return _validate(AgentStatus, doc)
