"""Benchmark of the edge agent against the simulators on loopback. Prints one JSON line.

    .venv/bin/python bench/agent.py [--seconds 20] [--devices 112] [--buses 8] [--interval 1]

Runs, all on 127.0.0.1:
- the simulators (simulators.site.SiteRunner, in a separate process): `--buses` Modbus TCP gateways
  with the devices spread over them, every device a simulated Eastron SDM630 (profile
  eastron-sdm630: 9 float32 input registers, physics computed per request);
- Mosquitto (Debian package) on a free port;
- the agent as a subprocess (`python -m greenmine agent run`), both of each device's poll groups
  every `--interval` s, default settings otherwise (outbox linger, synchronous=FULL commits);
- a subscriber that stamps each telemetry message on arrival (before parsing it).

Then, against the same simulator in the same run, with the agent stopped: a bare pymodbus loop
(one connection, sequential reads of the agent's first planned request), so that agent overhead is
a ratio (CPU per request, agent / raw pymodbus).

The planner's estimated bus time per cycle (the cost model of docs/agent.md, from `agent plan`)
is reported beside the request counts.

Lag figures (seconds):
- poll_to_puback_s_p50/p99_at_most: from the agent's own histogram
  greenmine_agent_poll_to_puback_seconds (scraped from its /metrics before and after the window):
  the oldest poll in each live batch finished -> the broker's PUBACK. This is "publish of each poll"
  (target 100 ms); a bucket's upper bound, so the true quantile is at most this;

Per reading, from the subscriber:
- publish_lag_s_*: scheduled poll slot (`ts`) -> arrival at the subscriber, end to end. It includes
  the bus: a device polled after 13 others on its gateway starts its poll later than its slot;
- commit_to_arrival_s_*: batch commit (`sent_at`) -> arrival: what the outbox commit, the forwarder,
  paho and the broker add;
- poll_lag_s_*: `ts` -> `sent_at`: waiting for the bus, the poll itself and the linger window.
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
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLK = os.sysconf("SC_CLK_TCK")
PROFILE = "eastron-sdm630"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def split(n_devices: int, n_buses: int) -> list[list[int]]:
    """Device indices per bus (unit id = position on the bus + 1)."""
    return [list(range(b, n_devices, n_buses)) for b in range(n_buses)]


def serve(n_buses: int, n_devices: int) -> None:
    """The simulated site: prints the bound ports as one JSON line, then serves until stdin closes."""
    from greenmine.simulators.config import load_sim_config
    from greenmine.simulators.site import SiteRunner

    servers = []
    for b, devs in enumerate(split(n_devices, n_buses)):
        servers.append({"name": f"gw{b}", "transport": "tcp", "host": "127.0.0.1", "port": 0,
                        "devices": [{"name": f"m{d}", "unit_id": u + 1, "profile": PROFILE,
                                     "params": {"rated_kw": 200 + 10 * d}} for u, d in enumerate(devs)]})
    doc = {"kind": "sim", "site": "bench", "seed": 1, "servers": servers}
    cfg = load_sim_config(REPO / "config" / "bench-site.toml", doc)
    with SiteRunner(cfg, speed=1.0) as sim:
        # The physics computes each meter's day of per-minute values on first use (about 0.2 s of CPU
        # per meter): do it before the clock starts, or the first seconds measure the simulator.
        sim.state()
        print(json.dumps([sim.port(f"gw{b}") for b in range(n_buses)]), flush=True)
        sys.stdin.read()  # the parent closes our stdin (or dies) to stop us


class Subscriber:
    """QoS 1 subscriber on the telemetry topic; stamps arrival before parsing."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}")
        c.on_connect = lambda cl, *a: (cl.subscribe("greenmine/v1/+/+/telemetry", 1), self._ready.set())
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        if not self._ready.wait(10):
            raise SystemExit("bench: subscriber could not connect")

    def _on_message(self, client, userdata, msg) -> None:
        at = time.time()
        with self._lock:
            self.messages.append((at, msg.payload))

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def raw_pymodbus(port: int, function: int, address: int, count: int, seconds: float) -> tuple[float, float]:
    """Requests/s and CPU s/request of bare sequential pymodbus reads of one request."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0)
    await client.connect()
    read = client.read_input_registers if function == 4 else client.read_holding_registers
    n = 0
    t0, c0 = time.monotonic(), time.process_time()
    while time.monotonic() - t0 < seconds:
        rr = await read(address, count=count, device_id=1)
        assert not rr.isError(), rr
        n += 1
    dt, dc = time.monotonic() - t0, time.process_time() - c0
    client.close()
    return n / dt, dc / n


POLL_TO_PUBACK = "greenmine_agent_poll_to_puback_seconds"


def histogram(port: int, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a histogram on the agent's /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q of the observations made between two scrapes."""
    total = after.get(float("inf"), 0) - before.get(float("inf"), 0)
    if total <= 0:
        return None
    for le in sorted(after):
        if after[le] - before.get(le, 0) >= q * total:
            return le
    return None


def pct(xs: list[float], p: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 4) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20, help="measured window, after a warm-up")
    ap.add_argument("--devices", type=int, default=112, help="simulated SDM630 meters (9 readings each per cycle)")
    ap.add_argument("--buses", type=int, default=8, help="Modbus TCP gateways the meters are spread over")
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval of both poll groups, s")
    ap.add_argument("--linger-ms", type=int, default=None, help="override outbox.linger_ms (default: the agent's)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.buses, args.devices)
        return 0

    from greenmine.agent.cli import plan_doc
    from greenmine.agent.config import load_agent_config
    from tests.agent.helpers import write_config
    from tests.support.services import Mosquitto

    tmp = Path(tempfile.mkdtemp(prefix="greenmine-bench-"))
    sim = subprocess.Popen([sys.executable, __file__, "--serve", "--buses", str(args.buses), "--devices", str(args.devices)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
    ports = json.loads(sim.stdout.readline())
    broker = Mosquitto(tmp)
    broker.start()
    agent = None
    sub = None
    try:
        devices = []
        for b, devs in enumerate(split(args.devices, args.buses)):
            devices += [{"name": f"m{d}", "bus": f"b{b}", "unit_id": u + 1, "profile": PROFILE,
                         "poll_groups": {"fast": args.interval, "totals": args.interval}} for u, d in enumerate(devs)]
        buses = [{"name": f"b{i}", "transport": "tcp", "host": "127.0.0.1", "port": p, "timeout_ms": 1000}
                 for i, p in enumerate(ports)]
        outbox = {} if args.linger_ms is None else {"linger_ms": args.linger_ms}
        from tests.support.services import free_port

        metrics_port = free_port()
        cfg_path = write_config(tmp / "agent.toml", broker_port=broker.port, buses=buses, devices=devices,
                                outbox=outbox, mqtt_extra={"max_inflight": 100}, top={"metrics_port": metrics_port})
        plan = plan_doc(load_agent_config(cfg_path))
        first = plan["devices"][0]["groups"][0]["requests"][0]
        sub = Subscriber(broker.port)
        agent = subprocess.Popen([sys.executable, "-m", "greenmine", "--log-level", "warning", "agent", "run",
                                  "--config", str(cfg_path)], cwd=REPO)
        time.sleep(3.0)  # a benchmark measures a steady state: the warm-up is part of the method
        n0, c0, t0, h0 = sub.count(), cpu_s(agent.pid), time.monotonic(), histogram(metrics_port, POLL_TO_PUBACK)
        time.sleep(args.seconds)
        n1, c1, t1, h1 = sub.count(), cpu_s(agent.pid), time.monotonic(), histogram(metrics_port, POLL_TO_PUBACK)
        rss = peak_rss_mb(agent.pid)
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
        sub.close()

        readings = 0
        lag, commit_lag, poll_lag = [], [], []
        for at, payload in sub.messages[n0:n1]:
            doc = json.loads(payload)
            sent = datetime.fromisoformat(doc["sent_at"]).timestamp()
            for r in doc["readings"]:
                ts = datetime.fromisoformat(r["ts"]).timestamp()
                lag.append(at - ts)
                commit_lag.append(at - sent)
                poll_lag.append(sent - ts)
                readings += 1
        lag.sort(), commit_lag.sort(), poll_lag.sort()
        cycles = (t1 - t0) / args.interval
        agent_requests = plan["requests_per_cycle"] * cycles
        raw_rate, raw_cpu_per_req = asyncio.run(raw_pymodbus(ports[0], first["function"], first["address"],
                                                             first["count"], 3.0))
        agent_cpu_per_req = (c1 - c0) / agent_requests
        out = {
            "devices": args.devices,
            "buses": args.buses,
            "profile": PROFILE,
            "interval_s": args.interval,
            "requests_per_cycle_planned": plan["requests_per_cycle"],
            "requests_per_cycle_one_per_register": plan["one_per_register"],
            # the planner's estimate (docs/agent.md "Planner"): the bus time one cycle of every group takes,
            # summed over the buses, and per bus on average (the buses run concurrently)
            "estimated_bus_time_s_per_cycle": round(plan["bus_time_s"], 4),
            "estimated_bus_time_s_per_cycle_per_bus": round(plan["bus_time_s"] / args.buses, 4),
            "readings_per_s": round(readings / (t1 - t0), 1),
            "batches_per_s": round((n1 - n0) / (t1 - t0), 1),
            "agent_cpu_s_per_1000_readings": round((c1 - c0) / max(readings, 1) * 1000, 4),
            "agent_cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 1),
            "peak_rss_mb": round(rss, 1),
            "publish_lag_s_p50": pct(lag, 0.5),
            "publish_lag_s_p99": pct(lag, 0.99),
            "poll_lag_s_p50": pct(poll_lag, 0.5),
            "poll_lag_s_p99": pct(poll_lag, 0.99),
            "poll_to_puback_s_p50_at_most": bucket_quantile(h0, h1, 0.5),
            "poll_to_puback_s_p99_at_most": bucket_quantile(h0, h1, 0.99),
            "commit_to_arrival_s_p50": pct(commit_lag, 0.5),
            "commit_to_arrival_s_p99": pct(commit_lag, 0.99),
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
        sim.stdin.close()
        try:
            sim.wait(15)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
