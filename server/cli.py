"""`greenmine server ...` subcommands."""
import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="server: ingest, store, KPIs, alerts")
    p.set_defaults(func=lambda a: p.print_help())
