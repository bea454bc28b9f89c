"""The demo agent config polls the demo site: config/agent.example.toml against config/site.example.toml
served by the simulators, real Mosquitto, the agent in-process. Every device of the agent config
publishes every one of its metrics, with the value the simulated meter holds.

Only what a test must change is changed: TCP ports (free ones instead of 15020..), the broker port,
the outbox path, and the poll intervals (shortened so a 60 s group is seen within seconds; the
group names, buses, unit ids, transports and register maps are the example's own).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from greenmine.agent.config import load_agent_config
from greenmine.agent.runtime import Agent
from greenmine import CONFIG_DIR
from greenmine.configfile import read_toml
from greenmine.simulators.config import load_sim_config
from greenmine.simulators.site import SiteRunner
from tests.agent.helpers import Collector
from tests.simulators.conftest import T0

INTERVAL = 0.5


def test_example_agent_config_polls_every_device_of_the_example_site(tmp_path, mosquitto):
    site_doc = read_toml(CONFIG_DIR / "site.example.toml")
    example_ports = {}
    for srv in site_doc["servers"]:
        example_ports[(srv["host"], srv["port"])] = srv["name"]
        srv["port"] = 0
    site_doc.pop("control_port", None)
    site_cfg = load_sim_config(CONFIG_DIR / "site.example.toml", site_doc)

    agent_doc = read_toml(CONFIG_DIR / "agent.example.toml")
    agent_doc["mqtt"] |= {"port": mosquitto.port, "reconnect_min_s": 1, "reconnect_max_s": 1}
    agent_doc["outbox"] = agent_doc.get("outbox", {}) | {"path": str(tmp_path / "outbox.sqlite"), "linger_ms": 5}
    for dev in agent_doc["devices"]:
        dev["poll_groups"] = {g: INTERVAL for g in dev["poll_groups"]}
    sim_transport = {s.name: s.transport.value for s in site_cfg.servers}
    sim_units = {s.name: {d.unit_id: d.name for d in s.devices} for s in site_cfg.servers}

    with SiteRunner(site_cfg, start=T0, speed=0.0) as sim:  # frozen clock: the meters hold still
        bus_server = {}
        for bus in agent_doc["buses"]:
            server = example_ports.get((bus["host"], bus["port"]))
            assert server, f'bus "{bus["name"]}" ({bus["host"]}:{bus["port"]}) is no server of the example site'
            assert bus["transport"] == sim_transport[server], f'bus "{bus["name"]}": transport differs from "{server}"'
            bus_server[bus["name"]] = server
            bus["port"] = sim.port(server)
        for dev in agent_doc["devices"]:
            served = sim_units[bus_server[dev["bus"]]].get(dev["unit_id"])
            assert served == dev["name"], f'device "{dev["name"]}": unit {dev["unit_id"]} on that server is {served}'
        cfg = load_agent_config(CONFIG_DIR / "agent.example.toml", doc=agent_doc)

        expected: dict[str, dict[str, str]] = {}  # device -> metric -> register name
        for dev in cfg.devices:
            expected[dev.name] = {r.metric_name: r.name for r in dev.resolved_registers if r.publish}
        assert set(expected) == {d.name for _, d in site_cfg.devices()}, "the agent config misses meters of the site"

        collector = Collector(mosquitto.port)
        agent = Agent(cfg)

        def missing() -> dict[str, set[str]]:
            got: dict[str, set[str]] = {}
            for r, _ in collector.readings():
                got.setdefault(r["device"], set()).add(r["metric"])
            return {d: set(m) - got.get(d, set()) for d, m in expected.items() if set(m) - got.get(d, set())}

        async def main():
            stop = asyncio.Event()
            run = asyncio.create_task(agent.run(stop))
            try:
                deadline = time.monotonic() + 10
                while missing():
                    assert time.monotonic() < deadline, f"no readings for {missing()}"
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await run

        try:
            asyncio.run(main())
        finally:
            collector.close()

        for r, _ in collector.readings():
            want = sim.expected_value(r["device"], expected[r["device"]][r["metric"]])
            assert r["value"] == pytest.approx(float(want), rel=1e-6, abs=1e-9), (r, want)
    assert all(p.status().state.value == "online" for p in agent.pollers.values())
    failed = [(s.labels, s.value) for m in agent.metrics.failures.collect() for s in m.samples
              if s.name.endswith("_total") and s.value]
    assert failed == [], f"failed requests: {failed}"
