"""`greenmine supervision ...` (the registry, draws, checks, rectifications) and `greenmine report ...`.

Both work on the files named by the server config: the registry (`[supervision] db_path`), and, for
evidence, the monitor's KPI store and alert state (what `greenmine kpi show` and `alerts list` read).
Dates are local dates, YYYY-MM-DD; `--date` defaults to today in China Standard Time (Asia/Shanghai).
"""

from __future__ import annotations

import argparse
import sys

from greenmine.server.cli import config_arguments, load_config


def _err(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2


def _date(text: str):
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _today():
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo("Asia/Shanghai")).date()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("supervision", help="green-mine list, spot-check draws, checks and rectifications",
                       description="The supervision database: mines and their list status (with history), "
                       "random spot checks (双随机), rectifications (限期整改) and removals. See docs/supervision.md.")
    p.set_defaults(func=lambda a: p.print_help())
    s = p.add_subparsers(dest="supervision_command", metavar="ACTION")

    def cmd(name, func, help_, **kw):
        c = s.add_parser(name, help=help_, **kw)
        config_arguments(c)
        c.set_defaults(func=func)
        return c

    c = cmd("mines", _mines, "list the registry's mines and their list status")
    c.add_argument("--prefecture", help="only this prefecture (市州)")
    c.add_argument("--json", action="store_true", help="print JSON")

    c = cmd("import", _import, "import mines from CSV or XLSX: every row is checked first; one bad row imports none")
    c.add_argument("file", help="a .csv (UTF-8) or .xlsx file; the header row names the columns (docs/supervision.md)")
    c.add_argument("--date", type=_date, help="the date of the import, for the history (default: today)")

    c = cmd("history", _history, "a mine's list history: every change of status or level, when and why")
    c.add_argument("mine", help="mine id")

    c = cmd("draw", _draw, "draw mines and inspectors at random (双随机); the seed and both pools are recorded")
    c.add_argument("--prefecture", required=True, help="prefecture whose listed mines are drawn from")
    c.add_argument("--mines", type=int, required=True, help="how many mines to draw")
    c.add_argument("--inspectors", type=int, required=True, help="how many inspectors to draw")
    c.add_argument("--seed", help="the seed (default: a new random one); with the same pools, the same seed gives the same draw")
    c.add_argument("--date", type=_date, help="the draw's date, which fixes the pool (default: today)")
    c.add_argument("--by", default="", help="who draws (recorded)")
    c.add_argument("--dry-run", action="store_true", help="show the draw, record nothing")

    c = cmd("draws", _draws, "list recorded draws, or re-run one from its recorded seed and pools (--verify ID)")
    c.add_argument("--prefecture", help="only this prefecture")
    c.add_argument("--verify", type=int, metavar="ID", help="re-run draw ID and compare with what was recorded")

    c = cmd("checks", _checks, "list spot checks and their results")
    c.add_argument("--mine", help="only this mine")

    c = cmd("check", _check, "record a check's date, findings and result; a failed one opens a rectification")
    c.add_argument("id", type=int, help="check id (from 'supervision checks'); or 0 with --mine for a check outside a draw")
    c.add_argument("--mine", help="with id 0: the mine checked")
    c.add_argument("--date", type=_date, help="date of the check (default: today)")
    c.add_argument("--result", choices=("pass", "fail"), required=True, help="pass | fail")
    c.add_argument("--findings", default="", help="what was found")
    c.add_argument("--inspectors", help="comma-separated inspector ids, if not the draw's")
    c.add_argument("--deadline", type=_date, help="fail: the rectification's deadline (default: date + supervision.rectification_days)")
    c.add_argument("--officer", default="", help="fail: email of the officer responsible for the rectification")
    c.add_argument("--by", default="", help="who records (kept in the history)")

    c = cmd("rectifications", _rects, "list rectifications: open, overdue, closed")
    c.add_argument("--mine", help="only this mine")

    r = s.add_parser("rectification", help="close a rectification")
    r.set_defaults(func=lambda a: r.print_help())
    rs = r.add_subparsers(dest="rect_command", metavar="ACTION")
    c = rs.add_parser("close", help="passed: the mine is listed again; failed or lapsed: it may be removed")
    config_arguments(c)
    c.add_argument("id", type=int, help="rectification id")
    c.add_argument("--result", choices=("passed", "failed", "lapsed"), required=True, help="passed | failed | lapsed")
    c.add_argument("--date", type=_date, help="date (default: today)")
    c.add_argument("--note", default="", help="what was verified")
    c.add_argument("--by", default="", help="who closes it")
    c.set_defaults(func=_rect_close)

    c = cmd("remove", _remove, "remove a mine from the list after its rectification failed or lapsed (kept in the history)")
    c.add_argument("mine", help="mine id")
    c.add_argument("--reason", required=True, help="why (announced with the removal)")
    c.add_argument("--date", type=_date, help="date (default: today)")
    c.add_argument("--by", default="", help="who removes it")

    c = cmd("check-overdue", _overdue, "raise one notice per rectification past its deadline now (a running monitor does it hourly: supervision.overdue_check_s)")
    c.add_argument("--date", type=_date, help="the day judged (default: today)")

    c = cmd("export-list", _export, "the public green-mine list (名录) as CSV or JSON, published fields only")
    c.add_argument("--prefecture", help="only this prefecture")
    c.add_argument("--date", type=_date, help="the list on this date (default: today)")
    c.add_argument("--format", choices=("csv", "json"), default="csv", help="csv (default) or json")
    c.add_argument("--out", help="write to this file (default: standard output)")

    rp = sub.add_parser("report", help="monthly site and annual prefecture reports (XLSX, PDF, JSON)",
                        description="Reports from the supervision database and the monitor's evidence. See docs/supervision.md.")
    rp.set_defaults(func=lambda a: rp.print_help())
    rsub = rp.add_subparsers(dest="report_command", metavar="REPORT")
    m = rsub.add_parser("monthly", help="one site's month: evidence, daily tables and charts, alerts, counter events")
    config_arguments(m)
    m.add_argument("--site", required=True, help="site (mine) id")
    m.add_argument("--month", required=True, help="YYYY-MM")
    _out_args(m)
    m.set_defaults(func=_monthly)
    a = rsub.add_parser("annual", help="a prefecture's year, the report due before 10 December")
    config_arguments(a)
    a.add_argument("--prefecture", required=True, help="prefecture (市州), e.g. 金昌市")
    a.add_argument("--year", type=int, required=True, help="year, e.g. 2026")
    a.add_argument("--until", type=_date, help="data up to this date, for a year still running (default: the year's end or today)")
    _out_args(a)
    a.set_defaults(func=_annual)


def _out_args(p) -> None:
    p.add_argument("--format", action="append", choices=("xlsx", "pdf", "json"),
                   help="output format; repeat for several (default: all three)")
    p.add_argument("--out-dir", help="folder for the files (default: supervision.report_dir)")


def _reg(args, cfg=None):
    from greenmine.server.supervision.registry import open_registry

    cfg = cfg or load_config(args)
    return cfg, open_registry(cfg, _today())


def _mines(args) -> int:
    import json

    cfg, reg = _reg(args)
    try:
        mines = reg.mines(args.prefecture)
    finally:
        reg.close()
    if args.json:
        print(json.dumps([m.as_dict() for m in mines], ensure_ascii=False, indent=2))
        return 0
    if not mines:
        print("no mines in the registry (configure [[supervision.mines]] or run 'supervision import')")
        return 0
    monitored = {s.id for s in cfg.sites}
    for m in mines:
        print(f"{m.id:20} {m.prefecture}/{m.county:8} {m.scale} {m.level:10} {m.status:20} "
              f"{'monitored' if m.id in monitored else 'not monitored':13} {m.name}")
    return 0


def _import(args) -> int:
    from greenmine.server.supervision.imports import MineImportError, read_mines
    from greenmine.server.supervision.registry import RegistryError

    try:
        mines = read_mines(args.file)
    except MineImportError as exc:
        return _err(str(exc))
    except OSError as exc:
        return _err(f"{args.file}: {exc}")
    cfg, reg = _reg(args)
    try:
        n = reg.import_rows(mines, f"import {args.file}", args.date or _today())
    except RegistryError as exc:
        return _err(f"{args.file}: nothing imported: {exc}")
    finally:
        reg.close()
    print(f"imported {n} mine(s) from {args.file}")
    return 0


def _history(args) -> int:
    _, reg = _reg(args)
    try:
        rows = reg.history(args.mine)
    finally:
        reg.close()
    if not rows:
        return _err(f'no mine "{args.mine}" in the registry')
    for h in rows:
        print(f"{h.day}  {h.prev_status or '—'} -> {h.status} ({h.prev_level or '—'} -> {h.level})  {h.reason}  [{h.by}]")
    return 0


def _pools(cfg, reg, prefecture, day):
    mines = reg.pool(prefecture, day)
    inspectors = sorted(i.id for i in cfg.supervision.inspectors if i.prefecture in ("", prefecture))
    return mines, inspectors


def _draw(args) -> int:
    from greenmine.server.supervision import draw

    cfg, reg = _reg(args)
    try:
        day = args.date or _today()
        pool, inspectors = _pools(cfg, reg, args.prefecture, day)
        seed = args.seed or draw.new_seed()
        try:
            mines, team = draw.run(seed, pool, inspectors, args.mines, args.inspectors)
        except draw.DrawError as exc:
            return _err(f"draw {args.prefecture} on {day}: {exc} (mines on the list: {len(pool)}, inspectors: {len(inspectors)})")
        did = None
        if not args.dry_run:
            did = reg.save_draw(day=day, prefecture=args.prefecture, seed=seed, mine_pool=pool, inspector_pool=inspectors,
                                mines=mines, inspectors=team, method=draw.METHOD, by=args.by)
        checks = [c for c in reg.checks() if c.draw_id == did] if did else []
    finally:
        reg.close()
    print(f"draw {did if did else '(dry run)'} {args.prefecture} {day}: seed {seed}")
    print(f"  method: {draw.METHOD}")
    print(f"  mine pool ({len(pool)}): {', '.join(pool)}")
    print(f"  inspector pool ({len(inspectors)}): {', '.join(inspectors)}")
    print(f"  mines drawn: {', '.join(mines)}")
    print(f"  inspectors drawn: {', '.join(team)}")
    for c in checks:
        print(f"  check {c.id}: {c.mine_id}")
    return 0


def _draws(args) -> int:
    from greenmine.server.supervision import draw

    _, reg = _reg(args)
    try:
        rows = reg.draws(args.prefecture)
    finally:
        reg.close()
    if args.verify is not None:
        d = next((x for x in rows if x["id"] == args.verify), None)
        if d is None:
            return _err(f"no draw {args.verify}")
        mines, team = draw.run(d["seed"], d["mine_pool"], d["inspector_pool"], d["n_mines"], d["n_inspectors"])
        same = mines == d["mines"] and team == d["inspectors"]
        print(f"draw {d['id']}: re-run from seed {d['seed']}: mines {', '.join(mines)}; inspectors {', '.join(team)}: "
              + ("the same as recorded" if same else "DIFFERENT from the record"))
        return 0 if same else 1
    for d in rows:
        print(f"draw {d['id']} {d['day']} {d['prefecture']} seed {d['seed']}: mines {', '.join(d['mines'])}; "
              f"inspectors {', '.join(d['inspectors'])} (pools {len(d['mine_pool'])}/{len(d['inspector_pool'])})")
    if not rows:
        print("no draws")
    return 0


def _checks(args) -> int:
    _, reg = _reg(args)
    try:
        rows = reg.checks(args.mine)
    finally:
        reg.close()
    for c in rows:
        print(f"check {c.id} (draw {c.draw_id or '—'}) {c.mine_id}: planned {c.planned_day}, done {c.day or '—'}, "
              f"{c.result}; inspectors {', '.join(c.inspectors)}{'; ' + c.findings if c.findings else ''}")
    if not rows:
        print("no checks")
    return 0


def _check(args) -> int:
    from datetime import timedelta

    from greenmine.server.supervision.registry import RegistryError

    cfg, reg = _reg(args)
    try:
        day = args.date or _today()
        team = [x.strip() for x in args.inspectors.split(",") if x.strip()] if args.inspectors else None
        known = {i.id for i in cfg.supervision.inspectors}
        if team and set(team) - known:
            return _err(f"unknown inspector(s): {', '.join(sorted(set(team) - known))}")
        if team and len(set(team)) != len(team):
            return _err("an inspector is named twice")
        cid = args.id
        if cid == 0:
            if not args.mine:
                return _err("check 0 needs --mine")
            cid = reg.add_check(args.mine, day, team or [])
        deadline = args.deadline or day + timedelta(days=cfg.supervision.rectification_days)
        rid = reg.record_check(cid, day=day, result=args.result, findings=args.findings, deadline=deadline,
                               officer=args.officer, by=args.by, inspectors=team)
    except RegistryError as exc:
        return _err(str(exc))
    finally:
        reg.close()
    print(f"check {cid}: {args.result}" + (f"; rectification {rid} opened, due {deadline}" if rid else ""))
    return 0


def _rects(args) -> int:
    _, reg = _reg(args)
    try:
        rows = reg.rectifications(args.mine)
    finally:
        reg.close()
    today = _today()
    for r in rows:
        late = " OVERDUE" if r.status == "open" and r.overdue_on(today) else ""
        print(f"rectification {r.id} {r.mine_id} (check {r.check_id or '—'}): opened {r.opened}, due {r.deadline}, "
              f"{r.status}{late}{', closed ' + r.closed if r.closed else ''}"
              f"{', officer told' if r.overdue_alert_ts else ''}{'; ' + r.note if r.note else ''}")
    if not rows:
        print("no rectifications")
    return 0


def _rect_close(args) -> int:
    from greenmine.server.supervision.registry import RegistryError

    _, reg = _reg(args)
    try:
        reg.close_rectification(args.id, result=args.result, day=args.date or _today(), note=args.note, by=args.by)
    except RegistryError as exc:
        return _err(str(exc))
    finally:
        reg.close()
    print(f"rectification {args.id}: {args.result}")
    return 0


def _remove(args) -> int:
    from greenmine.server.supervision.registry import RegistryError

    _, reg = _reg(args)
    try:
        reg.remove(args.mine, day=args.date or _today(), reason=args.reason, by=args.by)
    except RegistryError as exc:
        return _err(str(exc))
    finally:
        reg.close()
    print(f"{args.mine}: removed from the list")
    return 0


def notifier_for(cfg, clock=None):
    """The server's notifier on its alert state file (the email outbox), with its configured transport."""
    import time

    from greenmine.server.monitor.alerts.engine import open_db
    from greenmine.server.notify.eml import EmlDirTransport
    from greenmine.server.notify.outbox import Notifier

    if cfg.smtp is not None:
        from greenmine.server.notify.smtp import SmtpTransport

        transport = SmtpTransport(cfg.smtp)
    else:
        transport = EmlDirTransport(cfg.resolve(cfg.notify.eml_dir))
    path = cfg.resolve(cfg.alerts.db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Notifier(cfg.notify, open_db(path), transport, clock=clock or time.time)


def _overdue(args) -> int:
    import time

    from greenmine.server.supervision import overdue

    cfg, reg = _reg(args)
    notifier = notifier_for(cfg)
    try:
        now = time.time()
        raised = overdue.check(cfg, reg, notifier, args.date or _today(), now)
        sent = notifier.deliver(now)
    finally:
        notifier.db.close()
        reg.close()
    print(f"{len(raised)} overdue rectification(s) raised" + (f": {', '.join(map(str, raised))}" if raised else "")
          + f"; {sent} email(s) sent")
    return 0


def _export(args) -> int:
    import csv
    import io
    import json

    from greenmine.server.supervision.reports import PUBLIC_FIELDS, public_list

    _, reg = _reg(args)
    try:
        rows = public_list(reg, args.prefecture, args.date or _today())
    finally:
        reg.close()
    if args.format == "json":
        text = json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(PUBLIC_FIELDS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    if args.out:
        with open(args.out, "w", encoding="utf-8-sig" if args.format == "csv" else "utf-8") as f:
            f.write(text)
        print(f"{len(rows)} mine(s) written to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _write(cfg, args, report: dict, stem: str) -> int:
    from pathlib import Path

    from greenmine.server.supervision.render import RenderError, write

    out = Path(args.out_dir) if args.out_dir else cfg.resolve(cfg.supervision.report_dir)
    try:
        paths = write(report, out, stem, args.format or ["xlsx", "pdf", "json"])
    except RenderError as exc:
        return _err(f"report not written: {exc}")
    for p in paths:
        print(p)
    return 0


def _monthly(args) -> int:
    from greenmine.server.supervision.evidence import Sources
    from greenmine.server.supervision.reports import monthly

    try:
        year, month = (int(x) for x in args.month.split("-"))
        if not 1 <= month <= 12:
            raise ValueError
    except ValueError:
        return _err(f"--month {args.month!r}: write YYYY-MM, e.g. 2026-11")
    cfg, reg = _reg(args)
    if cfg.site(args.site) is None and reg.mine(args.site) is None:
        reg.close()
        return _err(f'"{args.site}" is neither a site of {args.config} nor a mine in the registry')
    src = Sources.open(cfg)
    try:
        report = monthly(cfg, src, reg, args.site, year, month)
    finally:
        src.close()
        reg.close()
    return _write(cfg, args, report, f"monthly-{args.site}-{year:04d}-{month:02d}")


def _annual(args) -> int:
    from greenmine.server.supervision.evidence import Sources
    from greenmine.server.supervision.reports import annual

    cfg, reg = _reg(args)
    src = Sources.open(cfg)
    try:
        until = args.until
        if until is None and args.year == _today().year:
            until = _today()
        report = annual(cfg, src, reg, args.prefecture, args.year, until)
    except ValueError as exc:
        return _err(str(exc))
    finally:
        src.close()
        reg.close()
    return _write(cfg, args, report, f"annual-{args.prefecture}-{args.year}")
