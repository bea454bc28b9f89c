"""Isolation: dead, slow and exception-replying meters do not delay healthy ones; the failing
ones are reported offline in the status message and recover. Real Modbus servers, real Mosquitto,
the agent in-process (so its /metrics and state can be inspected)."""

from __future__ import annotations

import asyncio
import time
import urllib.request

from agent.config import load_agent_config
from agent.runtime import Agent
from tests.agent.helpers import Collector, write_config
from tests.agent.mbserver import ModbusTestServer, Unit

INTERVAL = 0.25


def device(name, bus, unit, **kw):
    regs = [{"name": "p", "address": 0, "data_type": "uint16", "metric": "power_kw", "scale": 0.1, "unit": "kW",
             "poll_group": "fast"},
            {"name": "e", "address": 1, "data_type": "uint32", "metric": "energy_kwh_total", "unit": "kWh",
             "poll_group": "fast"}]
    return {"name": name, "bus": bus, "unit_id": unit, "registers": regs, "poll_groups": {"fast": INTERVAL},
            "backoff_max_s": 1.0} | kw


def gaps(ts: list[float]) -> list[float]:
    s = sorted(set(ts))
    return [b for a, b in zip(s, s[1:]) if round((b - a) / INTERVAL) != 1]


def test_failing_devices_do_not_stall_healthy_ones_and_recover(tmp_path, mosquitto):
    def units():
        return {1: Unit(holding={0: 123, 1: 0, 2: 7}), 2: Unit(holding={0: 5}), 3: Unit(holding={0: 9})}

    # A slow meter gets its own endpoint: behind a gateway that serialises requests, a reply that
    # comes after the timeout still holds the gateway itself, whatever the client does.
    sa, sb, sc = ModbusTestServer(units()), ModbusTestServer(units()), ModbusTestServer(units())
    sa.units[2].behaviour = "silent"        # device_offline, on the same bus as good_a
    sa.units[3].behaviour = "exception"     # exception_replies, on the same bus as good_a
    sa.units[3].code = 4
    sc.units[2].behaviour = "slow"          # slow_device: slower than its timeout
    sc.units[2].delay_s = 0.6

    async def main():
        pa, pb, pc = await sa.start(), await sb.start(), await sc.start()
        bus = {"transport": "tcp", "host": "127.0.0.1", "timeout_ms": 150, "retries": 1}
        cfg_path = write_config(
            tmp_path / "agent.toml", broker_port=mosquitto.port,
            buses=[{"name": "a", "port": pa} | bus, {"name": "b", "port": pb} | bus, {"name": "c", "port": pc} | bus],
            devices=[device("good_a", "a", 1), device("dead", "a", 2), device("refusing", "a", 3),
                     device("good_b", "b", 1), device("slow", "c", 2)],
            outbox={"linger_ms": 5}, top={"metrics_port": 0},
        )
        agent = Agent(load_agent_config(cfg_path))
        collector = await asyncio.to_thread(Collector, mosquitto.port)
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))

        async def until(pred, timeout_s, what):
            deadline = time.monotonic() + timeout_s
            while not pred():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.02)

        def states():
            st = collector.last_status()
            return {d["device"]: d["state"] for d in st["devices"]} if st else {}

        try:
            await until(lambda: {states().get(n) for n in ("dead", "refusing", "slow")} == {"offline"}, 5,
                        "the failing devices to be reported offline")
            t_offline = time.time()
            await until(lambda: len([t for t in collector.ts_of("good_a", "power_kw") if t > t_offline]) >= 8, 5,
                        "healthy readings while the others are down")
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics").read().decode())
            sa.units[2].behaviour = "ok"
            sa.units[3].behaviour = "ok"
            sc.units[2].behaviour = "ok"
            t_fixed = time.time()
            await until(lambda: all(states().get(n) == "online" for n in ("dead", "refusing", "slow")), 5,
                        "the failed devices to recover")
            await until(lambda: all(any(t > t_fixed for t in collector.ts_of(n)) for n in ("dead", "slow", "refusing")),
                        3, "readings from the recovered devices")
        finally:
            stop.set()
            await run
            await sa.stop()
            await sb.stop()
            await sc.stop()
            await asyncio.to_thread(collector.close)

        for name in ("good_a", "good_b"):
            ts = collector.ts_of(name, "power_kw")
            assert len(ts) >= 10 and gaps(ts) == [], f"{name}: missing slots {gaps(ts)}"
            assert len(ts) == len(set(ts)), f"{name}: a reading arrived twice"
            # on time: each healthy reading reached the subscriber within one interval of its slot
            lag = sorted(at - datetime_ts(r) for r, at in collector.readings(name))
            assert lag[int(len(lag) * 0.95)] < INTERVAL, f"{name}: 95th percentile lag {lag[int(len(lag) * 0.95)]:.3f} s"
        assert agent.metrics.skipped.labels("good_a", "fast")._value.get() == 0
        # a down device produced no invented readings while it was down
        vals = [r["value"] for r, _ in collector.readings("dead") if r["metric"] == "power_kw"]
        assert vals and all(v == 0.5 for v in vals)
        assert 'greenmine_agent_failures_total{device="dead",kind="timeout"}' in metrics
        assert 'greenmine_agent_failures_total{device="refusing",kind="exception"}' in metrics
        assert "greenmine_agent_modbus_requests_total" in metrics and "greenmine_agent_outbox_depth_batches" in metrics
        assert collector.last_status()["state"] == "offline"  # graceful stop publishes offline, retained

    asyncio.run(main())


def datetime_ts(r: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(r["ts"]).timestamp()
