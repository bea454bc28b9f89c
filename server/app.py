"""The server process: the roles it runs, wired. `App` is the only wiring.

    App(cfg, roles={"ingest", "monitor", "uplink"}).start() ... App.stop()

A role is a process (`greenmine server run --role ingest|monitor|uplink|all`,
default all: every role in one process, for a small site). Roles talk through
the broker and their own files, never through in-process callbacks:

- **ingest** (`server.ingest`, `server.spool`, `server.store`): subscribe on the
  shared group, validate, spool, acknowledge, write to the store. Several
  ingest processes share one subscription, each with its own `client_id` and
  spool (`--instance`).
- **monitor** (`server.monitor.role`): its own session, for the sites it judges
  (`--sites` / `--partition`): KPIs, alert rules, email.
- **uplink** (`server.uplink.role`): its own session, for the sites its HJ 212
  points report.
- **web** (`server.web.role`): the officers' console on `[web] host:port`. It
  reads the monitor's KPI store and alert state, the store and the spool, and
  writes acknowledgements and its users database. `all` includes it when the
  config has a `[web]` section (`--role web` runs it with the section's defaults).

Every process with `http_port` also serves `/metrics`, `/health` and, with the
monitor, the alerts' JSON API (`server.web.app`), in a uvicorn thread.

`run(cfg)` is `greenmine server run`: it starts the app and, on SIGTERM or
SIGINT, shuts down gracefully. For ingest:

1. stop consuming (new deliveries are left unacknowledged in the broker),
2. spool and acknowledge what was already received,
3. disconnect (the persistent session keeps everything else),
4. keep draining the spool into the store for up to
   `ingest.shutdown_flush_timeout_s`; what is left stays in the spool file
   and is written on the next start,
5. exit 0.

The monitor and uplink stop consuming and leave what they had not committed
unacknowledged in their sessions.

Time: `App(cfg, clock=...)` takes "now" (epoch seconds) from `clock` for
ingest's future-timestamp check, the writer's dead letters, KPI periods, alert
timing and emails; `run` builds it from the config's `[clock]`. The HJ 212
uplink keeps the system clock.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable

from greenmine.server.spool.agents import AgentRegistry
from greenmine.server.config import ServerConfig
from greenmine.server.errors import ServerError
from greenmine.server.ingest.ingestor import Ingestor
from greenmine.server.metrics import Metrics
from greenmine.server.ingest.mqtt import MqttSubscriber
from greenmine.server.spool.spool import Spool
from greenmine.server.store import open_sink
from greenmine.server.store.base import Sink
from greenmine.server.store.writer import Writer

log = logging.getLogger(__name__)


ROLES = ("ingest", "monitor", "uplink", "web")


class App:
    def __init__(
        self,
        cfg: ServerConfig,
        *,
        roles: Iterable[str] = ROLES,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.time,
        sites: list[str] | None = None,
        partition: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.roles = frozenset(roles)
        if not self.roles or not self.roles <= set(ROLES):
            raise ServerError(f"roles must be some of {', '.join(ROLES)}, not {sorted(self.roles)}")
        self.spool = self.sink = self.ingestor = self.writer = self.mqtt = None
        self.monitor = self.uplink = self.web = self.http = None
        self._http_ctx = None
        self.agents = AgentRegistry()
        try:
            if "ingest" in self.roles:
                self._build_ingest(cfg, sink, clock)
            else:
                self.metrics = Metrics("none")
            if "monitor" in self.roles:
                from greenmine.server.monitor.role import MonitorRole

                self.monitor = MonitorRole(cfg, clock=clock, sites=sites, partition=partition)
            if "uplink" in self.roles and cfg.hj212:
                from greenmine.server.uplink.role import UplinkRole

                self.uplink = UplinkRole(cfg, clock=clock)
                self.metrics.bind_hj212(self.uplink.hj212.snapshot)
            if "web" in self.roles and cfg.web is not None:
                from greenmine.server.web.role import WebRole

                self.web = WebRole(cfg, metrics=self.metrics, health=self.health, clock=clock)
            if cfg.http_port is not None:
                self._build_http(cfg, clock)
        except BaseException:
            if self.web is not None:
                self.web.close()
            self._close_files()
            raise
        self._started = False

    def _build_http(self, cfg: ServerConfig, clock: Callable[[], float]) -> None:
        from greenmine.server.web.app import WebContext, create_app
        from greenmine.server.web.config import web_config
        from greenmine.server.web.server import WebServer

        engine = self.monitor.monitor.alerts if self.monitor else (self.web.console.alerts if self.web else None)
        self._http_ctx = WebContext(cfg, web=web_config(cfg), metrics=self.metrics, health=self.health, alerts=engine,
                                    users=self.web.users if self.web else None, clock=clock)
        self.http = WebServer(create_app(self._http_ctx), cfg.http_host, cfg.http_port, name="greenmine-http")

    def _build_ingest(self, cfg: ServerConfig, sink: Sink | None, clock: Callable[[], float]) -> None:
        ing = cfg.ingest
        self.spool = Spool(
            cfg.resolve(ing.spool_path),
            max_bytes=ing.spool_max_bytes,
            synchronous=ing.spool_synchronous,
            dead_letter_max_rows=ing.dead_letter_max_rows,
            keep_bytes=ing.dead_letter_payload_bytes,
        )
        self.sink = sink if sink is not None else open_sink(
            cfg.store, resolve=cfg.resolve, site_timezones={s.id: s.timezone for s in cfg.sites})
        self.metrics = Metrics(self.sink.name)
        self.metrics.bind_spool(self.spool.queue.depth, self.spool.queue.full)
        self.agents = AgentRegistry(self.spool.agents.load(), on_change=self._agent_gauge)
        self.mqtt = MqttSubscriber(cfg.mqtt, self.ingestor_submit, self._connection)
        self.ingestor = Ingestor(ing, [s.id for s in cfg.sites], self.spool, self.agents, self.metrics, self.mqtt.ack,
                                 queue_size=cfg.mqtt.receive_maximum + 1000, clock=clock)
        self.writer = Writer(self.spool, self.sink, self.metrics, ing, clock=clock)

    def ingestor_submit(self, delivery) -> None:
        self.ingestor.submit(delivery)

    def _connection(self, up: bool) -> None:
        self.metrics.mqtt_connected.set(1 if up else 0)

    def _agent_gauge(self, info) -> None:
        self.metrics.agent_online.labels(info.site, info.agent).set(1 if info.online else 0)

    def health(self) -> dict:
        doc: dict = {"roles": sorted(self.roles)}
        ok = True
        if self.spool is not None:
            batches, readings, nbytes = self.spool.queue.depth()
            full = self.spool.queue.full()
            mqtt_ok = self.mqtt.connected
            ok = ok and mqtt_ok and not full
            doc.update({
                "mqtt_connected": mqtt_ok,
                "mqtt_subscribed": self.mqtt.subscribed,
                "store_ok": self.writer.store_ok,
                "spool_batches": batches,
                "spool_readings": readings,
                "spool_bytes": nbytes,
                "spool_full": full,
            })
        if self.monitor is not None:
            doc["monitor_connected"] = self.monitor.connected
            ok = ok and self.monitor.connected
        if self.uplink is not None:
            doc["uplink_connected"] = self.uplink.connected
            ok = ok and self.uplink.connected
        if self.web is not None:
            doc["web_port"] = self.web.port
        return {"status": "ok" if ok else "degraded", **doc}

    def start(self) -> None:
        if self.writer is not None:
            self.writer.start()
            self.ingestor.start()
        if self.monitor is not None:
            self.monitor.start()
        if self.uplink is not None:
            self.uplink.start()
        if self.web is not None:
            self.web.start()
        if self.http is not None:
            self.http.start()
            log.info("server: /metrics and /health on http://%s:%d", self.cfg.http_host, self.http.port)
        if self.mqtt is not None:
            self.mqtt.start()
            log.info(
                "server: ingesting %s into %s (spool %s)",
                ", ".join(self.mqtt.subscriptions), self.sink.name, self.spool.path,
            )
        self._started = True
        log.info("server: running %s", ", ".join(r for r in ROLES if r in self.roles and (r != "web" or self.web)))

    def stop(self, flush_timeout_s: float | None = None) -> None:
        """Graceful stop (see the module docstring). Safe to call once after start."""
        if flush_timeout_s is None:
            flush_timeout_s = self.cfg.ingest.shutdown_flush_timeout_s
        if self._started:
            if self.http is not None:
                self.http.stop()
            if self.web is not None:
                self.web.stop()
            if self.mqtt is not None:
                self.mqtt.stop_consuming()
                self.ingestor.stop()
                self.mqtt.close()
                self.writer.stop(flush_timeout_s)
            if self.uplink is not None:
                self.uplink.stop()
            if self.monitor is not None:
                self.monitor.stop()
        else:
            if self.monitor is not None:
                self.monitor.monitor.close()
            if self.uplink is not None:
                self.uplink.replica.close()
            if self.http is not None:
                self.http.stop()
            if self.web is not None:
                self.web.close()
        self._close_files()
        self._started = False
        log.info("server: stopped")

    def _close_files(self) -> None:
        if self._http_ctx is not None:
            self._http_ctx.close()
        if self.sink is not None:
            self.sink.close()
        if self.spool is not None:
            self.spool.close()


def run(cfg: ServerConfig, *, roles: Iterable[str] = ROLES, sites: list[str] | None = None,
        partition: str | None = None) -> int:
    """`greenmine server run`: serve `roles` until SIGTERM/SIGINT, then stop gracefully."""
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
    app = App(cfg, roles=roles, clock=clock.now, sites=sites, partition=partition)
    app.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        app.stop()
    return 0
