"""The running agent: acquisition -> outbox -> forwarder -> broker, plus status and /metrics.

    poll (GroupJob, per device and poll group)
      -> readings collected for `linger_ms` (one batch for the polls of one tick); readings that
         arrive while a commit is running go into the next one (group commit, one fsync each)
      -> Outbox.commit (WAL, fsync)                   <- never blocks polling: own thread, drop_oldest
      -> Forwarder.offer: published from memory at once when connected and next in line
      -> Forwarder (live at once, backlog at a rate) -> MqttPublisher (QoS 1) -> PUBACK -> Outbox.ack_many

Under systemd (`Type=notify`, deploy/systemd/greenmine-agent.service) the agent says READY=1 once
polling and publishing have started, and pings the watchdog only while the poll scheduler ticks,
paho's network thread runs and the forwarder and status loops are alive (`stalled`); a broker
outage is not a hang (the outbox keeps the data) and keeps the pings going.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from greenmine.agent.acquisition import Bus, DevicePoller
from greenmine.agent.config import AgentConfig, counter_widths
from greenmine.agent.errors import OutboxError
from greenmine.agent.forwarder import Forwarder
from greenmine.agent.metrics import AgentMetrics
from greenmine.agent.outbox import AsyncOutbox, Outbox
from greenmine.agent.planner import plan_device
from greenmine.agent.schedule import GroupJob, PollScheduler
from greenmine import __version__
from greenmine.clock import Clock
from greenmine.latch import Latch
from greenmine.sdnotify import Notifier, Watchdog
from greenmine.schemas import (
    DROP_REASONS,
    STATUS_SCHEMA_V2,
    AgentState,
    AgentStatus,
    Reading,
    status_topic,
    telemetry_topic,
)

log = logging.getLogger(__name__)


def build_buses(cfg: AgentConfig, metrics: AgentMetrics | None = None) -> dict[str, Bus]:
    from greenmine.agent.modbus import ModbusLink

    buses = {}
    for bus_cfg in cfg.buses:
        timeouts = [(d.timeout_ms or bus_cfg.timeout_ms) / 1000 for d in cfg.devices if d.bus == bus_cfg.name]
        buses[bus_cfg.name] = Bus(bus_cfg, ModbusLink(bus_cfg, max_timeout_s=max(timeouts or [bus_cfg.timeout_ms / 1000])), metrics)
    return buses


class Agent:
    def __init__(self, cfg: AgentConfig, *, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.scheduler: PollScheduler | None = None
        self._loops: list[asyncio.Task] = []
        self.clock = Clock(cfg.clock)  # stamps readings and status; schedules stay on real time
        self.metrics = AgentMetrics()
        self.buses = build_buses(cfg, self.metrics)
        self.pollers: dict[str, DevicePoller] = {}
        self.jobs: list[GroupJob] = []
        for dev in cfg.devices:
            if not dev.enabled:
                continue
            plan = plan_device(dev, cfg.bus(dev.bus))
            poller = self.pollers[dev.name] = DevicePoller(
                dev, self.buses[dev.bus], plan, metrics=self.metrics, on_state_change=self.publish_status
            )
            for group, interval in sorted(dev.poll_groups.items()):
                if group not in plan:
                    continue
                skipped = self.metrics.skipped.labels(dev.name, group)
                self.jobs.append(GroupJob(dev.name, group, interval, self._runner(poller, group), on_skip=skipped.inc,
                                          clock=self.clock))
        self.outbox = AsyncOutbox(Outbox(cfg.resolve(cfg.outbox.path), site=cfg.site, agent=cfg.agent_id,
                                         max_bytes=cfg.outbox.max_bytes, max_age_s=cfg.outbox.max_age_s))
        for reason in DROP_REASONS:
            self.metrics.dropped_by_reason.labels(reason)
        self.metrics.state_files_moved_aside.labels("outbox")
        if self.outbox.sync.moved_aside is not None:
            self.metrics.state_files_moved_aside.labels("outbox").inc()
        self.telemetry_topic = telemetry_topic(cfg.site, cfg.agent_id)
        self.status_topic = status_topic(cfg.site, cfg.agent_id)
        self.config_hash = cfg.config_hash()
        self.counters = counter_widths(cfg) or None
        self._pending: list[Reading] = []
        self._pending_since = 0.0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._outbox_failing = Latch(log)
        self.publisher = None
        self.forwarder: Forwarder | None = None
        self.metrics_port: int | None = None

    # -- acquisition -> outbox ------------------------------------------------------------------
    def _runner(self, poller: DevicePoller, group: str):
        async def run(ts: datetime) -> None:
            readings = await poller.poll(group, ts)
            if readings:
                self._collect(readings)
        return run

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _collect(self, readings: list[Reading]) -> None:
        if not self._pending:
            self._pending_since = time.time()  # the oldest poll of the next batch finished now
        self._pending.extend(readings)
        if self._flush_lock.locked():
            return  # group commit: the flush in progress commits these as soon as its fsync is done
        if len(self._pending) >= self.cfg.outbox.batch_max_readings:
            self._schedule_flush(0)
        elif self._flush_handle is None:
            self._schedule_flush(self.cfg.outbox.linger_ms / 1000)

    def _schedule_flush(self, delay_s: float) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush_handle = asyncio.get_running_loop().call_later(delay_s, lambda: self._spawn(self.flush()))

    async def flush(self) -> None:
        """Commit the collected readings as batches of at most batch_max_readings."""
        self._flush_handle = None
        async with self._flush_lock:  # batches are committed in the order the readings were taken
            while self._pending:
                await self._commit_pending()
            self._update_outbox_metrics()

    async def _commit_pending(self) -> None:
        pending, self._pending = self._pending, []
        polled_s = self._pending_since
        size = self.cfg.outbox.batch_max_readings
        for i in range(0, len(pending), size):
            try:
                batch = await self.outbox.commit(pending[i : i + size], time.time())
            except Exception as exc:
                if not isinstance(exc, OutboxError):  # the outbox counts what it loses; this it never saw
                    self.outbox.sync.count_lost("write_failed", len(pending[i : i + size]))
                self._outbox_failing.fail("outbox write failed; %d readings lost: %s", len(pending[i : i + size]), exc,
                                          exc_info=not isinstance(exc, OutboxError))
                continue
            self._outbox_failing.ok("outbox writable again")
            if self.forwarder:
                self.forwarder.offer(batch, polled_s)

    def _update_outbox_metrics(self) -> None:
        st = self.outbox.stats()
        self.metrics.outbox_depth.set(st.depth)
        self.metrics.outbox_bytes.set(st.bytes)
        self.metrics.dropped_batches.set(st.dropped_batches)
        self.metrics.dropped_readings.set(st.dropped_readings)
        for reason, n in st.dropped_by_reason.items():
            self.metrics.dropped_by_reason.labels(reason).set(n)

    # -- status -------------------------------------------------------------------------------
    def status(self, state: AgentState = AgentState.ONLINE) -> AgentStatus:
        st = self.outbox.stats()
        return AgentStatus(
            schema_=STATUS_SCHEMA_V2, dropped_readings_by_reason=st.dropped_by_reason,
            site=self.cfg.site, agent=self.cfg.agent_id, state=state, ts=self.clock.now_datetime(),
            version=__version__, config_hash=self.config_hash,
            outbox_depth=st.depth, outbox_bytes=st.bytes,
            dropped_batches=st.dropped_batches, dropped_readings=st.dropped_readings,
            devices=[p.status() for p in self.pollers.values()],
            counters=self.counters if state is AgentState.ONLINE else None,
        )

    def publish_status(self) -> None:
        if self.publisher is not None:
            self._update_outbox_metrics()
            self.publisher.publish(self.status_topic, self.status().to_json(), retain=True)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.mqtt.status_interval_s)
            self.publish_status()

    # -- broker events (already on the loop) -------------------------------------------------------
    def _on_connect(self, session_present: bool) -> None:
        self.metrics.broker_connected.set(1)
        self.publish_status()  # retained birth message on every connect
        self.forwarder.on_connect()

    def _on_disconnect(self, reason: str) -> None:
        self.metrics.broker_connected.set(0)
        self.forwarder.on_disconnect()

    def _on_puback(self, mid: int) -> None:
        self.forwarder.on_puback(mid)
        self._update_outbox_metrics()

    def _log_summary(self) -> None:
        """What a technician checks first: identity, buses, devices, requests per cycle, broker, outbox."""
        cfg = self.cfg
        total = 0
        for name, bus in self.buses.items():
            pollers = [p for p in self.pollers.values() if p.dev.bus == name]
            reqs = sum(len(r) for p in pollers for r in p.plan.values())
            total += reqs
            log.info("bus %s: %s, %d device(s) (%s), %d request(s) per cycle of every group, timeout %d ms",
                     name, bus.cfg.endpoint, len(pollers),
                     ", ".join(f"{p.dev.name}@{p.dev.unit_id}" for p in pollers) or "none", reqs, bus.cfg.timeout_ms)
        st = self.outbox.stats()
        log.info("agent %s/%s %s (config %s): %d device(s) on %d bus(es), %d request(s) per cycle; broker %s:%d%s; "
                 "outbox %s (%d batch(es) waiting)", cfg.site, cfg.agent_id, __version__, self.config_hash,
                 len(self.pollers), len(self.buses), total, cfg.mqtt.host, cfg.mqtt.port,
                 " (TLS)" if cfg.mqtt.tls else "", cfg.resolve(cfg.outbox.path), st.depth)

    # -- systemd watchdog ---------------------------------------------------------------------------
    def stalled(self) -> list[str]:
        """The loops that are not running (empty: healthy): what the watchdog pings on."""
        problems = self.scheduler.stalled() if self.scheduler is not None else ["poll scheduler (not started)"]
        if self.publisher is None or not self.publisher.alive:
            problems.append("MQTT publisher (network thread)")
        problems += [f"{t.get_name()} loop" for t in self._loops if t.done()]
        return problems

    async def _watchdog_loop(self, watchdog: Watchdog) -> None:
        while True:
            watchdog.tick()
            await asyncio.sleep(min(watchdog.interval_s, 1.0))

    # -- lifecycle ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        from greenmine.agent.publisher import MqttPublisher

        loop = asyncio.get_running_loop()
        cfg = self.cfg
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, self.metrics_port)
        will = self.status(AgentState.OFFLINE).model_copy(update={"devices": []}).to_json()
        self.publisher = MqttPublisher(
            cfg.mqtt, client_id=cfg.mqtt.client_id or f"greenmine-agent-{cfg.site}-{cfg.agent_id}",
            will_topic=self.status_topic, will_payload=will, loop=loop,
            on_connect=self._on_connect, on_disconnect=self._on_disconnect, on_puback=self._on_puback,
            resolve_path=lambda p: str(cfg.resolve(p)),
        )
        self.forwarder = Forwarder(
            self.outbox, lambda payload: self.publisher.publish(self.telemetry_topic, payload),
            max_inflight=cfg.mqtt.max_inflight, drain_batches_per_s=cfg.outbox.drain_batches_per_s, metrics=self.metrics,
        )
        self._update_outbox_metrics()
        scheduler = self.scheduler = PollScheduler(self.jobs)
        forward_task = loop.create_task(self.forwarder.run(), name="forwarder")
        status_task = loop.create_task(self._status_loop(), name="status")
        self._loops = [forward_task, status_task]
        self.publisher.start()
        scheduler.start()
        self._log_summary()
        watchdog = Watchdog(self.notifier, self.stalled)
        watchdog_task = loop.create_task(self._watchdog_loop(watchdog), name="watchdog") if watchdog.enabled else None
        self.notifier.ready(f"polling {len(self.pollers)} device(s), publishing to {cfg.mqtt.host}:{cfg.mqtt.port}")
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            self.notifier.stopping()
            if watchdog_task is not None:
                watchdog_task.cancel()
                await asyncio.gather(watchdog_task, return_exceptions=True)
            await scheduler.stop()
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            await self.flush()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            # Give batches committed just now a moment to go out; whatever does not stays in the outbox.
            self.forwarder.notify()
            await asyncio.sleep(0)
            await self.forwarder.drain_acks(2.0)
            status_task.cancel()
            forward_task.cancel()
            await asyncio.gather(status_task, forward_task, return_exceptions=True)
            self._update_outbox_metrics()
            offline = self.status(AgentState.OFFLINE).to_json()
            await loop.run_in_executor(None, lambda: self.publisher.stop(self.status_topic, offline))
            for bus in self.buses.values():
                bus.close()
            await self.outbox.close()
            self.metrics.close()
            self.notifier.close()
