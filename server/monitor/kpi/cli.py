"""`greenmine kpi ...`: recompute KPIs for past days from the stored readings, and show stored KPIs.

Recomputing overwrites the stored values of those periods (e.g. after late
data or a corrected meter config); it does not raise alerts.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kpi", help="recompute and show green-mine KPIs")
    p.set_defaults(func=lambda a: p.print_help())
    ksub = p.add_subparsers(dest="kpi_command", metavar="ACTION")

    rc = ksub.add_parser("recompute", help="recompute every KPI of local days FROM..TO from the SQLite store")
    rc.add_argument("--config", required=True, help="server config file")
    rc.add_argument("--site", required=True, help="site id")
    rc.add_argument("--from", dest="start", required=True, help="first local date, YYYY-MM-DD")
    rc.add_argument("--to", dest="end", help="last local date, YYYY-MM-DD (default: --from)")
    rc.set_defaults(func=_recompute)

    sh = ksub.add_parser("show", help="print stored KPI values")
    sh.add_argument("--config", required=True, help="server config file")
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
    from greenmine.configfile import ConfigError
    from greenmine.server.config import load_server_config

    try:
        cfg = load_server_config(args.config)
    except ConfigError as exc:
        return None, None, str(exc)
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
    return cfg.resolve(cfg.alerts.db_path).with_name("kpi.sqlite")


def _fmt(v) -> str:
    return "—" if v.value is None else f"{v.value:.2f} {v.unit}"


def _recompute(args) -> int:
    from greenmine.server.config import SqliteStoreConfig
    from greenmine.server.monitor.kpi import periods
    from greenmine.server.monitor.kpi.engine import KpiEngine
    from greenmine.server.monitor.kpi.store import KpiStore, StoreSource
    from greenmine.server.store.sqlite import SqliteReader

    cfg, site, err = _load(args)
    if err:
        return _err(err)
    if not isinstance(cfg.store, SqliteStoreConfig):
        return _err("kpi recompute reads the SQLite store; this config uses " + cfg.store.kind)
    days = _dates(args)
    reader = SqliteReader(cfg.resolve(cfg.store.path))
    path = _kpi_db(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = KpiStore(path)
    try:
        engine = KpiEngine(cfg.kpi, cfg.sites, StoreSource(reader), store)
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
        reader.close()
    print(f"stored in {path}")
    return 0


def _show(args) -> int:
    from greenmine.server.monitor.kpi import periods
    from greenmine.server.monitor.kpi.store import KpiStore

    cfg, site, err = _load(args)
    if err:
        return _err(err)
    days = _dates(args)
    path = _kpi_db(cfg)
    if not path.exists():
        print("no KPIs stored yet")
        return 0
    store = KpiStore(path)
    try:
        start = periods.day(days[0], site.timezone).start if days else float("-inf")
        end = periods.day(days[-1], site.timezone).end if days else float("inf")
        rows = store.values(site.id, args.kpi, start, end)
    finally:
        store.close()
    if not rows:
        print("no values")
        return 0
    for v in rows:
        judged = {True: "BREACH", False: "ok", None: "not judged"}[v.breached]
        print(f"{v.period_label:24} {v.subject:14} {_fmt(v):>16}  completeness {v.completeness * 100:5.1f} %  {judged}")
    return 0
