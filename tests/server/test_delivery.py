"""Delivery guarantees end to end: idempotency, a server crash, a store outage, two servers sharing a stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone

from greenmine.server.store.sqlite import SqliteReader
from tests.server.conftest import ROOT, SITE, T0, Publisher, batch, dumps, make_config, running, server_doc, topic, write_toml
from tests.support.services import free_port, wait_for


def vm_samples(vm, metric: str = "power_kw_value") -> int:
    return sum(len(s["values"]) for s in vm.export(f'{{__name__="{metric}"}}'))


def test_same_batch_three_times_is_one_row_in_sqlite(tmp_path, mosquitto, publisher):
    cfg = make_config(tmp_path, mosquitto.port)
    reader = SqliteReader(cfg.resolve(cfg.store.path))
    try:
        with running(cfg) as app:
            payload = dumps(batch(7))
            for _ in range(3):
                publisher.publish(topic(), payload)
            wait_for(lambda: app.metrics.value("greenmine_readings_written_total", sink="sqlite") == 60, 5, what="3 writes")
            assert reader.count() == 20
            t = T0 + timedelta(seconds=7)
            assert len(reader.query_series(SITE, "m05", "power_kw", t, t + timedelta(seconds=1))) == 1
            assert reader.rollup_at(SITE, "m05", "power_kw", "hour", t).count == 1
    finally:
        reader.close()


def test_same_batch_three_times_is_one_sample_in_victoriametrics(tmp_path, mosquitto, victoria_dedup, publisher):
    cfg = make_config(tmp_path, mosquitto.port, store={"kind": "influxdb", "url": victoria_dedup.url, "precision": "ms"})
    with running(cfg) as app:
        payload = dumps(batch(7))
        for _ in range(3):
            publisher.publish(topic(), payload)
        wait_for(lambda: app.metrics.value("greenmine_readings_written_total", sink="influxdb") == 60, 5, what="3 writes")
    series = victoria_dedup.export('{__name__="power_kw_value"}')
    assert len(series) == 20
    assert all(len(s["values"]) == 1 for s in series), series[:2]


def _stream(pub: Publisher, seqs, n: int, stop: threading.Event | None = None) -> None:
    for seq in seqs:
        if stop is not None and stop.is_set():
            return
        pub.publish(topic(), dumps(batch(seq, n=n)))


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _start_server(cfg_path, http_port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "greenmine", "server", "run", "--config", str(cfg_path)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: proc.poll() is not None or (_health(http_port) or {}).get("mqtt_subscribed"), 20, what="server up")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    assert proc.poll() is None, open(log.name).read()[-2000:]
    return proc


def test_sigkill_mid_stream_then_restart_stores_everything_exactly_once(tmp_path, mosquitto):
    http_port = free_port()
    doc = server_doc(tmp_path, mosquitto.port)
    doc["http_port"] = http_port
    cfg_path = write_toml(tmp_path / "server.toml", doc)
    n_msgs, n = 1500, 10
    reader = SqliteReader(tmp_path / "store.sqlite")
    pub = Publisher(mosquitto.port)
    log = open(tmp_path / "server.log", "ab")
    proc = _start_server(cfg_path, http_port, log)
    try:
        feeder = threading.Thread(target=_stream, args=(pub, range(n_msgs), n), name="feeder")
        feeder.start()
        # kill while the stream is flowing: some readings stored, more on the way
        wait_for(lambda: os.path.exists(tmp_path / "store.sqlite") and reader.count() >= 2000, 20, what="some stored")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = reader.count()
        feeder.join()
        assert killed_at < n_msgs * n, "the stream should still have been flowing at the kill"
        proc = _start_server(cfg_path, http_port, log)
        wait_for(lambda: reader.count() == n_msgs * n, 30, what="every reading stored")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, "graceful SIGTERM exits 0"
        con = reader._con()
        assert con.execute("SELECT count(DISTINCT ts_ms), count(DISTINCT device) FROM readings").fetchone() == (n_msgs, n)
        # exactly once per reading: also in the rollups, which count inserted rows only
        assert con.execute("SELECT sum(n) FROM rollups WHERE period = 'day'").fetchone()[0] == n_msgs * n
        out = subprocess.run([sys.executable, "-m", "greenmine", "server", "status", "--config", str(cfg_path), "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["spool"]["batches"] == 0, "the spool was flushed on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pub.close()
        reader.close()
        log.close()


STORE_OUTAGE_S = 30  # the figure


def test_store_outage_holds_data_in_the_spool_not_the_broker(tmp_path, mosquitto, victoria_dedup, publisher):
    """VictoriaMetrics is down for 30 s while the stream goes on: every message is still acknowledged
    promptly (the broker's queue stays small), the spool holds the data, and it drains afterwards."""
    cfg = make_config(tmp_path, mosquitto.port, store={"kind": "influxdb", "url": victoria_dedup.url, "timeout_ms": 1000})
    n = 20
    with running(cfg) as app:
        m = app.metrics
        _stream(publisher, range(0, 100), n)
        wait_for(lambda: m.value("greenmine_readings_written_total", sink="influxdb") == 100 * n, 10, what="phase 1 stored")
        victoria_dedup.stop()
        down_at = time.monotonic()
        sent = 100
        while time.monotonic() - down_at < STORE_OUTAGE_S:
            _stream(publisher, range(sent, sent + 20), n)
            sent += 20
            # acknowledged while the store is down: the broker keeps (almost) nothing for us
            wait_for(lambda: m.value("greenmine_ingest_messages_total", result="accepted") == sent, 5,
                     what=f"message {sent} acked during the outage")
            time.sleep(0.5)  # pacing the publisher: a stream, not a burst (not waiting for a state)
        assert m.value("greenmine_store_write_errors_total", sink="influxdb", kind="unavailable") >= 6
        assert m.value("greenmine_store_up", sink="influxdb") == 0
        assert app.spool.queue.depth()[1] >= 1, "data waits in the spool"
        assert app.health()["status"] == "ok" and not app.health()["store_ok"]
        victoria_dedup.start()
        wait_for(lambda: app.spool.queue.depth()[0] == 0, 90, what="spool drained")
        assert m.value("greenmine_store_up", sink="influxdb") == 1
        assert m.value("greenmine_ingest_messages_total", result="accepted") == sent, "nothing was redelivered by the broker"
    assert vm_samples(victoria_dedup) == sent * n


def test_two_servers_on_a_shared_subscription_split_the_stream(tmp_path, mosquitto, publisher):
    a = make_config(tmp_path, mosquitto.port, name="a", mqtt={"shared_group": "ingest"})
    b = make_config(tmp_path, mosquitto.port, name="b", mqtt={"shared_group": "ingest"})
    reader = SqliteReader(a.resolve(a.store.path))
    try:
        # ingest roles: two monitors from these configs would share one replica, which the second is refused
        # (an instance of its own, `--instance`, gives each its own)
        with running(a, roles=("ingest",)) as app_a, running(b, roles=("ingest",)) as app_b:
            _stream(publisher, range(400), 5)
            wait_for(lambda: reader.count() == 2000, 15, what="every reading stored")
            took = [x.metrics.value("greenmine_ingest_messages_total", result="accepted") for x in (app_a, app_b)]
        assert sum(took) == 400 and min(took) > 0, took
        assert reader._con().execute("SELECT sum(n) FROM rollups WHERE period = 'hour'").fetchone()[0] == 2000
    finally:
        reader.close()


def test_full_spool_stops_acknowledging_and_loses_nothing(tmp_path, mosquitto, publisher):
    """Full policy `block`: with the store down and the spool at its bound, ingest stops acknowledging (the broker
    keeps the rest), a graceful stop does not hang, and a later run drains the spool and the broker into the store."""
    dead_store = {"kind": "influxdb", "url": f"http://127.0.0.1:{free_port()}", "timeout_ms": 200}
    cfg = make_config(tmp_path, mosquitto.port, store=dead_store, spool_max_bytes=1024**2, shutdown_flush_timeout_s=0.2)
    n = 20
    # enough batches to overfill the 1 MiB bound, whatever the spool's encoding of a batch
    from greenmine.schemas import WireLimits
    from greenmine.server.ingest.validation import validate_telemetry
    from greenmine.server.spool.batches import pack_readings

    doc = batch(0, n=n)
    _, rows = validate_telemetry(doc["site"], doc["agent"], dumps(doc), WireLimits(), datetime.now(timezone.utc))
    body_bytes = len(pack_readings(rows))
    n_msgs = 1024**2 // body_bytes + 300
    with running(cfg) as app:
        m = app.metrics
        _stream(publisher, range(n_msgs), n)
        wait_for(lambda: m.value("greenmine_spool_full") == 1, 10, what="spool full")
        accepted = m.value("greenmine_ingest_messages_total", result="accepted")
        assert 0 < accepted < n_msgs, accepted
        assert app.health()["status"] == "degraded"
    # the same spool, now with a working store: spool and broker backlog both end up stored, once each
    ok = make_config(tmp_path, mosquitto.port)
    reader = SqliteReader(ok.resolve(ok.store.path))
    try:
        with running(ok):
            wait_for(lambda: reader.count() == n_msgs * n, 20, what="everything stored")
    finally:
        reader.close()
