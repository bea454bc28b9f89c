"""The energy uplink: closed periods → records → a queue per data centre → HTTPS.

    svc = EnergyService(cfg, replica, clock=clock)
    svc.note(rows)          # the role's consumer: readings just committed to the replica
    svc.start() ... svc.stop()
    svc.produce_due(now)    # (the producer thread) every closed period not produced yet
    svc.send_once(centre)   # (a sender thread) one batch to one centre

Values come from the KPI engine's code over the role's own replica (`values.ItemValues`).
Each (site, statType) has a cursor: a period is produced once, `close_delay_s` after it
ends, stored in the history and queued for every centre in one transaction
(`queue.EnergyState.produce`). One sender thread per centre drains that centre's queue
oldest first, so an outage of one centre never delays another: the other's thread
keeps sending, and the failed centre's rows wait with back-off (`greenmine.backoff`)
until its success reply.

Time: periods, statDate, uploadDate and the upload slot follow the injected clock (the
server's `[clock]`); back-off and token expiry are real seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from greenmine.backoff import Backoff
from greenmine.latch import Latch
from greenmine.server.monitor.kpi import periods
from greenmine.server.monitor.kpi.energy import day_month_deviation
from greenmine.server.monitor.kpi.engine import KpiEngine
from greenmine.server.monitor.kpi.periods import Period
from greenmine.server.monitor.kpi.store import KpiStore, StoreSource
from greenmine.server.uplink.energy.client import CentreClient, EnergyError, Rejected, StaleCredentials
from greenmine.server.uplink.energy.config import (
    CentreConfig, EnterpriseConfig, PlatformProfile, StatType, check_centre, load_profile,
)
from greenmine.server.uplink.energy.queue import EnergyState, Record
from greenmine.server.uplink.energy.values import ItemValues
from greenmine.sqlite import StateError

log = logging.getLogger(__name__)

#: most periods one site produces per tick (a catch-up after downtime continues on the next tick)
_MAX_PERIODS_PER_TICK = 500


#: the statTypes sent after the real-time ones in a batch: day, month, year
_PERIOD_STATS = tuple(s.code for s in StatType if s is not StatType.REALTIME)

def state_paths(cfg) -> tuple[Path, Path]:
    d = cfg.resolve(cfg.energy.state_dir)
    return d / "energy.sqlite", d / "energy-kpi.sqlite"


def _iso(ts) -> str | None:
    from datetime import timezone

    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def status_doc(state: EnergyState, centres: list[str], now: float, events: int = 20) -> dict:
    """Per centre: queue depth, age of the oldest unsent record, acked/rejected counts, last ack, last error (UTC ISO
    times); and the newest events. What `greenmine energy status` prints and the console's health page shows."""
    doc: dict = {"centres": {}, "events": [
        {"at": _iso(at), "site": site, "kind": kind, "detail": detail} for at, site, kind, detail in state.events(events)]}
    for c in centres:
        s = state.status(c)
        doc["centres"][c] = {"queue_depth": s["depth"],
                             "oldest_unsent_age_s": round(now - s["oldest_queued_at"], 1) if s["oldest_queued_at"] else 0,
                             "acked": s["acked"], "rejected": s["rejected"], "last_ack": _iso(s["last_ack_at"]),
                             "last_error": s["last_error"], "last_error_at": _iso(s["last_error_at"])}
    return doc


def load_profiles(cfg) -> dict[str, PlatformProfile]:
    base = cfg.resolve(".")
    out = {}
    for i, c in enumerate(cfg.energy.centres):
        where = f'energy.centres[{i}] "{c.name}"'
        try:
            prof = load_profile(c.profile, base)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        check_centre(c, prof, where)
        out[c.name] = prof
    intervals = {p.realtime_interval_min for p in out.values()}
    if len(intervals) > 1:
        raise ValueError(f"energy.centres: the profiles' realtime_interval_min differ ({sorted(intervals)}); "
                         "every centre receives the same records")
    return out


class CentreCounters:
    def __init__(self) -> None:
        self.sent = self.acked = self.failed = self.rejected = self.renewed = 0


class EnergyService:
    def __init__(self, cfg, replica, *, clock: Callable[[], float] = time.time,
                 real_clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.ecfg = cfg.energy
        self.clock = clock
        self._real = real_clock
        self.profiles = load_profiles(cfg)
        self.sites = {s.id: s for s in cfg.sites}
        self.enterprises: dict[str, EnterpriseConfig] = {e.site: e for e in self.ecfg.enterprises}
        state_path, kpi_path = state_paths(cfg)
        self.state = EnergyState(state_path, real_clock=real_clock)
        self.kpi_store = KpiStore(kpi_path)
        ent_sites = [self.sites[s] for s in self.enterprises if s in self.sites]
        self.engine = KpiEngine(cfg.kpi, ent_sites, StoreSource(replica), self.kpi_store)
        self.values = ItemValues(self.engine)
        self._decimals = {(e.site, it.code): it.decimals for e in self.ecfg.enterprises for it in e.items}
        self.clients = {
            c.name: CentreClient(c, self.profiles[c.name], resolve=cfg.resolve, tz_of=self.tz,
                                 decimals_of=lambda site, code: self._decimals.get((site, code), 2), real_clock=real_clock)
            for c in self.ecfg.centres
        }
        self.counters = {c.name: CentreCounters() for c in self.ecfg.centres}
        self.consistency_failures = 0
        self.held = 0
        self._latches = {c.name: Latch(log) for c in self.ecfg.centres}
        self._reject_latches: dict[str, Latch] = {c.name: Latch(log) for c in self.ecfg.centres}
        self._backoff = {c.name: Backoff(c.retry_initial_s, c.retry_max_s) for c in self.ecfg.centres}
        self._stop = threading.Event()
        self._wake = {c.name: threading.Event() for c in self.ecfg.centres}
        self._threads: list[threading.Thread] = []
        self._produce_latch = Latch(log)
        #: per site, the newest reading time the stream has brought (the replica's newest at start)
        self.watermark: dict[str, float] = {}
        for site in self.enterprises:
            ts = [p.ts_ms / 1000.0 for (_s, d, m) in replica.series(site) if (p := replica.latest(site, d, m))]
            self.watermark[site] = max(ts, default=float("-inf"))
        self.interval_s = 60 * next(iter(self.profiles.values())).realtime_interval_min if self.profiles else 900

    def tz(self, site: str) -> str:
        s = self.sites.get(site)
        return s.timezone if s else "Asia/Shanghai"

    # --- producing ----------------------------------------------------------

    def seen(self, site: str, ts: float) -> None:
        """The role's consumer committed readings of `site` up to `ts` to the replica."""
        if ts > self.watermark.get(site, float("-inf")):
            self.watermark[site] = ts

    def _closed(self, site: str, p: Period, now: float) -> bool:
        e = self.ecfg
        if p.end + e.close_delay_s > now:
            return False
        # the read that closes the period's last interval has arrived, or we waited long enough for it
        return (self.watermark.get(site, float("-inf")) >= p.end + self.cfg.kpi.counter_interval_s
                or now >= p.end + e.close_delay_s + e.late_data_wait_s)

    def _stats(self, ent: EnterpriseConfig) -> list[StatType]:
        return [s for s in StatType if any(s in it.stat_types for it in ent.items)]

    def period_at(self, stat: StatType, start: float, tz: str) -> Period:
        if stat is StatType.REALTIME:
            z = ZoneInfo(tz)
            lt = datetime.fromtimestamp(start, z)
            return Period("slot", start, start + self.interval_s, lt.strftime("%Y-%m-%d %H:%M"))
        d = periods.local_date(start, tz)
        if stat is StatType.DAY:
            return periods.day(d, tz)
        if stat is StatType.YEAR:
            return periods.year(d.year, tz)
        return periods.month(d.year, d.month, tz)

    def period_containing(self, stat: StatType, ts: float, tz: str) -> Period:
        if stat is StatType.REALTIME:
            z = ZoneInfo(tz)
            lt = datetime.fromtimestamp(ts, z)
            minute = (lt.minute // (self.interval_s // 60)) * (self.interval_s // 60)
            start = lt.replace(minute=int(minute), second=0, microsecond=0).timestamp()
            return self.period_at(stat, start, tz)
        return self.period_at(stat, ts, tz)

    def produce_due(self, now: float | None = None) -> int:
        """Produce every closed period whose cursor has passed. Returns the number of new records."""
        now = self.clock() if now is None else now
        made = 0
        for site, ent in self.enterprises.items():
            tz = self.tz(site)
            for stat in self._stats(ent):
                cur = self.state.cursor(site, stat.code)
                if cur is None:
                    cur = self.period_containing(stat, now, tz).start
                    self.state.set_cursor(site, stat.code, cur)
                due = []
                while len(due) < _MAX_PERIODS_PER_TICK:
                    p = self.period_at(stat, cur, tz)
                    if not self._closed(site, p, now):
                        break
                    due.append(p)
                    cur = p.end
                if not due:
                    continue
                self.values.span(True)
                try:
                    for p in due:
                        made += self.produce_period(ent, stat, p)
                finally:
                    self.values.span(False)
        return made

    def build(self, ent: EnterpriseConfig, stat: StatType, p: Period) -> tuple[list[tuple[Record, list[str]]], list[tuple[str, str]]]:
        """The records of one period with the centres each goes to, and the events (held, inconsistent)."""
        records, missing = self.year_records(ent, p) if stat is StatType.YEAR else self.values.records(ent, stat, p)
        events: list[tuple[str, str]] = [("no_value", f"{code} {stat.value} {p.label}: the KPI has no value") for code in missing]
        out = []
        for r in records:
            centres = [c for c, prof in self.profiles.items() if r.complete or prof.incomplete == "flag"]
            if not r.complete:
                held = [c for c in self.profiles if c not in centres]
                what = f"{r.code} {stat.value} {p.label}: {r.completeness * 100:.0f} % of the reads"
                if held:
                    self.held += 1
                    events.append(("held", f"{what}, held for {', '.join(held)}"))
                if centres:
                    events.append(("incomplete", f"{what}, sent flagged invalid to {', '.join(centres)}"))
            out.append((r, centres))
        if stat is StatType.MONTH:
            events += self.consistency(ent, p, records)
        return out, events

    def year_records(self, ent: EnterpriseConfig, year: Period) -> tuple[list[Record], list[str]]:
        """Each year item's record: the sum of its month records of that year, as sent (so the year and its months
        agree exactly). A month with no record (the uplink was not running then) counts as incomplete: the year is
        complete only when all twelve are, and its completeness is the months' average, a missing one as 0."""
        min_pct = self.cfg.kpi.completeness_min_pct
        out = []
        for it in ent.items:
            if StatType.YEAR not in it.stat_types:
                continue
            months = self.state.records(ent.site, year.start, year.end, stat_type=StatType.MONTH.code, code=it.code)
            comp = sum(m.completeness for m in months) / 12
            out.append(Record(site=ent.site, code=it.code, stat_type=StatType.YEAR.code, period_start=year.start,
                              period_end=year.end, value=round(sum(m.value for m in months), it.decimals),
                              complete=len(months) == 12 and all(m.complete for m in months)
                              and comp * 100.0 >= min_pct - 1e-9,
                              completeness=comp, input_type=it.input_type, scope=it.scope))
        return out, []

    def consistency(self, ent: EnterpriseConfig, month: Period, records: list[Record]) -> list[tuple[str, str]]:
        """The month total against the sum of its day records, per item: more than month_day_tolerance_pct apart
        is a consistency failure (logged at warning, counted, kept as an event for `energy status`). The check is
        `kpi.energy.day_month_deviation`, the one the monitor's `energy_consistency` alert rule uses (that rule
        is how an officer learns of it)."""
        out = []
        tol = self.ecfg.month_day_tolerance_pct
        for r in records:
            days = self.state.records(ent.site, month.start, month.end, stat_type=StatType.DAY.code, code=r.code)
            if not days:
                continue
            dev, total = day_month_deviation(r.value, (d.value for d in days))
            if dev > tol:
                self.consistency_failures += 1
                detail = (f"{r.code} {month.label}: month {r.value:g} vs the sum of {len(days)} day records {total:g} "
                          f"({dev:.1f} % > {tol:g} %)")
                log.warning("energy: site %s: consistency: %s", ent.site, detail)
                out.append(("consistency", detail))
        return out

    def produce_period(self, ent: EnterpriseConfig, stat: StatType, p: Period) -> int:
        items, events = self.build(ent, stat, p)
        new = self.state.produce(ent.site, stat.code, p.end, items, events)
        if new:
            for w in self._wake.values():
                w.set()
        return new

    # --- sending ------------------------------------------------------------

    def _creds(self, centre: str, ent: EnterpriseConfig) -> dict:
        key = f"{centre}/{ent.enterprise_code}"
        client = self.clients[centre]
        creds = self.state.credentials(key)
        if not client.fresh(creds):
            creds = client.register(ent)
            self.state.set_credentials(key, creds)
            self.counters[centre].renewed += 1
            log.info("energy: centre %s: %s for %s", centre,
                     "registered" if client.profile.variant == "a" else "token renewed", ent.enterprise_code)
        return creds

    def forget(self, centre: str, ent: EnterpriseConfig) -> None:
        self.state.set_credentials(f"{centre}/{ent.enterprise_code}", None)

    def send_once(self, centre: str) -> int:
        """Send one batch of due records to `centre`. Returns records acked (0: nothing due or a failure)."""
        ccfg: CentreConfig = next(c for c in self.ecfg.centres if c.name == centre)
        client = self.clients[centre]
        now_real = self._real()
        rows = self.state.due(centre, now_real, ccfg.batch_max_records, (StatType.REALTIME.code,))
        if len(rows) < ccfg.batch_max_records:
            later = self.state.due(centre, now_real, ccfg.batch_max_records, _PERIOD_STATS)
            rows += later[: ccfg.batch_max_records - len(rows)]
        if not rows:
            return 0
        site = rows[0].site
        ent = self.enterprises.get(site)
        rows = [r for r in rows if r.site == site]
        if ent is None:  # an enterprise removed from the config: its rows wait (status shows them)
            return 0
        now = self.clock()
        c = self.counters[centre]
        try:
            creds = self._creds(centre, ent)
            rows = [r for r in rows if r.stat_type == 0 or client.slot_open(creds, site, r.period_end, now)]
            if not rows:
                return 0
            try:
                client.upload(ent, creds, rows, now)
            except StaleCredentials as exc:
                # the platform says our registration or token is stale: renew once, resend at once
                log.info("energy: centre %s: %s; renewing and resending", centre, exc)
                self.forget(centre, ent)
                creds = self._creds(centre, ent)
                client.upload(ent, creds, rows, now)
        except Rejected as exc:
            c.rejected += len(rows)
            self._reject_latches[centre].fail("energy: centre %s rejected %d record(s): %s (responseCode %s); kept, "
                                              "resent with back-off", centre, len(rows), exc.message, exc.code)
            self._failed(centre, rows, f"rejected: {exc}", rejected=True)
            return 0
        except EnergyError as exc:
            c.failed += 1
            self._latches[centre].fail("energy: centre %s unreachable: %s; resending with back-off", centre, exc)
            self._failed(centre, rows, str(exc), rejected=False)
            return 0
        self.state.acked(centre, [r.id for r in rows])
        c.sent += 1
        c.acked += len(rows)
        self._backoff[centre].reset()
        self._latches[centre].ok("energy: centre %s reachable again", centre)
        self._reject_latches[centre].ok("energy: centre %s accepts records again", centre)
        return len(rows)

    def _failed(self, centre: str, rows: list[Record], error: str, rejected: bool) -> None:
        delay = self._backoff[centre].next()
        self.state.failed(centre, [r.id for r in rows], self._real() + delay, error[:500], rejected)

    # --- threads ------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        t = threading.Thread(target=self._produce_loop, name="greenmine-energy-produce", daemon=True)
        self._threads = [t]
        for c in self.ecfg.centres:
            self._threads.append(threading.Thread(target=self._send_loop, args=(c.name,), name=f"greenmine-energy-{c.name}", daemon=True))
        for t in self._threads:
            t.start()

    def dead_threads(self) -> list[str]:
        """The names of its started threads that are no longer running."""
        return [t.name for t in self._threads if not t.is_alive()]

    def stop(self) -> None:
        self._stop.set()
        for w in self._wake.values():
            w.set()
        for t in self._threads:
            t.join(30)
        self._threads = []
        self.close()

    def close(self) -> None:
        self.state.close()
        self.kpi_store.close()

    def _produce_loop(self) -> None:
        next_prune = 0.0
        while not self._stop.is_set():
            try:
                self.produce_due()
                if self._real() >= next_prune:
                    next_prune = self._real() + 3600
                    self.state.prune(self._real() - self.ecfg.history_days * 86400)
                self._produce_latch.ok("energy: producing records again")
            except (StateError, ValueError, ArithmeticError) as exc:
                self._produce_latch.fail("energy: producing records failed: %s", exc, exc_info=True)
            self._stop.wait(self.ecfg.tick_s)

    def _send_loop(self, centre: str) -> None:
        wake = self._wake[centre]
        while not self._stop.is_set():
            try:
                n = self.send_once(centre)
            except StateError as exc:
                self._latches[centre].fail("energy: centre %s: state file: %s", centre, exc)
                n = 0
            if n:
                continue  # more may be due
            wake.wait(self.ecfg.tick_s)
            wake.clear()

    # --- status -------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        return {"consistency_failures": self.consistency_failures, "held": self.held}

    def snapshot(self) -> dict[str, dict]:
        now = self._real()
        out = {}
        for name, c in self.counters.items():
            st = self.state.status(name)
            oldest = st["oldest_queued_at"]
            out[name] = {"depth": st["depth"], "oldest_age_s": (now - oldest) if oldest else 0.0,
                         "acked": c.acked, "sent": c.sent, "failed": c.failed, "rejected": c.rejected,
                         "renewed": c.renewed, "last_ack_at": st["last_ack_at"], "last_error": st["last_error"]}
        return out
