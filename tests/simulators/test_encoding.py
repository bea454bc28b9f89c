"""Independent checks of the encoding: each profile's simulated meter is read with
pyModbusTCP (not our client) and decoded by the manual's rules written out here,
not by agent.codec. A profile with the wrong word order must fail."""

from __future__ import annotations

import struct

import pytest
from pyModbusTCP.client import ModbusClient

from tests.simulators.conftest import make_runner, site_doc


def f32_hi_first(r):  # IEEE 754, high word first (Eastron, CHINT)
    return struct.unpack(">f", struct.pack(">HH", r[0], r[1]))[0]


def f32_lo_first(r):  # MagFlux: F32 {low} then {high}
    return struct.unpack(">f", struct.pack(">HH", r[1], r[0]))[0]


def u32_hi_first(r):
    return (r[0] << 16) | r[1]


def s32_hi_first(r):
    v = u32_hi_first(r)
    return v - (1 << 32) if v & 0x80000000 else v


def u32_lo_first(r):
    return r[0] | (r[1] << 16)


def u64_lo_first(r):  # MagFlux U64 {1} (least significant word) .. {4}
    return r[0] | (r[1] << 16) | (r[2] << 32) | (r[3] << 48)


# device -> register -> (function code, address, count, decode to engineering units)
MANUAL_RULES = {
    "sdm630": {  # Eastron: 3xxxx input registers, address = number - 30001, float32 high word first
        "voltage_l1": (4, 0, 2, f32_hi_first),
        "current_l2": (4, 8, 2, f32_hi_first),
        "power_total": (4, 52, 2, lambda r: f32_hi_first(r) / 1000),  # W -> kW
        "frequency": (4, 70, 2, f32_hi_first),
        "import_kwh": (4, 72, 2, f32_hi_first),
    },
    "dtsu666": {  # CHINT: holding, float32 ABCD in secondary units
        "imp_ep": (3, 0x101E, 2, f32_hi_first),
        "ua": (3, 0x2006, 2, lambda r: f32_hi_first(r) * 0.1),
        "ia": (3, 0x200C, 2, lambda r: f32_hi_first(r) * 0.001),
        "pt": (3, 0x2012, 2, lambda r: f32_hi_first(r) * 0.1 / 1000),  # 0.1 W -> kW
        "freq": (3, 0x2044, 2, lambda r: f32_hi_first(r) * 0.01),
    },
    "flow-fresh": {  # MagFlux: least significant word first
        "flow_now": (3, 600, 2, lambda r: f32_lo_first(r) * 3600),  # m3/s -> m3/h
        "forward_total_mm3": (3, 604, 4, lambda r: u64_lo_first(r) * 1e-9),
        "forward_total": (3, 608, 2, lambda r: u32_lo_first(r) / 1000),  # litre -> m3
    },
    "dust": {  # Boling: uint32 high byte/word first, ug/m3
        "tsp": (3, 0, 2, lambda r: u32_hi_first(r) / 1000),
        "pm10": (3, 2, 2, lambda r: u32_hi_first(r) / 1000),
        "pm25": (3, 4, 2, lambda r: u32_hi_first(r) / 1000),
    },
    "noise": {"noise": (3, 0, 1, lambda r: r[0] / 10)},  # tenths of dB(A)
    "belt": {  # BW500: R41,010.. address = number - 40001, uint32 MSW first
        "rate": (3, 1009, 2, lambda r: u32_hi_first(r) / 100),
        "speed": (3, 1013, 2, lambda r: u32_hi_first(r) / 1000),
        "total_1": (3, 1015, 2, lambda r: u32_hi_first(r) / 100),
    },
    "weather": {  # WSC11: 3xxxx input, 32-bit x10
        "wind_speed": (4, 0, 2, lambda r: u32_hi_first(r) / 10),
        "wind_direction": (4, 200, 2, lambda r: u32_hi_first(r) / 10),
        "air_temperature": (4, 400, 2, lambda r: s32_hi_first(r) / 10),
    },
}


def mismatches(sim, port: int, unit_of: dict[str, int], devices=None) -> list[str]:
    """Read every rule's registers over the wire and compare with what the simulator says it serves."""
    problems = []
    for device in devices or MANUAL_RULES:
        rules = MANUAL_RULES[device]
        client = ModbusClient("127.0.0.1", port, unit_id=unit_of[device], timeout=2, auto_open=True)
        try:
            for reg, (fc, address, count, rule) in rules.items():
                read = client.read_holding_registers if fc == 3 else client.read_input_registers
                words = read(address, count)
                assert words is not None, f"{device}.{reg}: no reply ({client.last_error_as_txt})"
                got = rule(words)
                want = sim.expected_value(device, reg)
                if got != pytest.approx(want, rel=1e-6, abs=1e-9):
                    problems.append(f"{device}.{reg}: manual decode {got!r} != served {want!r}")
        finally:
            client.close()
    return problems


def test_every_profile_decodes_by_its_manual(site):
    unit_of = {d.name: d.unit_id for d in site.site.cfg.servers[0].devices}
    assert set(MANUAL_RULES) <= set(unit_of)
    assert mismatches(site, site.port("gw"), unit_of) == []
    # The values are plausible, not zeros that would agree with anything.
    assert 500 < site.expected_value("sdm630", "power_total") < 1100
    assert site.expected_value("flow-fresh", "forward_total") > 1000


def test_a_profile_with_the_wrong_word_order_fails(tmp_path):
    from greenmine import PROFILES_DIR

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = (PROFILES_DIR / "xylem-magflux.toml").read_text()
    assert 'word_order = "CDAB"' in text
    (profiles / "magflux-wrong.toml").write_text(text.replace('word_order = "CDAB"', 'word_order = "ABCD"'))
    doc = site_doc([("flow-fresh", "magflux-wrong", "fresh", {})])
    with make_runner(tmp_path, doc) as sim:
        problems = mismatches(sim, sim.port("gw"), {"flow-fresh": 1}, ["flow-fresh"])
    assert len(problems) == 3, problems  # float, uint64 and uint32 all decode wrongly

