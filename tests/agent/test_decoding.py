"""Decoding: every data type in every byte/word order, scale/offset, nan markers, valid range, profile overrides.

The expected words are written out by hand from the byte-order definitions (A = most significant
byte), not produced by the codec under test.
"""

from __future__ import annotations

import textwrap

import pytest

from greenmine.agent.codec import DataType, RegisterType, WordOrder
from greenmine.agent.config import load_agent_config
from greenmine.agent.decoding import decode_register, decode_request
from greenmine.agent.planner import plan_registers
from greenmine.agent.registermap import Register
from greenmine.schemas import Quality

# value, data_type, {order: words}
CASES = [
    (0x0102, DataType.UINT16, {"ABCD": [0x0102], "BADC": [0x0201], "CDAB": [0x0102], "DCBA": [0x0201]}),
    (-2, DataType.INT16, {"ABCD": [0xFFFE], "BADC": [0xFEFF], "CDAB": [0xFFFE], "DCBA": [0xFEFF]}),
    (0x01020304, DataType.UINT32,
     {"ABCD": [0x0102, 0x0304], "BADC": [0x0201, 0x0403], "CDAB": [0x0304, 0x0102], "DCBA": [0x0403, 0x0201]}),
    (-0x01020304, DataType.INT32,  # 0xFEFDFCFC
     {"ABCD": [0xFEFD, 0xFCFC], "BADC": [0xFDFE, 0xFCFC], "CDAB": [0xFCFC, 0xFEFD], "DCBA": [0xFCFC, 0xFDFE]}),
    (0x0102030405060708, DataType.UINT64,
     {"ABCD": [0x0102, 0x0304, 0x0506, 0x0708], "BADC": [0x0201, 0x0403, 0x0605, 0x0807],
      "CDAB": [0x0708, 0x0506, 0x0304, 0x0102], "DCBA": [0x0807, 0x0605, 0x0403, 0x0201]}),
    (-1, DataType.INT64, {o: [0xFFFF] * 4 for o in ("ABCD", "BADC", "CDAB", "DCBA")}),
    (1.5, DataType.FLOAT32,  # 0x3FC00000
     {"ABCD": [0x3FC0, 0x0000], "BADC": [0xC03F, 0x0000], "CDAB": [0x0000, 0x3FC0], "DCBA": [0x0000, 0xC03F]}),
    (-2.25, DataType.FLOAT64,  # 0xC002000000000000
     {"ABCD": [0xC002, 0, 0, 0], "BADC": [0x02C0, 0, 0, 0], "CDAB": [0, 0, 0, 0xC002], "DCBA": [0, 0, 0, 0x02C0]}),
]


@pytest.mark.parametrize("value,data_type,by_order", CASES, ids=[c[1].value for c in CASES])
@pytest.mark.parametrize("order", ["ABCD", "BADC", "CDAB", "DCBA"])
def test_every_type_and_order(value, data_type, by_order, order):
    reg = Register(name="r", address=0, data_type=data_type, word_order=order)
    d = decode_register(reg, by_order[order], WordOrder.ABCD)
    assert d.value == pytest.approx(value) and d.quality is Quality.GOOD


def test_profile_default_order_applies_when_register_has_none():
    reg = Register(name="r", address=0, data_type=DataType.UINT32)
    assert decode_register(reg, [0x0304, 0x0102], WordOrder.CDAB).value == 0x01020304


def test_bit_in_register_coils_and_strings():
    b3 = Register(name="b3", address=5, data_type=DataType.BIT, bit=3)
    assert decode_register(b3, [0b1000], WordOrder.ABCD).value == 1.0
    assert decode_register(b3, [0b0111], WordOrder.ABCD).value == 0.0
    coil = Register(name="c", address=0, type=RegisterType.COIL, data_type=DataType.BIT)
    assert decode_register(coil, [1], WordOrder.ABCD).value == 1.0
    s = Register(name="serial", address=0, data_type=DataType.STRING, length=3, publish=False)
    d = decode_register(s, [0x4142, 0x4344, 0x0000], WordOrder.ABCD)
    assert d.raw == "ABCD" and d.value is None  # strings are for `agent read`, never telemetry
    assert decode_register(s, [0x4241, 0x4443, 0], WordOrder.BADC).raw == "ABCD"


def test_scale_offset_nan_marker_and_out_of_range_is_flagged_not_clamped():
    reg = Register(name="t", address=0, data_type=DataType.INT16, scale=0.1, offset=-40, nan_value=-32768,
                   valid_min=-30, valid_max=60)
    assert decode_register(reg, [650], WordOrder.ABCD).value == pytest.approx(25.0)
    d = decode_register(reg, [1500], WordOrder.ABCD)  # 110 degrees: implausible
    assert d.value == pytest.approx(110.0) and d.quality is Quality.OUT_OF_RANGE
    d = decode_register(reg, [0], WordOrder.ABCD)  # -40: below valid_min
    assert d.value == pytest.approx(-40.0) and d.quality is Quality.OUT_OF_RANGE
    assert decode_register(reg, [0x8000], WordOrder.ABCD).value is None  # nan marker: no reading
    f = Register(name="f", address=0, data_type=DataType.FLOAT32)
    assert decode_register(f, [0x7FC0, 0], WordOrder.ABCD).value is None  # NaN: no reading
    assert decode_register(f, [0x7F80, 0], WordOrder.ABCD).value is None  # +Inf: no reading


def test_decode_request_splits_words_among_registers():
    regs = [Register(name="a", address=10, data_type=DataType.UINT16),
            Register(name="b", address=13, data_type=DataType.UINT32)]
    (req,) = plan_registers(regs, max_gap=5)
    assert (req.address, req.count) == (10, 5)
    out = decode_request(req, [7, 0, 0, 0x0001, 0x0002], WordOrder.ABCD)
    assert [d.value for d in out] == [7, 0x00010002]


def test_profile_overrides(tmp_path):
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(textwrap.dedent("""
        site = "s1"
        agent_id = "gw1"
        [[buses]]
        name = "b"
        transport = "tcp"
        host = "127.0.0.1"
        [[devices]]
        name = "m1"
        bus = "b"
        unit_id = 1
        profile = "eastron-sdm630"
        word_order = "CDAB"
        exclude = ["frequency"]
        poll_groups = { fast = 1, totals = 60 }
        registers = [
          { name = "power_total", scale = 1.0, unit = "W", metric = "power_w" },
          { name = "energy_extra", address = 100, type = "input", data_type = "uint32", poll_group = "totals", scale = 0.01, unit = "kWh" },
        ]
    """))
    dev = load_agent_config(cfg_file).devices[0]
    regs = {r.name: r for r in dev.resolved_registers}
    assert "frequency" not in regs
    p = regs["power_total"]
    assert (p.scale, p.unit, p.metric_name, p.address, p.data_type) == (1.0, "W", "power_w", 52, DataType.FLOAT32)
    assert regs["voltage_l1"].valid_max == 500  # untouched profile field kept
    assert dev.default_word_order is WordOrder.CDAB and dev.max_registers == 80
    # the device-level word order override reaches decoding: 1.5 as CDAB
    assert decode_register(p, [0x0000, 0x3FC0], dev.default_word_order).value == 1.5
    assert decode_register(regs["energy_extra"], [0x0002, 0x0001], dev.default_word_order).value == pytest.approx(655.38)
