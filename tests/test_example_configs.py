"""The example configs in config/ are documentation: they must always load."""

from pathlib import Path

import pytest

from greenmine.checkcmd import load_any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config").glob("*.toml"))
PROFILES = sorted((ROOT / "config" / "profiles").glob("*.toml"))


def test_there_are_examples():
    kinds = {load_any(p)[0] for p in EXAMPLES}
    assert {"agent", "server", "sim"} <= kinds, f"config/ lacks an example of each kind: {kinds}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_loads(path: Path):
    load_any(path)


@pytest.mark.parametrize("path", PROFILES, ids=[p.name for p in PROFILES])
def test_profile_loads(path: Path):
    from greenmine.agent.registermap import load_profile

    prof = load_profile(path.stem, [path.parent])
    assert prof.source and prof.registers


def test_demo_configs_form_one_site():
    """The example agent polls exactly the devices the example simulated site serves."""
    from greenmine.agent.config import load_agent_config
    from greenmine.simulators.config import load_sim_config

    agent = load_agent_config(ROOT / "config" / "agent.example.toml")
    site = load_sim_config(ROOT / "config" / "site.example.toml")
    assert agent.site == site.site
    from greenmine.server.config import load_server_config

    server = load_server_config(ROOT / "config" / "server.example.toml")
    assert server.site(agent.site) is not None, "the example server does not know the example site"
    served = {d.name: (s, d) for s in site.servers for d in s.devices}
    polled = {d.name: d for d in agent.devices}
    assert set(polled) == set(served)
    for name, dev in polled.items():
        server, sim_dev = served[name]
        assert dev.unit_id == sim_dev.unit_id, name
        assert dev.profile == sim_dev.profile, name
        bus = agent.bus(dev.bus)
        if server.port:
            assert bus.port == server.port, name
