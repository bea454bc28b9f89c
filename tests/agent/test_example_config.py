"""The agent's example config loads and plans (the example is documentation; it must not rot)."""

from greenmine import CONFIG_DIR
from greenmine.agent.config import load_agent_config
from greenmine.agent.cli import plan_doc


def test_minimal_example_loads_and_plans():
    cfg = load_agent_config(CONFIG_DIR / "agent.minimal.toml")
    doc = plan_doc(cfg)
    assert doc["requests_per_cycle"] < doc["one_per_register"]
    crusher = next(d for d in doc["devices"] if d["device"] == "crusher-1")
    for g in crusher["groups"]:
        for r in g["requests"]:
            assert r["address"] + r["count"] - 1 < 60 or r["address"] > 69
