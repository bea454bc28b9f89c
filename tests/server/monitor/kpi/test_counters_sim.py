"""Counter rules on the simulators' counter_rollover, meter_replaced and zero_glitch scenarios.

The meters are read over Modbus like the agent does (every 60 s of simulated
time), their totals run through the counter rules, and the result is compared
with the simulator's true consumption.
"""

import struct

import pytest
from pyModbusTCP.client import ModbusClient

from greenmine.server.monitor.kpi.config import KpiConfig, MeterConfig
from greenmine.server.monitor.kpi.counters import CounterTracker, IncrementFlag
from tests.simulators.conftest import make_runner, site_doc

DEVICES = [("sdm630", "eastron-sdm630", None, {"rated_kw": 900}), ("fresh", "xylem-magflux", "fresh", {})]


def kwh(client):
    return struct.unpack(">f", struct.pack(">HH", *client.read_input_registers(72, 2)))[0]


def litres_m3(client):
    lo, hi = client.read_holding_registers(608, 2)  # U32 litres, low word first
    return (lo | hi << 16) * 0.001


def max_kw(incs):
    return max(i.value / (i.end_ts - i.start_ts) * 3600 for i in incs)


def true_total(sim, device, metric, t):
    m = sim.site.model
    return m.true_total(m.devices[device], metric, t)


def run(sim, client, read, spec, minutes, inject=None, inject_at=None):
    tr = CounterTracker(spec)
    start = sim.clock.now()
    incs, events = [], []
    for minute in range(minutes + 1):
        t = start + 60 * minute
        sim.clock.set(t)
        if inject and minute == inject_at:
            sim.inject(*inject)
        i, e = tr.feed(t, read(client))
        incs += i
        events += e
    return start, start + 60 * minutes, incs, events


@pytest.fixture
def sim(tmp_path):
    with make_runner(tmp_path, site_doc(DEVICES)) as s:
        yield s


def test_rollover_scenario_gives_true_water(sim):
    cfg = KpiConfig(meters=[MeterConfig(device="fresh", metric="water_fresh_m3_total", width_bits=32, scale=0.001)])
    client = ModbusClient("127.0.0.1", sim.port("gw"), unit_id=2, timeout=2, auto_open=True)
    try:
        sim.inject("fresh", "counter_rollover")  # 5000 L below the wrap; ~50 m3/h wraps within minutes
        t0, t1, incs, events = run(sim, client, litres_m3, cfg.counter_spec("s", "fresh", "water_fresh_m3_total"), 15)
    finally:
        client.close()
    assert IncrementFlag.ROLLOVER in [e.kind for e in events]
    true = true_total(sim, "fresh", "water_m3_total", t1) - true_total(sim, "fresh", "water_m3_total", t0)
    assert sum(i.value for i in incs) == pytest.approx(true, abs=0.003)  # litre resolution


def test_zero_glitch_scenario_gives_true_energy(sim):
    client = ModbusClient("127.0.0.1", sim.port("gw"), unit_id=1, timeout=2, auto_open=True)
    try:
        t0, t1, incs, events = run(sim, client, kwh, KpiConfig().counter_spec("s", "sdm630", "energy_kwh_total"), 120,
                                   inject=("sdm630", "zero_glitch"), inject_at=1)
    finally:
        client.close()
    assert [e.kind for e in events].count(IncrementFlag.ZERO) >= 2  # first read and the 50th after
    true = true_total(sim, "sdm630", "energy_kwh_total", t1) - true_total(sim, "sdm630", "energy_kwh_total", t0)
    assert sum(i.value for i in incs) == pytest.approx(true, rel=1e-5, abs=0.01)
    assert max_kw(incs) < 900 * 1.01  # no fake jump: never faster than the meter's rated power


def test_meter_replaced_scenario_counts_from_the_new_meter(sim):
    client = ModbusClient("127.0.0.1", sim.port("gw"), unit_id=1, timeout=2, auto_open=True)
    try:
        t0, t1, incs, events = run(sim, client, kwh, KpiConfig().counter_spec("s", "sdm630", "energy_kwh_total"), 20,
                                   inject=("sdm630", "meter_replaced"), inject_at=10)
    finally:
        client.close()
    (reset,) = [e for e in events if e.kind is IncrementFlag.RESET]
    assert reset.prev > 1000 and reset.new < 12.5 + 15  # old total -> new meter's 12.5 + one minute
    # Only the minute containing the swap is unknowable (old meter's last seconds + new meter's first):
    # it counts nothing, never a jump of the old total or of the new meter's 12.5 start value.
    true = true_total(sim, "sdm630", "energy_kwh_total", t1) - true_total(sim, "sdm630", "energy_kwh_total", t0)
    swap_minute = true_total(sim, "sdm630", "energy_kwh_total", t0 + 600) - true_total(sim, "sdm630", "energy_kwh_total", t0 + 540)
    counted = sum(i.value for i in incs)
    assert counted == pytest.approx(true - swap_minute, rel=1e-5, abs=0.01)
    assert max_kw(incs) < 900 * 1.01
