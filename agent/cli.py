"""`greenmine agent ...` subcommands."""
import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="edge agent: poll Modbus meters and publish over MQTT")
    p.set_defaults(func=lambda a: p.print_help())
