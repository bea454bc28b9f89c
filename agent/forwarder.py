"""Outbox -> broker: live batches at once, the backlog oldest first at a bounded rate.

Rules (docs/agent.md "Delivery"):
- a batch is published only once committed to the outbox, and deleted only on its PUBACK (the
  PUBACKs that arrive while a delete is running are deleted together in the next transaction);
- at most `max_inflight` batches await a PUBACK; a batch in flight is never published again by
  us (after a reconnect paho re-sends it itself), only after a restart from the outbox;
- on each connect, batches created from then on are "live" and go out as soon as they are
  committed: `offer` publishes a just-committed batch from memory (no read back from SQLite, no
  wait behind the outbox thread) when it is next in line, else the pump reads it from the outbox; everything older is the backlog, drained oldest first at `drain_batches_per_s`
  alongside the live stream, so a long outage does not flood the broker or delay fresh data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from greenmine.agent.errors import OutboxError
from greenmine.agent.metrics import AgentMetrics
from greenmine.agent.outbox import AsyncOutbox, StoredBatch
from greenmine.latch import Latch

log = logging.getLogger(__name__)


class Forwarder:
    def __init__(
        self,
        outbox: AsyncOutbox,
        publish: Callable[[bytes], int | None],
        *,
        max_inflight: int,
        drain_batches_per_s: float,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.outbox = outbox
        self._publish = publish
        self.max_inflight = max_inflight
        self.drain_interval_s = 1.0 / drain_batches_per_s
        self.metrics = metrics
        self.connected = False
        self.inflight: dict[int, tuple[int, float]] = {}  # mid -> (seq, created_s)
        self._unacked: set[int] = set()  # seqs published and not yet deleted from the outbox
        self.live_from = 0
        self.live_cursor = -1
        self.backlog_cursor = -1
        self._backlog_done = False
        self._next_backlog = 0.0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._to_ack: list[int] = []
        self._ack_task: asyncio.Task | None = None
        self.published = 0
        self._reading = Latch(log)

    # -- events ---------------------------------------------------------------------------------
    def notify(self) -> None:
        """A new batch was committed."""
        self._wake.set()

    def offer(self, batch: StoredBatch, polled_s: float | None = None) -> None:
        """A batch was just committed: publish it at once if it is the next live one, else leave it
        to the pump (which reads it back from the outbox). `polled_s`: when the oldest poll in it finished."""
        if (self.connected and batch.seq == self.live_cursor + 1 and batch.seq >= self.live_from
                and len(self.inflight) < self.max_inflight and batch.seq not in self._unacked):
            if self._send(batch.seq, batch.created_s, batch.payload, polled_s):
                self.live_cursor = batch.seq
                return
        self._wake.set()

    def on_connect(self) -> None:
        self.connected = True
        self.live_from = self.outbox.stats().next_seq
        self.live_cursor = self.live_from - 1
        self._backlog_done = False
        self._wake.set()

    def on_disconnect(self) -> None:
        self.connected = False

    def on_puback(self, mid: int) -> None:
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return  # e.g. the retained status message
        seq, created_s, polled_s = entry
        self.published += 1
        if self.metrics:
            self.metrics.published.inc()
            now = time.time()
            self.metrics.publish_latency.observe(max(0.0, now - created_s))
            if polled_s is not None:  # published live, from memory
                self.metrics.poll_to_puback.observe(max(0.0, now - polled_s))
        self._to_ack.append(seq)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = task = asyncio.get_running_loop().create_task(self._ack_all())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._wake.set()

    async def _ack_all(self) -> None:
        """Delete acknowledged batches, all PUBACKs received meanwhile in one transaction."""
        while self._to_ack:
            seqs, self._to_ack = self._to_ack, []
            try:
                await self.outbox.ack_many(seqs)
            except Exception:
                # The batches stay in the outbox and are sent again after a restart (at least once).
                log.exception("outbox: deleting %d delivered batches failed", len(seqs))
            finally:
                self._unacked.difference_update(seqs)

    # -- loop -----------------------------------------------------------------------------------
    def _send(self, seq: int, created_s: float, payload: bytes, polled_s: float | None = None) -> bool:
        mid = self._publish(payload)
        if mid is None:
            return False
        self.inflight[mid] = (seq, created_s, polled_s)
        self._unacked.add(seq)
        return True

    async def _pump_live(self) -> None:
        while self.connected and len(self.inflight) < self.max_inflight:
            rows = await self.outbox.fetch(self.live_cursor, None, self.max_inflight - len(self.inflight))
            if not rows:
                return
            for row in rows:
                if row.seq <= self.live_cursor:
                    continue  # sent by `offer` while this fetch ran (and maybe acked and deleted since)
                if row.seq not in self._unacked and not self._send(row.seq, row.created_s, row.payload):
                    return
                self.live_cursor = row.seq

    async def _pump_backlog(self) -> float | None:
        """Send backlog batches the rate allows; returns seconds until the next is due, or None."""
        while self.connected and not self._backlog_done:
            now = time.monotonic()
            if now < self._next_backlog:
                return self._next_backlog - now
            if len(self.inflight) >= self.max_inflight:
                return None  # a PUBACK will wake us
            rows = await self.outbox.fetch(self.backlog_cursor, self.live_from, 16)
            if not rows:
                self._backlog_done = True
                return None
            for row in rows:
                if row.seq in self._unacked:
                    self.backlog_cursor = row.seq  # still in flight from before the reconnect
                    continue
                if not self._send(row.seq, row.created_s, row.payload):
                    return None
                self.backlog_cursor = row.seq
                self._next_backlog = max(self._next_backlog, now) + self.drain_interval_s
                break
        return None

    async def run(self) -> None:
        timeout: float | None = None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            timeout = None
            if not self.connected:
                continue
            try:
                await self._pump_live()
                timeout = await self._pump_backlog()
            except OutboxError as exc:
                # The outbox cannot be read now (a damaged page, an I/O error): the batches stay, polling goes on,
                # and reading is tried again in a second, never given up.
                self._reading.fail("outbox: cannot read batches to publish: %s; retrying", exc)
                timeout = 1.0
                continue
            self._reading.ok("outbox: reading batches again")

    async def drain_acks(self, timeout_s: float) -> None:
        """At shutdown: wait (bounded) for the PUBACKs of batches in flight and their deletion."""
        deadline = time.monotonic() + timeout_s
        while self.connected and time.monotonic() < deadline and (
            self.inflight or self._tasks or self.outbox.stats().depth > 0
        ):
            await asyncio.sleep(0.02)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.1, deadline - time.monotonic()))
