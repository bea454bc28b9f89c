"""Benchmark of the edge agent on loopback. Prints one JSON line.

    /work/venv/bin/python bench/agent.py [--seconds 20] [--devices 20] [--registers 50] [--buses 4]

Runs, all on 127.0.0.1:
- Modbus servers (the agent tests' responder, tests/agent/mbserver.py, in a separate process; the
  simulators can replace it once they land), `--buses` TCP endpoints with the devices spread over them;
- Mosquitto (Debian package) on a free port;
- the agent as a subprocess (`python -m greenmine agent run`), every device polled every 1 s;
- a subscriber counting the readings and their lag (arrival - ts).

Then, against the same Modbus server in the same run, a bare pymodbus loop (one connection,
sequential reads of the same size), to express the agent's overhead as a ratio of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def serve(n_buses: int, units_per_bus: int, n_regs: int) -> None:
    from tests.agent.mbserver import ModbusTestServer, Unit

    async def main():
        ports = []
        for _ in range(n_buses):
            units = {u: Unit(holding={a: (a * 7 + u) & 0xFFFF for a in range(n_regs * 2)}) for u in range(1, units_per_bus + 1)}
            srv = ModbusTestServer(units)
            ports.append(await srv.start())
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def raw_pymodbus(port: int, count: int, seconds: float) -> tuple[float, float]:
    """Requests/s and CPU s/request of bare sequential pymodbus reads."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0)
    await client.connect()
    n = 0
    t0, c0 = time.monotonic(), time.process_time()
    while time.monotonic() - t0 < seconds:
        rr = await client.read_holding_registers(0, count=count, device_id=1)
        assert not rr.isError()
        n += 1
    dt, dc = time.monotonic() - t0, time.process_time() - c0
    client.close()
    return n / dt, dc / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--registers", type=int, default=50, help="registers per device (half uint16, half float32)")
    ap.add_argument("--buses", type=int, default=4)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    per_bus = -(-args.devices // args.buses)
    if args.serve:
        serve(args.buses, per_bus, args.registers)
        return 0

    from agent.config import load_agent_config
    from agent.cli import plan_doc
    from tests.agent.helpers import Collector, write_config
    from tests.support.services import Mosquitto

    tmp = Path(tempfile.mkdtemp(prefix="greenmine-bench-"))
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--buses", str(args.buses), "--devices",
                               str(args.devices), "--registers", str(args.registers)], stdout=subprocess.PIPE, cwd=REPO)
    ports = json.loads(server.stdout.readline())
    broker = Mosquitto(tmp)
    broker.start()
    agent = None
    try:
        half = args.registers // 2
        regs = [{"name": f"u{i}", "address": i, "data_type": "uint16", "scale": 0.1, "unit": "kW"} for i in range(half)]
        regs += [{"name": f"f{i}", "address": half + 2 * i, "data_type": "float32", "unit": "A"}
                 for i in range(args.registers - half)]
        devices = [{"name": f"m{d}", "bus": f"b{d % args.buses}", "unit_id": d // args.buses + 1, "registers": regs,
                    "poll_groups": {"default": 1.0}} for d in range(args.devices)]
        buses = [{"name": f"b{i}", "transport": "tcp", "host": "127.0.0.1", "port": p, "timeout_ms": 1000}
                 for i, p in enumerate(ports)]
        cfg_path = write_config(tmp / "agent.toml", broker_port=broker.port, buses=buses, devices=devices,
                                mqtt_extra={"max_inflight": 100})
        plan = plan_doc(load_agent_config(cfg_path))
        collector = Collector(broker.port)
        agent = subprocess.Popen([sys.executable, "-m", "greenmine", "--log-level", "warning", "agent", "run",
                                  "--config", str(cfg_path)], cwd=REPO)
        warmup = 3.0
        time.sleep(warmup)  # a benchmark measures a steady state: the warm-up is part of the method
        n0, c0, t0 = len(collector.readings()), cpu_s(agent.pid), time.monotonic()
        time.sleep(args.seconds)
        n1, c1, t1 = len(collector.readings()), cpu_s(agent.pid), time.monotonic()
        rss = peak_rss_mb(agent.pid)
        readings = n1 - n0
        lags = sorted(at - __import__("datetime").datetime.fromisoformat(r["ts"]).timestamp()
                      for r, at in collector.readings()[n0:n1])
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
        collector.close()
        agent_requests = plan["requests_per_cycle"] * (t1 - t0)  # one cycle per second
        raw_rate, raw_cpu_per_req = asyncio.run(raw_pymodbus(ports[0], args.registers // 2 + 2 * (args.registers - half),
                                                             3.0))
        agent_cpu_per_req = (c1 - c0) / agent_requests
        out = {
            "devices": args.devices,
            "buses": args.buses,
            "registers_per_device": args.registers,
            "requests_per_cycle_planned": plan["requests_per_cycle"],
            "requests_per_cycle_one_per_register": plan["one_per_register"],
            "readings_per_s": round(readings / (t1 - t0), 1),
            "agent_cpu_s_per_1000_readings": round((c1 - c0) / max(readings, 1) * 1000, 4),
            "agent_cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 1),
            "peak_rss_mb": round(rss, 1),
            "publish_lag_s_p50": round(lags[len(lags) // 2], 4) if lags else None,
            "publish_lag_s_p99": round(lags[int(len(lags) * 0.99)], 4) if lags else None,
            "raw_pymodbus_requests_per_s": round(raw_rate, 1),
            "raw_pymodbus_cpu_s_per_request": round(raw_cpu_per_req, 6),
            "agent_cpu_s_per_request": round(agent_cpu_per_req, 6),
            "agent_over_raw_cpu_per_request": round(agent_cpu_per_req / raw_cpu_per_req, 2),
            "seconds": args.seconds,
        }
        print(json.dumps(out))
    finally:
        if agent and agent.poll() is None:
            agent.kill()
            agent.wait()
        broker.stop()
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
