"""Prometheus metrics, served on `/metrics` by the server's HTTP app (`server.web.app`).

Each `Metrics` has its own registry (no module-level state), so several server
instances can live in one process, as the tests run them.

    greenmine_ingest_messages_total{result="accepted|rejected"}
    greenmine_ingest_rejected_total{reason=...}
    greenmine_ingest_readings_total                      readings accepted into the spool
    greenmine_status_messages_total                      agent status messages applied
    greenmine_readings_written_total{sink=...}
    greenmine_store_write_seconds{sink=...}              histogram, one observation per store write
    greenmine_store_write_errors_total{sink=...,kind="unavailable|rejected"}
    greenmine_store_up{sink=...}                         0 while writes are failing
    greenmine_spool_depth_batches / _readings / _bytes   waiting for the store
    greenmine_spool_full                                 1 while ingest is not acknowledging (full policy: block)
    greenmine_spool_retained_batches                     acknowledged by the store, kept for the durability window
    greenmine_store_restarts_total{sink=...}             store restarts seen; the durability window was written again
    greenmine_mqtt_connected
    greenmine_role_messages_total{role}                  messages a monitor/uplink/energy role's own consumer committed
    greenmine_role_ignored_total{role,reason}            ... and skipped (other partition, invalid: ingest dead-letters those)
    greenmine_thread_crashes_total{thread}               supervised threads that died (restarted, or the process exits)
    greenmine_agent_online{site,agent}                   1 online, 0 offline (from birth and will)
    greenmine_hj212_packets_total{point,result}          HJ 212 uploads: sent, acked, retried, failed, dropped, expired
    greenmine_hj212_connects_total{point}                links made to the platform
    greenmine_hj212_queued{point}, greenmine_hj212_connected{point}
    greenmine_energy_queue_depth{centre}, greenmine_energy_oldest_unsent_age_seconds{centre}
    greenmine_energy_records_acked_total{centre}, greenmine_energy_records_rejected_total{centre},
    greenmine_energy_send_failures_total{centre}, greenmine_energy_check_failures_total{check}
    greenmine_hj212_commands_refused_total{point}        platform commands refused (QnRtn=2: a parameter out of bounds)
    greenmine_hj212_platform_frames_dropped_total{point,reason}   oversize, rate (before parsing), bad_frame
    greenmine_state_files_moved_aside_total{file}        state files found damaged at start and moved aside
                                                         (spool, alerts, kpi, replica, hj212_queue)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from greenmine.server.spool.deadletter import REASONS

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, sink_name: str) -> None:
        r = self.registry = CollectorRegistry()
        self.sink = sink_name
        self.messages = Counter("greenmine_ingest_messages", "MQTT messages handled, by result", ["result"], registry=r)
        self.rejected = Counter("greenmine_ingest_rejected", "rejected messages, by reason", ["reason"], registry=r)
        self.readings_in = Counter("greenmine_ingest_readings", "readings accepted into the spool", registry=r)
        self.status_messages = Counter("greenmine_status_messages", "agent status messages applied", registry=r)
        self.written = Counter("greenmine_readings_written", "readings written to the store", ["sink"], registry=r)
        self.write_seconds = Histogram(
            "greenmine_store_write_seconds", "latency of one store write", ["sink"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.write_errors = Counter("greenmine_store_write_errors", "failed store writes", ["sink", "kind"], registry=r)
        self.store_up = Gauge("greenmine_store_up", "0 while store writes are failing", ["sink"], registry=r)
        self.spool_batches = Gauge("greenmine_spool_depth_batches", "batches in the spool", registry=r)
        self.spool_readings = Gauge("greenmine_spool_depth_readings", "readings in the spool", registry=r)
        self.spool_bytes = Gauge("greenmine_spool_depth_bytes", "bytes of batch bodies in the spool", registry=r)
        self.spool_full = Gauge("greenmine_spool_full", "1 while the spool is full and ingest stops acknowledging", registry=r)
        self.spool_retained = Gauge("greenmine_spool_retained_batches",
                                    "batches the store acknowledged, kept for the durability window", registry=r)
        self.store_restarts = Counter("greenmine_store_restarts", "store restarts seen (the durability window is "
                                      "written again)", ["sink"], registry=r)
        self.mqtt_connected = Gauge("greenmine_mqtt_connected", "1 while connected to the broker", registry=r)
        self.agent_online = Gauge("greenmine_agent_online", "1 online, 0 offline, per agent", ["site", "agent"], registry=r)
        self.thread_crashes = Counter("greenmine_thread_crashes", "supervised threads that died, by thread", ["thread"],
                                      registry=r)
        self.state_files_moved_aside = Counter(
            "greenmine_state_files_moved_aside", "state files found damaged (or empty) at start, moved aside and started "
            "afresh, by file", ["file"], registry=r)
        for f in ("spool", "alerts", "kpi", "replica", "hj212_queue"):
            self.state_files_moved_aside.labels(f)
        for result in ("accepted", "rejected"):
            self.messages.labels(result)
        for reason in REASONS:
            self.rejected.labels(reason)
        self.written.labels(sink_name)
        self.store_restarts.labels(sink_name)
        self.write_seconds.labels(sink_name)
        self.store_up.labels(sink_name).set(1)
        for kind in ("unavailable", "rejected"):
            self.write_errors.labels(sink_name, kind)

    def bind_spool(self, depth: Callable[[], tuple[int, int, int]], full: Callable[[], bool],
                   retained: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)) -> None:
        self.spool_retained.set_function(lambda: retained()[0])
        self.spool_batches.set_function(lambda: depth()[0])
        self.spool_readings.set_function(lambda: depth()[1])
        self.spool_bytes.set_function(lambda: depth()[2])
        self.spool_full.set_function(lambda: 1.0 if full() else 0.0)

    def bind_consumers(self, snapshot: Callable[[], dict[str, tuple[int, dict[str, int]]]]) -> None:
        """The monitor's, uplink's and energy role's own consumers of the stream (`server.ingest.consumer`):
        role name -> (messages committed, {reason: messages ignored}), read at scrape time."""

        class Collector:
            def collect(self):
                snap = snapshot()
                messages = CounterMetricFamily("greenmine_role_messages", "messages the role's own consumer committed "
                                               "(and acknowledged), per role", labels=["role"])
                ignored = CounterMetricFamily("greenmine_role_ignored", "messages the role's consumer skipped, by "
                                              "reason (invalid ones are ingest's dead letters)", labels=["role", "reason"])
                for role, (n, why) in sorted(snap.items()):
                    messages.add_metric([role], n)
                    for reason, k in sorted(why.items()):
                        ignored.add_metric([role, reason], k)
                return [messages, ignored]

        self.registry.register(Collector())

    def bind_hj212(self, snapshot: Callable[[], dict[str, dict[str, int]]]) -> None:
        """Export the HJ 212 points' counters, read from `snapshot()` at scrape time."""

        class Collector:
            def collect(self):
                snap = snapshot()
                packets = CounterMetricFamily("greenmine_hj212_packets", "HJ 212 uploads per point, by result", labels=["point", "result"])
                connects = CounterMetricFamily("greenmine_hj212_connects", "links made to the platform", labels=["point"])
                queued = GaugeMetricFamily("greenmine_hj212_queued", "messages waiting for a 9014", labels=["point"])
                connected = GaugeMetricFamily("greenmine_hj212_connected", "1 while linked to the platform", labels=["point"])
                refused = CounterMetricFamily("greenmine_hj212_commands_refused",
                                              "platform commands refused with QnRtn=2 (a parameter out of bounds)",
                                              labels=["point"])
                dropped = CounterMetricFamily("greenmine_hj212_platform_frames_dropped",
                                              "frames from the platform dropped unanswered, by reason "
                                              "(oversize, rate: before parsing; bad_frame: failed to decode)",
                                              labels=["point", "reason"])
                for point, c in sorted(snap.items()):
                    for result in ("sent", "acked", "retried", "failed", "dropped", "expired"):
                        packets.add_metric([point, result], c[result])
                    connects.add_metric([point], c["connects"])
                    queued.add_metric([point], c["queued"])
                    connected.add_metric([point], c["connected"])
                    refused.add_metric([point], c.get("refused", 0))
                    for key, n in c.items():
                        if key.startswith("platform_dropped:"):
                            dropped.add_metric([point, key.split(":", 1)[1]], n)
                return [packets, connects, queued, connected, refused, dropped]

        self.registry.register(Collector())

    def bind_energy(self, snapshot: Callable[[], dict[str, dict]], totals: Callable[[], dict[str, int]]) -> None:
        """The energy uplink's queue per data centre (`EnergyService.snapshot`) and its checks (`totals`), read at
        scrape time."""

        class Collector:
            def collect(self):
                snap = snapshot()
                depth = GaugeMetricFamily("greenmine_energy_queue_depth", "records not yet acked, per data centre", labels=["centre"])
                oldest = GaugeMetricFamily("greenmine_energy_oldest_unsent_age_seconds",
                                           "age of the oldest record not yet acked, per data centre", labels=["centre"])
                acked = CounterMetricFamily("greenmine_energy_records_acked", "records acked, per data centre", labels=["centre"])
                rejected = CounterMetricFamily("greenmine_energy_records_rejected",
                                               "records a centre answered with an error (kept, resent)", labels=["centre"])
                failed = CounterMetricFamily("greenmine_energy_send_failures", "sends without a reply (refused, timeout, TLS)",
                                             labels=["centre"])
                t = totals()
                checks = CounterMetricFamily("greenmine_energy_check_failures",
                                             "consistency failures (month vs its days > tolerance) and periods held as incomplete",
                                             labels=["check"])
                checks.add_metric(["consistency"], t["consistency_failures"])
                checks.add_metric(["held_incomplete"], t["held"])
                for name, s in snap.items():
                    depth.add_metric([name], s["depth"])
                    oldest.add_metric([name], s["oldest_age_s"])
                    acked.add_metric([name], s["acked"])
                    rejected.add_metric([name], s["rejected"])
                    failed.add_metric([name], s["failed"])
                return [depth, oldest, acked, rejected, failed, checks]

        self.registry.register(Collector())

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if absent); for tests and `status`."""
        v = self.registry.get_sample_value(name, labels or None)
        return v or 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
