"""The writer: drains the spool into the store, in batches, with retries and backoff.

One thread. It takes the oldest spooled batches (up to `writer_batch_readings`
readings), hands them to the sink in one `write`, and deletes them from the
spool only after the write returned. So throughput does not collapse to one
transaction per reading, and a store outage keeps the data in the spool
(never in the broker: ingest keeps acknowledging until the spool bound).

- StoreUnavailable (or any unexpected error): the same batches are retried
  after a back-off doubling from `writer_retry_min_s` to `writer_retry_max_s` (greenmine.backoff, with jitter).
  The failure is logged once and the recovery once.
- StoreRejected: the data itself is refused. The culprit batches are found by
  writing them one at a time and dead-lettered with reason `store_rejected`,
  so one bad batch cannot block the spool forever.

Durability window (`ingest.store_durability_window_s`, for a sink that can
tell when its store restarted: `started_at()`, InfluxDB / VictoriaMetrics): a
store may acknowledge writes it still holds in memory, and lose them if it is
killed (VictoriaMetrics keeps up to `-inmemoryDataFlushInterval`, default 5 s).
So batches the store acknowledged stay in the spool (retained) for the window;
every `_check_s` the writer asks the store for its process start time and
deletes the retained batches whose window has passed only if the start time
is the one it saw before they were written. If it changed, the store
restarted: every retained batch is written again (writes are idempotent, so
that costs no duplicates) and `greenmine_store_restarts_total` counts it. At
start, the start time is not known yet, so what a previous run retained is
written again too. VictoriaMetrics reports its start time in whole seconds,
so a restart within the second it started in would not show: while the
store is younger than `YOUNG_S` by its own clock (the response's Date
header), nothing is pruned, and once it is older every retained batch is
written once more. A probe that fails and is followed by the same start
time rewrites the window too (it may have restarted in between). The
SQLite store is durable when its commit returns (synchronous FULL), so its
batches are deleted at once.

Listeners (`add_listener(fn)`) are called on the writer thread with the rows
of every write the store has taken, after the write: tuples in StoredReading's
field order (`server.store.base.Row`), as the sink got them. Delivery to them
is at least once: a batch rewritten after a crash is passed again.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence

from greenmine.backoff import Backoff
from greenmine.latch import Latch
from greenmine.schemas import telemetry_topic
from greenmine.server.config import IngestConfig
from greenmine.server.errors import ServerError, StoreRejected
from greenmine.server.metrics import Metrics
from greenmine.server.spool.batches import SpooledBatch
from greenmine.server.spool.deadletter import STORE_REJECTED, DeadLetter
from greenmine.server.spool.spool import SpoolStage
from greenmine.server.store.base import RestartAware, Row, Sink, StoredReading
from greenmine.supervisor import Policy, Supervisor

log = logging.getLogger(__name__)

#: A store younger than this (by its own clock) could restart without its start time changing (VictoriaMetrics
#: reports it in whole seconds); what it takes meanwhile is written again once it is older.
YOUNG_S = 2.0

Listener = Callable[[Sequence[Row]], None]


class Writer:
    def __init__(
        self,
        spool: SpoolStage,
        sink: Sink,
        metrics: Metrics,
        cfg: IngestConfig,
        *,
        clock: Callable[[], float] = time.time,
        supervisor: Supervisor | None = None,
    ) -> None:
        """`cfg`: the `ingest` section, whose `writer_*` options are the writer's. The thread is supervised with
        policy `restart` (it keeps nothing but the spool file, so a fresh start loses nothing)."""
        self.spool = spool
        self.sink = sink
        self.metrics = metrics
        self.batch_readings = cfg.writer_batch_readings
        self._backoff = Backoff(cfg.writer_retry_min_s, cfg.writer_retry_max_s)
        self._clock = clock
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._draining = False
        self._deadline = float("inf")
        self._failures = 0
        self._started_at = sink.started_at if isinstance(sink, RestartAware) else None
        self.window_s = cfg.store_durability_window_s if self._started_at is not None else 0.0
        self._check_s = min(1.0, max(0.1, self.window_s / 4))
        self._next_check = 0.0
        self._store_start: float | None = None  # the store's start time as last seen; None: not yet known
        self._probe_failed = False  # the last start-time probe could not reach the store
        self._young = False  # the last probe saw a store started under YOUNG_S ago (its own clock)
        self._probe_latch = Latch(log)
        self._no_start_time = False
        self.supervisor = supervisor or Supervisor(log)
        self._thread = self.supervisor.thread("writer", self._run, policy=Policy.RESTART)

    @property
    def store_started_at(self) -> float | None:
        """The store's process start time as the writer last saw it (None: not known, or no durability window)."""
        return self._store_start

    @property
    def store_ok(self) -> bool:
        return self._failures == 0

    def add_listener(self, fn: Listener) -> None:
        """Call `fn(readings)` after every write the store has taken (on the writer thread: keep it short)."""
        self._listeners.append(fn)

    @property
    def alive(self) -> bool:
        """Its thread is running (for the systemd watchdog)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_timeout_s: float = 0.0) -> None:
        """Keep draining for up to `flush_timeout_s` (until the spool is empty), then stop.
        What is left stays in the spool file and is written on the next start."""
        self._deadline = time.monotonic() + flush_timeout_s
        self._draining = True
        if flush_timeout_s <= 0:
            self._stop.set()
        self.spool.queue.wake()
        if self._thread.is_alive():
            self._thread.join()

    # --- the writer thread -------------------------------------------------

    def _run(self) -> None:
        next_maintenance = time.monotonic()
        while not self._stop.is_set():
            if self._draining and time.monotonic() >= self._deadline:
                break
            interval = self.sink.maintenance_interval_s
            if interval and time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + interval
                self._maintain()
            if self.window_s and time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + self._check_s
                self._durability()
            try:
                batches = self.spool.queue.peek(self.batch_readings)
            except ServerError as exc:
                self._failed(exc)
                continue
            if not batches:
                if self._draining:
                    break
                self.spool.queue.wait_for_data(0.5)
                continue
            try:
                self._write(batches)
            except StoreRejected as exc:
                try:
                    self._rejected(batches, exc)
                except Exception as exc2:  # noqa: BLE001 - the store went away while sorting it out
                    self._failed(exc2)
            except Exception as exc:  # noqa: BLE001 - StoreUnavailable, SpoolError, or a bug: retry later
                self._failed(exc)
        remaining = self.spool.queue.depth()[0]
        if remaining:
            log.warning("writer: stopping with %d batches still in the spool; they are written on the next start", remaining)

    def _maintain(self) -> None:
        try:
            self.sink.maintain()
        except Exception as exc:  # noqa: BLE001 - retention can wait for the next round
            log.debug("writer: maintenance failed: %s", exc)

    def _write(self, batches: list[SpooledBatch]) -> None:
        readings = list(itertools.chain.from_iterable(map(SpooledBatch.readings, batches)))
        self._store(readings)
        if self.window_s:
            self.spool.queue.written(batches, int(time.monotonic() * 1000))  # real time, even on a simulated clock
        else:
            self.spool.delete(batches)
        self._ok()
        self._notify(readings)

    def _durability(self) -> None:
        """Delete the retained batches whose window has passed if the store did not restart; else re-send them."""
        try:
            start = self._started_at()
        except Exception as exc:  # noqa: BLE001 - store down: keep everything retained, ask again later
            self._probe_latch.fail("writer: cannot ask store %s for its start time (%s); keeping acknowledged "
                                   "batches in the spool", self.sink.name, exc, level=logging.WARNING)
            self._probe_failed = True
            return
        self._probe_latch.ok("writer: store %s answers for its start time again", self.sink.name)
        q = self.spool.queue
        if start is not None and start.at == self._store_start:
            if self._probe_failed:
                # it was unreachable and reports the same start time: it may have restarted within the start
                # time's resolution; writing the window again costs nothing (idempotent), losing it would
                n = q.requeue()
                if n:
                    log.info("writer: store %s is back; writing the %d batches of the last window again", self.sink.name, n)
            elif self._young and (start.age_s is None or start.age_s >= YOUNG_S):
                # VictoriaMetrics reports its start in whole seconds: a restart within the second it started in
                # shows the same start time. Now that second is over, a restart would show; write again what it
                # took while it was that young
                n = q.requeue()
                if n:
                    log.info("writer: store %s took the %d batches of the last window in its first seconds, when a "
                             "restart would not show in its start time; writing them again", self.sink.name, n)
        self._probe_failed = False
        if start is None:  # the store does not say when it started: the window alone has to do
            self._young = False
            if not self._no_start_time:
                self._no_start_time = True
                log.warning("writer: store %s does not report its start time; acknowledged batches are deleted after "
                            "%g s without a restart check", self.sink.name, self.window_s)
        else:
            self._young = start.age_s is not None and start.age_s < YOUNG_S
            if start.at != self._store_start:
                n = q.requeue()  # the store restarted, or (at our start) we cannot tell whether they survived
                if self._store_start is not None:
                    self.metrics.store_restarts.labels(self.metrics.sink).inc()
                    log.warning("writer: store %s restarted (start time %s, was %s); writing the %d batches it "
                                "acknowledged in the last %g s again", self.sink.name, start.at, self._store_start, n,
                                self.window_s)
                elif n:
                    log.info("writer: writing the %d batches of the last durability window again", n)
                self._store_start = start.at
                return
            if self._young:
                return  # nothing is deleted while a restart could still go unseen
        upto = q.expired(int(time.monotonic() * 1000) - int(self.window_s * 1000))
        if upto:
            try:
                self.spool.prune(upto)
            except Exception as exc:  # noqa: BLE001 - pruned next time
                log.debug("writer: cannot prune the spool: %s", exc)

    def _store(self, readings: list[Row]) -> None:
        t0 = time.perf_counter()
        self.sink.write(readings)
        m = self.metrics
        m.write_seconds.labels(m.sink).observe(time.perf_counter() - t0)
        m.written.labels(m.sink).inc(len(readings))

    def _ok(self) -> None:
        if self._failures:
            log.info("writer: store %s is taking writes again", self.sink.name)
            self._failures = 0
            self.metrics.store_up.labels(self.metrics.sink).set(1)

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        m = self.metrics
        m.write_errors.labels(m.sink, "unavailable").inc()
        m.store_up.labels(m.sink).set(0)
        if self._failures == 1:
            if isinstance(exc, ServerError):
                log.error("writer: %s; keeping data in the spool and retrying", exc)
            else:
                log.exception("writer: unexpected error; keeping data in the spool and retrying")
        else:
            log.debug("writer: still failing (%d): %s", self._failures, exc)
        delay = self._backoff.delay_s(self._failures - 1)
        if self._draining:
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
        self._stop.wait(delay)

    def _rejected(self, batches: list[SpooledBatch], exc: StoreRejected) -> None:
        m = self.metrics
        m.write_errors.labels(m.sink, "rejected").inc()
        now_ms = int(self._clock() * 1000)
        partial = exc.rejected
        if partial is not None:  # the sink wrote all but these
            partial = [(StoredReading._make(r), why) for r, why in partial]
            dead = [
                self.spool.dead_letters.letter(
                    telemetry_topic(r.site, r.agent) if _ok_ids(r) else "greenmine/v1/?/?/telemetry",
                    json.dumps(r._asdict()).encode(), STORE_REJECTED, why, now_ms,
                )
                for r, why in partial
            ]
            self.spool.delete(batches, dead)
            self._count_dead(dead)
            bad = {(r.site, r.device, r.metric, r.ts_ms) for r, _ in partial}
            self._notify([r for b in batches for r in b.readings() if (r[0], r[2], r[3], r[4]) not in bad])
            return
        if len(batches) == 1:
            b = batches[0]
            body = json.dumps(b.readings(), separators=(",", ":")).encode()  # readable rows, not the spool's pickle
            dl = self.spool.dead_letters.letter(f"greenmine/v1/{b.site}/{b.agent}/telemetry", body, STORE_REJECTED, str(exc), now_ms)
            log.warning("writer: store refused a batch from %s/%s seq %d: %s (dead-lettered)", b.site, b.agent, b.seq, exc)
            self.spool.delete(batches, [dl])
            self._count_dead([dl])
            return
        for b in batches:  # find the culprit(s) one batch at a time
            try:
                self._write([b])
            except StoreRejected as one:
                self._rejected([b], one)

    def _count_dead(self, dead: list[DeadLetter]) -> None:
        for dl in dead:
            self.metrics.rejected.labels(dl.reason).inc()

    def _notify(self, readings: Sequence[Row]) -> None:
        for fn in self._listeners:
            try:
                fn(readings)
            except Exception:
                log.exception("writer: listener %r failed", fn)


def _ok_ids(r: StoredReading) -> bool:
    try:
        telemetry_topic(r.site, r.agent)
        return True
    except ValueError:
        return False
