"""`greenmine check-config FILE`."""
import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("file")
    p.set_defaults(func=lambda a: 0)
