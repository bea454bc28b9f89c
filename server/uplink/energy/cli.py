"""`greenmine energy ...`: the operator's tools for the energy-platform uplink.

    energy status   --config FILE                                  per centre: queue depth, oldest unsent, last ack, last error
    energy preview  --config FILE --site S --period 2026-11-30     the exact JSON that would be sent (before and after SM4)
    energy resend   --config FILE --site S --from D [--to D]       queue the stored records of those days again
    energy register --config FILE --site S                         register (variant A) / get a token (B) now

They read and write the energy role's state file (`energy.state_dir`); `resend` and
`register` take effect in a running role at its next send. Imports only argparse at load.
"""

from __future__ import annotations

import argparse
import sys

from greenmine.server.cli import config_arguments, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("energy", help="energy-platform uplink: status, preview, resend, register",
                       description="Tools for the provincial energy-consumption platform uplink (docs/energy-platform.md).")
    p.set_defaults(func=lambda a: p.print_help())
    esub = p.add_subparsers(dest="energy_command", metavar="ACTION")

    st = esub.add_parser("status", help="per data centre: queue depth, age of the oldest unsent record, last ack, last error")
    config_arguments(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_status)

    pv = esub.add_parser("preview", help="print the exact JSON that would be sent for one period, before and after encryption",
                         epilog="--period 2026-11-30 (a day), 2026-11 (a month), 2026 (a year) or 2026-11-30T08:15 (a real-time slot)")
    config_arguments(pv)
    pv.add_argument("--site", required=True, help="site id")
    pv.add_argument("--period", required=True, metavar="P", help="YYYY-MM-DD, YYYY-MM, YYYY or YYYY-MM-DDTHH:MM (site-local)")
    pv.add_argument("--centre", help="only this data centre")
    pv.set_defaults(func=_preview)

    rs = esub.add_parser("resend", help="queue the stored records of local days FROM..TO again, for every centre")
    config_arguments(rs)
    rs.add_argument("--site", required=True, help="site id")
    rs.add_argument("--from", dest="start", required=True, help="first local date, YYYY-MM-DD")
    rs.add_argument("--to", dest="end", help="last local date, YYYY-MM-DD (default: --from)")
    rs.add_argument("--centre", help="only this data centre")
    rs.set_defaults(func=_resend)

    rg = esub.add_parser("register", help="register with each centre now (variant A) or get a token (variant B)")
    config_arguments(rg)
    rg.add_argument("--site", required=True, help="site id")
    rg.add_argument("--centre", help="only this data centre")
    rg.set_defaults(func=_register)


def _fail(msg: str, code: int = 2) -> int:
    print(f"greenmine energy: {msg}", file=sys.stderr)
    return code


def _setup(args, *, need_site: bool = True):
    cfg = load_config(args)
    e = cfg.energy
    if not e.enabled:
        raise SystemExit(_fail("no [energy] centres and enterprises in this config"))
    ent = None
    if need_site:
        ent = next((x for x in e.enterprises if x.site == args.site), None)
        if ent is None:
            raise SystemExit(_fail(f"site {args.site!r} has no [[energy.enterprises]] entry"))
    centres = [c.name for c in e.centres]
    if getattr(args, "centre", None):
        if args.centre not in centres:
            raise SystemExit(_fail(f"no centre {args.centre!r}; configured: {', '.join(centres)}"))
        centres = [args.centre]
    return cfg, ent, centres


def _state(cfg):
    from greenmine.server.uplink.energy.queue import EnergyState
    from greenmine.server.uplink.energy.service import state_paths

    path = state_paths(cfg)[0]
    if not path.exists():
        raise SystemExit(_fail(f"no energy state at {path} (the energy role has not run with this config yet)", 1))
    return EnergyState(path)


def _status(args) -> int:
    import json
    import time

    from greenmine.server.uplink.energy.service import status_doc

    cfg, _, centres = _setup(args, need_site=False)
    state = _state(cfg)
    try:
        doc = status_doc(state, centres, time.time())
    finally:
        state.close()
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    for name, s in doc["centres"].items():
        print(f"centre {name}: {s['queue_depth']} queued (oldest {s['oldest_unsent_age_s']:g} s), {s['acked']} acked, "
              f"{s['rejected']} rejected; last ack {s['last_ack'] or 'never'}"
              + (f"; last error {s['last_error_at']}: {s['last_error']}" if s["last_error"] else ""))
    for ev in doc["events"]:
        print(f"  {ev['at']} {ev['site']} {ev['kind']}: {ev['detail']}")
    return 0


def _period(text: str, tz: str, interval_s: int):
    from datetime import date, datetime
    from zoneinfo import ZoneInfo

    from greenmine.server.monitor.kpi import periods
    from greenmine.server.monitor.kpi.periods import Period
    from greenmine.server.uplink.energy.config import StatType

    try:
        if "T" in text:
            lt = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))
            if (lt.minute * 60) % interval_s or lt.second:
                raise ValueError(f"a real-time slot starts on a multiple of {interval_s // 60} minutes")
            start = lt.timestamp()
            return StatType.REALTIME, Period("slot", start, start + interval_s, lt.strftime("%Y-%m-%d %H:%M"))
        if len(text) == 4:
            return StatType.YEAR, periods.year(int(text), tz)
        if len(text) == 7:
            y, m = (int(x) for x in text.split("-"))
            return StatType.MONTH, periods.month(y, m, tz)
        return StatType.DAY, periods.day(date.fromisoformat(text), tz)
    except ValueError as exc:
        raise SystemExit(_fail(f"--period {text!r}: {exc}")) from None


def _preview(args) -> int:
    import json

    from greenmine.server.store.replica import SeriesReplica
    from greenmine.server.uplink.energy.service import EnergyService

    cfg, ent, centres = _setup(args)
    replica = SeriesReplica(cfg.resolve(cfg.energy.replica_path))
    try:
        svc = EnergyService(cfg, replica)
    except ValueError as exc:
        replica.close()
        return _fail(str(exc))
    try:
        stat, period = _period(args.period, svc.tz(ent.site), svc.interval_s)
        items, events = svc.build(ent, stat, period)
        now = svc.clock()
        for c in centres:
            client = svc.clients[c]
            creds = svc.state.credentials(f"{c}/{ent.enterprise_code}") or {}
            records = [r for r, to in items if c in to]
            print(f"# centre {c} ({client.profile.name}, variant {client.profile.variant}), {stat.value} {period.label}: "
                  f"{len(records)} record(s)" + ("" if creds else "; not registered yet: device id and key are placeholders"))
            plain = client.body(ent, creds, records, now, encrypt=False)
            print(json.dumps(plain, ensure_ascii=False, indent=2))
            if client.profile.encryption != "none":
                if creds.get("secret_key") or client.centre.secret_key:
                    key = creds.get("secret_key") or client.centre.secret_key.get_secret_value()
                    print(f"# after {client.profile.encryption}:")
                    print(json.dumps(client.body(ent, {**creds, "secret_key": key}, records, now), ensure_ascii=False, indent=2))
                else:
                    print(f"# after {client.profile.encryption}: no secret key yet (run `greenmine energy register`)")
        for kind, detail in events:
            print(f"# {kind}: {detail}")
    finally:
        svc.kpi_store.close()
        svc.state.close()
        replica.close()
    return 0


def _resend(args) -> int:
    from datetime import date

    from greenmine.server.monitor.kpi import periods

    cfg, ent, centres = _setup(args)
    tz = next((s.timezone for s in cfg.sites if s.id == ent.site), "Asia/Shanghai")
    try:
        first = date.fromisoformat(args.start)
        last = date.fromisoformat(args.end) if args.end else first
    except ValueError as exc:
        return _fail(f"--from/--to: {exc}")
    if last < first:
        return _fail("--to is before --from")
    state = _state(cfg)
    try:
        n = state.requeue(ent.site, periods.day(first, tz).start, periods.day(last, tz).end, centres)
    finally:
        state.close()
    print(f"queued {n} record(s) of {ent.site} {first}..{last} again for {', '.join(centres)}")
    return 0 if n else 1


def _register(args) -> int:
    from greenmine.server.uplink.energy.client import EnergyError
    from greenmine.server.uplink.energy.queue import EnergyState
    from greenmine.server.uplink.energy.service import load_profiles, state_paths
    from greenmine.server.uplink.energy.client import CentreClient

    cfg, ent, centres = _setup(args)
    try:
        profiles = load_profiles(cfg)
    except ValueError as exc:
        return _fail(str(exc))
    state = EnergyState(state_paths(cfg)[0])
    rc = 0
    try:
        for c in cfg.energy.centres:
            if c.name not in centres:
                continue
            client = CentreClient(c, profiles[c.name], resolve=cfg.resolve)
            try:
                creds = client.register(ent)
            except EnergyError as exc:
                print(f"centre {c.name}: {exc}", file=sys.stderr)
                rc = 1
                continue
            state.set_credentials(f"{c.name}/{ent.enterprise_code}", creds)
            shown = {k: ("***" if k in ("secret_key", "token") and v else v) for k, v in creds.items()}
            print(f"centre {c.name}: {shown}")
    finally:
        state.close()
    return rc
