"""`greenmine broker ...`: provision a Mosquitto 2 broker for greenmine (docs/broker.md).

    broker init DIR [--outage-hours H --agents N --batches-per-minute B ...] (--make-ca | --certfile F --keyfile F)
    broker add-server DIR [--name NAME]          the server's client and role (read telemetry and status)
    broker add-agent DIR --site S --agent A      an agent's client, which may publish greenmine/v1/S/A/# only
    broker check --config server.toml [--broker-conf FILE]   what would lose data; exit 1 if anything
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "broker", help="provision and check a Mosquitto 2 broker (TLS, per-agent credentials and ACLs)",
        description="Write a production Mosquitto 2 configuration, create the clients of the server and of each "
        "agent through the dynamic-security plugin, and check a running broker for settings that lose data.",
    )
    bsub = p.add_subparsers(dest="broker_command", metavar="COMMAND", required=True)

    i = bsub.add_parser(
        "init", help="write mosquitto.conf, the dynamic-security file and its admin into DIR",
        description="Write a Mosquitto 2 configuration into DIR: persistence, a queue bound sized for the outage "
        "the server must survive, a TLS listener, the dynamic-security plugin with no anonymous access, and an "
        "admin client whose credentials go to DIR/admin.secret (mode 0600). Run again to change the sizing or "
        "the certificates: the clients and the data are kept.",
    )
    i.add_argument("dir", type=Path, metavar="DIR", help="the broker's folder (created if missing)")
    g = i.add_argument_group("queue sizing (the arithmetic is written into mosquitto.conf)")
    g.add_argument("--outage-hours", type=float, default=24.0, help="how long a server process may be away (default 24)")
    g.add_argument("--agents", type=int, default=1, help="agents publishing to this broker (default 1)")
    g.add_argument("--batches-per-minute", type=float, default=60.0,
                   help="telemetry batches one agent publishes a minute (default 60)")
    g.add_argument("--status-per-minute", type=float, default=1.0,
                   help="status messages one agent publishes a minute (default 1: status_interval_s = 60)")
    g.add_argument("--message-bytes", type=int, default=4096, help="average message size, for max_queued_bytes (default 4096)")
    g.add_argument("--margin", type=float, default=1.5, help="headroom factor on the queue bound (default 1.5)")
    t = i.add_argument_group("listeners and TLS")
    t.add_argument("--tls-port", type=int, default=8883, help="TLS listener port (default 8883)")
    t.add_argument("--bind", default="0.0.0.0", help="TLS listener address (default 0.0.0.0: every interface)")
    t.add_argument("--local-port", type=int, default=1883,
                   help="plain MQTT listener on 127.0.0.1 only; 0 turns it off (default 1883)")
    t.add_argument("--hostname", action="append", default=[], metavar="NAME",
                   help="the broker's DNS name or address as clients use it (repeatable; default: this host's name)")
    t.add_argument("--make-ca", action="store_true",
                   help="make a CA and a server certificate in DIR/tls with openssl (else give --certfile/--keyfile)")
    t.add_argument("--certfile", type=Path, help="the broker's certificate (PEM)")
    t.add_argument("--keyfile", type=Path, help="the broker's private key (PEM)")
    t.add_argument("--cafile", type=Path, help="the CA clients verify the broker with (and client certificates are checked against)")
    t.add_argument("--require-client-cert", action="store_true", help="TLS clients must present a certificate signed by the CA")
    o = i.add_argument_group("other")
    o.add_argument("--user", help="the user Mosquitto runs as (default: the current user); gets the data folder")
    o.add_argument("--max-inflight", type=int, default=100, help="max_inflight_messages (default 100)")
    o.add_argument("--autosave-s", type=int, default=60,
                   help="persistence autosave_interval in seconds (default 60): what a broker crash can lose")
    i.set_defaults(func=_init)

    for name, helptext in (("add-agent", "create an agent's client: it may publish greenmine/v1/SITE/AGENT/# only"),
                           ("add-server", "create the server's client: it may subscribe to telemetry and status")):
        a = bsub.add_parser(name, help=helptext, description=helptext + ". Talks to the running broker as its "
                            "admin (DIR/admin.secret) over $CONTROL/dynamic-security/v1. The credentials are written "
                            "to DIR/clients/<user>.toml (mode 0600) as an [mqtt] section for the client's config.")
        a.add_argument("dir", type=Path, metavar="DIR", help="the folder 'broker init' wrote")
        if name == "add-agent":
            a.add_argument("--site", required=True, help="site id, as in the agent's config")
            a.add_argument("--agent", required=True, help="agent id, as in the agent's config")
        else:
            a.add_argument("--name", default="greenmine-server", help="user name (default greenmine-server)")
        a.add_argument("--rotate", action="store_true", help="the client exists: give it a new password")
        a.add_argument("--out", type=Path, help="write the credentials here instead of DIR/clients/<user>.toml")
        a.add_argument("--print", action="store_true", dest="print_", help="also print the [mqtt] section (with the password)")
        a.add_argument("--admin-host", help="where the admin connects (default: from DIR/broker.toml)")
        a.add_argument("--admin-port", type=int, help="port the admin connects to (default: from DIR/broker.toml)")
        a.set_defaults(func=_add_agent if name == "add-agent" else _add_server)

    c = bsub.add_parser(
        "check", help="report broker settings that would lose data (exit 1 if any)",
        description="Connect as the server (its config's [mqtt]) and report what would lose data: anonymous "
        "access (tried by connecting without a user name), TLS off towards a non-local broker, the server's "
        "subscriptions refused; and, read from the broker's mosquitto.conf (--broker-conf), persistence off or "
        "not writable, a queue bound smaller than the outage at the rate, and listeners without TLS on "
        "non-local addresses. Exit 0: nothing found; 1: something unsafe; 2: cannot check.",
    )
    c.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
    c.add_argument("--broker-conf", type=Path, metavar="FILE",
                   help="the broker's mosquitto.conf (Mosquitto does not report its settings over MQTT)")
    c.add_argument("--outage-hours", type=float, help="default: from broker.toml beside --broker-conf, else 24")
    c.add_argument("--agents", type=int, help="default: from broker.toml beside --broker-conf, else 1")
    c.add_argument("--batches-per-minute", type=float, help="default: from broker.toml beside --broker-conf, else 60")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    c.set_defaults(func=_check)


def _init(args) -> int:
    from greenmine.server.broker.conf import Sizing
    from greenmine.server.broker.provision import InitOptions, ProvisionError, init
    from greenmine.server.broker.certs import CertError

    try:
        sizing = Sizing(outage_hours=args.outage_hours, agents=args.agents, batches_per_minute=args.batches_per_minute,
                        status_per_minute=args.status_per_minute, message_bytes=args.message_bytes, margin=args.margin)
        if min(sizing.outage_hours, sizing.agents, sizing.batches_per_minute, sizing.message_bytes) <= 0 or sizing.margin < 1:
            raise ProvisionError("--outage-hours, --agents, --batches-per-minute and --message-bytes must be > 0, "
                                 "--margin >= 1")
        done = init(args.dir, InitOptions(
            sizing=sizing, tls_port=args.tls_port, tls_bind=args.bind, local_port=args.local_port or None,
            hostnames=tuple(args.hostname), certfile=args.certfile, keyfile=args.keyfile, cafile=args.cafile,
            make_ca=args.make_ca, require_client_cert=args.require_client_cert, user=args.user,
            max_inflight_messages=args.max_inflight, autosave_interval_s=args.autosave_s))
    except (ProvisionError, CertError, OSError) as exc:
        print(f"error: broker init: {exc}", file=sys.stderr)
        return 2
    z = done["sizing"]
    print(f"wrote {done['conf']}")
    for f in done["created"]:
        print(f"created {f}")
    print(f"queue bound: {z.max_queued_messages()} messages, {z.max_queued_bytes()} bytes per client "
          f"({z.outage_hours:g} h outage, {z.agents} agent(s), {z.batches_per_minute:g} batches/min)")
    print(f"next: start it (mosquitto -c {done['conf']}, as root or as {done['user']}), then "
          f"'greenmine broker add-server {done['folder']}' and 'greenmine broker add-agent {done['folder']} "
          "--site SITE --agent AGENT'")
    return 0


def _add(args, kind: str) -> int:
    from greenmine.server.broker.dynsec import DynsecError
    from greenmine.server.broker.provision import ProvisionError, add_agent, add_server, admin_endpoint

    try:
        admin = None
        if args.admin_host or args.admin_port:
            admin = admin_endpoint(args.dir, args.admin_host, args.admin_port)
        if kind == "agent":
            user, password, path = add_agent(args.dir, args.site, args.agent, rotate=args.rotate, out=args.out, admin=admin)
        else:
            user, password, path = add_server(args.dir, args.name, rotate=args.rotate, out=args.out, admin=admin)
    except (ProvisionError, DynsecError, OSError) as exc:
        print(f"error: broker add-{kind}: {exc}", file=sys.stderr)
        return 2
    print(f"{'re-keyed' if args.rotate else 'created'} client {user!r}; its [mqtt] section (with the password) is in "
          f"{path} (mode 0600)")
    if args.print_:
        print(path.read_text(encoding="utf-8"))
    return 0


def _add_agent(args) -> int:
    return _add(args, "agent")


def _add_server(args) -> int:
    return _add(args, "server")


def _check(args) -> int:
    from greenmine.server.broker.check import run_check

    return run_check(args)
