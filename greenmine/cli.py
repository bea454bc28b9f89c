"""The `greenmine` console script.

Each part registers its own subcommands from its `cli` module (`agent.cli`,
`server.cli`, `simulators.cli`). Those modules import only argparse at load
time; heavy imports (pymodbus, influxdb-client, ...) happen inside the
handler, so `greenmine agent ...` never loads the server's dependencies.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from greenmine import __version__


def build_parser() -> argparse.ArgumentParser:
    from greenmine.agent import cli as agent_cli
    from greenmine import checkcmd
    from greenmine.server import cli as server_cli
    from greenmine.server.uplink.hj212 import cli as hj212_cli
    from greenmine.simulators import cli as sim_cli
    from greenmine.simulators import demo

    parser = argparse.ArgumentParser(
        prog="greenmine",
        description="Green-mine telemetry: Modbus edge agent, MQTT ingest, KPIs, alerts and provincial uplinks.",
        epilog="Run 'greenmine demo' to see a whole simulated site at work. "
        "Every subcommand has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"greenmine {__version__}")
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text",
        help="log as human-readable text (default) or as one JSON object per line",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info",
        help="minimum level to log (default: info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    agent_cli.register(sub)
    server_cli.register(sub)
    __import__("greenmine.server.monitor.alerts.cli", fromlist=["register"]).register(sub)  # greenmine alerts list|ack|test-email
    __import__("greenmine.server.monitor.kpi.cli", fromlist=["register"]).register(sub)  # greenmine kpi recompute|show
    __import__("greenmine.server.supervision.cli", fromlist=["register"]).register(sub)  # greenmine supervision ...|report ...
    __import__("greenmine.server.web.cli", fromlist=["register"]).register(sub)  # greenmine users add|list|passwd|disable|token
    sim_cli.register(sub)
    demo.register(sub)
    checkcmd.register(sub)
    hj212_cli.register(sub)
    __import__("greenmine.server.broker.cli", fromlist=["register"]).register(sub)  # greenmine broker init|add-agent|add-server|check
    __import__("greenmine.server.uplink.energy.cli", fromlist=["register"]).register(sub)  # greenmine energy status|preview|resend|register
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from greenmine.logs import setup_logging

    setup_logging(args.log_format, args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
