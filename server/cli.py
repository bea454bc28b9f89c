"""`greenmine server ...` subcommands.

    server run --config FILE [--role R] [--instance NAME] [--sites A,B | --partition I/N] [--http-port N] [--mqtt-port N]
                                        run roles (ingest, monitor, uplink, energy, web; default all) until SIGTERM
    server status --config FILE         spool depth, dead letters by reason, agents (from the spool file)
    server dead-letters --config FILE   the newest rejected messages, with reason and payload
"""
import argparse
import sys


def config_arguments(p: argparse.ArgumentParser, *, instance: bool = True) -> None:
    """--config, and --instance for the tools that read one process's state files (`load_config`)."""
    p.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
    if instance:
        p.add_argument("--instance", metavar="NAME",
                       help="the server process's --instance, if it runs with one (its state files end in -NAME)")


def load_config(args):
    """The server config named by --config, for --instance if given. A bad config exits 2, naming the problem."""
    from greenmine.configfile import ConfigError
    from greenmine.server.config import load_server_config

    try:
        cfg = load_server_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None
    return cfg.for_instance(getattr(args, "instance", None))


def _run(args) -> int:
    cfg = load_config(args)
    from greenmine.server.app import ROLES, run
    from greenmine.server.errors import ServerError

    args.role = args.role or ["all"]
    roles = ROLES if "all" in args.role else tuple(dict.fromkeys(args.role))
    from greenmine.ports import PortError, port_override

    try:
        http_port = port_override("--http-port", args.http_port, "GREENMINE_HTTP_PORT")
        mqtt_port = port_override("--mqtt-port", args.mqtt_port, "GREENMINE_MQTT_PORT", minimum=1)
    except PortError as exc:
        print(f"greenmine server: {exc}", file=sys.stderr)
        return 2
    if http_port is not None:
        cfg = cfg.model_copy(update={"http_port": http_port})
    if mqtt_port is not None:
        cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"port": mqtt_port})})
    if "web" in args.role and cfg.web is None:  # asked for by name: the console with the [web] defaults
        from greenmine.server.web.config import WebConfig

        cfg = cfg.model_copy(update={"web": WebConfig()})
    sites = [s.strip() for s in args.sites.split(",") if s.strip()] if args.sites else None
    if args.partition is not None:
        from greenmine.server.monitor.config import parse_partition

        try:
            parse_partition(args.partition)
        except ValueError as exc:
            print(f"greenmine server: --partition: {exc}", file=sys.stderr)
            return 2
    try:
        return run(cfg, roles=roles, sites=sites, partition=args.partition)
    except ServerError as exc:
        print(f"greenmine server: {exc}", file=sys.stderr)
        return 1


def _open_spool(cfg):
    from greenmine.server.spool.spool import Spool

    path = cfg.resolve(cfg.ingest.spool_path)
    if not path.exists():
        print(f"no spool at {path} (the server has not run with this config yet)", file=sys.stderr)
        raise SystemExit(1)
    return Spool(path, lock=False)


def _ms(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def _status(args) -> int:
    import json

    cfg = load_config(args)
    spool = _open_spool(cfg)
    try:
        batches, readings, nbytes = spool.queue.depth()
        doc = {
            "spool": {"path": str(spool.path), "batches": batches, "readings": readings, "bytes": nbytes,
                      "max_bytes": cfg.ingest.spool_max_bytes},
            "dead_letters": spool.dead_letters.counts(),
            "agents": [
                {"site": a[0], "agent": a[1], "state": a[2], "since": _ms(a[3]), "seen": _ms(a[4]),
                 "outbox_depth": a[8], "dropped_batches": a[9], "dropped_readings": a[10]}
                for a in spool.agents.load()
            ],
        }
    finally:
        spool.close()
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    s = doc["spool"]
    print(f"spool {s['path']}: {s['batches']} batches, {s['readings']} readings, {s['bytes']} of {s['max_bytes']} bytes")
    print("dead letters: " + (", ".join(f"{k} {v}" for k, v in doc["dead_letters"].items()) or "none"))
    for a in doc["agents"]:
        print(f"agent {a['site']}/{a['agent']}: {a['state']} since {a['since']} (last status {a['seen']}, "
              f"outbox {a['outbox_depth']}, dropped {a['dropped_batches']} batches)")
    if not doc["agents"]:
        print("agents: none seen yet")
    return 0


def _dead_letters(args) -> int:
    cfg = load_config(args)
    spool = _open_spool(cfg)
    try:
        rows = spool.dead_letters.newest(args.limit, args.reason)
    finally:
        spool.close()
    for _id, ms, topic, reason, detail, payload, size in rows:
        text = payload.decode("utf-8", "backslashreplace")
        more = f" … ({size} bytes)" if size > len(payload) else ""
        print(f"#{_id} {_ms(ms)} {reason} {topic}\n    {detail}\n    {text[:300]}{more}")
    if not rows:
        print("no dead letters")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="server: ingest, store, KPIs, alerts")
    p.set_defaults(func=lambda a: p.print_help())
    ssub = p.add_subparsers(dest="server_command", metavar="SUBCOMMAND")

    run = ssub.add_parser(
        "run", help="run the server's roles (ingest, monitor, uplink, web) until SIGTERM",
        description="Run server roles, each a consumer of the broker: ingest (subscribe on the shared group, "
        "validate, spool, acknowledge, write to the store), monitor (KPIs, alerts, email for the sites it judges), "
        "uplink (HJ 212), energy (the provincial energy platform, when [energy] is configured) and web (the officers' console on [web] host:port, 127.0.0.1:8470 by default). "
        "/metrics, /health and the alerts' JSON API are served if http_port is set. SIGTERM stops consuming, "
        "flushes the spool and exits. One config can serve every process: give each its own --instance.",
        epilog="examples:\n"
        "  greenmine server run --config server.toml                    # every role, one process\n"
        "  greenmine server run --config server.toml --role ingest --instance 2 --http-port 9102\n"
        "  greenmine server run --config server.toml --role monitor --partition 0/2 --instance m0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_arguments(run, instance=False)
    run.add_argument("--role", action="append", choices=("ingest", "monitor", "uplink", "energy", "web", "all"), default=None,
                     help="role to run; repeat for several (default: all; all includes web when the config has a [web] section)")
    run.add_argument("--instance", metavar="NAME",
                     help="one of several processes sharing this config: suffixes the MQTT client ids and the state "
                     "files (spool, alert and KPI state, replica) with -NAME")
    run.add_argument("--sites", metavar="A,B", help="monitor: judge only these sites (overrides monitor.sites)")
    run.add_argument("--partition", metavar="I/N", help="monitor: judge the sites whose hash modulo N is I")
    run.add_argument("--http-port", type=int, metavar="N",
                     help="serve /metrics and /health on this port, overriding http_port (0: any free); "
                     "or GREENMINE_HTTP_PORT")
    run.add_argument("--mqtt-port", type=int, metavar="N", help="the broker's port, overriding mqtt.port; or GREENMINE_MQTT_PORT")
    run.set_defaults(func=_run, role=None)

    st = ssub.add_parser("status", help="spool depth, dead letters by reason and agent states, from the spool file")
    config_arguments(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_status)

    dl = ssub.add_parser("dead-letters", help="list the newest rejected messages")
    config_arguments(dl)
    dl.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    dl.add_argument("--reason", help="only this reason, e.g. not_json")
    dl.set_defaults(func=_dead_letters)
