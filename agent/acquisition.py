"""Acquisition: buses (strictly serialised requests), devices (retry, back-off, offline) and
one poll of one device's poll group.

Isolation rules (issue #4):
- each bus has its own lock, so buses run concurrently and requests on one bus never overlap;
  `inter_request_delay_ms` is kept between the end of one request and the start of the next;
- a request that times out ends its device's poll for this cycle (the remaining requests are
  not tried), and the device's other poll groups due in the same slot are not tried either: a
  device's groups poll one after the other, and a group whose slot is not after the slot of the
  device's last timeout is skipped. So the other devices on the bus lose at most one of that
  device's timeouts per cycle, whatever its group count;
  a dropped link or a garbled reply is retried at once (up to `retries`), because that is quick;
- `retries + 1` failed polls in a row mark the device offline (logged once); it is then probed
  only after an exponential back-off (greenmine.backoff: its shortest poll interval, doubling, up to
  `backoff_max_s`, with jitter so devices that failed together are not all probed in the same cycle),
  with no retries, one probe per back-off window whatever its group count (the first group due after
  the window probes; the others see the new window), and its first good poll marks it online (logged once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

from greenmine.agent.config import BusConfig, DeviceConfig
from greenmine.agent.decoding import decode_request
from greenmine.agent.errors import ModbusError, ModbusTimeout, ModbusConnectError
from greenmine.agent.metrics import AgentMetrics
from greenmine.agent.planner import ReadRequest
from greenmine.backoff import Backoff
from greenmine.schemas import DeviceState, DeviceStatus, Reading
from greenmine.schemas.status import clean_text

log = logging.getLogger(__name__)


class Bus:
    """One serial port or TCP endpoint; owns the link and serialises every request on it."""

    def __init__(self, cfg: BusConfig, link, metrics: AgentMetrics | None = None) -> None:
        self.cfg = cfg
        self.link = link
        self._lock = asyncio.Lock()  # FIFO: devices queue in the order they asked
        self._idle_since = 0.0
        self._requests = metrics.requests.labels(cfg.name) if metrics else None

    async def read(self, unit_id: int, req: ReadRequest, timeout_s: float) -> list[int]:
        async with self._lock:
            delay = self.cfg.inter_request_delay_ms / 1000
            if delay:
                wait = self._idle_since + delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                if self._requests is not None:
                    self._requests.inc()
                return await self.link.read(unit_id, req.type, req.address, req.count, timeout_s)
            finally:
                self._idle_since = time.monotonic()

    def close(self) -> None:
        self.link.close()


class DevicePoller:
    def __init__(
        self,
        dev: DeviceConfig,
        bus: Bus,
        plan: dict[str, list[ReadRequest]],
        *,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.time,
        on_state_change: Callable[[], None] | None = None,
    ) -> None:
        self.dev = dev
        self.on_state_change = on_state_change
        self.bus = bus
        self.plan = plan
        self.metrics = metrics
        self.clock = clock
        self.timeout_s = (dev.timeout_ms or bus.cfg.timeout_ms) / 1000
        self.retries = dev.retries if dev.retries is not None else bus.cfg.retries
        self.backoff = Backoff(min(dev.poll_groups.values()), dev.backoff_max_s)
        self.state = DeviceState.UNKNOWN
        self.since: datetime | None = None
        self.last_error: str | None = None
        self.failed_polls = 0
        self.next_attempt_s = 0.0
        self._one_group_at_a_time = asyncio.Lock()
        self._silent_slot: datetime | None = None  # slot of the last poll that found the device not answering
        if metrics:
            metrics.device_online.labels(dev.name).set(-1)

    def status(self) -> DeviceStatus:
        return DeviceStatus(device=self.dev.name, state=self.state, since=self.since,
                            last_error=(self.last_error or None) and clean_text(self.last_error, 500))

    async def poll(self, group: str, ts: datetime) -> list[Reading]:
        """One poll of `group`, stamped `ts`. Returns the readings taken (none while backed off)."""
        # Groups of one device poll one after another, so each sees what the previous one found.
        async with self._one_group_at_a_time:
            return await self._poll(group, ts)

    async def _poll(self, group: str, ts: datetime) -> list[Reading]:
        name = self.dev.name
        now = self.clock()
        backed_off = self.state is DeviceState.OFFLINE and now < self.next_attempt_s
        if backed_off or (self._silent_slot is not None and ts <= self._silent_slot):
            if self.metrics:
                self.metrics.polls.labels(name, group, "backoff").inc()
            return []
        # While offline, a probe gets no retries: it costs the bus one timeout at most.
        retries = 0 if self.state is DeviceState.OFFLINE else self.retries
        readings: list[Reading] = []
        failure: ModbusError | None = None
        for req in self.plan.get(group, ()):
            attempt = 0
            while True:
                try:
                    data = await self.bus.read(self.dev.unit_id, req, self.timeout_s)
                    break
                except ModbusError as exc:
                    if self.metrics:
                        self.metrics.failures.labels(name, exc.kind).inc()
                    if exc.retry_now and attempt < retries:
                        attempt += 1
                        log.debug("%s: %s; retrying", name, exc)
                        continue
                    failure, data = exc, None
                    break
            if data is None:
                if isinstance(failure, (ModbusTimeout, ModbusConnectError)):
                    self._silent_slot = ts
                    break  # the device is not answering: do not spend more of the bus's time on it
                continue
            for d in decode_request(req, data, self.dev.default_word_order):
                if d.value is None or not d.register.publish:
                    continue
                readings.append(Reading(device=name, metric=d.register.metric_name, ts=ts, value=d.value,
                                        unit=d.register.unit, quality=d.quality))
        if failure is None:
            self._succeeded(group)
        else:
            self._failed(group, failure, now)
        if self.metrics:
            for r in readings:
                self.metrics.readings.labels(name, r.quality.value).inc()
        return readings

    def _succeeded(self, group: str) -> None:
        if self.metrics:
            self.metrics.polls.labels(self.dev.name, group, "ok").inc()
            self.metrics.device_online.labels(self.dev.name).set(1)
        if self.state is not DeviceState.ONLINE:
            if self.state is DeviceState.OFFLINE:
                log.info("device %s is back online", self.dev.name)
            else:
                log.info("device %s is online", self.dev.name)
            self.state, self.since = DeviceState.ONLINE, datetime.now(timezone.utc)
            if self.on_state_change:
                self.on_state_change()
        self.failed_polls, self.last_error = 0, None
        self.backoff.reset()

    def _failed(self, group: str, exc: ModbusError, now: float) -> None:
        if self.metrics:
            self.metrics.polls.labels(self.dev.name, group, "failed").inc()
        self.failed_polls += 1
        self.last_error = f"{exc.kind}: {exc}"
        if self.state is DeviceState.OFFLINE:
            delay = self.backoff.next()
            self.next_attempt_s = now + delay
            log.debug("device %s still offline (%s); next try in %.1f s", self.dev.name, exc, delay)
        elif self.failed_polls > self.retries:
            self.state, self.since = DeviceState.OFFLINE, datetime.now(timezone.utc)
            self.next_attempt_s = now + self.backoff.next()
            if self.metrics:
                self.metrics.device_online.labels(self.dev.name).set(0)
            log.error("device %s is offline after %d failed polls: %s", self.dev.name, self.failed_polls, self.last_error)
            if self.on_state_change:
                self.on_state_change()
        else:
            log.debug("device %s poll failed (%s); will retry next cycle", self.dev.name, exc)
