"""Wire contract v1: every rejection reason, and what a good batch looks like."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from greenmine.schemas import (
    AgentState,
    AgentStatus,
    Quality,
    Reading,
    TelemetryBatch,
    WireError,
    WireLimits,
    WireRejectReason as R,
    parse_status,
    parse_telemetry,
)

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def good_doc(**over):
    doc = {
        "schema": "greenmine.telemetry.v1",
        "site": "gs-demo",
        "agent": "gw-01",
        "seq": 7,
        "sent_at": "2026-11-27T08:00:01Z",
        "readings": [
            {"device": "crusher-1", "metric": "energy_kwh_total", "ts": "2026-11-27T08:00:00Z",
             "value": 1234.5, "unit": "kWh", "quality": "good"},
        ],
    }
    doc.update(over)
    return doc


def reading(**over):
    r = dict(good_doc()["readings"][0])
    r.update(over)
    return r


def test_good_batch_round_trips():
    batch = parse_telemetry(json.dumps(good_doc()).encode(), now=NOW)
    assert batch.site == "gs-demo" and batch.seq == 7
    (r,) = batch.readings
    assert r.value == 1234.5 and r.unit == "kWh" and r.quality is Quality.GOOD
    assert r.ts == datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
    assert parse_telemetry(batch.to_json(), now=NOW) == batch
    assert json.loads(batch.to_json())["schema"] == "greenmine.telemetry.v1"


def test_models_are_frozen_and_forbid_extras():
    batch = parse_telemetry(json.dumps(good_doc()), now=NOW)
    with pytest.raises(Exception):
        batch.seq = 8
    with pytest.raises(WireError) as info:
        parse_telemetry(json.dumps(good_doc(extra_field=1)), now=NOW)
    assert info.value.reason is R.INVALID and "extra_field" in info.value.detail


def reject(payload, limits=WireLimits()) -> WireError:
    if not isinstance(payload, (bytes, str)):
        payload = json.dumps(payload)
    with pytest.raises(WireError) as info:
        parse_telemetry(payload, limits=limits, now=NOW)
    return info.value


@pytest.mark.parametrize(
    "payload, reason, detail",
    [
        (b"{not json", R.NOT_JSON, "Expecting"),
        (b"\xff\xfe", R.NOT_JSON, ""),
        (b"[1, 2]", R.INVALID, "JSON list"),
        (good_doc(schema="greenmine.telemetry.v2"), R.UNKNOWN_SCHEMA, "greenmine.telemetry.v2"),
        ({k: v for k, v in good_doc().items() if k != "schema"}, R.UNKNOWN_SCHEMA, "None"),
        (good_doc(readings=[]), R.EMPTY_BATCH, "readings"),
        (good_doc(site="gs demo"), R.BAD_IDENTIFIER, "site"),
        (good_doc(agent="gw/01"), R.BAD_IDENTIFIER, "agent"),
        (good_doc(readings=[reading(device="m,1=x")]), R.BAD_IDENTIFIER, "readings.0.device"),
        (good_doc(readings=[reading(metric="a b")]), R.BAD_IDENTIFIER, "readings.0.metric"),
        (good_doc(readings=[reading(ts="2026-11-27T08:00:00")]), R.INVALID, "timezone"),
        (good_doc(readings=[reading(value="lots")]), R.INVALID, "readings.0.value"),
        (good_doc(readings=[reading(quality="great")]), R.INVALID, "readings.0.quality"),
        (good_doc(seq=-1), R.INVALID, "seq"),
    ],
)
def test_rejections(payload, reason, detail):
    err = reject(payload)
    assert err.reason is reason, err
    assert detail in err.detail


HOSTILE_UNITS = ["kW\r", "kW\nBcc: x@e.t", "k\u2028W", "k\u2029W", "k\x85W", "k\x0bW", "k\x0cW", "k\x00W",
                 "k\tW", "k\x1cW", "k\u202eW", "k\u200bW", "k\ufeffW", "k\xa0W", "kW;x=1", "<b>kW</b>", "${unit}"]


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_a_unit_outside_the_character_class_is_rejected_naming_the_field(unit):
    with pytest.raises(WireError) as info:
        parse_telemetry(json.dumps(good_doc(readings=[reading(), reading(device="d2", unit=unit)])), now=NOW)
    assert info.value.reason is R.INVALID
    assert "readings.1.unit" in info.value.detail and repr(unit) in info.value.detail
    assert info.value.detail.isprintable()  # safe to log and to store with the dead letter


@pytest.mark.parametrize("unit", ["", "kWh", "m3/h", "m³/h", "mg/m³", "μg/m³", "dB(A)", "%", "‰", "℃", "°C", "吨", "kgce/t",
                                  "m^3", "W/m²", "A·h", "Ω·m", "r/min", "pH", "%RH", "dB[A]", "1e-3 m3"])
def test_units_as_they_are_written_are_accepted(unit):
    doc = json.dumps(good_doc(readings=[reading(unit=unit)]))
    assert parse_telemetry(doc, now=NOW).readings[0].unit == unit


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_rejected(token):
    raw = json.dumps(good_doc()).replace("1234.5", token)
    assert reject(raw).reason is R.NAN_OR_INF


def test_nan_cannot_be_built_either():
    with pytest.raises(ValueError):
        Reading(device="d", metric="m", ts=NOW, value=float("nan"))


def test_future_timestamps_beyond_the_skew_are_rejected():
    limits = WireLimits(max_future_skew_s=60)
    ok = good_doc(readings=[reading(ts=(NOW + timedelta(seconds=59)).isoformat())])
    parse_telemetry(json.dumps(ok), limits=limits, now=NOW)
    bad = good_doc(readings=[reading(), reading(ts=(NOW + timedelta(seconds=61)).isoformat())])
    err = reject(bad, limits)
    assert err.reason is R.FUTURE_TIMESTAMP and "readings.1.ts" in err.detail


def test_oversize_by_bytes_and_by_count():
    assert reject(good_doc(), WireLimits(max_payload_bytes=100)).reason is R.OVERSIZE
    many = good_doc(readings=[reading(ts=f"2026-11-27T07:{i // 60:02d}:{i % 60:02d}Z") for i in range(11)])
    err = reject(many, WireLimits(max_readings=10))
    assert err.reason is R.OVERSIZE and "11 readings" in err.detail


def test_hostile_input_never_raises_anything_but_wire_error():
    import random

    rnd = random.Random(1)
    base = json.dumps(good_doc()).encode()
    for _ in range(500):
        b = bytearray(base)
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        try:
            parse_telemetry(bytes(b), now=NOW)
        except WireError:
            pass


def test_status_birth_and_will():
    birth = AgentStatus(site="gs-demo", agent="gw-01", state=AgentState.ONLINE, ts=NOW, version="0.1.0",
                        outbox_depth=3, dropped_batches=0)
    assert parse_status(birth.to_json()) == birth
    will = AgentStatus(site="gs-demo", agent="gw-01", state=AgentState.OFFLINE, ts=NOW)
    doc = json.loads(will.to_json())
    assert doc == {"schema": "greenmine.status.v1", "site": "gs-demo", "agent": "gw-01",
                   "state": "offline", "ts": "2026-11-27T08:00:00Z", "devices": []}
    with pytest.raises(WireError) as info:
        parse_status(json.dumps({**doc, "schema": "x"}))
    assert info.value.reason is R.UNKNOWN_SCHEMA
    with pytest.raises(WireError) as info:
        parse_status(json.dumps({**doc, "state": "sleepy"}))
    assert info.value.reason is R.INVALID


def test_batch_requires_aware_timestamps():
    with pytest.raises(ValueError):
        TelemetryBatch(site="s", agent="a", seq=0, sent_at=datetime(2026, 1, 1),
                       readings=[Reading(device="d", metric="m", ts=NOW, value=1)])


# --- the fast paths agree with the slow, classifying path -------------------


def _variants() -> list:
    """Valid and invalid payloads that probe where a fast path could differ from the reference."""
    no_unit = {k: v for k, v in reading().items() if k not in ("unit", "quality")}
    docs = [
        good_doc(),
        good_doc(readings=[no_unit]),
        good_doc(readings=[reading(value=3), reading(device="d2", value="2.5"), reading(device="d3", value=True)]),
        good_doc(seq="8"), good_doc(seq=8.0), good_doc(seq=8.5), good_doc(seq=-1),
        good_doc(readings=[reading(ts="2026-11-27T16:00:00.123456+08:00"), reading(device="d2", ts="2026-11-27T08:00:00.0019Z")]),
        good_doc(readings=[reading(ts=1795766400), reading(device="d2", ts="1795766400")]),  # numeric timestamps
        good_doc(readings=[reading(ts="1969-12-31T23:59:59.9995Z")]),  # before the epoch: floor to ms
        good_doc(readings=[reading(ts="2026-11-27T08:05:00Z")]),  # exactly at the 300 s horizon
        good_doc(readings=[reading(ts="2026-11-27T08:05:00.000001Z")]),  # one microsecond past it
        good_doc(readings=[reading(ts="2026-11-27T08:00:00")]),  # naive
        good_doc(readings=[reading(ts="not a time")]),
        good_doc(readings=[reading(unit="x" * 17)]),
        good_doc(readings=[reading(unit="m³/h"), reading(device="d2", unit="k\u2028W")]),
        good_doc(readings=[reading(quality="great")]),
        good_doc(readings=[reading(extra=1)]),
        good_doc(readings=[]),
        good_doc(readings=[reading(device=f"d{i}") for i in range(11)]),  # over max_readings below
        good_doc(readings=[reading(value=1e308 * 10)]),
        good_doc(site="a b"),
        good_doc(schema="greenmine.telemetry.v2"),
        {k: v for k, v in good_doc().items() if k != "schema"},
        {**{k: v for k, v in good_doc().items() if k != "schema"}, "schema_": "greenmine.telemetry.v1"},
    ]
    raw = [json.dumps(d) for d in docs]
    raw += [
        json.dumps(good_doc()).replace("1234.5", "NaN"),
        json.dumps(good_doc()).replace('"seq": 7', '"seq": 7, "seq": 9'),  # duplicate key
        json.dumps(good_doc()).encode("utf-16"),
        b"\xef\xbb\xbf" + json.dumps(good_doc()).encode(),  # UTF-8 BOM
        b"{not json", b"[]", b"null", b"\xff",
    ]
    return raw


@pytest.mark.parametrize("i", range(len(_variants())))
def test_parse_telemetry_fast_path_agrees_with_the_reference_path(i):
    """parse_telemetry (fast path) accepts exactly what the slow path accepts, with the same reasons."""
    from greenmine.schemas.telemetry import _parse_slow

    payload = _variants()[i]
    limits = WireLimits(max_readings=10, max_future_skew_s=300)

    def outcome(fn):
        try:
            return ("ok", fn())
        except WireError as exc:
            return ("rejected", exc.reason, exc.detail)

    ref = outcome(lambda: _parse_slow(payload, limits, NOW))
    assert outcome(lambda: parse_telemetry(payload, limits=limits, now=NOW)) == ref


# --- issue 13: strict types, integer bounds, too old, too deep -----------------------------------------------


@pytest.mark.parametrize(
    "payload, field, got",
    [
        (good_doc(readings=[reading(value="12.5")]), "readings.0.value", "'12.5'"),
        (good_doc(readings=[reading(value=True)]), "readings.0.value", "True"),
        (good_doc(seq="7"), "seq", "'7'"),
        (good_doc(seq=True), "seq", "True"),
        (good_doc(seq=7.0), "seq", "7.0"),
        (good_doc(readings=[reading(ts=1795852800)]), "readings.0.ts", "1795852800"),
        (good_doc(sent_at=1795852800), "sent_at", "1795852800"),
    ],
)
def test_wrong_types_are_not_coerced_and_name_the_field(payload, field, got):
    """Defect 6: a string, a bool or an epoch integer where the contract says number / ISO timestamp."""
    err = reject(payload)
    assert err.reason is R.INVALID, err
    assert err.detail.startswith(f"{field}: ") and got in err.detail, err.detail


def test_integers_are_bounded_to_what_the_stores_hold():
    """Defect 1: seq 2^63 cannot be an SQLite INTEGER; a uint64 counter value is fine (stored as a float64)."""
    assert parse_telemetry(json.dumps(good_doc(seq=2**63 - 1)), now=NOW).seq == 2**63 - 1
    err = reject(good_doc(seq=2**63))
    assert err.reason is R.INVALID and err.detail.startswith("seq: ")
    top = parse_telemetry(json.dumps(good_doc(readings=[reading(value=2**64 - 1)])), now=NOW)
    assert top.readings[0].value == 2**64 - 1  # exact on the wire; the stores keep the nearest float64
    base = {"schema": "greenmine.status.v1", "site": "gs-demo", "agent": "gw-01", "state": "online",
            "ts": "2026-11-27T08:00:00Z"}
    for name in ("outbox_depth", "outbox_bytes", "dropped_batches", "dropped_readings"):
        assert getattr(parse_status(json.dumps({**base, name: 2**63 - 1})), name) == 2**63 - 1
        with pytest.raises(WireError) as info:
            parse_status(json.dumps({**base, name: 2**64}))
        assert info.value.reason is R.INVALID and info.value.detail.startswith(f"{name}: ")
        with pytest.raises(WireError) as info:
            parse_status(json.dumps({**base, name: "3"}))
        assert info.value.reason is R.INVALID and info.value.detail.startswith(f"{name}: ")


@pytest.mark.parametrize("text", ["1.0\n2", "a\rb", "x\u2028y", "x\x85y", "\u200ex", "a\x00"])
def test_status_free_text_has_no_control_or_separator_characters(text):
    base = {"schema": "greenmine.status.v1", "site": "gs-demo", "agent": "gw-01", "state": "online",
            "ts": "2026-11-27T08:00:00Z"}
    for doc in ({**base, "version": text},
                {**base, "devices": [{"device": "m1", "state": "offline", "last_error": text}]}):
        with pytest.raises(WireError) as info:
            parse_status(json.dumps(doc))
        assert info.value.reason is R.INVALID
    assert parse_status(json.dumps({**base, "version": "1.2.3 (构建 7)"})).version == "1.2.3 (构建 7)"


def test_readings_older_than_the_bound_are_too_old():
    """Defect 7: a reading from 1900 is refused with its own reason when the store would drop it."""
    limits = WireLimits(max_past_age_s=400 * 86400)
    old = good_doc(readings=[reading(), reading(device="m2", ts="1900-01-01T00:00:00Z")])
    err = reject(old, limits)
    assert err.reason is R.TOO_OLD and err.detail.startswith("readings.1.ts 1900-01-01")
    fine = good_doc(readings=[reading(ts=(NOW - timedelta(days=399)).isoformat())])
    assert parse_telemetry(json.dumps(fine), limits=limits, now=NOW)
    assert parse_telemetry(json.dumps(old), now=NOW)  # no bound configured: accepted
    assert reject(good_doc(readings=[reading(ts="0001-01-01T00:00:00Z")]), limits).reason is R.TOO_OLD


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_refused_before_parsing(opener):
    """Defect 8: 200,000 levels is `too_deep`, not a RecursionError; brackets inside strings do not count."""
    closer = b"]" if opener == b"[" else b"}"
    deep = opener * 200_000 + b"1" + closer * 200_000
    err = reject(deep, WireLimits(max_payload_bytes=10**7))
    assert err.reason is R.TOO_DEEP and "200000" in err.detail
    with pytest.raises(WireError) as info:
        parse_status(deep, limits=WireLimits(max_payload_bytes=10**7))
    assert info.value.reason is R.TOO_DEEP
    brackets_in_text = good_doc(readings=[reading(unit="[" * 40)])
    assert reject(brackets_in_text).reason is R.INVALID  # the unit's class, not the depth


def test_json_depth_scan():
    from greenmine.schemas.telemetry import json_depth

    assert json_depth(b"1") == 0
    assert json_depth(b'{"a": [1, {"b": "[[[\\"[["}]}') == 3
    assert json_depth('[[["]]]]]]"]]]') == 3
    assert json_depth(b"") == 0
