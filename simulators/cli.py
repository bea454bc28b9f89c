"""`greenmine sim run --site FILE` and `greenmine sim run --list-scenarios`."""

from __future__ import annotations

import argparse


def _list_scenarios(site_file: str | None) -> int:
    from pathlib import Path

    from greenmine import SCENARIOS_DIR
    from greenmine.simulators.scenarios import load_scenarios

    dirs = ([Path(site_file).parent / "scenarios"] if site_file else []) + [SCENARIOS_DIR]
    scenarios = load_scenarios(dirs)
    width = max(len(n) for n in scenarios)
    for name, sc in sorted(scenarios.items()):
        scope = "device" if sc.device_only else "site  "
        print(f"{name:<{width}}  {scope}  {sc.description}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import sys
    from datetime import datetime
    from pathlib import Path

    from greenmine.configfile import ConfigError

    if args.list_scenarios:
        return _list_scenarios(args.site)
    if not args.site:
        print("greenmine sim run: --site FILE is required (or --list-scenarios)", file=sys.stderr)
        return 2
    from greenmine.simulators.config import load_sim_config
    from greenmine.simulators.clock import SimClock
    from greenmine.simulators.site import SimError, SimulatedSite

    try:
        cfg = load_sim_config(Path(args.site))
        # The clock is set before the site is built: totals are anchored at the clock's
        # start, so a start given here must be in place when the model is anchored.
        clock = SimClock.from_config(cfg.clock, args.speed)
        if args.start:
            clock.set(datetime.fromisoformat(args.start))
        site = SimulatedSite(cfg, clock=clock)
    except (ConfigError, SimError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await site.start()
        except (OSError, RuntimeError) as exc:
            print(f"cannot serve the site: {exc}", file=sys.stderr)
            return 1
        rows = site.table()
        cols = ["device", "transport", "address", "unit_id", "profile", "role"]
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        print(f"site {cfg.site}: {len(rows)} simulated meters, clock {site.clock.now_local().isoformat(timespec='seconds')}"
              f" x{site.clock.speed:g}, scenarios {', '.join(site.model.site_scenarios) or 'none'}")
        print("  ".join(c.upper().ljust(widths[c]) for c in cols))
        for r in rows:
            print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
        if site.control_port is not None:
            print(f"control: http://127.0.0.1:{site.control_port}/state")
        print("serving; Ctrl-C or SIGTERM stops", flush=True)
        await stop.wait()
        await site.stop()
        print("stopped", flush=True)
        return 0

    return asyncio.run(main())


def _energy_platform(args) -> int:
    from greenmine.simulators.energy_platform import serve

    return serve(args)


def _register_energy_platform(simsub) -> None:
    p = simsub.add_parser(
        "energy-platform", help="serve a simulated provincial energy platform (one data centre, HTTPS)",
        description="A real HTTPS server with a generated test CA that implements the energy platform's variant A "
        "(registration, SM4-ECB values) or B (key, apply, requestAK with SM4-CBC password, Bearer tokens) as the "
        "profile says; counts duplicates; can be told to refuse, time out, expire tokens or fail decryption.",
        epilog="Example: greenmine sim energy-platform --profile variant-a-sm4 --port 18443 --tls-dir /tmp/energy-ca")
    p.add_argument("--profile", default="variant-a", help="platform profile name or TOML path (default variant-a)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free)")
    p.add_argument("--tls-dir", default="energy-platform-tls", help="folder for the generated test CA and certificate")
    p.add_argument("--secret-key", help="variant A: the secretKey handed out (32 hex; default random)")
    p.add_argument("--upload-time", default="00:00:00", help="the daily uploadTime slot handed out (default 00:00:00)")
    p.add_argument("--password", default="greenmine-test", help="variant B: the enterprise password requestAK accepts")
    p.add_argument("--token-ttl-s", type=float, default=3600.0, help="variant B: token lifetime in seconds")
    p.set_defaults(func=_energy_platform)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="simulated site meters (real Modbus servers)",
        description="Simulated meters that behave like a site's real ones: same register maps, plausible "
        "physics, and the faults real sites have. See docs/simulators.md.",
    )
    simsub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    run = simsub.add_parser(
        "run",
        help="serve a simulated site",
        description="Serve every meter of a simulated-site config as a real Modbus server (TCP, RTU-over-TCP or "
        "RTU on a serial device), print where each one is, and run until Ctrl-C or SIGTERM.",
        epilog="Example: greenmine sim run --site config/site.example.toml --speed 1440  "
        "(one simulated day per minute). Poll it with: mbpoll -m tcp -p 15020 -a 1 -t 3:float -B -r 53 -c 1 -1 127.0.0.1",
    )
    run.add_argument("--site", metavar="FILE", help="simulated-site config (TOML), e.g. config/site.example.toml")
    run.add_argument("--list-scenarios", action="store_true", help="list the scenarios and exit")
    run.add_argument("--start", metavar="TIME", help="simulated start time, ISO 8601 (naive = site local time)")
    run.add_argument("--speed", type=float, metavar="X", help="simulated seconds per real second (overrides the config)")
    run.set_defaults(func=_run)
    _register_energy_platform(simsub)
    p.set_defaults(func=lambda a: p.print_help())
