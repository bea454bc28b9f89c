"""`greenmine kpi ...`: recompute KPIs for past days from the readings, and show stored KPIs.

KPIs read the monitor's replica of the series they need (`server.store.replica`), whichever store ingest
writes to. `recompute` first refills the replica from the SQLite store where the store is SQLite (it can
be read back, also past the replica's retention); with InfluxDB/VictoriaMetrics it uses what the replica
holds (`monitor.replica_retention_days`). It then rebuilds the site's rollups (`server.monitor.kpi.rollups`)
from the replica's reads, from the first day's look-back on, and computes from them.

Recomputing overwrites the stored values of those periods (e.g. after late
data or a corrected meter config); it does not raise alerts. It takes the
replica for itself (`SeriesReplica(owner=...)`): while the monitor that
writes it runs, it refuses, naming that process, and exits 1.
"""

from __future__ import annotations

import argparse

from greenmine.server.cli import config_arguments, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kpi", help="recompute and show green-mine KPIs")
    p.set_defaults(func=lambda a: p.print_help())
    ksub = p.add_subparsers(dest="kpi_command", metavar="ACTION")

    rc = ksub.add_parser("recompute", help="recompute every KPI of local days FROM..TO from the readings")
    config_arguments(rc)
    rc.add_argument("--site", required=True, help="site id")
    rc.add_argument("--from", dest="start", required=True, help="first local date, YYYY-MM-DD")
    rc.add_argument("--to", dest="end", help="last local date, YYYY-MM-DD (default: --from)")
    rc.set_defaults(func=_recompute)

    sh = ksub.add_parser("show", help="print stored KPI values")
    config_arguments(sh)
    sh.add_argument("--site", required=True, help="site id")
    sh.add_argument("--kpi", default="water_reuse_daily", help="KPI name (default: water_reuse_daily)")
    sh.add_argument("--from", dest="start", help="first local date, YYYY-MM-DD")
    sh.add_argument("--to", dest="end", help="last local date, YYYY-MM-DD")
    sh.set_defaults(func=_show)


def _err(msg) -> int:
    import sys

    print(msg, file=sys.stderr)
    return 2


def _load(args):
    cfg = load_config(args)
    site = cfg.site(args.site)
    if site is None:
        return None, None, f'site "{args.site}" is not in {args.config}'
    return cfg, site, None


def _dates(args):
    from datetime import date, timedelta

    try:
        d0 = date.fromisoformat(args.start) if args.start else None
        d1 = date.fromisoformat(args.end) if args.end else d0
    except ValueError as exc:
        raise SystemExit(_err(f"bad date: {exc}")) from None
    if d0 and d1 and d1 < d0:
        raise SystemExit(_err("--to is before --from"))
    out = []
    while d0 and d0 <= d1:
        out.append(d0)
        d0 += timedelta(days=1)
    return out


def _kpi_db(cfg):
    from greenmine.server.monitor.alerts.service import kpi_db_path

    return kpi_db_path(cfg)


def _fmt(v) -> str:
    """The value as it was judged: rounded to the decimals its limit is judged at (GB/T 8170), else 2 places."""
    if v.value is None:
        return "—"
    return f"{v.value:.{v.decimals if v.decimals is not None else 2}f} {v.unit}"


def _recompute(args) -> int:
    from greenmine.server.config import SqliteStoreConfig
    from greenmine.server.errors import StateInUse
    from greenmine.server.monitor.kpi import periods
    from greenmine.server.monitor.kpi.engine import KpiEngine
    from greenmine.server.monitor.kpi.store import KpiStore, StoreSource
    from greenmine.server.store.replica import SeriesReplica

    cfg, site, err = _load(args)
    if err:
        return _err(err)
    days = _dates(args)
    path = _kpi_db(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        replica = SeriesReplica(cfg.resolve(cfg.monitor.replica_path), retention_days=cfg.monitor.replica_retention_days,
                                owner="kpi recompute")
    except StateInUse as exc:
        import sys

        print(f"greenmine kpi recompute: {exc.what} is in use by {exc.holder}. Stop the monitor that judges site {site.id} first (with systemd: "
              "systemctl stop greenmine-monitor@NAME, or greenmine-server where one process runs every role), run "
              "this again, then start it again: a running "
              "monitor keeps the rollups of its open slots in memory and would write them back over the rebuilt ones",
              file=sys.stderr)
        return 1
    store = KpiStore(path)
    try:
        engine = KpiEngine(cfg.kpi, cfg.sites, StoreSource(replica), store)
        rollups = engine.use_rollups(replica)
        replica.metrics = engine.metrics
        start = periods.day(days[0], site.timezone).start - cfg.kpi.counter_lookback_s
        end = periods.day(days[-1], site.timezone).end + 2 * cfg.kpi.counter_interval_s
        if isinstance(cfg.store, SqliteStoreConfig):
            n = _refill(replica, cfg, site.id, engine.metrics, start, end)
            print(f"replica refilled from the SQLite store: {n} readings new to it")
        rollups.rebuild(site.id, start)  # from the raw reads, whatever the monitor made of them
        if not any(replica.query_series(site.id, d, m, int(start * 1000), int(end * 1000))
                   for _s, d, m in replica.series(site.id) if m in engine.metrics):
            where = ("the monitor's replica" if not isinstance(cfg.store, SqliteStoreConfig)
                     else "the SQLite store or the monitor's replica")
            return _err(f"no readings of site {site.id} for {days[0]}..{days[-1]} in {where}"
                        + ("" if isinstance(cfg.store, SqliteStoreConfig) else
                           f" (store kind {cfg.store.kind} is not read back; the replica keeps "
                           f"{cfg.monitor.replica_retention_days:g} days)"))
        months = set()
        for d in days:
            values = engine.compute_day(site.id, d)
            months.add((d.year, d.month))
            daily = [v for v in values if v.period_kind in ("day", "noise_day", "noise_night") and v.subject == "site"
                     or v.kpi in ("noise_leq_day", "noise_leq_night")]
            print(f"{d.isoformat()}: {len(values)} KPI values")
            for v in daily:
                flag = "" if v.complete else f"  (incomplete: {v.completeness * 100:.0f} %)"
                judged = {True: "  BREACH", False: "  ok", None: ""}[v.breached]
                print(f"  {v.kpi:26} {v.subject:14} {_fmt(v):>16}{judged}{flag}")
        for y, m in sorted(months):
            engine.compute(site.id, periods.month(y, m, site.timezone))
    finally:
        store.close()
        replica.close()
    print(f"stored in {path}")
    return 0


def _refill(replica, cfg, site_id: str, metrics, start: float, end: float) -> int:
    """Copy the SQLite store's readings of `metrics` in [start, end) into the replica (idempotent)."""
    from greenmine.server.store.base import StoredReading
    from greenmine.server.store.sqlite import SqliteReader

    path = cfg.resolve(cfg.store.path)
    if not path.exists():
        return 0
    reader = SqliteReader(path)
    n = 0
    try:
        for _s, device, metric in reader.series(site_id):
            if metric not in metrics:
                continue
            rows = [StoredReading(site_id, p.agent, device, metric, p.ts_ms, p.value, p.unit, p.quality)
                    for p in reader.query_series(site_id, device, metric, int(start * 1000), int(end * 1000))]
            with replica.transaction() as con:
                n += len(replica.add(rows, con))
    finally:
        reader.close()
    return n


def _show(args) -> int:
    import sys

    from greenmine.server.monitor.kpi import periods
    from greenmine.server.monitor.kpi.store import KpiStore

    cfg, site, err = _load(args)
    if err:
        return _err(err)
    days = _dates(args)
    path = _kpi_db(cfg)
    if not path.exists():
        print(f"no KPIs stored yet in {path} (is a monitor running for this site?)", file=sys.stderr)
        return 1
    store = KpiStore(path)
    try:
        start = periods.day(days[0], site.timezone).start if days else float("-inf")
        end = periods.day(days[-1], site.timezone).end if days else float("inf")
        rows = store.values(site.id, args.kpi, start, end)
    finally:
        store.close()
    if not rows:
        print(f"no values of {args.kpi} for site {site.id} in {path}", file=sys.stderr)
        return 1
    for v in rows:
        judged = {True: "BREACH", False: "ok", None: "not judged"}[v.breached]
        print(f"{v.period_label:24} {v.subject:14} {_fmt(v):>16}  completeness {v.completeness * 100:5.1f} %  {judged}")
    return 0
