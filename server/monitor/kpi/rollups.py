"""The monitor's rollups: what the KPIs read, per meter and per 15-minute slot, built from the stream.

    rollups = Rollups(replica, counters=..., samples=..., spec=engine.counter_spec, ...)
    with replica.transaction() as con:
        new = replica.add(rows, con)
        rollups.add(new, con)        # the readings new to the replica, in the same transaction
    rollups.rebuild_stale()          # on the tick: meters that got a late read, replayed from the replica
    rollups.meters(site, metric, start, end)        # -> [SlotMeterData] for the water and energy KPIs
    rollups.sample_stats(site, metric, start, end)  # -> [SampleStats] for the dust and noise KPIs

Closing a period then sums a few rows per meter (a day: 96 slots) instead of replaying a day of reads and
the look-back before it; the rolling 24 h reuse and the month totals likewise. The tables live in the
replica's file, so a group's readings and their rollups commit together:

- `rollup_counter(site, metric, slot, device, inc, mask)`: a totalizer's consumption inside the slot (an
  increment that spans a slot edge is shared by time, as `periods.allocate` shares it over a period's
  edges) and a bitmask of the `counter_interval_s` intervals of the slot that hold a good read;
- `rollup_meter(site, device, metric, ...)`: the counter rules' tracker state after the meter's latest read
  (`counters.CounterTracker`), and `stale_from` when a late read asks for a replay;
- `rollup_sample(site, metric, slot, device, n, total, esum, top, top_ts, mask, filled)`: dust and noise
  partial sums (count, sum, energy sum for Leq, maximum and when, the intervals that hold a sample).

Counting once: only readings new to the replica (`SeriesReplica.add` says which) are added, so a
redelivered reading adds nothing. Sums and masks do not depend on order, so a late dust or noise sample
just adds to its slot. A totalizer's increment does (it runs from the read before): a good read that is not
after the meter's latest one marks the meter stale from there, and `rebuild_stale` replays the meter's
reads from the replica with a fresh tracker, from `lookback_s` before the read preceding the late one (as
a recompute of that day would), and rewrites the meter's slots from that read on.

Slots are SLOT_S (900 s), on which every calendar period's edges fall. A mask needs SLOT_S to be a
multiple of the interval and at most 62 intervals per slot (an interval of 15 s or more that divides
900 s); otherwise `usable` is False and the KPI engine replays raw reads instead.

One writer (the monitor's consumer thread, or its tick thread under the role's lock); the caches below
follow what was committed: a failed transaction calls `forget`.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable, Iterable

from greenmine import sqlite as sqlite_state
from greenmine.server.monitor.kpi.counters import CounterSpec, CounterTracker, IncrementFlag
from greenmine.server.monitor.kpi.model import SampleStats, SlotMeterData, energy
from greenmine.server.monitor.kpi.periods import SLOT_S

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollup_counter (
    site TEXT NOT NULL, metric TEXT NOT NULL, slot INTEGER NOT NULL, device TEXT NOT NULL,
    inc REAL NOT NULL, mask INTEGER NOT NULL,
    PRIMARY KEY (site, metric, slot, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_meter (
    site TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL,
    last_ts REAL, base REAL, base_ts REAL, suspect_value REAL, suspect_ts REAL, suspect_kind TEXT,
    stale_from REAL,
    PRIMARY KEY (site, metric, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_sample (
    site TEXT NOT NULL, metric TEXT NOT NULL, slot INTEGER NOT NULL, device TEXT NOT NULL,
    n INTEGER NOT NULL, total REAL NOT NULL, esum REAL NOT NULL, top REAL NOT NULL, top_ts REAL NOT NULL,
    mask INTEGER NOT NULL, filled INTEGER NOT NULL,
    PRIMARY KEY (site, metric, slot, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

#: rollup rows and meter states held in memory between groups; more than this and the cache starts over
_CACHE_MAX = 500_000
_COLS = {"rollup_counter": "inc, mask", "rollup_sample": "n, total, esum, top, top_ts, mask"}
_FOREVER_MS = 2**62
_PUT_METER = ("INSERT OR REPLACE INTO rollup_meter (site, device, metric, last_ts, base, base_ts, suspect_value, "
              "suspect_ts, suspect_kind, stale_from) VALUES (?,?,?,?,?,?,?,?,?,?)")  # the order of _Meter.row


class _Meter:
    """A totalizer's rollup state: the tracker after its latest read, and where a replay must start."""

    __slots__ = ("last_ts", "state", "stale_from", "tracker")

    def __init__(self, last_ts: float | None = None, state: dict | None = None, stale_from: float | None = None):
        self.tracker: CounterTracker | None = None  # on `state`, with the meter's counter rules (Rollups._meter)
        self.last_ts = last_ts
        self.state = state if state is not None else {}
        self.stale_from = stale_from

    def row(self, key: tuple[str, str, str]) -> tuple:
        st = self.state
        suspect = st.get("suspect") or (None, None, None)
        kind = suspect[2].value if suspect[2] is not None else None
        return (key[0], key[1], key[2], self.last_ts, st.get("base"), st.get("base_ts"), suspect[0], suspect[1], kind,
                self.stale_from)

    @classmethod
    def from_row(cls, r) -> _Meter:
        last_ts, base, base_ts, s_val, s_ts, s_kind, stale_from = r
        state: dict = {}
        if base is not None:
            state.update(base=base, base_ts=base_ts)
        if s_kind is not None:
            state["suspect"] = (s_val, s_ts, IncrementFlag(s_kind))
        return cls(last_ts, state, stale_from)


class Rollups:
    def __init__(self, replica, *, counters: Iterable[str], samples: Iterable[str],
                 spec: Callable[[str, str, str], CounterSpec], counter_interval_s: float = 60.0,
                 sample_interval_s: float = 60.0, lookback_s: float = 86400.0) -> None:
        self.replica = replica
        self.counters = frozenset(counters)
        self.samples = frozenset(samples)
        self.spec = spec
        self.counter_interval_s = counter_interval_s
        self.sample_interval_s = sample_interval_s
        self.lookback_s = lookback_s
        self.usable = _bits(counter_interval_s) is not None and _bits(sample_interval_s) is not None
        self._counter_rows: dict[tuple, list] = {}  # (site, metric, slot, device) -> [inc, mask]
        self._sample_rows: dict[tuple, list] = {}  # (site, metric, slot, device) -> [n, total, esum, top, top_ts, mask]
        self._meters: dict[tuple, _Meter] = {}  # (site, device, metric) -> state
        self._loaded: dict[tuple, int] = {}  # (table, site, metric) -> the first slot whose rows are all cached
        self._loaded_sites: set[str] = set()  # sites whose meter states are all cached
        con = replica.connection()
        con.executescript(_SCHEMA)
        if self.usable:
            self._build_once(con)

    def _con(self) -> sqlite3.Connection:
        return self.replica.connection()

    # --- write side --------------------------------------------------------

    def forget(self) -> None:
        """Drop what is cached (after a failed transaction: the database is the truth)."""
        self._counter_rows.clear()
        self._sample_rows.clear()
        self._meters.clear()
        self._loaded.clear()
        self._loaded_sites.clear()

    def add(self, rows: Iterable[tuple], con: sqlite3.Connection) -> None:
        """Add readings new to the replica, tuples in StoredReading's field order (site, agent, device, metric,
        ts_ms, value, unit, quality), inside the caller's transaction on `con`."""
        if not self.usable:
            return
        if len(self._counter_rows) + len(self._sample_rows) + len(self._meters) > _CACHE_MAX:
            self.forget()
        counters, samples = self.counters, self.samples
        crows, srows, meters = self._counter_rows, self._sample_rows, self._meters
        reads: dict[tuple, list[tuple[float, float]]] = {}
        touched_s: set[tuple] = set()
        ibits, cbits = self.sample_interval_s, self.counter_interval_s
        for site, _agent, device, metric, ts_ms, value, _unit, quality in rows:
            if quality != "good":
                continue
            if metric in counters:
                key = (site, device, metric)
                got = reads.get(key)
                if got is None:
                    reads[key] = [(ts_ms / 1000.0, value)]
                else:
                    got.append((ts_ms / 1000.0, value))
            elif metric in samples:
                ts = ts_ms / 1000.0
                slot = int(ts // SLOT_S)
                key = (site, metric, slot, device)
                r = srows.get(key) or self._sample_row(con, key)
                r[0] += 1
                r[1] += value
                r[2] += energy(value)
                if value > r[3] or (value == r[3] and ts < r[4]):
                    r[3], r[4] = value, ts
                r[5] |= 1 << int((ts - slot * SLOT_S) // ibits)
                touched_s.add(key)
        touched_c: set[tuple] = set()
        for key, pts in reads.items():
            if len(pts) > 1:
                pts.sort()
            site, device, metric = key
            m = meters.get(key)
            if m is None or m.tracker is None:
                m = self._meter(con, key)
            first = pts[0][0]
            late = m.stale_from is not None or (m.last_ts is not None and first <= m.last_ts)
            if late:  # replayed from the replica by the next rebuild_stale
                m.stale_from = first if m.stale_from is None else min(m.stale_from, first)
            tracker = m.tracker
            for ts, v in pts:
                slot = int(ts // SLOT_S)
                k = (site, metric, slot, device)
                r = crows.get(k) or self._counter_row(con, k)
                r[1] |= 1 << int((ts - slot * SLOT_S) // cbits)
                touched_c.add(k)
                if late:
                    continue
                for i in tracker.feed(ts, v)[0]:
                    if not i.value:
                        continue
                    if i.start_ts >= slot * SLOT_S and i.end_ts == ts:  # inside the read's slot: most reads
                        r[0] += i.value
                        continue
                    for s, share in _spread(i.start_ts, i.end_ts, i.value):
                        k = (site, metric, s, device)
                        (crows.get(k) or self._counter_row(con, k))[0] += share
                        touched_c.add(k)
            if not late:
                m.last_ts = pts[-1][0]
        touched_m = reads.keys()
        self._write(con, touched_c, touched_s, touched_m)

    def _write(self, con, touched_c, touched_s, touched_m) -> None:
        if touched_c:
            rows = self._counter_rows
            con.executemany("INSERT OR REPLACE INTO rollup_counter VALUES (?,?,?,?,?,?)",
                            [(*k, *rows[k]) for k in touched_c])
        if touched_s:
            rows = self._sample_rows
            con.executemany("INSERT OR REPLACE INTO rollup_sample VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            [(*k, *r, r[5].bit_count()) for k in touched_s for r in (rows[k],)])
        if touched_m:
            con.executemany(_PUT_METER, [self._meters[k].row(k) for k in touched_m])

    def _counter_row(self, con, key: tuple) -> list:
        r = self._counter_rows.get(key)
        if r is None:
            r = self._counter_rows[key] = self._load(con, "rollup_counter", key, [0.0, 0])
        return r

    def _sample_row(self, con, key: tuple) -> list:
        r = self._sample_rows.get(key)
        if r is None:
            r = self._sample_rows[key] = self._load(con, "rollup_sample", key, [0, 0.0, 0.0, -math.inf, math.inf, 0])
        return r

    def _load(self, con, table: str, key: tuple, empty: list) -> list:
        """A row not in the cache. The first time a (site, metric) is touched, every row of it from two slots
        before on is loaded at once; from then on a row at or after that slot that is not cached does not
        exist. An older one (a late reading) is looked up."""
        site, metric, slot, device = key
        cols = _COLS[table]
        lo = self._loaded.get((table, site, metric))
        if lo is None:
            lo = self._loaded[(table, site, metric)] = slot - 2
            cache = self._counter_rows if table == "rollup_counter" else self._sample_rows
            for r in con.execute(f"SELECT slot, device, {cols} FROM {table} WHERE site=? AND metric=? AND slot>=?",
                                 (site, metric, lo)):
                cache.setdefault((site, metric, r[0], r[1]), list(r[2:]))
            got = cache.get(key)
            return got if got is not None else list(empty)
        if slot >= lo:
            return list(empty)
        got = con.execute(f"SELECT {cols} FROM {table} WHERE site=? AND metric=? AND slot=? AND device=?",
                          key).fetchone()
        return list(got) if got else list(empty)

    def _meter(self, con, key: tuple) -> _Meter:
        m = self._meters.get(key)
        if m is None:
            site = key[0]
            if site not in self._loaded_sites:  # a site's meters at once
                self._loaded_sites.add(site)
                for r in con.execute("SELECT device, metric, last_ts, base, base_ts, suspect_value, suspect_ts, "
                                     "suspect_kind, stale_from FROM rollup_meter WHERE site=?", (site,)):
                    self._meters.setdefault((site, r[0], r[1]), _Meter.from_row(r[2:]))
                m = self._meters.get(key)
            if m is None:
                m = self._meters[key] = _Meter()
        if m.tracker is None:
            m.tracker = CounterTracker(self.spec(*key), state=m.state)
        return m

    # --- replays from the replica ------------------------------------------

    def stale(self) -> list[tuple[str, str, str, float]]:
        return [tuple(r) for r in self._con().execute(
            "SELECT site, device, metric, stale_from FROM rollup_meter WHERE stale_from IS NOT NULL")]

    def rebuild_stale(self) -> dict[str, dict[str, list[float]]]:
        """Replay every meter a late read made stale. Returns site -> metric -> the starts of the slots whose
        consumption changed, for the KPI engine to mark their periods dirty."""
        stale = self.stale() if self.usable else []
        if not stale:
            return {}
        changed: dict[str, dict[str, list[float]]] = {}
        con = self._con()
        try:
            with sqlite_state.transaction(con, f"rollups {self.replica.path}"):
                for site, device, metric, from_ts in stale:
                    slots = self._replay(con, site, device, metric, from_ts)
                    changed.setdefault(site, {}).setdefault(metric, []).extend(s * SLOT_S for s in slots)
        finally:
            self.forget()
        return changed

    def _replay(self, con, site: str, device: str, metric: str, from_ts: float) -> list[int]:
        """Rewrite one meter's consumption and masks from the read before `from_ts` on; the slots changed."""
        from_ms = int(math.floor(from_ts * 1000))
        prev = self.replica.neighbours(site, device, metric, from_ms, from_ms)[0]
        lo = prev / 1000.0 if prev is not None else from_ts
        slot0 = int(lo // SLOT_S)
        pts = self._good_reads(site, device, metric, int((slot0 * SLOT_S - self.lookback_s) * 1000))
        tracker = CounterTracker(self.spec(site, device, metric))
        inc: dict[int, float] = {}
        mask: dict[int, int] = {}
        edge = slot0 * SLOT_S
        for ts_ms, v in pts:
            ts = ts_ms / 1000.0
            if ts >= edge:
                slot = int(ts // SLOT_S)
                mask[slot] = mask.get(slot, 0) | 1 << int((ts - slot * SLOT_S) // self.counter_interval_s)
            for i in tracker.feed(ts, v)[0]:
                if i.end_ts > edge:
                    for slot, share in _spread(max(i.start_ts, edge) if i.end_ts > i.start_ts else i.start_ts,
                                               i.end_ts, i.value * _after(i.start_ts, i.end_ts, edge)):
                        inc[slot] = inc.get(slot, 0.0) + share
        old = {s: (i, m) for s, i, m in con.execute(
            "SELECT slot, inc, mask FROM rollup_counter WHERE site=? AND metric=? AND slot>=? AND device=?",
            (site, metric, slot0, device))}
        slots = set(old) | set(inc) | set(mask)
        changed = [s for s in slots if old.get(s, (0.0, 0))[0] != inc.get(s, 0.0)]
        con.execute("DELETE FROM rollup_counter WHERE site=? AND metric=? AND slot>=? AND device=?",
                    (site, metric, slot0, device))
        con.executemany("INSERT INTO rollup_counter VALUES (?,?,?,?,?,?)",
                        [(site, metric, s, device, inc.get(s, 0.0), mask.get(s, 0)) for s in sorted(slots)
                         if inc.get(s, 0.0) or mask.get(s, 0)])
        m = _Meter(pts[-1][0] / 1000.0 if pts else None, tracker.state)
        con.execute(_PUT_METER, m.row((site, device, metric)))
        return sorted(changed)

    def rebuild(self, site: str | None = None, from_ts: float = -math.inf) -> None:
        """Rebuild the rollups of `site` (every site: None) from the replica's raw reads from `from_ts` on:
        `kpi recompute`, and a replica that held readings before it had rollups."""
        if not self.usable:
            return
        con = self._con()
        slot0 = int(max(from_ts, -2**52) // SLOT_S)
        try:
            with sqlite_state.transaction(con, f"rollups {self.replica.path}"):
                for s, device, metric in self.replica.series(site):
                    if metric in self.counters:
                        con.execute("INSERT INTO rollup_meter (site, device, metric, stale_from) VALUES (?,?,?,?) "
                                    "ON CONFLICT DO UPDATE SET stale_from=min(coalesce(stale_from, excluded.stale_from), "
                                    "excluded.stale_from)", (s, device, metric, max(from_ts, -2**52)))
                    elif metric in self.samples:
                        self._rebuild_samples(con, s, device, metric, slot0)
        finally:
            self.forget()
        self.rebuild_stale()

    def _rebuild_samples(self, con, site: str, device: str, metric: str, slot0: int) -> None:
        con.execute("DELETE FROM rollup_sample WHERE site=? AND metric=? AND slot>=? AND device=?",
                    (site, metric, slot0, device))
        acc: dict[int, list] = {}
        for ts_ms, v in self._good_reads(site, device, metric, slot0 * SLOT_S * 1000):
            ts = ts_ms / 1000.0
            slot = int(ts // SLOT_S)
            r = acc.get(slot)
            if r is None:
                r = acc[slot] = [0, 0.0, 0.0, -math.inf, math.inf, 0]
            r[0] += 1
            r[1] += v
            r[2] += energy(v)
            if v > r[3]:
                r[3], r[4] = v, ts
            r[5] |= 1 << int((ts - slot * SLOT_S) // self.sample_interval_s)
        con.executemany("INSERT INTO rollup_sample VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        [(site, metric, s, device, *r, r[5].bit_count()) for s, r in acc.items()])

    def _good_reads(self, site: str, device: str, metric: str, start_ms: int) -> list[tuple[int, float]]:
        """(ts_ms, value) of the series' good readings from `start_ms` on, in time order (this thread's connection:
        inside a transaction it sees what the transaction wrote)."""
        return [(p.ts_ms, p.value) for p in self.replica.query_series(site, device, metric, start_ms, _FOREVER_MS)
                if p.quality == "good"]

    def _build_once(self, con) -> None:
        if con.execute("SELECT 1 FROM rollup_meta WHERE key='built'").fetchone():
            return
        if self.replica.series():
            log.info("rollups: building them from the %d readings the replica holds", self.replica.count())
            self.rebuild()
        with sqlite_state.transaction(con, f"rollups {self.replica.path}"):
            con.execute("INSERT OR REPLACE INTO rollup_meta VALUES ('built', '1')")

    # --- read side ---------------------------------------------------------

    def meters(self, site: str, metric: str, start: float, end: float) -> list[SlotMeterData]:
        """Each meter of `metric` with reads in [start - lookback_s, end + SLOT_S), with its slots in [start, end)
        (a meter that went quiet is there with nothing in the period, so its completeness counts)."""
        con = self._con()
        lo, hi = int(start // SLOT_S), math.ceil(end / SLOT_S)
        by: dict[str, list] = {}
        for device, slot, inc, mask in con.execute(
                "SELECT device, slot, inc, mask FROM rollup_counter WHERE site=? AND metric=? AND slot>=? AND slot<? "
                "ORDER BY slot", (site, metric, lo, hi)):
            by.setdefault(device, []).append((slot * SLOT_S, inc, mask))
        quiet = [d for (d,) in con.execute("SELECT device FROM rollup_meter WHERE site=? AND metric=?", (site, metric))
                 if d not in by]
        before, after = int((start - self.lookback_s) // SLOT_S), hi + 1
        for d in quiet:
            if con.execute("SELECT 1 FROM rollup_counter WHERE site=? AND metric=? AND slot>=? AND slot<? AND device=? "
                           "AND mask!=0 LIMIT 1", (site, metric, before, after, d)).fetchone():
                by[d] = []
        return [SlotMeterData(d, tuple(s), self.counter_interval_s) for d, s in sorted(by.items())]

    def sample_stats(self, site: str, metric: str, start: float, end: float) -> list[SampleStats]:
        """Per monitor with samples in [start, end) (slot edges), the stats the dust and noise KPIs read."""
        expected = max(1, round((end - start) / self.sample_interval_s))
        rows = self._con().execute(
            "SELECT device, sum(n), sum(total), sum(esum), max(top), top_ts, sum(filled) FROM rollup_sample "
            "WHERE site=? AND metric=? AND slot>=? AND slot<? GROUP BY device ORDER BY device",
            (site, metric, int(start // SLOT_S), math.ceil(end / SLOT_S))).fetchall()
        return [SampleStats(d, n, total, esum, top, top_ts, min(1.0, filled / expected))
                for d, n, total, esum, top, top_ts, filled in rows if n]

    def prune(self, before_ts: float) -> None:
        """Forget slots before `before_ts` (the replica's retention)."""
        con = self._con()
        slot = int(before_ts // SLOT_S)
        with sqlite_state.transaction(con, f"rollups {self.replica.path}"):
            # one range per (site, metric), from the few rows of the replica's series list: not a table scan
            for site, metric in con.execute("SELECT DISTINCT site, metric FROM replica_series").fetchall():
                for table in ("rollup_counter", "rollup_sample"):
                    con.execute(f"DELETE FROM {table} WHERE site=? AND metric=? AND slot<?", (site, metric, slot))
        self.forget()


def _bits(interval_s: float) -> int | None:
    """Intervals per slot, if a slot's mask can hold them (SLOT_S a multiple of the interval, at most 62)."""
    n = SLOT_S / interval_s
    return int(n) if n == int(n) and 1 <= n <= 62 else None


def _after(start: float, end: float, edge: float) -> float:
    """The share of (start, end] after `edge`."""
    if end <= start:
        return 1.0
    return (end - max(start, edge)) / (end - start)


def _spread(start: float, end: float, value: float):
    """(slot, share) of an increment over (start, end], shared by time as `periods.allocate` shares it."""
    if not value:
        return
    if end <= start:
        yield int(end // SLOT_S), value
        return
    span = end - start
    slot = int(start // SLOT_S)
    while slot * SLOT_S < end:
        lo, hi = max(start, slot * SLOT_S), min(end, (slot + 1) * SLOT_S)
        if hi > lo:
            yield slot, value * (hi - lo) / span
        slot += 1
