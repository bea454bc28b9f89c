"""`greenmine check-config FILE`: load a config exactly as `run` would, without connecting.

Exit 0 when the file is good; 2 with every problem, each naming its place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

KINDS = ("agent", "server", "sim", "profile")


def detect_kind(doc: dict) -> str | None:
    kind = doc.get("kind")
    if kind in KINDS:
        return kind
    if "devices" in doc and "buses" in doc:
        return "agent"
    if "servers" in doc:
        return "sim"
    if "registers" in doc and "manufacturer" in doc:
        return "profile"
    if any(k in doc for k in ("sites", "store", "ingest", "smtp")):
        return "server"
    return None


def load_any(path: Path, kind: str | None = None):
    """Load a config of any kind. Returns (kind, model). Raises ConfigError with every problem:
    unset environment variables and missing credentials, then the type and cross-reference errors of the same file."""
    from greenmine.configfile import ConfigError, read_toml

    try:
        doc = read_toml(path)
        unset: list[str] = []
    except ConfigError as exc:
        try:
            doc = read_toml(path, missing_ok=True)
        except ConfigError:
            raise exc from None  # not (only) a variable: a file that cannot be read or parsed
        unset = exc.messages
    try:
        kind, model = _load_kind(path, doc, kind)
    except ConfigError as exc:
        raise ConfigError(path, unset + exc.messages) from None
    if unset:
        raise ConfigError(path, unset)
    return kind, model


def _load_kind(path: Path, doc: dict, kind: str | None):
    from greenmine.configfile import ConfigError

    kind = kind or detect_kind(doc)
    if kind == "agent":
        from greenmine.agent.config import load_agent_config

        return kind, load_agent_config(path, doc)
    if kind == "server":
        from greenmine.server.config import load_server_config

        return kind, load_server_config(path, doc)
    if kind == "sim":
        from greenmine.simulators.config import load_sim_config

        return kind, load_sim_config(path, doc)
    if kind == "profile":
        from greenmine.agent.registermap import load_profile

        return kind, load_profile(path.stem, [path.parent])
    raise ConfigError(path, ['cannot tell the config kind: add kind = "agent" | "server" | "sim", or pass --kind'])


def run(args: argparse.Namespace) -> int:
    from greenmine.configfile import ConfigError

    status = 0
    for file in args.file:
        try:
            kind, _ = load_any(Path(file), args.kind)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            status = 2
        else:
            print(f"{file}: ok ({kind} config)")
    return status


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate config files without connecting to anything",
        description="Load each FILE exactly as the matching 'run' command would, without connecting. "
        "Exits 0 if all are valid; otherwise prints every problem, naming file, device, register "
        "and field, and exits 2.",
    )
    p.add_argument("file", nargs="+", metavar="FILE", help="agent, server or simulated-site config, or a device profile (TOML)")
    p.add_argument("--kind", choices=KINDS, help="config kind; default: detected from the file")
    p.set_defaults(func=run)
