"""The HJ 212 uplink inside the server: one `Hj212Client` per configured `[[hj212]]` point.

Owns, for the server app:
- `LatestCache`: the newest reading of every series the points report, fed by
  the uplink role's consumer of the stream and seeded from its replica at
  start;
- `PointRealtime`: a point's `RealtimeSource`, which flags a device B when its
  agent reports it (or the agent) offline;
- `StoreHistory`: a point's `HistoryProvider` over a reader with the SQLite
  store's read API (the uplink's replica, `server.store.replica`): minute,
  hourly and daily records computed from the raw rows (falling back to
  rollups where the reader has them and raw rows have expired);
- `Hj212Service`: the asyncio loop (one thread) running every client, restarting
  a client that failed (after a back-off; the failure is logged once, the
  client's next connection as the recovery), its graceful stop, and the
  counters the server exports on /metrics.

It runs the same whichever store ingest writes to (`server.uplink.role`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import statistics
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from greenmine.backoff import Backoff
from greenmine.latch import Latch
from greenmine.server.uplink.hj212.client import Hj212Client
from greenmine.server.uplink.hj212.config import PointConfig
from greenmine.server.uplink.hj212.messages import (
    DataFlag,
    NoiseDayNight,
    PeriodKind,
    PeriodRecord,
    PeriodValue,
    RealtimeValue,
    Sample,
    aggregate,
    flag_from_quality,
    period_length,
    period_start,
)
from greenmine.server.store.base import StoredReading

log = logging.getLogger(__name__)

#: The counters exported per point, in /metrics order.
COUNTERS = ("sent", "acked", "retried", "failed", "dropped", "expired", "connects")

_RESTART_DELAY_S = 5.0
_RESTART_MAX_S = 300.0


def _ms(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


class LatestCache:
    """Newest (ts_ms, value, quality, agent) per (site, device, metric) of the watched series. Thread-safe."""

    def __init__(self, watched: Iterable[tuple[str, str, str]]) -> None:
        self._watched = frozenset(watched)
        self._metrics = frozenset(m for _, _, m in self._watched)
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str, str], tuple[int, float, str, str]] = {}

    @property
    def watched(self) -> frozenset[tuple[str, str, str]]:
        return self._watched

    def update(self, site: str, device: str, metric: str, ts_ms: int, value: float, quality: str, agent: str) -> None:
        key = (site, device, metric)
        if key not in self._watched:
            return
        with self._lock:
            old = self._latest.get(key)
            # Writer listeners get batches at least once and a backlog after an
            # outage arrives late: only a newer reading replaces the latest.
            if old is None or ts_ms > old[0]:
                self._latest[key] = (ts_ms, value, quality, agent)

    def on_stored(self, readings: Sequence[StoredReading]) -> None:
        """The writer listener: readings just written to the store (indexed: StoredReading is a NamedTuple)."""
        metrics, watched = self._metrics, self._watched
        for r in readings:  # most readings are of no watched metric: one set lookup each
            if r[3] in metrics and (r[0], r[2], r[3]) in watched:
                self.update(r[0], r[2], r[3], r[4], r[5], r[7], r[1])

    def get(self, site: str, device: str, metric: str) -> tuple[int, float, str, str] | None:
        with self._lock:
            return self._latest.get((site, device, metric))


class PointRealtime:
    """`RealtimeSource` of one point: the latest reading of each mapped metric from its devices.

    A device whose agent reports it offline (or whose agent is offline) is sent
    as flag B without a value; the value's quality gives N/T/B otherwise, a
    maintenance window M, and a value older than `realtime_stale_s` B
    (`messages.realtime_packet`).
    """

    def __init__(self, point: PointConfig, cache: LatestCache, device_online: Callable[[str, str, str], bool]) -> None:
        self.point = point
        self.cache = cache
        self.device_online = device_online

    def latest(self) -> dict[str, RealtimeValue] | None:
        p = self.point
        out: dict[str, RealtimeValue] = {}
        for mapping in p.metrics:
            for device in p.devices:
                hit = self.cache.get(p.site, device, mapping.metric)
                if hit is None:
                    continue
                ts_ms, value, quality, agent = hit
                ts = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
                if not self.device_online(p.site, agent, device):
                    out[mapping.metric] = RealtimeValue(None, "stale", device, ts)
                else:
                    out[mapping.metric] = RealtimeValue(value, quality, device, ts)
                break
        # Nothing stored yet for this point: an empty 2011 tells the platform nothing.
        return out or None


class StoreHistory:
    """`HistoryProvider` of one point over the SQLite store (a `SqliteReader`).

    Periods are computed from raw rows with `messages.aggregate`: noise as an
    energy average, out-of-range samples flag T, maintenance windows M, and the
    samples a period should hold (estimated from the series' median spacing in
    the window) but does not count as B. Daily noise splits the local day into
    Ld (noise_day_start_h..noise_night_start_h) and Ln (the rest of that day).
    Where raw rows have expired, hourly and daily values come from the store's
    rollups (good readings only; noise is left out, its rollup is not an energy
    average). A period in which none of the point's metrics has any data is not
    sent.
    """

    def __init__(self, point: PointConfig, reader) -> None:
        self.point = point
        self.reader = reader

    def periods(self, kind: PeriodKind, begin: datetime, end: datetime, min_interval_min: int) -> list[PeriodRecord]:
        p = self.point
        tz = p.tz
        length = period_length(kind, min_interval_min)
        first = period_start(kind, begin, tz, min_interval_min)
        if first < begin.astimezone(tz):
            first = first + length
        starts: list[datetime] = []
        s = first
        while s <= end.astimezone(tz):
            starts.append(s)
            # Aware + timedelta is wall-clock arithmetic in the zone: days stay at local midnight.
            s = (s + length).astimezone(tz)
        if not starts:
            return []
        bounds = [_ms(x) for x in starts] + [_ms((starts[-1] + length).astimezone(tz))]
        per_period: list[dict[str, PeriodValue | NoiseDayNight]] = [{} for _ in starts]
        has_data = [False] * len(starts)
        for mapping in p.metrics:
            noise = mapping.kind == "noise"
            device, rows = self._raw(mapping.metric, bounds[0], bounds[-1])
            if rows:
                spacing = _median_spacing_ms([r.ts_ms for r in rows])
                buckets: list[list] = [[] for _ in starts]
                for r in rows:
                    i = bisect.bisect_right(bounds, r.ts_ms) - 1
                    if 0 <= i < len(starts):
                        buckets[i].append(r)
                for i, bucket in enumerate(buckets):
                    has_data[i] = has_data[i] or bool(bucket)
                    span_ms = bounds[i + 1] - bounds[i]
                    expected = round(span_ms / spacing) if spacing else None
                    if noise and kind is PeriodKind.DAY:
                        per_period[i][mapping.metric] = self._day_night(device, bucket, expected)
                    else:
                        samples = [self._sample(device, r) for r in bucket]
                        per_period[i][mapping.metric] = aggregate(samples, expected=expected, energy=noise)
            elif kind is not PeriodKind.MINUTE and not noise:
                for i, value in self._from_rollups(mapping.metric, "hour" if kind is PeriodKind.HOUR else "day", bounds):
                    per_period[i][mapping.metric] = value
                    has_data[i] = True
        return [PeriodRecord(start=starts[i], values=per_period[i]) for i in range(len(starts)) if has_data[i]]

    def _raw(self, metric: str, start_ms: int, end_ms: int):
        for device in self.point.devices:
            rows = self.reader.query_series(self.point.site, device, metric, start_ms, end_ms)
            if rows:
                return device, rows
        return None, []

    def _sample(self, device: str, row) -> Sample:
        at = datetime.fromtimestamp(row.ts_ms / 1000, timezone.utc)
        return Sample(row.value, flag_from_quality(row.quality, in_maintenance=self.point.in_maintenance(device, at)))

    def _day_night(self, device: str, rows: list, expected: int | None) -> NoiseDayNight:
        p = self.point
        tz = p.tz
        day, night = [], []
        for r in rows:
            local = datetime.fromtimestamp(r.ts_ms / 1000, tz)
            (day if p.is_day(local.hour) else night).append(self._sample(device, r))
        day_share = (p.noise_night_start_h - p.noise_day_start_h) / 24
        exp_day = None if expected is None else round(expected * day_share)
        exp_night = None if expected is None else expected - exp_day
        return NoiseDayNight(
            day=aggregate(day, expected=exp_day, energy=True),
            night=aggregate(night, expected=exp_night, energy=True),
        )

    def _from_rollups(self, metric: str, period: str, bounds: list[int]) -> list[tuple[int, PeriodValue]]:
        for device in self.point.devices:
            rollups = self.reader.rollups(self.point.site, device, metric, period, bounds[0], bounds[-1])
            if not rollups:
                continue
            out = []
            for r in rollups:
                i = bisect.bisect_right(bounds, r.start_ms) - 1
                if not 0 <= i < len(bounds) - 1 or r.start_ms != bounds[i]:
                    continue  # the store's day is the site's, not this point's zone
                total = r.count + r.not_good
                valid = r.count > 0 and r.count / total >= 0.75
                out.append((i, PeriodValue(flag=DataFlag.N if valid else DataFlag.B, avg=r.mean, min=r.min, max=r.max)))
            return out
        return []


def _median_spacing_ms(ts: Sequence[int]) -> float | None:
    if len(ts) < 3:
        return None
    return statistics.median(b - a for a, b in zip(ts, ts[1:]))


class _ExecutorHistory:
    """Runs a blocking `StoreHistory` on the service's query thread, off the event loop."""

    def __init__(self, history: StoreHistory, executor: ThreadPoolExecutor) -> None:
        self._history = history
        self._executor = executor

    async def periods(self, kind, begin, end, min_interval_min):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._history.periods, kind, begin, end, min_interval_min)


class Hj212Service:
    """Every configured point's client on one asyncio loop in one thread.

        svc = Hj212Service(cfg, agents, replica)   # pure: opens nothing
        svc.on_stored(readings)                    # what the uplink role's consumer committed
        svc.start() ... svc.stop()

    `client_options` are passed to every `Hj212Client` (tests inject a clock).
    """

    def __init__(self, cfg, agents, reader, *, period_delay_s: float = 60.0, client_options: Mapping | None = None,
                 on_moved=None) -> None:
        self.cfg = cfg
        self.agents = agents
        self.points: list[PointConfig] = list(cfg.hj212)
        self.cache = LatestCache(
            (p.site, d, m.metric) for p in self.points for d in p.devices for m in p.metrics
        )
        self._period_delay_s = period_delay_s
        self._client_options = dict(client_options or {})
        if on_moved is not None:  # a damaged queue file found when a client opens it
            self._client_options.setdefault("on_moved", on_moved)
        self.clients: dict[str, Hj212Client] = {}
        self._reader = reader
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    # -- feeds -----------------------------------------------------------------------------------

    def on_stored(self, readings: Sequence[StoredReading]) -> None:
        """Readings the uplink role just committed to its replica (its consumer's thread)."""
        self.cache.on_stored(readings)

    def device_online(self, site: str, agent: str, device: str) -> bool:
        info = self.agents.get(site, agent)
        if info is not None and not info.online:
            return False
        return self.agents.device_state(site, agent, device) != "offline"

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Counters per point, plus `queued`, `connected`, `refused` and `platform_dropped:<reason>` (for /metrics)."""
        out = {}
        for name, c in list(self.clients.items()):
            d = {k: getattr(c.metrics, k) for k in COUNTERS}
            d["queued"] = c.metrics.queued
            d["connected"] = 1 if c.connected else 0
            d["refused"] = c.metrics.refused
            d.update({f"platform_dropped:{k}": v for k, v in c.metrics.platform_dropped.items()})
            out[name] = d
        return out

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Its thread is running (for the systemd watchdog)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._seed()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="greenmine-hj212-history")
        for p in self.points:
            # The client opens (and closes) its queue itself, on the loop thread: sqlite3
            # connections belong to the thread that made them. Relative to the config file.
            p = p.model_copy(update={"queue_path": self.cfg.resolve(str(p.queue_file))})
            self.clients[p.name] = Hj212Client(
                p,
                realtime=PointRealtime(p, self.cache, self.device_online),
                history=_ExecutorHistory(StoreHistory(p, self._reader), self._executor),
                period_delay_s=self._period_delay_s,
                **self._client_options,
            )
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="greenmine-hj212", daemon=True)
        self._thread.start()
        ready.wait(10)
        for p in self.points:
            log.info("hj212 %s: MN %s reporting %s/%s to %s:%d every %d s",
                     p.name, p.mn, p.site, ",".join(p.devices), p.host, p.port, p.rtd_interval_s)

    def _seed(self) -> None:
        """Latest readings from the replica, so the first frame after a restart has values."""
        for site, device, metric in self.cache.watched:
            try:
                pt = self._reader.latest(site, device, metric)
            except Exception as exc:  # noqa: BLE001 - a fresh store has no table yet; the listener fills the cache
                log.debug("hj212: cannot seed %s/%s/%s: %s", site, device, metric, exc)
                return
            if pt is not None:
                self.cache.update(site, device, metric, pt.ts_ms, pt.value, pt.quality, pt.agent)

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(ready))
        finally:
            loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        ready.set()
        tasks = [asyncio.create_task(self._supervise(c), name=f"hj212-{n}") for n, c in self.clients.items()]
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, client: Hj212Client) -> None:
        restart = Backoff(_RESTART_DELAY_S, _RESTART_MAX_S)
        crashed = Latch(log)

        async def recovered() -> None:
            # a restarted client that reaches its platform again counts as healthy
            await client.wait_connected()
            restart.reset()
            crashed.ok("hj212 %s: client running again", client.point.name)

        while True:
            watch = asyncio.create_task(recovered())
            failure: Exception | None = None
            try:
                await client.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug in one point must not stop the others
                failure = exc
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            delay = restart.next()
            if failure is not None:
                crashed.fail("hj212 %s: client failed; restarting in %.0f s", client.point.name, delay, exc_info=failure)
            await asyncio.sleep(delay)

    def send_realtime(self, name: str, timeout_s: float = 5.0) -> str | None:
        """Queue a 2011 real-time upload for point `name` now (any thread); its QN, or None if nothing to send."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("the HJ 212 service is not running")
        client = self.clients[name]
        return asyncio.run_coroutine_threadsafe(client.send_realtime_now(), self._loop).result(timeout_s)

    def stop(self) -> None:
        """Cancel the clients (unacknowledged packets stay queued for the next start), then close files."""
        if self._thread is not None:
            if self._loop is not None and self._stop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)
            self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

