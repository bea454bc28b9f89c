"""`greenmine sim ...` and `greenmine demo`."""
import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="simulated site meters (real Modbus servers)")
    p.set_defaults(func=lambda a: p.print_help())
