"""`greenmine alerts ...`: list and acknowledge alerts, show the email outbox, send a test email.

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
        print(f"{a.id:>5}  {a.state:9} {a.severity:9} {a.site:12} {a.rule:24} {a.subject:14} {vtext:>10}  "
              f"{fmt_local(since, tz)}  {a.acked_by or ('yes' if a.acked_ts else '')}")
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
