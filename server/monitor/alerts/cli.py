"""`greenmine alerts ...`: list and acknowledge alerts, show the email outbox, send a test email, and
add, list and remove maintenance windows.

Works on the alert state file named by the server config (`[alerts] db_path`),
alongside a running server (SQLite WAL; each change is one short transaction).
"""

from __future__ import annotations

import argparse

from greenmine.server.cli import config_arguments, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alerts", help="list and acknowledge alerts, send a test email")
    p.set_defaults(func=lambda a: p.print_help())
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION")

    ls = asub.add_parser("list", help="list open alerts (or all with --all)")
    config_arguments(ls)
    ls.add_argument("--all", action="store_true", help="include resolved alerts")
    ls.add_argument("--site", help="only this site id")
    ls.set_defaults(func=_list)

    ack = asub.add_parser("ack", help="acknowledge an alert: no more reminders")
    ack.add_argument("id", type=int, help="alert id, as shown in emails and by 'alerts list'")
    config_arguments(ack)
    ack.add_argument("--by", default="", help="who acknowledges (recorded)")
    ack.set_defaults(func=_ack)

    ob = asub.add_parser("outbox", help="emails not sent: queued, failed (rejected by the relay) and dead (cannot be built), with the reason")
    config_arguments(ob)
    ob.add_argument("--all", action="store_true", help="include sent emails")
    ob.set_defaults(func=_outbox)

    mt = asub.add_parser("maintenance", help="maintenance windows: alerts that begin inside one are held, not emailed")
    mt.set_defaults(func=lambda a: mt.print_help())
    msub = mt.add_subparsers(dest="maintenance_command", metavar="ACTION")
    ma = msub.add_parser("add", help="add a window for a site, or one device of it")
    config_arguments(ma)
    ma.add_argument("--site", required=True, help="site id")
    ma.add_argument("--device", help="only this device (or agent); absent: the whole site")
    ma.add_argument("--from", dest="start", required=True,
                    help="start, ISO 8601 (2026-12-01T08:00, local time of the site unless it has an offset)")
    ma.add_argument("--to", dest="end", required=True, help="end (exclusive), ISO 8601, as --from")
    ma.add_argument("--reason", required=True, help="why (shown with the alerts it holds)")
    ma.set_defaults(func=_maint_add)
    ml = msub.add_parser("list", help="list current and coming windows (all with --all)")
    config_arguments(ml)
    ml.add_argument("--site", help="only this site id")
    ml.add_argument("--all", action="store_true", help="include past windows")
    ml.set_defaults(func=_maint_list)
    mr = msub.add_parser("remove", help="remove a window added from the command line")
    mr.add_argument("id", type=int, help="window id, as 'alerts maintenance list' shows it")
    config_arguments(mr)
    mr.set_defaults(func=_maint_remove)

    te = asub.add_parser("test-email", help="render a sample alert and send it now through the configured relay")
    config_arguments(te)
    te.add_argument("--to", required=True, help="recipient address")
    te.set_defaults(func=_test_email)


def _engine(args):
    from greenmine.server.monitor.alerts.engine import AlertEngine, open_db

    cfg = load_config(args)
    return cfg, AlertEngine(cfg.alerts, cfg.sites, open_db(cfg.resolve(cfg.alerts.db_path)),
                            default_recipients=cfg.default_recipients)


def _list(args) -> int:
    from greenmine.server.monitor.kpi.periods import fmt_local

    cfg, eng = _engine(args)
    states = ("pending", "firing", "resolved") if args.all else ("pending", "firing")
    rows = eng.alerts(states, site=args.site)
    eng.db.close()
    if not rows:
        print("no alerts")
        return 0
    print(f"{'id':>5}  {'state':9} {'severity':9} {'site':12} {'rule':24} {'subject':14} {'value':>10}  since             ack")
    for a in rows:
        tz = a.facts.get("timezone") or "Asia/Shanghai"
        since = a.facts.get("since_ts") or a.opened_ts
        value = a.facts.get("value")
        vtext = f"{value:.4g} {a.facts.get('unit', '')}" if isinstance(value, (int, float)) else "—"
        held = a.facts.get("held")
        print(f"{a.id:>5}  {a.state:9} {a.severity:9} {a.site:12} {a.rule:24} {a.subject:14} {vtext:>10}  "
              f"{fmt_local(since, tz)}  {a.acked_by or ('yes' if a.acked_ts else '')}"
              + (f"  held: maintenance {held['id']} ({held.get('reason', '')})" if held else ""))
    return 0


def _ack(args) -> int:
    _, eng = _engine(args)
    ok = eng.ack(args.id, by=args.by)
    eng.db.close()
    if not ok:
        print(f"alert {args.id}: no such open, unacknowledged alert")
        return 1
    print(f"alert {args.id} acknowledged")
    return 0


def _outbox(args) -> int:
    from greenmine.server.monitor.alerts.engine import open_db
    from greenmine.server.notify.outbox import outbox_rows
    from greenmine.server.notify.templates import escape

    cfg = load_config(args)
    db = open_db(cfg.resolve(cfg.alerts.db_path))
    rows = outbox_rows(db, None if args.all else ("queued", "failed", "dead"))
    db.close()
    if not rows:
        print("outbox empty" if args.all else "no unsent email")
        return 0
    print(f"{'id':>6}  {'status':7} {'attempts':>8}  {'recipient':28} subject / reason")
    for r in rows:
        print(f"{r.id:>6}  {r.status:7} {r.attempts:>8}  {escape(r.recipient):28} {escape(r.subject[:60])}")
        if r.last_error and r.status != "sent":
            print(f"{'':>6}  {escape(r.last_error)}")
    return 0


def _when(text: str, tz: str, what: str) -> float:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(_fail(f"{what} {text!r}: not an ISO 8601 time, e.g. 2026-12-01T08:00 or "
                               f"2026-12-01T08:00+08:00")) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=ZoneInfo(tz))).timestamp()


def _fail(msg: str) -> int:
    import sys

    print(msg, file=sys.stderr)
    return 2


def _maint_add(args) -> int:
    cfg, eng = _engine(args)
    try:
        site = cfg.site(args.site)
        if site is None:
            return _fail(f'site "{args.site}" is not in {args.config}')
        start, end = _when(args.start, site.timezone, "--from"), _when(args.end, site.timezone, "--to")
        try:
            wid = eng.add_maintenance(site.id, args.device, start, end, args.reason)
        except ValueError as exc:
            return _fail(f"not added: {exc}")
    finally:
        eng.db.close()
    print(f"maintenance window {wid} added: site {site.id}{' device ' + args.device if args.device else ''}, "
          f"{_local(start, site.timezone)} – {_local(end, site.timezone)} ({site.timezone})")
    return 0


def _local(ts: float, tz: str) -> str:
    from greenmine.server.monitor.alerts.maintenance import local

    return local(ts, tz)


def _maint_list(args) -> int:
    import time

    from greenmine.server.notify.templates import escape

    cfg, eng = _engine(args)
    now = time.time()
    rows = eng.maintenance_windows(site=args.site, include_past=args.all, now=now)
    eng.db.close()
    if not rows:
        print("no maintenance windows")
        return 0
    print(f"{'id':>5}  {'site':12} {'device':14} {'from':16}   {'to':16}   {'source':6} {'status':8} reason")
    for w in rows:
        site = cfg.site(w.site)
        tz = site.timezone if site else "Asia/Shanghai"
        status = "past" if w.to_ts <= now else "active" if w.from_ts <= now else "coming"
        print(f"{w.id:>5}  {w.site:12} {w.device or '*':14} {_local(w.from_ts, tz):16} – {_local(w.to_ts, tz):16}   "
              f"{w.source:6} {status:8} {escape(w.reason)}")
    return 0


def _maint_remove(args) -> int:
    _, eng = _engine(args)
    out = eng.remove_maintenance(args.id)
    eng.db.close()
    if out == "missing":
        print(f"maintenance window {args.id}: no such window")
        return 1
    if out == "config":
        print(f"maintenance window {args.id} is set in [[alerts.maintenance]] of {args.config}: remove it there")
        return 1
    print(f"maintenance window {args.id} removed")
    return 0


def _test_email(args) -> int:
    import time

    from greenmine.server.config import Limits
    from greenmine.server.notify.eml import EmlDirTransport
    from greenmine.server.notify.errors import NotifyError
    from greenmine.server.notify.outbox import build_message
    from greenmine.server.notify.templates import Templates

    cfg = load_config(args)
    if cfg.smtp is not None:
        from greenmine.server.notify.smtp import SmtpTransport

        transport = SmtpTransport(cfg.smtp)
    else:
        transport = EmlDirTransport(cfg.resolve(cfg.notify.eml_dir))
    tpl = Templates(cfg.resolve(cfg.notify.templates_dir) if cfg.notify.templates_dir else None)
    site = cfg.sites[0] if cfg.sites else None
    limits = site.limits if site else Limits()
    now = time.time()
    facts = {
        "kind": "threshold", "alert_id": 0, "severity": "info", "site_id": site.id if site else "test",
        "site_name": (site.name or site.id) if site else "test", "title_zh": "测试邮件", "title_en": "test email",
        "value": 80.0, "unit": "%", "limit": limits.water_reuse_min_pct, "comparison": "<",
        "standard": limits.water_reuse_standard.format(limit=limits.water_reuse_min_pct),
        "period_label": "test", "devices": ["test"], "completeness_pct": 100.0, "since_ts": now,
        "resolves_zh": "无需处理(测试)", "resolves_en": "nothing to do (test)", "timezone": site.timezone if site else "Asia/Shanghai",
    }
    try:
        subject, body = tpl.notice("firing", facts)
        msg = build_message(transport.sender, args.to, "[TEST] " + subject, body, f"<greenmine.test.{now:.0f}@greenmine>", now)
        transport.send(msg)
    except NotifyError as exc:
        print(f"not sent: {exc}")
        return 1
    print(f"sent to {args.to}" + ("" if cfg.smtp else f" (written to {cfg.resolve(cfg.notify.eml_dir)})"))
    return 0
