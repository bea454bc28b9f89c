"""Physics that hang together, read over the wire where it matters."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from pyModbusTCP.client import ModbusClient

from tests.simulators.conftest import T0, make_runner, site_doc

WATER = [("fresh", "xylem-magflux", "fresh", {}), ("reused", "xylem-magflux", "reused", {})]


def f32(words):
    return struct.unpack(">f", struct.pack(">HH", *words))[0]


def test_energy_total_is_the_integral_of_power(site):
    """Read power every simulated minute and the kWh total at both ends of an hour, over Modbus."""
    client = ModbusClient("127.0.0.1", site.port("gw"), unit_id=1, timeout=2, auto_open=True)
    start = site.clock.now()
    try:
        e0 = f32(client.read_input_registers(72, 2))
        energy_from_power = 0.0
        for minute in range(60):
            site.clock.set(start + minute * 60 + 30)  # power is constant within a simulated minute
            energy_from_power += f32(client.read_input_registers(52, 2)) / 1000 / 60  # W over 1 min -> kWh
        site.clock.set(start + 3600)
        e1 = f32(client.read_input_registers(72, 2))
    finally:
        client.close()
    assert 500 < energy_from_power < 1100  # a 900 kW crusher for an hour
    # float32 near 1e5 kWh resolves 0.008 kWh: "within rounding".
    assert e1 - e0 == pytest.approx(energy_from_power, abs=0.05)


def test_same_seed_same_series_other_seed_other_series(tmp_path):
    times = [T0.timestamp() + k * 977 for k in range(20)]

    def series(seed):
        with make_runner(tmp_path, site_doc(seed=seed)) as sim:
            return [(sim.expected_value("sdm630", "power_total", t), sim.expected_value("dust", "tsp", t)) for t in times]

    assert series(7) == series(7)
    assert series(7) != series(8)


def reuse_ratio(sim, t0: float, t1: float) -> float:
    fresh = sim.expected_value("fresh", "forward_total", t1) - sim.expected_value("fresh", "forward_total", t0)
    reused = sim.expected_value("reused", "forward_total", t1) - sim.expected_value("reused", "forward_total", t0)
    assert fresh > 0 and reused > 0
    return reused / (fresh + reused)


def test_reuse_is_about_88_percent_on_a_normal_day(tmp_path):
    with make_runner(tmp_path, site_doc(WATER)) as sim:
        day = sim.clock._to_epoch(datetime(2025, 6, 3))
        assert reuse_ratio(sim, day, day + 86400) == pytest.approx(0.88, abs=0.01)


def test_reuse_drops_below_85_percent_under_reuse_drop(tmp_path):
    with make_runner(tmp_path, site_doc(WATER, scenarios=["reuse_drop"])) as sim:
        night = sim.clock._to_epoch(datetime(2025, 6, 2, 22, 0))
        assert reuse_ratio(sim, night, night + 6 * 3600) < 0.85
        # and the day's ratio stays near normal outside the window
        assert reuse_ratio(sim, night - 12 * 3600, night - 2 * 3600) == pytest.approx(0.88, abs=0.01)


def test_switching_reuse_drop_at_run_time_keeps_totals_continuous(tmp_path):
    with make_runner(tmp_path, site_doc(WATER)) as sim:
        sim.clock.set(datetime(2025, 6, 2, 23, 0))
        before = sim.expected_value("fresh", "forward_total")
        sim.set_scenarios(["reuse_drop"])
        assert sim.expected_value("fresh", "forward_total") == pytest.approx(before, abs=0.002)
        t = sim.clock.now()
        assert reuse_ratio(sim, t, t + 3600) < 0.85


def test_counter_rollover_gives_the_promised_raw_counts(tmp_path):
    with make_runner(tmp_path, site_doc(WATER)) as sim:
        client = ModbusClient("127.0.0.1", sim.port("gw"), unit_id=1, timeout=2, auto_open=True)
        try:
            sim.inject("fresh", "counter_rollover")
            lo, hi = client.read_holding_registers(608, 2)  # MagFlux U32 litres, low word first
            assert lo | hi << 16 == 2**32 - 5000  # exactly the promised headroom
            litres = 0.0
            start = sim.clock.now()
            for minute in range(10):  # fresh water ~50 m3/h: 5000 L pass in about 6 minutes
                sim.clock.set(start + minute * 60 + 30)
                w = client.read_holding_registers(600, 2)
                litres += struct.unpack(">f", struct.pack(">HH", w[1], w[0]))[0] * 60 * 1000  # m3/s for a minute
            sim.clock.set(start + 600)
            lo, hi = client.read_holding_registers(608, 2)
        finally:
            client.close()
        after = lo | hi << 16
        assert litres > 5000
        assert after < 5000 + litres  # it wrapped to a small value
        assert after == pytest.approx((2**32 - 5000 + litres) % 2**32, abs=1.01)


def test_meter_replaced_restarts_from_the_promised_value(site):
    client = ModbusClient("127.0.0.1", site.port("gw"), unit_id=1, timeout=2, auto_open=True)
    try:
        assert f32(client.read_input_registers(72, 2)) > 1000
        site.inject("sdm630", "meter_replaced")
        assert f32(client.read_input_registers(72, 2)) == 12.5
        power_kw = f32(client.read_input_registers(52, 2)) / 1000
        site.clock.advance(30)
        assert f32(client.read_input_registers(72, 2)) == pytest.approx(12.5 + power_kw * 30 / 3600, abs=1e-4)
        site.inject("flow-fresh", "meter_replaced")
        lo, hi = ModbusClient("127.0.0.1", site.port("gw"), unit_id=3, timeout=2, auto_open=True).read_holding_registers(608, 2)
        assert lo | hi << 16 == 12500  # 12.5 m3 in litres
    finally:
        client.close()


def test_zero_glitch_is_one_read_of_zeros(site):
    client = ModbusClient("127.0.0.1", site.port("gw"), unit_id=1, timeout=2, auto_open=True)
    try:
        site.inject("sdm630", "zero_glitch")
        assert client.read_input_registers(72, 2) == [0, 0]
        assert f32(client.read_input_registers(72, 2)) > 1000
    finally:
        client.close()


def test_dust_follows_blasting_and_the_episode(tmp_path):
    with make_runner(tmp_path, site_doc([("dust", "boling-dust", None, {})])) as sim:
        at = lambda h, m=0: sim.clock._to_epoch(datetime(2025, 6, 2, h, m))  # noqa: E731
        hourly = lambda t: sum(sim.expected_value("dust", "tsp", t + k * 60) for k in range(60)) / 60  # noqa: E731
        assert sim.expected_value("dust", "tsp", at(12, 2)) > sim.expected_value("dust", "tsp", at(11, 50)) + 0.4
        assert hourly(at(10)) < 1.0
        sim.set_scenarios(["dust_episode"])
        assert hourly(at(11)) > 1.0


def test_noise_follows_day_and_night(tmp_path):
    with make_runner(tmp_path, site_doc([("noise", "tranball-qm7903b", None, {})])) as sim:
        day, night = sim.clock._to_epoch(datetime(2025, 6, 2, 14)), sim.clock._to_epoch(datetime(2025, 6, 2, 23))
        leq = lambda t: sum(sim.expected_value("noise", "noise", t + k * 60) for k in range(60)) / 60  # noqa: E731
        assert leq(day) > leq(night) + 5
        assert leq(night) < 50  # class 2 night limit
        sim.set_scenarios(["night_noise"])
        assert leq(night) > 55  # above class 3 night limit
        assert leq(day) < 65


def test_ore_follows_the_plant(tmp_path):
    with make_runner(tmp_path, site_doc([("belt", "siemens-bw500", None, {"rate_tph": 300})])) as sim:
        wed = sim.clock._to_epoch(datetime(2025, 6, 4, 9))  # in the Wednesday maintenance stop
        mon = sim.clock._to_epoch(datetime(2025, 6, 2, 9))
        assert sim.expected_value("belt", "rate", wed) == 0
        assert 250 < sim.expected_value("belt", "rate", mon) < 350
        tons = sim.expected_value("belt", "total_1", mon + 3600) - sim.expected_value("belt", "total_1", mon)
        assert 250 < tons < 350
