"""The server process: wires subscriber → ingest → spool → writer → sink, plus metrics.

    App(cfg).start() ... App.stop()

`run(cfg)` is `greenmine server run`: it starts the app and, on SIGTERM or
SIGINT, shuts down gracefully:

1. stop consuming (new deliveries are left unacknowledged in the broker),
2. spool and acknowledge what was already received,
3. disconnect (the persistent session keeps everything else),
4. keep draining the spool into the store for up to
   `ingest.shutdown_flush_timeout_s`; what is left stays in the spool file
   and is written on the next start,
5. exit 0.

Time: `App(cfg, clock=...)` takes "now" (epoch seconds) from `clock` for
ingest's future-timestamp check, the writer's dead letters, KPI periods, alert
timing (for-durations, deadman silence, re-notify, reminders) and emails;
`run` builds it from the config's `[clock]` (`greenmine.clock`: the system
clock unless a demo or test asks for accelerated simulated time). The HJ 212
uplink keeps the system clock.

Extension points for the KPI, alert and uplink engines:
`app.writer.add_listener(fn(readings))` after each stored batch (a `Sequence[StoredReading]`), and
`app.agents.add_listener(fn(info, previous))` for agent status changes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from greenmine.server.spool.agents import AgentRegistry
from greenmine.server.monitor.alerts.wiring import attach as attach_monitor
from greenmine.server.config import ServerConfig
from greenmine.server.ingest.ingestor import Ingestor
from greenmine.server.metrics import HttpEndpoint, Metrics
from greenmine.server.ingest.mqtt import MqttSubscriber
from greenmine.server.spool.spool import Spool
from greenmine.server.store import open_sink
from greenmine.server.store.base import Sink
from greenmine.server.store.writer import Writer

log = logging.getLogger(__name__)


class App:
    def __init__(self, cfg: ServerConfig, *, sink: Sink | None = None, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        ing = cfg.ingest
        self.spool = Spool(
            cfg.resolve(ing.spool_path),
            max_bytes=ing.spool_max_bytes,
            synchronous=ing.spool_synchronous,
            dead_letter_max_rows=ing.dead_letter_max_rows,
            keep_bytes=ing.dead_letter_payload_bytes,
        )
        try:
            self.sink = sink if sink is not None else open_sink(
                cfg.store, resolve=cfg.resolve, site_timezones={s.id: s.timezone for s in cfg.sites})
            self.metrics = Metrics(self.sink.name)
            self.metrics.bind_spool(self.spool.queue.depth, self.spool.queue.full)
            self.agents = AgentRegistry(self.spool.agents.load(), on_change=self._agent_gauge)
            self.mqtt = MqttSubscriber(cfg.mqtt, self._deliver, self._connection)
            self.ingestor = Ingestor(ing, [s.id for s in cfg.sites], self.spool, self.agents, self.metrics, self.mqtt.ack,
                                     queue_size=cfg.mqtt.receive_maximum + 1000, clock=clock)
            self.writer = Writer(self.spool, self.sink, self.metrics, ing, clock=clock)
            self.hj212 = None
            if cfg.hj212:
                from greenmine.server.uplink.hj212.service import Hj212Service

                self.hj212 = Hj212Service(cfg, self.agents)
                self.writer.add_listener(self.hj212.on_stored)
                self.metrics.bind_hj212(self.hj212.snapshot)
            self.monitor = attach_monitor(self, clock)  # KPIs -> alerts -> email, fed by the writer's listener
            self.http = HttpEndpoint(cfg.http_host, cfg.http_port, self.metrics, self.health,
                                     api=self.monitor.api) if cfg.http_port is not None else None
        except BaseException:
            if getattr(self, "sink", None) is not None:
                self.sink.close()
            self.spool.close()
            raise
        self._started = False

    def _deliver(self, delivery) -> None:
        self.ingestor.submit(delivery)

    def _connection(self, up: bool) -> None:
        self.metrics.mqtt_connected.set(1 if up else 0)
        self.monitor.on_connection(up)

    def _agent_gauge(self, info) -> None:
        self.metrics.agent_online.labels(info.site, info.agent).set(1 if info.online else 0)

    def health(self) -> dict:
        batches, readings, nbytes = self.spool.queue.depth()
        full = self.spool.queue.full()
        mqtt_ok = self.mqtt.connected
        return {
            "status": "ok" if mqtt_ok and not full else "degraded",
            "mqtt_connected": mqtt_ok,
            "mqtt_subscribed": self.mqtt.subscribed,
            "store_ok": self.writer.store_ok,
            "spool_batches": batches,
            "spool_readings": readings,
            "spool_bytes": nbytes,
            "spool_full": full,
        }

    def start(self) -> None:
        self.monitor.start()
        self.writer.start()
        if self.hj212 is not None:
            self.hj212.start()
        self.ingestor.start()
        if self.http is not None:
            self.http.start()
            log.info("server: /metrics and /health on http://%s:%d", self.cfg.http_host, self.http.port)
        self.mqtt.start()
        self._started = True
        log.info(
            "server: ingesting %s into %s (spool %s)",
            ", ".join(self.mqtt.subscriptions), self.sink.name, self.spool.path,
        )

    def stop(self, flush_timeout_s: float | None = None) -> None:
        """Graceful stop (see the module docstring). Safe to call once after start."""
        if flush_timeout_s is None:
            flush_timeout_s = self.cfg.ingest.shutdown_flush_timeout_s
        if self._started:
            self.mqtt.stop_consuming()
            self.ingestor.stop()
            self.mqtt.close()
            self.writer.stop(flush_timeout_s)
            if self.hj212 is not None:
                self.hj212.stop()
            if self.http is not None:
                self.http.stop()
        self.monitor.stop()
        self.sink.close()
        self.spool.close()
        self._started = False
        log.info("server: stopped")


def run(cfg: ServerConfig) -> int:
    """`greenmine server run`: serve until SIGTERM/SIGINT, then stop gracefully."""
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        log.info("server: %s received; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from greenmine.clock import Clock

    clock = Clock(cfg.clock)
    if clock.accelerated:
        log.warning("server: %s (for demos and tests only; now %s)", clock.describe(), clock.now_datetime().isoformat())
    app = App(cfg, clock=clock.now)
    app.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        app.stop()
    return 0
