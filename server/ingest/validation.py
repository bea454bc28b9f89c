"""Validation of one telemetry payload, in the ingest thread, with the v1 models of `schemas`.

    seq, rows = validate_telemetry(site, agent, payload, limits, now)   # or raises WireError

`rows` are plain tuples in StoredReading's field order (site, agent, device,
metric, ts_ms, value, unit, quality), ready for `server.spool.batches.pack_readings`.
Every rejection is a `WireError` with a reason from the closed set: the
schema's own, plus `topic_mismatch` when the payload names another site or
agent than the topic it was published on.
"""

from __future__ import annotations

import operator
from datetime import datetime, timedelta, timezone
from itertools import repeat

from greenmine.schemas import TelemetryBatch, WireError, WireLimits, WireRejectReason, parse_telemetry
from greenmine.schemas.telemetry import INT64_MAX, Quality

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


_TS, _DEVICE, _METRIC, _VALUE, _UNIT, _QUALITY = map(operator.attrgetter, ("ts", "device", "metric", "value", "unit", "quality"))
_QUALITY_TEXT = {q: q.value for q in Quality}


def reading_rows(batch: TelemetryBatch) -> list[tuple]:
    """A valid batch's readings as plain tuples in StoredReading's field order (site, agent, device, metric,
    ts_ms, value, unit, quality): what the spool stores, and what the monitor and uplink roles keep.

    Built column by column with C-level maps and one zip (a quarter less than a per-reading comprehension).
    The readings of one poll share a timestamp, so it is converted once (otherwise each distinct one is)."""
    rs = batch.readings
    stamps = list(map(_TS, rs))
    first = stamps[0]
    if stamps.count(first) == len(stamps):
        ts_ms = repeat((first - _EPOCH) // _MS)
    else:
        ms = {t: (t - _EPOCH) // _MS for t in set(stamps)}
        ts_ms = map(ms.__getitem__, stamps)
    values = list(map(_VALUE, rs))
    if max(values) > INT64_MAX:
        values = list(map(_storable, values))
    return list(zip(repeat(batch.site), repeat(batch.agent), map(_DEVICE, rs), map(_METRIC, rs),
                    ts_ms, values, map(_UNIT, rs), map(_QUALITY_TEXT.__getitem__, map(_QUALITY, rs))))
