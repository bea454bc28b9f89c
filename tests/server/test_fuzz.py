"""A fuzz test of the wire contract through the real ingest path: Mosquitto → ingest → spool (issue 13).

Hypothesis generates hostile messages (malformed and non-UTF-8 JSON, an empty payload, duplicate keys, wrong
types, NaN and Inf, huge and tiny numbers, far-future and far-past timestamps, oversize payloads, deep nesting,
huge arrays, identifiers with line-protocol / SQL / header metacharacters in payloads and topics, retained
status messages) and publishes each to a real broker. For every one: it is either stored (a batch in the
spool, or an agent state) or dead-lettered with a reason from the closed set; the ingest thread survives; and
/health says ok. Then the server restarts and the retained hostile statuses are delivered again: the same
holds. Bounded to a few seconds (max_examples); a failure is shrunk to a minimal message.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenmine.server.spool.deadletter import REASONS
from tests.server.conftest import SITE, Publisher, make_config, running
from tests.support.services import wait_for

MAX_PAYLOAD = 16 * 1024
MAX_READINGS = 40
NOW = datetime.now(timezone.utc).replace(microsecond=0)

HOSTILE_TEXT = [
    "", " ", "m 1", "m,1", "m=1", 'm"1', "m\\1", "m\n1", "m\r\nBcc: x@example.test", "k\u2028W", "k\x85W", "k\x0bW",
    "'; DROP TABLE spool;--", "x' OR '1'='1", "\x00", "\ud800", "é" * 65, "a" * 65, "gs-demo", "gw1", "+", "#",
    "power_kw,site=evil value=1 0", "$share/g/x", "../../etc/passwd", "%s%n", "{{7*7}}", "测试", "\ufeff",
]
HOSTILE_NUMBERS = [
    0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, 10**400,
    1e308, -1e308, 5e-324, -0.0, 1.5, float("nan"), float("inf"), float("-inf"),
]
TIMESTAMPS = [
    NOW.isoformat(), (NOW + timedelta(days=3650)).isoformat(), "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
    "1900-01-01T00:00:00+00:00", "1970-01-01T00:00:00Z", "2026-01-05T08:00:00", "2026-13-45T99:99:99Z", "yesterday",
    int(NOW.timestamp()), NOW.timestamp(), "2026-01-05T08:00:00+25:00",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
hostile = st.one_of(json_values, st.sampled_from(HOSTILE_TEXT), st.sampled_from(HOSTILE_NUMBERS),
                    st.sampled_from(TIMESTAMPS), st.integers(min_value=-(2**70), max_value=2**70))


def _reading(i: int = 0) -> dict:
    return {"device": f"m{i:02d}", "metric": "power_kw", "ts": NOW.isoformat(), "value": 1.5 + i, "unit": "kW",
            "quality": "good"}


def _telemetry(n: int = 2, agent: str = "gw1") -> dict:
    return {"schema": "greenmine.telemetry.v1", "site": SITE, "agent": agent, "seq": 7, "sent_at": NOW.isoformat(),
            "readings": [_reading(i) for i in range(n)]}


def _status(agent: str = "gw1") -> dict:
    return {"schema": "greenmine.status.v1", "site": SITE, "agent": agent, "state": "online", "ts": NOW.isoformat(),
            "outbox_depth": 0, "devices": [{"device": "m00", "state": "online"}]}


@st.composite
def documents(draw) -> tuple[str, bytes]:
    """(kind, payload): a valid message with one field replaced, deleted, added or duplicated."""
    kind = draw(st.sampled_from(["telemetry", "status"]))
    doc = _telemetry() if kind == "telemetry" else _status()
    where = doc
    if kind == "telemetry" and draw(st.booleans()):
        where = doc["readings"][draw(st.integers(0, 1))]
    elif kind == "status" and draw(st.integers(0, 3)) == 0:
        where = doc["devices"][0]
    key = draw(st.sampled_from(sorted(where) + ["extra"]))
    action = draw(st.sampled_from(["replace", "replace", "delete", "duplicate"]))
    value = draw(hostile)
    if action == "delete":
        where.pop(key, None)
    elif action == "replace":
        where[key] = value
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    if action == "duplicate":  # the same key twice: the JSON parsers keep the last
        text = "{" + json.dumps(key) + ": " + json.dumps(value) + ", " + text[1:]
    return kind, text.encode("utf-8", "surrogatepass")


@st.composite
def shapes(draw) -> tuple[str, bytes]:
    """Messages whose shape is wrong: nesting, size, encoding."""
    kind = draw(st.sampled_from(["telemetry", "status"]))
    choice = draw(st.integers(0, 7))
    if choice == 0:
        depth = draw(st.sampled_from([4, 17, 100, 20_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return kind, (opener * depth + "1" + closer * depth).encode()
    if choice == 1:
        return kind, b""
    if choice == 2:
        return kind, draw(st.binary(max_size=64))  # mostly not UTF-8, never JSON
    if choice == 3:
        return kind, b"{" * 2 + b"x" * (MAX_PAYLOAD + 1)
    if choice == 4:  # a huge array of readings
        return kind, json.dumps(_telemetry(n=draw(st.sampled_from([0, MAX_READINGS, MAX_READINGS + 1, 200])))).encode()
    if choice == 5:
        return kind, json.dumps(draw(json_values)).encode()
    if choice == 6:  # valid JSON around a hostile structure
        doc = _telemetry() if kind == "telemetry" else _status()
        doc[draw(st.sampled_from(sorted(doc)))] = draw(json_values)
        return kind, json.dumps(doc).encode()
    return kind, json.dumps(_telemetry() if kind == "telemetry" else _status()).encode()


# Mosquitto refuses (and disconnects) a publisher whose topic has a control character, so none is tried here.
topic_ids = st.sampled_from(["gw1", "gw2", "gw 1", "gw,1", "gw=1", "gw'1;--", "gw\"1", "gw\\1", "测试", "x" * 65])


@st.composite
def messages(draw) -> tuple[str, bytes, bool]:
    kind, payload = draw(st.one_of(documents(), shapes()))
    agent = draw(st.one_of(st.just("gw1"), topic_ids))
    site = draw(st.sampled_from([SITE, SITE, "elsewhere", "gs demo"]))
    # only the kinds ingest subscribes to: a message on another topic never reaches it (nothing to observe)
    suffix = draw(st.sampled_from([kind, kind, kind, "status" if kind == "telemetry" else "telemetry"]))
    retain = kind == "status" and draw(st.booleans())
    return f"greenmine/v1/{site}/{agent}/{suffix}", payload, retain


def _handled(app) -> float:
    m = app.metrics
    return m.value("greenmine_ingest_messages_total", result="accepted") + m.value("greenmine_ingest_messages_total",
                                                                                      result="rejected")


def _check_healthy(app) -> None:
    health = app.health()
    assert health["status"] == "ok", health
    assert health["threads"]["ingest"]["alive"] and health["threads"]["ingest"]["crashes"] == 0, health
    assert app.failed is None


def test_every_generated_message_is_stored_or_dead_lettered_and_ingest_stays_healthy(tmp_path, mosquitto):
    # spool_synchronous normal: one fsync per message would be most of the time here, and power loss is not the test
    cfg = make_config(tmp_path, mosquitto.port, max_payload_bytes=MAX_PAYLOAD, max_readings_per_batch=MAX_READINGS,
                      spool_synchronous="normal")
    pub = Publisher(mosquitto.port, client_id="fuzz-pub")
    retained: dict[str, bytes] = {}  # topic -> the retained payload (empty: cleared)
    try:
        with running(cfg) as app:
            m = app.metrics

            @settings(max_examples=100, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(messages())
            def one(message: tuple[str, bytes, bool]) -> None:
                topic, payload, retain = message
                before = _handled(app)
                letters = sum(app.spool.dead_letters.counts().values())
                spooled = m.value("greenmine_ingest_readings_total")
                statuses = m.value("greenmine_status_messages_total")
                pub.publish(topic, payload, retain=retain)
                if retain:
                    retained[topic] = payload
                wait_for(lambda: _handled(app) == before + 1, 10, what=f"{topic!r} {payload[:80]!r} handled")
                if m.value("greenmine_ingest_messages_total", result="rejected") > 0 and \
                        sum(app.spool.dead_letters.counts().values()) == letters + 1:
                    (row,) = app.spool.dead_letters.newest(limit=1)
                    assert row[3] in REASONS and row[4], row
                else:  # accepted: its readings are in the spool, or its agent state is applied
                    assert (m.value("greenmine_ingest_readings_total") > spooled
                            or m.value("greenmine_status_messages_total") == statuses + 1), (topic, payload[:200])
                    assert sum(app.spool.dead_letters.counts().values()) == letters
                _check_healthy(app)

            one()
        # a new subscription gets every retained hostile status again
        with running(cfg) as app:
            held = sum(1 for p in retained.values() if p)
            wait_for(lambda: _handled(app) >= held, 10, what=f"the {held} retained messages redelivered")
            _check_healthy(app)
    finally:
        for topic in retained:
            pub.publish(topic, b"", retain=True)
        pub.close()
