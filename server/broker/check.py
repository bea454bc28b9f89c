"""`greenmine broker check --config server.toml [--broker-conf mosquitto.conf]`: what would lose data.

Mosquitto does not report its settings over MQTT, so the checks are of two kinds:

- **over MQTT, as the server** (always): the server's own connection works; an anonymous client is
  refused (tried: a CONNECT without a user name, with the server's TLS settings); the server's
  subscriptions to telemetry and status are granted (tried on a throw-away clean session, so the
  server's persistent session is not touched); TLS is on towards a broker that is not on this host,
  and verifies the broker (no `insecure = true`).
- **in the broker's mosquitto.conf** (with --broker-conf, read from this machine): persistence on,
  in a folder the broker's user can write; the queue bound (`max_queued_messages`, Mosquitto's
  default 1000, and `max_queued_bytes`) at least the outage times the rate; `allow_anonymous` not
  true; every listener on a non-loopback address has TLS.

Exit 0: nothing unsafe found; 1: something unsafe; 2: the check could not run (bad config, broker
unreachable or refusing the server).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from greenmine.mqtttls import ssl_context
from greenmine.schemas import TopicKind, subscription
from greenmine.server.broker.conf import (LOCAL_ADDRESSES, MOSQUITTO_DEFAULT_QUEUE, ParsedConf, Sizing, parse_conf,
                                          writable_by)
from greenmine.server.broker.dynsec import DynsecError, Endpoint, connect


@dataclass
class Finding:
    unsafe: bool
    what: str
    detail: str

    def line(self) -> str:
        return f"{'UNSAFE' if self.unsafe else 'ok':<7}{self.what}: {self.detail}"


def _is_local(host: str) -> bool:
    return host in LOCAL_ADDRESSES or host.startswith("127.")


def sizing_for(args: argparse.Namespace) -> Sizing:
    base = Sizing()
    conf = getattr(args, "broker_conf", None)
    side = conf.parent / "broker.toml" if conf else None
    if side is not None and side.exists():
        from greenmine.configfile import read_toml

        try:
            base = Sizing(**read_toml(side).get("sizing", {}))
        except (TypeError, ValueError):
            pass
    overrides = {k: getattr(args, k) for k in ("outage_hours", "agents", "batches_per_minute")
                 if getattr(args, k, None) is not None}
    return replace(base, **overrides)


def check_conf(conf: ParsedConf, sizing: Sizing) -> list[Finding]:
    out: list[Finding] = []
    # persistence
    if not conf.flag("persistence", False):
        out.append(Finding(True, "persistence", "off: a broker restart loses every session and queued message "
                           "(set persistence true)"))
    else:
        loc = Path(conf.options.get("persistence_location", "") or ".")
        user = conf.options.get("user", "mosquitto")
        problem = _not_writable(loc, user)
        out.append(Finding(problem is not None, "persistence",
                           problem or f"on, in {loc} (writable by {user}), autosave every "
                           f"{conf.options.get('autosave_interval', '1800')} s"))
    # queue bound
    needed = sizing.messages_needed()
    mqm = conf.number("max_queued_messages", MOSQUITTO_DEFAULT_QUEUE)
    rate = (f"{sizing.outage_hours:g} h x {sizing.agents} agent(s) x "
            f"({sizing.batches_per_minute:g} + {sizing.status_per_minute:g}) messages/min = {needed}")
    if mqm != 0 and mqm < needed:
        src = "" if "max_queued_messages" in conf.options else " (not set: Mosquitto's default)"
        out.append(Finding(True, "queue bound", f"max_queued_messages {mqm}{src} < {rate}: the broker drops the rest "
                           "while the server is away"))
    else:
        out.append(Finding(False, "queue bound", f"max_queued_messages {mqm or 'unlimited'} >= {rate}"))
    mqb = conf.number("max_queued_bytes", 0)
    if mqb and mqb < needed * sizing.message_bytes:
        out.append(Finding(True, "queue bound", f"max_queued_bytes {mqb} < {needed} messages x "
                           f"{sizing.message_bytes} bytes = {needed * sizing.message_bytes}"))
    # anonymous access, as configured
    if conf.flag("allow_anonymous", False):
        out.append(Finding(True, "anonymous access", f"allow_anonymous true in {conf.path}"))
    # listeners without TLS on the network
    for lst in conf.listeners:
        where = f"listener {lst.port} {lst.bind or '(every address)'}" + (f" (line {lst.line})" if lst.line else "")
        if not lst.tls and not lst.local:
            out.append(Finding(True, "TLS", f"{where} has no TLS and is reachable from the network: passwords and "
                               "telemetry travel in clear text"))
        else:
            out.append(Finding(False, "TLS", f"{where}: {'TLS' if lst.tls else 'this host only'}"))
    return out


def _not_writable(folder: Path, user: str) -> str | None:
    problem = writable_by(folder, user)
    return None if problem is None else (f"persistence_location {problem}: Mosquitto cannot save, and loses "
                                         "everything at restart")


def check_live(cfg, timeout_s: float) -> tuple[list[Finding], str | None]:
    """The MQTT checks. Returns (findings, fatal): fatal names why the server cannot connect."""
    m = cfg.mqtt
    tls = m.tls_settings()
    out: list[Finding] = []
    try:
        ctx = ssl_context(tls, cfg.resolve) if tls is not None else None
    except OSError as exc:
        return out, f"the server's [mqtt.tls] files cannot be used: {exc}"
    if tls is None:
        out.append(Finding(not _is_local(m.host), "TLS",
                           f"the server connects to {m.host}:{m.port} without TLS" +
                           (": password and telemetry in clear text on the network" if not _is_local(m.host) else
                            " (this host only)")))
    elif tls.insecure:
        out.append(Finding(True, "TLS", "the server's [mqtt.tls] has insecure = true: the broker is not verified"))
    else:
        out.append(Finding(False, "TLS", f"the server connects to {m.host}:{m.port} with TLS, verifying the broker"))
    ep = Endpoint(host=m.host, port=m.port, username=m.username or "",
                  password=m.password.get_secret_value() if m.password else "")
    check_id = f"{m.client_id}-check-{uuid.uuid4().hex[:6]}"
    try:
        client = connect(ep, check_id, timeout_s, context=ctx, anonymous=m.username is None)
    except DynsecError as exc:
        return out, f"cannot connect as the server ({m.username or 'anonymous'}): {exc}"
    try:
        out += _subscriptions(client, m, timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    # anonymous: a CONNECT without a user name
    try:
        anon = connect(ep, f"greenmine-check-anon-{uuid.uuid4().hex[:6]}", timeout_s, context=ctx, anonymous=True)
    except DynsecError as exc:
        out.append(Finding(False, "anonymous access", f"refused ({str(exc).rsplit(': ', 1)[-1]})"))
    else:
        anon.disconnect()
        anon.loop_stop()
        out.append(Finding(True, "anonymous access", f"the broker at {m.host}:{m.port} accepts clients without a "
                           "user name: anyone can publish telemetry for any site"))
    return out, None


def _subscriptions(client, m, timeout_s: float) -> list[Finding]:
    filters = [subscription(TopicKind.TELEMETRY, shared_group=m.shared_group), subscription(TopicKind.STATUS)]
    answers: dict[int, list] = {}  # mid -> reason codes; the SUBACK may come before subscribe() returns
    cond = threading.Condition()

    def on_subscribe(c, userdata, mid, reason_codes, props=None):
        with cond:
            answers[mid] = list(reason_codes)
            cond.notify_all()

    client.on_subscribe = on_subscribe
    _, mid = client.subscribe([(flt, 1) for flt in filters])
    with cond:
        cond.wait_for(lambda: mid in answers, timeout_s)
        codes = answers.get(mid) or []
    out = []
    for i, flt in enumerate(filters):
        rc = str(codes[i]) if i < len(codes) else "no answer"
        ok = rc.startswith("Granted QoS 1")
        out.append(Finding(not ok, "server subscription",
                           f"{flt}: {rc}" + ("" if ok else ": the server would receive nothing of it")))
    # no unsubscribe: the session is clean and ends with the connection
    return out


def run_check(args: argparse.Namespace) -> int:
    from greenmine.server.cli import load_config

    args.instance = None
    cfg = load_config(args)
    sizing = sizing_for(args)
    findings: list[Finding] = []
    notes: list[str] = []
    if args.broker_conf is not None:
        try:
            findings += check_conf(parse_conf(args.broker_conf), sizing)
        except OSError as exc:
            print(f"error: --broker-conf {args.broker_conf}: {exc}", file=sys.stderr)
            return 2
    else:
        notes.append("not checked: persistence, the queue bound and the listeners' TLS (Mosquitto does not report "
                     "them over MQTT): give --broker-conf /path/to/mosquitto.conf")
    started = time.monotonic()
    live, fatal = check_live(cfg, args.timeout)
    findings += live
    for f in findings:
        print(f.line())
    for n in notes:
        print(n)
    if fatal:
        print(f"error: {fatal}", file=sys.stderr)
        return 2
    bad = [f for f in findings if f.unsafe]
    print(f"{len(bad)} unsafe setting(s) found" if bad else
          f"nothing unsafe found ({time.monotonic() - started:.1f} s)")
    return 1 if bad else 0
