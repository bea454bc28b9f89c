"""Validation of one telemetry payload, in the ingest thread, with the v1 models of `schemas`.

    seq, rows = validate_telemetry(site, agent, payload, limits, now)   # or raises WireError

`rows` are plain tuples in StoredReading's field order (site, agent, device,
metric, ts_ms, value, unit, quality), ready for `server.spool.batches.pack_readings`.
Every rejection is a `WireError` with a reason from the closed set: the
schema's own, plus `topic_mismatch` when the payload names another site or
agent than the topic it was published on.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from greenmine.schemas import TelemetryBatch, WireError, WireLimits, WireRejectReason, parse_telemetry
from greenmine.schemas.telemetry import INT64_MAX

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def check_topic(topic_site: str, topic_agent: str, site: str, agent: str) -> None:
    """Raise `topic_mismatch` unless a payload's (site, agent) is its topic's."""
    if (site, agent) != (topic_site, topic_agent):
        raise WireError(WireRejectReason.TOPIC_MISMATCH, f"topic is for {topic_site}/{topic_agent}, payload says {site}/{agent}")


def validate_telemetry(site: str, agent: str, payload: bytes, limits: WireLimits, now: datetime) -> tuple[int, list[tuple]]:
    """(seq, rows) of a telemetry payload published on `site`/`agent`'s topic. Raises WireError."""
    batch = parse_telemetry(payload, limits=limits, now=now)
    check_topic(site, agent, batch.site, batch.agent)
    return batch.seq, reading_rows(batch)


def _storable(value: int | float) -> int | float:
    """A value every store can bind: a uint64 counter above 2^63-1 becomes its nearest float64 (SQLite's
    INTEGER is signed 64-bit, and the stores keep values as float64 anyway)."""
    return value if type(value) is float or value <= INT64_MAX else float(value)


def reading_rows(batch: TelemetryBatch) -> list[tuple]:
    """A valid batch's readings as plain tuples in StoredReading's field order (site, agent, device, metric,
    ts_ms, value, unit, quality): what the spool stores, and what the monitor and uplink roles keep."""
    site, agent = batch.site, batch.agent
    ms: dict[datetime, int] = {}  # the readings of one poll share a timestamp: convert it once
    return [
        (site, agent, r.device, r.metric, ms[r.ts] if r.ts in ms else ms.setdefault(r.ts, (r.ts - _EPOCH) // _MS),
         _storable(r.value), r.unit, r.quality.value)
        for r in batch.readings
    ]
