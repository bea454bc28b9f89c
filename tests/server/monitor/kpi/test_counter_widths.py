"""A total's register width comes from the agent's device profile, through its status message, so
[[kpi.meters]] need not repeat it; a width given there wins, and a disagreement is logged."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from greenmine.agent.config import load_agent_config
from greenmine.agent.config import counter_widths
from greenmine.schemas import STATUS_SCHEMA_V2, AgentState, AgentStatus, WireError, parse_status
from greenmine.server.config import SiteConfig
from greenmine.server.monitor.kpi import periods
from greenmine.server.monitor.kpi.config import KpiConfig, MeterConfig
from greenmine.server.monitor.kpi.engine import KpiEngine
from greenmine.server.monitor.kpi.store import KpiStore, MemorySource
from tests.server.monitor.kpi.test_engine import D, T0

AGENT = """\
site = "s1"
agent_id = "gw1"
[[buses]]
name = "plant"
transport = "tcp"
host = "127.0.0.1"
[[devices]]
name = "m1"
bus = "plant"
unit_id = 1
registers = [
  { name = "kwh", metric = "energy_kwh_total", address = 0, data_type = "uint16", unit = "kWh" },
  { name = "kwh_float", metric = "energy_kwh_float_total", address = 2, data_type = "float32" },
  { name = "kw", metric = "power_kw", address = 4, data_type = "uint16" },
]
[[devices]]
name = "fresh"
bus = "plant"
unit_id = 2
registers = [{ name = "litres", metric = "water_fresh_m3_total", address = 0, data_type = "uint32", scale = 0.001 }]
[[devices]]
name = "spare"
bus = "plant"
unit_id = 3
enabled = false
registers = [{ name = "kwh", metric = "energy_kwh_total", address = 0, data_type = "uint64" }]
"""


def _status_from_agent(tmp_path) -> AgentStatus:
    """What the server receives: the agent's counters, through the wire contract's JSON."""
    (tmp_path / "agent.toml").write_text(AGENT)
    counters = counter_widths(load_agent_config(tmp_path / "agent.toml"))
    status = AgentStatus(schema_=STATUS_SCHEMA_V2, site="s1", agent="gw1", state=AgentState.ONLINE, ts=datetime.now(timezone.utc), counters=counters)
    return parse_status(status.to_json())


def test_the_agent_announces_its_unsigned_integer_totals_with_their_widths(tmp_path):
    st = _status_from_agent(tmp_path)
    assert [(c.device, c.metric, c.width_bits, c.scale) for c in st.counters] == [
        ("m1", "energy_kwh_total", 16, 1.0), ("fresh", "water_fresh_m3_total", 32, 0.001)]  # not floats, rates, disabled


def _wrapping_day(src: MemorySource) -> None:
    v = 65536 - 1000.0
    for i in range(24 * 60 + 1):
        src.add("s1", "energy_kwh_total", "m1", T0 + 60 * i, v % 65536)
        v += 1.0


def _kwh(engine: KpiEngine) -> float:
    out = engine.compute("s1", periods.day(D, "Asia/Shanghai"))
    return {(k.kpi, k.subject): k.value for k in out}[("energy_kwh_daily", "m1")]


def test_a_reported_width_makes_a_rollover_count_without_kpi_meters_and_survives_a_restart(tmp_path):
    src = MemorySource()
    _wrapping_day(src)
    cfg = KpiConfig(meters=[MeterConfig(device="m1", metric="energy_kwh_total", max_rate_per_h=6000)])  # no width
    plain = KpiStore(tmp_path / "plain-kpi.sqlite")
    try:
        assert _kwh(KpiEngine(cfg, [SiteConfig(id="s1")], src, plain)) == pytest.approx(1439)
        assert "reset" in [e[3] for e in plain.counter_events("s1")]  # no width: the wrap looks like a meter swap
    finally:
        plain.close()

    store = KpiStore(tmp_path / "kpi.sqlite")
    try:
        st = _status_from_agent(tmp_path)
        engine = KpiEngine(cfg, [SiteConfig(id="s1")], src, store)
        engine.note_counters(st.site, st.agent, [(c.device, c.metric, c.width_bits, c.scale) for c in st.counters], T0)
        assert _kwh(engine) == pytest.approx(1440)
        assert [e[3] for e in store.counter_events("s1")] == ["rollover"]
    finally:
        store.close()
    store = KpiStore(tmp_path / "kpi.sqlite")  # a restarted monitor (or `kpi recompute`) knows it from the KPI store
    try:
        assert store.counter_widths()[("s1", "m1", "energy_kwh_total")] == (16, 1.0)
        assert _kwh(KpiEngine(cfg, [SiteConfig(id="s1")], src, store)) == pytest.approx(1440)
    finally:
        store.close()


def test_a_width_in_kpi_meters_wins_and_a_disagreement_is_logged_once(tmp_path, caplog):
    src = MemorySource()
    _wrapping_day(src)
    cfg = KpiConfig(meters=[MeterConfig(device="m1", metric="energy_kwh_total", width_bits=32, max_rate_per_h=6000)])
    store = KpiStore(tmp_path / "kpi.sqlite")
    try:
        engine = KpiEngine(cfg, [SiteConfig(id="s1")], src, store)
        engine.note_counters("s1", "gw1", [("m1", "energy_kwh_total", 16, 1.0)], T0)
        caplog.set_level(logging.WARNING, logger="greenmine.server.monitor.kpi.engine")
        assert _kwh(engine) == pytest.approx(1439)  # 32 bits, as configured: a 16-bit wrap is no wrap then
        _kwh(engine)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == ["site s1 meter m1 energy_kwh_total: kpi.meters says 32 bits x 1, the agent's profile "
                            "16 bits x 1; using kpi.meters"]
    finally:
        store.close()


def test_a_status_without_counters_still_parses_and_none_are_sent_when_there_are_none():
    old = AgentStatus(site="s1", agent="gw1", state=AgentState.ONLINE, ts=datetime.now(timezone.utc))
    assert b"counters" not in old.to_json()  # so an agent with no integer totals stays readable by older servers
    assert parse_status(old.to_json()).counters is None
    bad = old.model_dump(mode="json", by_alias=True) | {"counters": [{"device": "m1", "metric": "x_total", "width_bits": 24}]}
    import json

    with pytest.raises(WireError):
        parse_status(json.dumps(bad))


def test_the_monitor_keeps_the_widths_an_agents_status_carries(tmp_path):
    from greenmine.server.monitor.alerts.service import Monitor
    from greenmine.server.store.replica import SeriesReplica

    mon = Monitor(sites=[SiteConfig(id="s1")], replica=SeriesReplica(tmp_path / "replica.sqlite"),
                  kpi_db=tmp_path / "kpi.sqlite", alerts_db=tmp_path / "alerts.sqlite", eml_dir=tmp_path / "mail",
                  clock=lambda: T0)
    try:
        mon.on_messages([], [_status_from_agent(tmp_path)])
        assert mon.kpis.counter_spec("s1", "m1", "energy_kwh_total").width == 65536.0
        assert mon.kpis.counter_spec("s1", "fresh", "water_fresh_m3_total").width == pytest.approx(2**32 * 0.001)
        assert mon.kpis.counter_spec("s1", "other", "energy_kwh_total").width is None
    finally:
        mon.close()
    reopened = KpiStore(tmp_path / "kpi.sqlite")
    try:
        assert set(reopened.counter_widths()) == {("s1", "m1", "energy_kwh_total"), ("s1", "fresh", "water_fresh_m3_total")}
    finally:
        reopened.close()
