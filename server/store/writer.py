"""The writer: drains the spool into the store, in batches, with retries and backoff.

One thread. It takes the oldest spooled batches (up to `writer_batch_readings`
readings), hands them to the sink in one `write`, and deletes them from the
spool only after the write returned. So throughput does not collapse to one
transaction per reading, and a store outage keeps the data in the spool
(never in the broker: ingest keeps acknowledging until the spool bound).

- StoreUnavailable (or any unexpected error): the same batches are retried
  after a backoff doubling from `writer_retry_min_s` to `writer_retry_max_s`.
  The failure is logged once and the recovery once (STYLE.md §5).
- StoreRejected: the data itself is refused. The culprit batches are found by
  writing them one at a time and dead-lettered with reason `store_rejected`,
  so one bad batch cannot block the spool forever.

Pipelining: with a sink that offers `write_async(readings) -> wait()` (the
SQLite store in its child process), the writer reads and decodes the next
batches while the store inserts the current ones, keeping at most two writes
in flight. A batch is still deleted from the spool only after its own write
returned, in spool order. On any failure the writer waits for what is in
flight and goes back to one write at a time (the paths above) for a round.

Listeners (`add_listener(fn)`) are called on the writer thread with every
batch of readings the store has taken, after the write. Delivery to them is
at least once: a batch rewritten after a crash is passed again.
`add_listener(fn, rows=True)` passes plain tuples in StoredReading's field
order (site, agent, device, metric, ts_ms, value, unit, quality) instead of
StoredReading objects: the spool's rows as they are decoded, without building
an object per reading on the hot path (a listener indexing its rows takes both).
`add_listener(fn, digest=spec)` passes a `server.digest.Digest` of each write
instead: with the SQLite store's child process it is computed there, and this
process does not decode the rows at all (when no other listener needs them).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence

from greenmine.schemas import telemetry_topic
from greenmine.server.spool.deadletter import STORE_REJECTED, dead_letter
from greenmine.server.digest import DigestSpec, digest
from greenmine.server.errors import ServerError, StoreRejected
from greenmine.server.metrics import Metrics
from greenmine.server.spool.spool import DeadLetter, Spool, SpooledBatch
from greenmine.server.store.base import Sink, StoredReading

log = logging.getLogger(__name__)

Listener = Callable[[Sequence[StoredReading]], None]


class Writer:
    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        metrics: Metrics,
        *,
        batch_readings: int = 5000,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        maintenance_interval_s: float | None = None,
        keep_bytes: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.sink = sink
        self.metrics = metrics
        self.batch_readings = batch_readings
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.maintenance_interval_s = maintenance_interval_s
        self.keep_bytes = keep_bytes
        self._clock = clock
        self._listeners: list[Listener] = []
        self._row_listeners: list[Listener] = []  # take plain row tuples
        self._digest_listeners: list[tuple[Callable, DigestSpec]] = []  # take a Digest per write
        self._stop = threading.Event()
        self._draining = False
        self._deadline = float("inf")
        self._failures = 0
        self._sequential_rounds = 0
        self._thread = threading.Thread(target=self._run, name="greenmine-writer")

    @property
    def store_ok(self) -> bool:
        return self._failures == 0

    def add_listener(self, fn: Callable, *, rows: bool = False, digest: DigestSpec | None = None) -> None:
        if digest is not None:
            self._digest_listeners.append((fn, digest))
        else:
            (self._row_listeners if rows else self._listeners).append(fn)

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_timeout_s: float = 0.0) -> None:
        """Keep draining for up to `flush_timeout_s` (until the spool is empty), then stop.
        What is left stays in the spool file and is written on the next start."""
        self._deadline = time.monotonic() + flush_timeout_s
        self._draining = True
        if flush_timeout_s <= 0:
            self._stop.set()
        self.spool.wake()
        if self._thread.is_alive():
            self._thread.join()

    # --- the writer thread -------------------------------------------------

    def _run(self) -> None:
        next_maintenance = time.monotonic()
        while not self._stop.is_set():
            if self._draining and time.monotonic() >= self._deadline:
                break
            if self.maintenance_interval_s and time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + self.maintenance_interval_s
                self._maintain()
            try:
                batches = self.spool.peek(self.batch_readings)
            except ServerError as exc:
                self._failed(exc)
                continue
            if not batches:
                if self._draining:
                    break
                self.spool.wait_for_data(0.5)
                continue
            try:
                if self._sequential_rounds == 0 and hasattr(self.sink, "write_async"):
                    try:
                        self._write_pipelined(batches)
                    except Exception as exc:  # noqa: BLE001 - sorted out by the one-at-a-time path
                        log.debug("writer: pipelined write failed (%s); retrying one write at a time", exc)
                        self._sequential_rounds = 1
                    continue
                self._sequential_rounds = max(0, self._sequential_rounds - 1)
                self._write(batches)
            except StoreRejected as exc:
                try:
                    self._rejected(batches, exc)
                except Exception as exc2:  # noqa: BLE001 - the store went away while sorting it out
                    self._failed(exc2)
            except Exception as exc:  # noqa: BLE001 - StoreUnavailable, SpoolError, or a bug: retry later
                self._failed(exc)
        remaining = self.spool.depth()[0]
        if remaining:
            log.warning("writer: stopping with %d batches still in the spool; they are written on the next start", remaining)

    def _maintain(self) -> None:
        maintain = getattr(self.sink, "maintain", None)
        if maintain is None:
            return
        try:
            maintain()
        except Exception as exc:  # noqa: BLE001 - retention can wait for the next round
            log.debug("writer: maintenance failed: %s", exc)

    def _write(self, batches: list[SpooledBatch]) -> None:
        # the rows ingest kept (else decoded): a retried batch is simply decoded again
        readings = [r for b in batches for r in map(_make_reading, self.spool.rows_of(b.body))]
        self._store(readings)
        self.spool.delete(batches)
        self._ok()
        self._notify(readings)

    def _write_pipelined(self, batches: list[SpooledBatch]) -> None:
        """Write `batches` and whatever follows them in the spool, two writes in flight, until the spool is empty."""
        inflight: list[tuple[Callable[[], None], list[SpooledBatch], list[StoredReading], float]] = []

        spooled = getattr(self.sink, "write_spooled_async", None)

        def submit(bs: list[SpooledBatch]) -> None:
            if spooled is not None:  # the sink decodes the spool bodies itself; decode here only for listeners
                rs = [r for b in bs for r in self.spool.rows_of(b.body)] if self._listeners or self._row_listeners else None
                if self._digest_listeners:  # the sink computes the digests beside the rows it decoded
                    wait = spooled([b.body for b in bs], digests=self._specs())
                else:
                    wait = spooled([b.body for b in bs])
                inflight.append((wait, bs, rs, time.perf_counter()))
                return
            rs = [r for b in bs for r in map(_make_reading, self.spool.rows_of(b.body))]
            inflight.append((self.sink.write_async(rs), bs, rs, time.perf_counter()))

        try:
            submit(batches)
            while inflight:
                if len(inflight) < 2 and not self._stop.is_set() and not (self._draining and time.monotonic() >= self._deadline):
                    more = self.spool.peek(self.batch_readings, after_id=inflight[-1][1][-1].id)
                    if more:
                        submit(more)
                wait, bs, rs, t0 = inflight[0]
                digests = wait()
                inflight.pop(0)
                m = self.metrics
                m.write_seconds.labels(m.sink).observe(time.perf_counter() - t0)
                m.written.labels(m.sink).inc(sum(b.n_readings for b in bs))
                self.spool.delete(bs)
                self._ok()
                if rs is not None or digests is not None:
                    self._notify(rs, digests)
        finally:
            for wait, *_ in inflight:  # after a failure: let the store finish; those batches are rewritten (idempotent)
                try:
                    wait()
                except Exception:  # noqa: BLE001
                    pass

    def _store(self, readings: list[StoredReading]) -> None:
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
        delay = min(self.retry_max_s, self.retry_min_s * 2 ** min(self._failures - 1, 30))
        if self._draining:
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
        self._stop.wait(delay)

    def _rejected(self, batches: list[SpooledBatch], exc: StoreRejected) -> None:
        m = self.metrics
        m.write_errors.labels(m.sink, "rejected").inc()
        now_ms = int(self._clock() * 1000)
        partial = getattr(exc, "rejected", None)
        if partial is not None:  # the sink wrote all but these
            dead = [
                dead_letter(
                    telemetry_topic(r.site, r.agent) if _ok_ids(r) else "greenmine/v1/?/?/telemetry",
                    json.dumps(r._asdict()).encode(), STORE_REJECTED, why, now_ms, self.keep_bytes,
                )
                for r, why in partial
            ]
            self.spool.delete(batches, dead)
            self._count_dead(dead)
            bad = {(r.site, r.device, r.metric, r.ts_ms) for r, _ in partial}
            self._notify([r for b in batches for r in b.readings() if (r.site, r.device, r.metric, r.ts_ms) not in bad])
            return
        if len(batches) == 1:
            b = batches[0]
            body = json.dumps(b.readings(), separators=(",", ":")).encode()  # readable rows, not the spool's pickle
            dl = dead_letter(f"greenmine/v1/{b.site}/{b.agent}/telemetry", body, STORE_REJECTED, str(exc), now_ms, self.keep_bytes)
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

    def _specs(self) -> list[DigestSpec]:
        """The distinct digest specs of the listeners (listeners asking for the same one share its digest)."""
        return list(dict.fromkeys(spec for _, spec in self._digest_listeners))

    def _notify(self, readings: Sequence | None, digests: list | None = None) -> None:
        """`readings`: StoredReadings or plain row tuples in their field order (None: no row listener needs them);
        `digests`: the digest listeners' digests if the sink made them, else they are made here."""
        if self._digest_listeners:
            specs = self._specs()
            if digests is None:
                digests = [digest(readings, spec) for spec in specs]
            by_spec = dict(zip(specs, digests))
            for fn, spec in self._digest_listeners:
                d = by_spec[spec]
                try:
                    fn(d)
                except Exception:
                    log.exception("writer: listener %r failed", fn)
        if readings is None:
            return
        for fn in self._row_listeners:
            try:
                fn(readings)
            except Exception:
                log.exception("writer: listener %r failed", fn)
        if not self._listeners:
            return
        if readings and type(readings[0]) is not StoredReading:
            readings = list(map(_make_reading, readings))
        for fn in self._listeners:
            try:
                fn(readings)
            except Exception:
                log.exception("writer: listener %r failed", fn)


_make_reading = StoredReading._make


def _ok_ids(r: StoredReading) -> bool:
    try:
        telemetry_topic(r.site, r.agent)
        return True
    except ValueError:
        return False
