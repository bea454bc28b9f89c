"""Issue 13: no single message stops ingestion, and a thread that dies is never silent.

Real Mosquitto, real spool and store. Faults are a real hostile message, or a callable the component takes in
its constructor (a clock, a sink, the spool stage), never a patched library.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from greenmine.server.config import load_server_config
from greenmine.server.store.sqlite import SqliteReader, SqliteStore
from tests.server.conftest import SITE, T0, batch, dumps, running, server_doc, topic
from tests.support.services import wait_for


def _cfg(tmp_path, port, **kw):
    doc = server_doc(tmp_path, port, **kw)
    doc["http_port"] = 0
    return load_server_config(tmp_path / "server.toml", doc=doc)


def _health(app) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.http.port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _status(**kw) -> bytes:
    return json.dumps({"schema": "greenmine.status.v1", "site": SITE, "agent": "gw1", "state": "online",
                       "ts": datetime.now(timezone.utc).isoformat(), **kw}).encode()


def _stored_at(reader, seq: int, device: str = "m00"):
    ts = T0 + timedelta(seconds=seq)
    return reader.query_series(SITE, device, "power_kw", ts, ts + timedelta(seconds=1))


def test_out_of_range_integers_even_retained_are_dead_lettered_and_ingestion_goes_on(tmp_path, mosquitto, publisher):
    """Defect 1: outbox_depth 2^64 (status) and seq 2^63 (telemetry), both retained, raised OverflowError in the
    spool's insert, killed the ingest thread on every restart, and /health stayed 200."""
    cfg = _cfg(tmp_path, mosquitto.port)
    publisher.publish(topic("status"), _status(outbox_depth=2**64), retain=True)
    publisher.publish(topic(), dumps({**batch(3, n=1), "seq": 2**63}), retain=True)
    reader = SqliteReader(cfg.resolve(cfg.store.path))
    try:
        for run in range(2):  # the broker hands both retained messages to every new subscription
            with running(cfg) as app:
                wait_for(lambda: app.metrics.value("greenmine_ingest_rejected_total", reason="invalid") == 2, 10,
                         what="both hostile messages dead-lettered")
                publisher.publish(topic(), dumps(batch(10 + run, n=2)))
                wait_for(lambda: _stored_at(reader, 10 + run), 10, what="a good batch after them")
                code, health = _health(app)
                assert code == 200 and health["status"] == "ok" and health["threads"]["ingest"]["alive"], health
                fields = sorted(r[4].split(":")[0] for r in app.spool.dead_letters.newest(limit=2, reason="invalid"))
                assert fields == ["outbox_depth", "seq"]
                total = app.spool.dead_letters.counts()["invalid"]
        assert total == 4
    finally:
        reader.close()
        publisher.publish(topic("status"), b"", retain=True)
        publisher.publish(topic(), b"", retain=True)


class OutOfRangeSpool:
    """The real spool, whose real SQLite transaction is handed seq 2^64 for any batch with seq 13: what a spool
    that holds less than the wire contract allows would do. Counts its refusals."""

    def __init__(self, spool) -> None:
        self.spool = spool
        self.queue, self.dead_letters, self.agents = spool.queue, spool.dead_letters, spool.agents
        self.refused = 0

    def commit(self, entries, dead=(), infos=()) -> None:
        from greenmine.server.errors import SpoolRejected

        try:
            self.spool.commit([e._replace(seq=2**64) if e.seq == 13 else e for e in entries], dead, infos)
        except SpoolRejected:
            self.refused += 1
            raise


def test_a_message_the_spool_refuses_twice_is_dead_lettered_as_poison_and_the_rest_are_spooled(tmp_path):
    from greenmine.server.config import IngestConfig
    from greenmine.server.ingest.ingestor import Ingestor
    from greenmine.server.ingest.mqtt import Delivery
    from greenmine.server.metrics import Metrics
    from greenmine.server.spool.agents import AgentRegistry
    from greenmine.server.spool.spool import Spool

    spool = Spool(tmp_path / "spool.sqlite")
    stage = OutOfRangeSpool(spool)
    acked: list[int] = []
    metrics = Metrics("sqlite")
    ing = Ingestor(IngestConfig(), [SITE], stage, AgentRegistry(), metrics, lambda group: acked.extend(d.mid for d in group),
                   queue_size=100)
    try:
        for mid, seq in enumerate((12, 13, 14)):  # queued before the thread starts: one group
            ing.submit(Delivery(topic(), dumps(batch(seq, n=2, t0=datetime.now(timezone.utc))), mid, 1, 0))
        ing.start()
        wait_for(lambda: len(acked) == 3, 10, what="all three acknowledged")
        assert stage.refused == 2  # in its group, then alone
        assert spool.queue.depth()[:2] == (2, 4)
        assert spool.dead_letters.counts() == {"poison": 1}
        (row,) = spool.dead_letters.newest(reason="poison")
        assert json.loads(row[5])["seq"] == 13 and "too large" in row[4], row[4]  # sqlite3's OverflowError, mapped
        assert metrics.value("greenmine_ingest_rejected_total", reason="poison") == 1
        assert ing.supervisor.snapshot()["ingest"] == {"alive": True, "policy": "fatal", "crashes": 0, "last_error": None}
    finally:
        ing.stop()
        spool.close()


def test_a_full_ingest_queue_holds_paho_thread_until_the_ingest_thread_makes_room(tmp_path):
    """The hand-off from paho's thread is bounded: a broker ignoring receive_maximum makes submit wait (pushing
    back on the TCP connection) instead of queueing without limit, and it goes on once ingest takes the group."""
    from greenmine.server.config import IngestConfig
    from greenmine.server.ingest.ingestor import Ingestor
    from greenmine.server.ingest.mqtt import Delivery
    from greenmine.server.metrics import Metrics
    from greenmine.server.spool.agents import AgentRegistry
    from greenmine.server.spool.spool import Spool

    spool = Spool(tmp_path / "spool.sqlite")
    acked: list[int] = []
    ing = Ingestor(IngestConfig(), [SITE], spool, AgentRegistry(), Metrics("sqlite"), lambda group: acked.extend(d.mid for d in group),
                   queue_size=3)
    now = datetime.now(timezone.utc)
    submitted: list[int] = []

    def paho_thread() -> None:
        for mid in range(5):
            ing.submit(Delivery(topic(), dumps(batch(mid, n=1, t0=now)), mid, 1, 0))
            submitted.append(mid)

    t = threading.Thread(target=paho_thread, daemon=True)
    try:
        t.start()
        wait_for(lambda: len(submitted) == 3, 10, what="three queued")
        t.join(0.3)  # the fourth waits for room: nothing takes from the queue yet
        assert t.is_alive() and submitted == [0, 1, 2]
        ing.start()
        wait_for(lambda: sorted(acked) == [0, 1, 2, 3, 4], 10, what="all five acknowledged")
        t.join(5)
        assert not t.is_alive() and spool.queue.depth()[0] == 5
    finally:
        ing.stop()
        spool.close()


class FaultyClock:
    """time.time, except on the thread named `fail_on` once it is set: a fault injected into one thread's work."""

    def __init__(self) -> None:
        self.fail_on: str | None = None

    def __call__(self) -> float:
        if self.fail_on and threading.current_thread().name == self.fail_on:
            raise RuntimeError("injected clock fault")
        return time.time()


def test_an_ingest_thread_that_dies_is_fatal_counted_and_fails_health(tmp_path, mosquitto, publisher):
    cfg = _cfg(tmp_path, mosquitto.port)
    clock = FaultyClock()
    with running(cfg, clock=clock) as app:
        assert _health(app)[0] == 200
        clock.fail_on = "greenmine-ingest"
        publisher.publish(topic(), dumps(batch(1, n=1)))
        assert app.wait_failed(10), "the ingest thread's death was not noticed"
        assert app.failed.startswith("ingest: RuntimeError: injected clock fault")
        code, health = _health(app)
        assert code == 503 and health["status"] == "degraded" and health["failed"] == app.failed
        assert health["threads"]["ingest"] == {"alive": False, "policy": "fatal", "crashes": 1,
                                               "last_error": "RuntimeError: injected clock fault"}
        assert app.metrics.value("greenmine_thread_crashes_total", thread="ingest") == 1
    # the message was not acknowledged: a new process (systemd's restart) gets it and stores it
    with running(cfg) as app:
        reader = SqliteReader(cfg.resolve(cfg.store.path))
        try:
            wait_for(lambda: _stored_at(reader, 1), 10, what="the redelivered batch")
        finally:
            reader.close()


class BrokenSink:
    """A real SQLite store behind a sink that raises where the writer does not expect it, while `broken`."""

    name = "sqlite"

    def __init__(self, path) -> None:
        self.store = SqliteStore(path)
        self.broken = True

    @property
    def maintenance_interval_s(self):
        if self.broken:
            raise RuntimeError("injected sink fault")
        return self.store.maintenance_interval_s

    def write(self, readings) -> None:
        self.store.write(readings)

    def ping(self) -> None:
        self.store.ping()

    def maintain(self) -> int:
        return self.store.maintain()

    def close(self) -> None:
        self.store.close()


def test_a_writer_thread_that_dies_is_restarted_counted_and_reported(tmp_path, mosquitto, publisher):
    cfg = _cfg(tmp_path, mosquitto.port)
    sink = BrokenSink(tmp_path / "store.sqlite")
    with running(cfg, sink=sink) as app:
        wait_for(lambda: app.health()["threads"]["writer"]["crashes"] >= 2, 10, what="the writer restarted")
        writer = app.health()["threads"]["writer"]
        assert writer["policy"] == "restart" and writer["last_error"] == "RuntimeError: injected sink fault"
        assert app.metrics.value("greenmine_thread_crashes_total", thread="writer") >= 2
        assert app.failed is None  # restarted, not fatal
        publisher.publish(topic(), dumps(batch(1, n=1)))
        sink.broken = False
        reader = SqliteReader(cfg.resolve(cfg.store.path))
        try:
            wait_for(lambda: _stored_at(reader, 1), 15, what="the batch written by the restarted writer")
        finally:
            reader.close()
        wait_for(lambda: _health(app)[0] == 200, 5, what="healthy again")


def test_a_monitor_consumer_that_dies_is_fatal_and_fails_health(tmp_path, mosquitto, publisher):
    cfg = _cfg(tmp_path, mosquitto.port)
    clock = FaultyClock()
    from greenmine.server.app import App

    app = App(cfg, roles={"monitor"}, clock=clock)
    app.start()
    try:
        wait_for(lambda: app.monitor.consumer.mqtt.subscribed, 10, what="monitor subscribed")  # else the message is not its
        assert _health(app)[0] == 200
        clock.fail_on = "greenmine-monitor-consumer"
        publisher.publish(topic(), dumps(batch(1, n=1)))
        assert app.wait_failed(10)
        code, health = _health(app)
        assert code == 503 and health["threads"]["monitor-consumer"]["crashes"] == 1
        assert app.metrics.value("greenmine_thread_crashes_total", thread="monitor-consumer") == 1
    finally:
        app.stop()


def test_a_monitor_role_reports_what_its_consumer_committed(tmp_path, mosquitto, publisher):
    """An operator sees a role falling behind: greenmine_role_messages_total{role} beside ingest's counters, and
    /health says whether the role is subscribed."""
    from greenmine.server.app import App

    cfg = _cfg(tmp_path, mosquitto.port)
    app = App(cfg, roles={"monitor"})
    app.start()
    try:
        wait_for(lambda: _health(app)[1].get("monitor_subscribed"), 10, what="monitor subscribed")
        for seq in range(3):
            publisher.publish(topic(), dumps(batch(seq, n=2)))
        publisher.publish(topic(), b"not json")
        wait_for(lambda: app.metrics.value("greenmine_role_messages_total", role="monitor") == 4, 10,
                 what="the monitor's messages counted")
        assert app.metrics.value("greenmine_role_ignored_total", role="monitor", reason="not_json") == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{app.http.port}/metrics", timeout=5) as r:
            assert 'greenmine_role_messages_total{role="monitor"} 4.0' in r.read().decode()
    finally:
        app.stop()


def _vm_timestamps(vm) -> int:
    """Distinct (series, timestamp) samples of power_kw in VictoriaMetrics (a re-sent sample counts once)."""
    return sum(len(set(s["timestamps"])) for s in vm.export('{__name__="power_kw_value"}'))


def test_victoriametrics_killed_right_after_acknowledging_loses_nothing(tmp_path, mosquitto, victoria_dedup, publisher):
    """Defect 9: VictoriaMetrics holds the last -inmemoryDataFlushInterval (5 s) of acknowledged writes in memory;
    SIGKILL lost them after the spool had deleted them. Now they stay in the spool for the durability window,
    and the writer sees the store's new start time and writes them again."""
    from greenmine.server.store.writer import YOUNG_S
    from tests.server.conftest import make_config

    window_s = 20.0  # above VictoriaMetrics' default -inmemoryDataFlushInterval of 5 s, with room for a slow restart
    cfg = make_config(tmp_path, mosquitto.port, store={"kind": "influxdb", "url": victoria_dedup.url, "timeout_ms": 1000},
                      store_durability_window_s=window_s)
    n, messages = 20, 30
    with running(cfg) as app:
        m = app.metrics
        wait_for(lambda: app.writer.store_started_at is not None, 10, what="the writer knows the store's start time")
        # its start time is in whole seconds: a restart shows in it only after the second it started in (what a
        # younger store took is written again anyway: test_a_store_restarted_within_its_first_second_loses_nothing)
        wait_for(lambda: time.time() >= app.writer.store_started_at + YOUNG_S + 1, YOUNG_S + 5,
                 what="the store older than its start time's resolution")
        for seq in range(messages):
            publisher.publish(topic(), dumps(batch(seq, n=n)))
        wait_for(lambda: m.value("greenmine_readings_written_total", sink="influxdb") == messages * n, 10,
                 what="every reading acknowledged by the store")
        assert app.spool.queue.depth()[0] == 0 and app.spool.queue.retained()[0] == messages
        victoria_dedup.stop(kill=True)  # SIGKILL before its in-memory data is flushed
        victoria_dedup.start()
        wait_for(lambda: m.value("greenmine_store_restarts_total", sink="influxdb") == 1, 60, what="the restart seen")
        wait_for(lambda: m.value("greenmine_readings_written_total", sink="influxdb") >= 2 * messages * n, 10,
                 what="the window written again")
        # (and once more when the new process is past its first seconds, where a second restart would not show)
        # after the window the retained batches go: the spool does not grow
        wait_for(lambda: app.spool.queue.retained()[0] == 0 and app.spool.queue.depth()[0] == 0, window_s + 10,
                 what="the window pruned")
        assert _vm_timestamps(victoria_dedup) == messages * n


class WholeSecondStore:
    """A store that, like VictoriaMetrics, reports its start time in whole seconds, and loses what it held in
    memory when it is restarted within that second (`restart_unseen`): the start time it reports stays the same."""

    name = "influxdb"
    maintenance_interval_s = None

    def __init__(self) -> None:
        self.rows: set = set()
        self.age_s = 0.3

    def started_at(self):
        from greenmine.server.store.base import StoreStart

        return StoreStart(1_800_000_000.0, self.age_s)

    def write(self, readings) -> None:
        self.rows.update((r[2], r[3], r[4]) for r in readings)  # rows in StoredReading order

    def restart_unseen(self) -> None:
        self.rows = set()

    def ping(self) -> None:
        pass

    def maintain(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_a_store_restarted_within_its_first_second_loses_nothing(tmp_path, mosquitto, publisher):
    """A restart within the second the store started in shows no new start time: what the store took while it
    was that young is kept past the window and written again once it is older."""
    from greenmine.server.store.base import RestartAware
    from greenmine.server.store.writer import YOUNG_S

    window_s = 0.3
    cfg = _cfg(tmp_path, mosquitto.port, store_durability_window_s=window_s)
    store = WholeSecondStore()
    assert isinstance(store, RestartAware)
    n, messages = 4, 5
    with running(cfg, sink=store) as app:
        for seq in range(messages):
            publisher.publish(topic(), dumps(batch(seq, n=n)))
        wait_for(lambda: len(store.rows) == messages * n, 10, what="every reading taken by the store")
        written = time.monotonic()
        # the window passes and the writer probes again (every 0.1 s here), but a store this young is not pruned
        wait_for(lambda: time.monotonic() > written + window_s + 0.5, 5, what="the window over")
        assert app.spool.queue.retained()[0] == messages
        store.restart_unseen()
        store.age_s = YOUNG_S + 0.5
        wait_for(lambda: len(store.rows) == messages * n, 10, what="the young store's writes written again")
        assert app.metrics.value("greenmine_store_restarts_total", sink="influxdb") == 0  # not seen, not counted
        wait_for(lambda: app.spool.queue.retained()[0] == 0, 10, what="the window pruned once the store is older")


def test_every_ack_of_a_group_acknowledged_at_once_reaches_the_broker(tmp_path, mosquitto, publisher):
    """ack_all queues a group's PUBACKs with paho's wake-up held back, then wakes its loop once: the broker must
    still get every one of them, or it stops sending once receive_maximum messages are unacknowledged (here 10
    of 300) and the store stalls."""
    cfg = _cfg(tmp_path, mosquitto.port)
    cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"receive_maximum": 10})})
    now = datetime.now(timezone.utc)
    with running(cfg, roles=("ingest",)) as app:
        assert getattr(app.mqtt._client, "_sockpairW", None) is not None  # paho 2.x: the batched path is taken
        for seq in range(300):
            publisher.publish(topic(), dumps(batch(seq, n=2, t0=now)))
        reader = SqliteReader(cfg.resolve(cfg.store.path))
        try:
            wait_for(lambda: reader.count() == 600, 30, what="all 300 messages stored")
        finally:
            reader.close()
        assert app.metrics.value("greenmine_ingest_messages_total", result="accepted") == 300
