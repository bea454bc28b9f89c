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


def cross_warnings(loaded: list[tuple[str, str, object]]) -> list[str]:
    """Warnings across the files of one run: a server config's `[[kpi.meters]]` checked against the agent
    configs (and device profiles) given with it. What a site sends is known only from its agent configs:
    a site with none given is not judged. Warnings do not change the exit status."""
    servers = [(f, m) for f, k, m in loaded if k == "server"]
    if not servers:
        return []
    from greenmine.server.monitor.kpi.vocabulary import meter_warnings

    from greenmine.agent.config import counter_widths

    published: dict[str, dict[str, set[str]]] = {}
    widths: dict[tuple[str, str, str], tuple[int, float]] = {}
    for _, kind, model in loaded:
        if kind == "agent":
            devices = published.setdefault(model.site, {})
            for dev in model.devices:
                if dev.enabled:
                    devices.setdefault(dev.name, set()).update(r.metric_name for r in dev.resolved_registers)
            widths.update({(model.site, c.device, c.metric): (c.width_bits, c.scale) for c in counter_widths(model)})
    any_device = {r.metric_name for _, kind, model in loaded if kind == "profile" for r in model.registers}
    out = []
    for file, cfg in servers:
        site_ids = [s.id for s in cfg.sites]
        out += [f"{file}: warning: {w}" for w in meter_warnings(cfg.kpi, site_ids, published, any_device, widths)]
        if cfg.ingest.unknown_site.value == "reject":
            for afile, kind, model in loaded:
                if kind == "agent" and model.site not in site_ids:
                    out.append(f"{file}: warning: site {model.site!r} of {afile} is not configured: its telemetry "
                               "is rejected (unknown_site)")
    return out


def run(args: argparse.Namespace) -> int:
    from greenmine.configfile import ConfigError

    status = 0
    loaded = []
    for file in args.file:
        try:
            kind, model = load_any(Path(file), args.kind)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            status = 2
        else:
            loaded.append((file, kind, model))
            print(f"{file}: ok ({kind} config)")
    for warning in cross_warnings(loaded):
        print(warning, file=sys.stderr)
    return status


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate config files without connecting to anything",
        description="Load each FILE exactly as the matching 'run' command would, without connecting. "
        "Exits 0 if all are valid; otherwise prints every problem, naming file, device, register "
        "and field, and exits 2. Given a server config with the agent configs (or device profiles) of its "
        "sites, it also warns about a [[kpi.meters]] entry whose metric none of them publishes from that "
        "device, or that no KPI reads; warnings do not change the exit status.",
        epilog="example: greenmine check-config server.toml agents/*.toml",
    )
    p.add_argument("file", nargs="+", metavar="FILE", help="agent, server or simulated-site config, or a device profile (TOML)")
    p.add_argument("--kind", choices=KINDS, help="config kind; default: detected from the file")
    p.set_defaults(func=run)
