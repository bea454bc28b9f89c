"""`greenmine agent ...` subcommands: run, read (commissioning), plan (what goes on the bus).

Heavy imports (pymodbus, paho, apscheduler) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _load(path: str):
    from greenmine.agent.config import load_agent_config
    from greenmine.configfile import ConfigError

    try:
        return load_agent_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    cfg = _load(args.config)
    if cfg is None:
        return 2
    from greenmine.ports import PortError, port_override

    try:
        metrics_port = port_override("--metrics-port", args.metrics_port, "GREENMINE_METRICS_PORT")
        mqtt_port = port_override("--mqtt-port", args.mqtt_port, "GREENMINE_MQTT_PORT", minimum=1)
    except PortError as exc:
        print(f"greenmine agent: {exc}", file=sys.stderr)
        return 2
    if metrics_port is not None:
        cfg = cfg.model_copy(update={"metrics_port": metrics_port})
    if mqtt_port is not None:
        cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"port": mqtt_port})})
    from greenmine.agent.errors import AgentError
    from greenmine.agent.runtime import Agent

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    try:
        asyncio.run(main())
    except AgentError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 1
    return 0


def plan_doc(cfg) -> dict:
    """The plan of every device; the totals count enabled devices only (a disabled one is not polled)."""
    from greenmine.agent.planner import CostModel, plan_device

    devices = []
    total_planned = total_naive = 0
    total_s = 0.0
    for dev in cfg.devices:
        bus = cfg.bus(dev.bus)
        cost = CostModel.for_bus(bus)
        groups = []
        for group, reqs in plan_device(dev, bus).items():
            naive = sum(len(r.registers) for r in reqs)
            bus_s = cost.seconds(reqs)
            groups.append({
                "group": group,
                "interval_s": dev.poll_groups[group],
                "requests": [r.to_dict() for r in reqs],
                "requests_per_cycle": len(reqs),
                "one_per_register": naive,
                "bus_time_s": bus_s,
            })
            if dev.enabled:
                total_planned += len(reqs)
                total_naive += naive
                total_s += bus_s
        devices.append({"device": dev.name, "bus": dev.bus, "unit_id": dev.unit_id, "enabled": dev.enabled,
                        "cost_model": cost.name, "max_registers_per_request": dev.max_registers,
                        "max_gap": dev.max_gap, "forbidden": [list(f) for f in dev.forbidden], "groups": groups})
    return {"devices": devices, "requests_per_cycle": total_planned, "one_per_register": total_naive,
            "bus_time_s": total_s}


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    doc = plan_doc(cfg)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for dev in doc["devices"]:
        off = "  DISABLED: not polled, not in the totals" if not dev["enabled"] else ""
        print(f"{dev['device']}  (bus {dev['bus']}, unit {dev['unit_id']}, max {dev['max_registers_per_request']} "
              f"registers/request, max gap {dev['max_gap']}){off}")
        for g in dev["groups"]:
            print(f"  group {g['group']} every {g['interval_s']:g} s: {g['requests_per_cycle']} request(s) "
                  f"(one per register: {g['one_per_register']}), ~{_ms(g['bus_time_s'])} on the bus ({dev['cost_model']})")
            for r in g["requests"]:
                print(f"    fc{r['function']:<2} {r['type']:<8} address {r['address']:>5}  count {r['count']:>3}  "
                      f"{', '.join(r['registers'])}")
    print(f"total: {doc['requests_per_cycle']} requests per cycle of every group "
          f"(one per register: {doc['one_per_register']}), ~{_ms(doc['bus_time_s'])} of bus time")
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def cmd_read(args: argparse.Namespace) -> int:
    import asyncio

    cfg = _load(args.config)
    if cfg is None:
        return 2
    dev = next((d for d in cfg.devices if d.name == args.device), None)
    if dev is None:
        print(f"{args.config}: no device \"{args.device}\" (devices: {', '.join(d.name for d in cfg.devices)})",
              file=sys.stderr)
        return 2
    from greenmine.agent.commission import read_device

    rows, errors = asyncio.run(read_device(cfg, dev))
    if args.json:
        print(json.dumps({"device": dev.name, "readings": rows, "errors": errors}, indent=2))
    else:
        print(f"{'register':<20} {'metric':<24} {'value':>22} {'unit':<8} {'quality':<12} raw")
        for r in rows:
            print(f"{r['register']:<20} {r['metric']:<24} {r['shown']:>22} {r['unit']:<8} {r['quality'] or r['note']:<12} "
                  f"{' '.join(f'{w:04X}' for w in r['raw_registers'])}")
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def _pipe_safe(func):
    """`agent plan | head` closes our stdout early: stop quietly, as `cat` does."""

    def run(args: argparse.Namespace) -> int:
        try:
            status = func(args)
            sys.stdout.flush()
            return status
        except BrokenPipeError:
            # Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    return run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="edge agent: poll Modbus meters and publish over MQTT")
    p.set_defaults(func=lambda a: p.print_help())
    asub = p.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")

    run = asub.add_parser("run", help="poll the configured meters and publish until SIGTERM",
                          epilog="The ports can also come from the environment (the flag wins): GREENMINE_METRICS_PORT, "
                          "GREENMINE_MQTT_PORT.")
    run.add_argument("--config", required=True, metavar="FILE", help="agent config (TOML)")
    run.add_argument("--metrics-port", type=int, metavar="N",
                     help="serve /metrics on this port, overriding metrics_port (0: any free port)")
    run.add_argument("--mqtt-port", type=int, metavar="N", help="the broker's port, overriding mqtt.port")
    run.set_defaults(func=cmd_run)

    read = asub.add_parser("read", help="one-shot read and decode of one device, for commissioning")
    read.add_argument("config", metavar="CONFIG", help="agent config (TOML)")
    read.add_argument("--device", required=True, metavar="NAME", help="device name from the config")
    read.add_argument("--json", action="store_true", help="print JSON (metric, value, unit, quality, raw registers)")
    read.set_defaults(func=_pipe_safe(cmd_read))

    plan = asub.add_parser("plan", help="print the Modbus requests each device's poll groups need per cycle")
    plan.add_argument("config", metavar="CONFIG", help="agent config (TOML)")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(func=_pipe_safe(cmd_plan))
