"""`greenmine users ...`: the console's users and API tokens, in the server's users database ([web] users_db).

    users add NAME --role officer|operator|viewer [--sites A,B] [--password-stdin | --generate]
    users list | passwd NAME | disable NAME | enable NAME | sites NAME A,B
    users token create NAME [--label TEXT] | token list | token revoke ID
    users audit [--target alert:17]

There is no default user or password: the first one is made here. Every change is audited.
"""

from __future__ import annotations

import argparse
import sys

from greenmine.server.cli import config_arguments, load_config


def _password_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password-stdin", action="store_true", help="read the password from the first line of standard input")
    g.add_argument("--generate", action="store_true", help="make a random password and print it once")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="console users and API tokens (the server's users database)",
                       description="Manage the officers' console users and API tokens. Roles: officer (assigned sites, "
                       "acknowledges), operator (every site, acknowledges, maintenance and settings), viewer (read only). "
                       "There is no default user: create the first with 'users add NAME --role operator'.")
    p.set_defaults(func=lambda a: p.print_help())
    us = p.add_subparsers(dest="users_command", metavar="ACTION")

    add = us.add_parser("add", help="create a user (asks for the password unless --password-stdin or --generate)")
    add.add_argument("name")
    config_arguments(add, instance=False)
    add.add_argument("--role", required=True, choices=("officer", "operator", "viewer"))
    add.add_argument("--sites", default="", metavar="A,B", help="assigned site ids (officers see only these; a viewer with none sees all)")
    _password_args(add)
    add.set_defaults(func=_add)

    ls = us.add_parser("list", help="list users")
    config_arguments(ls, instance=False)
    ls.set_defaults(func=_list)

    pw = us.add_parser("passwd", help="set a user's password (ends the user's sessions)")
    pw.add_argument("name")
    config_arguments(pw, instance=False)
    _password_args(pw)
    pw.set_defaults(func=_passwd)

    for name, disabled, help_ in (("disable", True, "disable a user: sessions end, tokens are revoked"),
                                  ("enable", False, "enable a disabled user again")):
        d = us.add_parser(name, help=help_)
        d.add_argument("name")
        config_arguments(d, instance=False)
        d.set_defaults(func=_disable, disabled=disabled)

    st = us.add_parser("sites", help="set the sites assigned to a user")
    st.add_argument("name")
    st.add_argument("sites", metavar="A,B", help="site ids, comma-separated ('' for none)")
    config_arguments(st, instance=False)
    st.set_defaults(func=_sites)

    tok = us.add_parser("token", help="API tokens for scripts (same roles as their user)")
    tok.set_defaults(func=lambda a: tok.print_help())
    ts = tok.add_subparsers(dest="token_command", metavar="ACTION")
    tc = ts.add_parser("create", help="create a token for a user and print it once")
    tc.add_argument("name")
    tc.add_argument("--label", default="", help="what the token is for")
    config_arguments(tc, instance=False)
    tc.set_defaults(func=_token_create)
    tl = ts.add_parser("list", help="list tokens (never their values)")
    config_arguments(tl, instance=False)
    tl.set_defaults(func=_token_list)
    tr = ts.add_parser("revoke", help="revoke a token by id")
    tr.add_argument("id", type=int)
    config_arguments(tr, instance=False)
    tr.set_defaults(func=_token_revoke)

    au = us.add_parser("audit", help="the audit log: acknowledgements, logins, user and setting changes")
    config_arguments(au, instance=False)
    au.add_argument("--target", help="only this target, e.g. alert:17 or user:wang")
    au.add_argument("--limit", type=int, default=50)
    au.set_defaults(func=_audit)


def _db(args):
    from greenmine.server.web.config import web_config
    from greenmine.server.web.users import UserDb

    cfg = load_config(args)
    return cfg, UserDb(cfg.resolve(web_config(cfg).users_db))


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001
        return "cli"


def _password(args) -> tuple[str, bool]:
    """(password, generated)."""
    import getpass
    import secrets

    if args.generate:
        return secrets.token_urlsafe(12), True
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    a = getpass.getpass("password: ")
    if a != getpass.getpass("again: "):
        raise SystemExit("greenmine users: the passwords differ")
    return a, False


def _run(fn):
    from greenmine.server.web.users import UserError

    try:
        return fn()
    except UserError as exc:
        print(f"greenmine users: {exc}", file=sys.stderr)
        return 1


def _add(args) -> int:
    cfg, db = _db(args)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    unknown = [s for s in sites if cfg.site(s) is None]
    if unknown:
        print(f"greenmine users: --sites names sites that are not configured: {', '.join(unknown)}", file=sys.stderr)
        return 2

    def go():
        pw, generated = _password(args)
        u = db.add(args.name, args.role, pw, sites=sites, by=_actor())
        print(f"user {u.name} ({u.role}) created" + (f"; sites {', '.join(sorted(u.sites))}" if u.sites else ""))
        if generated:
            print(f"password: {pw}")
        return 0

    try:
        return _run(go)
    finally:
        db.close()


def _list(args) -> int:
    _, db = _db(args)
    try:
        users = db.users()
    finally:
        db.close()
    if not users:
        print("no users: create the first with 'greenmine users add NAME --role operator --config FILE'")
        return 0
    for u in users:
        sites = ", ".join(sorted(u.sites)) or ("all sites" if u.all_sites else "no site")
        print(f"{u.name:20} {u.role:9} {'disabled' if u.disabled else 'enabled ':9} {sites}")
    return 0


def _passwd(args) -> int:
    _, db = _db(args)

    def go():
        pw, generated = _password(args)
        db.set_password(args.name, pw, by=_actor())
        print(f"password of {args.name} set; their sessions have ended" + (f"\npassword: {pw}" if generated else ""))
        return 0

    try:
        return _run(go)
    finally:
        db.close()


def _disable(args) -> int:
    _, db = _db(args)
    try:
        return _run(lambda: (db.set_disabled(args.name, args.disabled, by=_actor()),
                             print(f"user {args.name} {'disabled' if args.disabled else 'enabled'}"))[0] or 0)
    finally:
        db.close()


def _sites(args) -> int:
    cfg, db = _db(args)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    unknown = [s for s in sites if cfg.site(s) is None]
    try:
        if unknown:
            print(f"greenmine users: sites not configured: {', '.join(unknown)}", file=sys.stderr)
            return 2
        return _run(lambda: (db.set_sites(args.name, sites, by=_actor()), print(f"user {args.name}: sites {', '.join(sites) or 'none'}"))[0] or 0)
    finally:
        db.close()


def _token_create(args) -> int:
    _, db = _db(args)

    def go():
        tid, token = db.create_token(args.name, args.label, by=_actor())
        print(f"token {tid} for {args.name} (shown once; send it as 'Authorization: Bearer <token>'):\n{token}")
        return 0

    try:
        return _run(go)
    finally:
        db.close()


def _ts(ts) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else "never"


def _token_list(args) -> int:
    _, db = _db(args)
    try:
        rows = db.tokens()
    finally:
        db.close()
    for tid, user, label, created, used, revoked in rows:
        print(f"{tid:>4}  {user:20} {'revoked' if revoked else 'active ':8} created {_ts(created)}  last used {_ts(used)}  {label}")
    if not rows:
        print("no tokens")
    return 0


def _token_revoke(args) -> int:
    _, db = _db(args)
    try:
        return _run(lambda: (db.revoke_token(args.id, by=_actor()), print(f"token {args.id} revoked"))[0] or 0)
    finally:
        db.close()


def _audit(args) -> int:
    _, db = _db(args)
    try:
        rows = db.audit_log(args.target, args.limit)
    finally:
        db.close()
    import json

    for e in rows:
        print(f"{_ts(e.ts)}  {e.user:16} {e.action:14} {e.target:20} {json.dumps(e.detail, ensure_ascii=False)}")
    if not rows:
        print("no entries")
    return 0
