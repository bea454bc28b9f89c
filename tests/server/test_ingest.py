"""Ingest through a real Mosquitto: validation, dead letters, acks, agent status, metrics."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from greenmine.server.store.sqlite import SqliteReader
from tests.server.conftest import SITE, T0, Publisher, batch, dumps, make_config, running, topic
from tests.support.services import wait_for

FAR = T0 + timedelta(days=1)


def stored(cfg) -> SqliteReader:
    return SqliteReader(cfg.resolve(cfg.store.path))


def _bad_messages():
    """(reason, topic, payload): one message for every rejection reason reachable through the subscription."""
    good = batch(1)
    nan = dumps(good).replace(b'"value": 1.0,', b'"value": NaN,', 1)
    assert b"NaN" in nan
    future = batch(1, t0=datetime.now(timezone.utc) + timedelta(hours=1))
    return [
        ("not_json", topic(), b"{this is not json"),
        ("unknown_schema", topic(), dumps(batch(1, schema="greenmine.telemetry.v9"))),
        ("topic_mismatch", topic(agent="gw2"), dumps(batch(1))),
        ("nan_or_inf", topic(), nan),
        ("future_timestamp", topic(), dumps(future)),
        ("oversize", topic(), dumps(batch(1, n=400))),
        ("bad_identifier", topic(), dumps(batch(1, readings=[dict(good["readings"][0], device="m 1")]))),
        ("bad_identifier", "greenmine/v1/gs-demo/gw 1/telemetry", dumps(batch(1))),
        ("empty_batch", topic(), dumps(batch(1, readings=[]))),
        ("invalid", topic(), dumps({k: v for k, v in batch(1).items() if k != "seq"})),
        ("unknown_site", topic(site="elsewhere"), dumps(batch(1, site="elsewhere"))),
        ("unknown_schema", topic("status"), json.dumps({"schema": "nope"}).encode()),
    ]


def test_every_rejection_is_dead_lettered_counted_acked_and_the_stream_goes_on(tmp_path, mosquitto, publisher):
    cfg = make_config(tmp_path, mosquitto.port, max_payload_bytes=16 * 1024, dead_letter_payload_bytes=64)
    bad = _bad_messages()
    reader = stored(cfg)
    try:
        with running(cfg) as app:
            for i, (reason, t, payload) in enumerate(bad):
                publisher.publish(t, payload)
                good = batch(100 + i, n=2)
                publisher.publish(topic(), dumps(good))
                ts = T0 + timedelta(seconds=100 + i)
                wait_for(lambda: reader.query_series(SITE, "m01", "power_kw", ts, ts + timedelta(seconds=1)), 5,
                         what=f"the good message after a {reason} rejection")
                # counted right after the spool commit, which may trail the writer by a moment
                wait_for(lambda: app.metrics.value("greenmine_ingest_rejected_total", reason=reason) >= 1, 5, what=reason)
            m = app.metrics
            wait_for(lambda: m.value("greenmine_ingest_messages_total", result="accepted") == len(bad), 5, what="accepted")
            assert m.value("greenmine_ingest_messages_total", result="rejected") == len(bad)
            counts = app.spool.dead_letters.counts()
        expected: dict[str, int] = {}
        for reason, _, _ in bad:
            expected[reason] = expected.get(reason, 0) + 1
        assert counts == expected
        # Acknowledged: a new process on the same persistent session gets no redelivery of any of them.
        with running(cfg) as app:
            publisher.publish(topic(), dumps(batch(500, n=1)))
            ts = T0 + timedelta(seconds=500)
            wait_for(lambda: reader.query_series(SITE, "m00", "power_kw", ts, ts + timedelta(seconds=1)), 5, what="stored")
            assert app.metrics.value("greenmine_ingest_messages_total", result="rejected") == 0
            assert app.spool.dead_letters.counts() == expected
            rows = app.spool.dead_letters.newest(limit=100, reason="oversize")
        _, _, t, reason, detail, payload, size = rows[0]
        assert len(payload) == 64 and size > 16 * 1024 and "limit" in detail
    finally:
        reader.close()


def test_a_hostile_unit_is_dead_lettered_naming_the_field(tmp_path, mosquitto, publisher):
    """A unit that could break an email header never reaches the store or the monitor."""
    cfg = make_config(tmp_path, mosquitto.port)
    units = ["kW\r\nBcc: x@e.t", "k\u2028W", "k\x85W", "k\x0bW"]
    reader = stored(cfg)
    try:
        with running(cfg) as app:
            for i, unit in enumerate(units):
                doc = batch(10 + i, n=2)
                doc["readings"][1]["unit"] = unit
                publisher.publish(topic(), dumps(doc))
            publisher.publish(topic(), dumps(batch(20, n=1)))
            ts = T0 + timedelta(seconds=20)
            wait_for(lambda: reader.query_series(SITE, "m00", "power_kw", ts, ts + timedelta(seconds=1)), 5, what="the good batch")
            wait_for(lambda: app.spool.dead_letters.counts().get("invalid") == len(units), 5, what="dead letters")
            rows = app.spool.dead_letters.newest(limit=10, reason="invalid")
        assert sorted(r[4] for r in rows) == sorted(
            f"readings.1.unit: {u!r} has a character other than letters, digits, space and %‰/().,·°℃*^+_'[]-" for u in units)
        # nothing of a rejected batch is stored, not even its good reading
        assert reader.query_series(SITE, "m00", "power_kw", T0, T0 + timedelta(seconds=19)) == []
    finally:
        reader.close()


def test_unknown_site_accept_policy_stores_it(tmp_path, mosquitto, publisher):
    cfg = make_config(tmp_path, mosquitto.port, unknown_site="accept")
    reader = stored(cfg)
    try:
        with running(cfg):
            publisher.publish(topic(site="new-site"), dumps(batch(1, site="new-site", n=3)))
            wait_for(lambda: reader.count() == 3, 5, what="3 readings of the unknown site")
    finally:
        reader.close()


def status(state: str, agent: str = "gw1", **kw) -> bytes:
    doc = {"schema": "greenmine.status.v1", "site": SITE, "agent": agent, "state": state,
           "ts": datetime.now(timezone.utc).isoformat(), **kw}
    return json.dumps(doc).encode()


def test_birth_and_will_drive_agent_state_metric_and_listeners(tmp_path, mosquitto, publisher):
    from greenmine.server.config import load_server_config
    from tests.server.conftest import server_doc

    doc = server_doc(tmp_path, mosquitto.port)
    doc["http_port"] = 0
    cfg = load_server_config(tmp_path / "server.toml", doc=doc)
    seen = []
    agent = Publisher(mosquitto.port, client_id="agent-gw1", will=(topic("status"), status("offline")))
    try:
        with running(cfg) as app:
            app.agents.add_listener(lambda info, prev: seen.append((info.state, prev.state if prev else None)))
            agent.publish(topic("status"), status("online", outbox_depth=3, dropped_batches=2), retain=True)
            wait_for(lambda: app.agents.get(SITE, "gw1") and app.agents.get(SITE, "gw1").online, 5, what="online")
            info = app.agents.get(SITE, "gw1")
            assert (info.outbox_depth, info.dropped_batches) == (3, 2)
            assert app.metrics.value("greenmine_agent_online", site=SITE, agent="gw1") == 1
            agent.kill()  # no DISCONNECT: the broker publishes the will
            wait_for(lambda: not app.agents.get(SITE, "gw1").online, 15, what="offline from the will")
            assert app.metrics.value("greenmine_agent_online", site=SITE, agent="gw1") == 0
            assert [a.agent for a in app.agents.offline()] == ["gw1"]
            assert seen == [("online", None), ("offline", "online")]
            url = f"http://127.0.0.1:{app.http.port}"
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                text = r.read().decode()
            for name in ("greenmine_ingest_messages_total{result=\"accepted\"}", "greenmine_ingest_rejected_total{reason=\"not_json\"}",
                         "greenmine_readings_written_total{sink=\"sqlite\"}", "greenmine_spool_depth_batches",
                         "greenmine_store_write_seconds_bucket", "greenmine_agent_online{agent=\"gw1\",site=\"gs-demo\"} 0.0"):
                assert name in text, name
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                health = json.loads(r.read())
            assert r.status == 200 and health["status"] == "ok" and health["mqtt_subscribed"]
        # the state is persisted in the spool file and survives a restart
        with running(cfg) as app:
            assert app.agents.get(SITE, "gw1").state == "offline"
    finally:
        agent.client.loop_stop()


def test_health_is_503_when_the_broker_is_gone(tmp_path, mosquitto):
    from greenmine.server.config import load_server_config
    from tests.server.conftest import server_doc

    doc = server_doc(tmp_path, mosquitto.port)
    doc["http_port"] = 0
    cfg = load_server_config(tmp_path / "server.toml", doc=doc)
    with running(cfg) as app:
        mosquitto.stop()
        wait_for(lambda: not app.mqtt.connected, 10, what="disconnect noticed")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{app.http.port}/health", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        mosquitto.start()
        wait_for(lambda: app.mqtt.subscribed, 10, what="reconnected")


def test_ingest_validation_agrees_with_the_classifying_path():
    """What ingest validates with (parse_telemetry's fast path, then its rows) accepts exactly what the
    classifying slow path accepts, with the same values and the same reasons; a payload naming another agent
    than its topic is a topic_mismatch."""
    from greenmine.schemas import WireError, WireLimits, WireRejectReason
    from greenmine.schemas.telemetry import _parse_slow
    from greenmine.server.ingest.validation import validate_telemetry

    limits = WireLimits(max_payload_bytes=16 * 1024, max_readings=100, max_future_skew_s=300)
    now = datetime.now(timezone.utc)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    no_schema = {k: v for k, v in batch(1).items() if k != "schema"}
    cases = [p for _, t, p in _bad_messages() if t == topic()] + [
        dumps(batch(1)), dumps(batch(2, n=100)), dumps(batch(3, n=101)), b"[]", b"null", b'"x"', b"\xff\xfe",
        dumps(batch(1, readings=[dict(batch(1)["readings"][0], value=1e308 * 10)])),
        dumps(batch(1, readings=[dict(batch(1)["readings"][0], extra=1)])),
        dumps(batch(1, readings=[dict(batch(1)["readings"][0], ts="2026-01-05T08:00:00")])),  # naive
        dumps(dict(batch(1), seq=-1)), dumps(dict(batch(1), seq=1.5)), dumps(dict(batch(1), seq="1")),
        dumps(no_schema), dumps(dict(no_schema, schema_="greenmine.telemetry.v1")),
    ]

    def rows_of(b):
        return (b.seq, [(b.site, b.agent, r.device, r.metric, (r.ts - epoch) // timedelta(milliseconds=1), r.value,
                         r.unit, r.quality.value) for r in b.readings])

    def outcome(fn, payload):
        try:
            return fn(payload)
        except WireError as exc:
            return exc.reason

    site, agent = topic().split("/")[2:4]
    for payload in cases:
        ref = outcome(lambda p: _parse_slow(p, limits, now), payload)
        got = outcome(lambda p: validate_telemetry(site, agent, p, limits, now), payload)
        assert got == (ref if isinstance(ref, WireRejectReason) else rows_of(ref)), payload[:200]
    assert outcome(lambda p: validate_telemetry(site, "gw2", p, limits, now), dumps(batch(1))) is WireRejectReason.TOPIC_MISMATCH
