"""Prometheus metrics of one agent, on its own registry (no module-level state), served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.polls = Counter("greenmine_agent_polls", "poll-group runs by result (ok | failed | backoff)",
                             ["device", "group", "result"], registry=r)
        self.failures = Counter("greenmine_agent_failures", "failed Modbus requests by device and kind",
                                ["device", "kind"], registry=r)
        self.requests = Counter("greenmine_agent_modbus_requests", "Modbus requests sent, by bus", ["bus"], registry=r)
        self.readings = Counter("greenmine_agent_readings", "readings produced, by device and quality",
                                ["device", "quality"], registry=r)
        self.skipped = Counter("greenmine_agent_skipped_runs", "scheduled poll-group runs skipped (late or still running)",
                               ["device", "group"], registry=r)
        self.device_online = Gauge("greenmine_agent_device_online", "1 online, 0 offline, -1 unknown", ["device"], registry=r)
        self.outbox_depth = Gauge("greenmine_agent_outbox_depth_batches", "batches waiting in the outbox", registry=r)
        self.outbox_bytes = Gauge("greenmine_agent_outbox_bytes", "payload bytes waiting in the outbox", registry=r)
        self.dropped_batches = Gauge("greenmine_agent_outbox_dropped_batches",
                                     "batches dropped by the outbox bound, ever (persisted)", registry=r)
        self.dropped_readings = Gauge("greenmine_agent_outbox_dropped_readings",
                                      "readings dropped by the outbox bound, ever (persisted)", registry=r)
        self.dropped_by_reason = Gauge(
            "greenmine_agent_dropped_readings", "readings lost, ever (persisted), by reason: disk_full, write_failed "
            "(the outbox could not be written), outbox_full, max_age (its bounds), corrupt (damaged when read back)",
            ["reason"], registry=r)
        self.state_files_moved_aside = Counter(
            "greenmine_agent_state_files_moved_aside", "state files found damaged at start and moved aside", ["file"],
            registry=r)
        self.published = Counter("greenmine_agent_published_batches", "batches acknowledged by the broker", registry=r)
        self.publish_latency = Histogram(
            "greenmine_agent_publish_latency_seconds", "poll batch committed -> PUBACK",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600), registry=r)
        self.poll_to_puback = Histogram(
            "greenmine_agent_poll_to_puback_seconds",
            "oldest poll in a live batch finished -> PUBACK: how long a poll's readings take to reach the broker",
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.broker_connected = Gauge("greenmine_agent_broker_connected", "1 while connected to the broker", registry=r)
        self._server = None
        self._thread = None

    def serve(self, host: str, port: int) -> int:
        """Start /metrics; returns the bound port (port 0 picks a free one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = self._thread = None
