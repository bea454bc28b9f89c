"""HJ 212 message meaning: flags, aggregation, builders, replies, config."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.server.uplink.conftest import point_config
from greenmine.server.uplink.hj212.codec import decode_frame, encode_packet
from greenmine.server.uplink.hj212.config import PointConfig
from greenmine.server.uplink.hj212.messages import (
    DataFlag,
    PeriodKind,
    PeriodValue,
    RealtimeValue,
    Sample,
    aggregate,
    data_reply,
    energy_average,
    flag_from_quality,
    period_start,
    realtime_packet,
)

N, M, B, T, D = DataFlag.N, DataFlag.M, DataFlag.B, DataFlag.T, DataFlag.D


def test_energy_average_is_not_arithmetic() -> None:
    assert energy_average([60.0, 60.0]) == pytest.approx(60.0)
    assert energy_average([50.0, 60.0]) == pytest.approx(10 * math.log10((10**5 + 10**6) / 2))
    assert energy_average([50.0, 60.0]) > 55.0


@pytest.mark.parametrize(
    "samples,expected,flag,avg",
    [
        ([Sample(1.0, N)] * 60, None, N, 1.0),
        ([Sample(1.0, N)] * 45, 60, N, 1.0),            # 75 % coverage: valid
        ([Sample(1.0, N)] * 44, 60, B, 1.0),            # missing samples are B
        ([Sample(1.0, N)] * 50 + [Sample(3.0, T)] * 10, None, T, (50 + 30) / 60),
        ([Sample(1.0, N)] * 20 + [Sample(None, M)] * 40, None, M, 1.0),
        ([Sample(None, M)] * 10 + [Sample(None, D)] * 10, None, D, None),  # tie: D beats M
        ([Sample(None, B)] * 10 + [Sample(None, D)] * 10, None, B, None),  # tie: B beats D
        ([], 60, B, None),
        ([Sample(float("nan"), N)] * 4, None, B, None),
    ],
)
def test_aggregate_rule(samples: list[Sample], expected: int | None, flag: DataFlag, avg: float | None) -> None:
    pv = aggregate(samples, expected=expected)
    assert pv.flag is flag
    assert pv.avg == (pytest.approx(avg) if avg is not None else None)


def test_aggregate_noise_uses_energy_average() -> None:
    pv = aggregate([Sample(50.0), Sample(60.0)], energy=True)
    assert pv.avg == pytest.approx(energy_average([50.0, 60.0]))
    assert (pv.min, pv.max) == (50.0, 60.0)


def test_flag_from_quality() -> None:
    assert flag_from_quality("good") is N
    assert flag_from_quality("out_of_range") is T
    assert flag_from_quality("stale") is B and flag_from_quality("bad") is B
    assert flag_from_quality("bad", in_maintenance=True) is M
    with pytest.raises(ValueError, match="unknown reading quality"):
        flag_from_quality("weird")


def test_realtime_maintenance_staleness_and_scale(tmp_path: Path) -> None:
    now = datetime(2026, 5, 1, 2, 0, 0, tzinfo=timezone.utc)
    point = point_config(
        tmp_path, 1,
        metrics=[
            {"metric": "dust_tsp_mgm3", "code": "a34001", "decimals": 0, "scale": 1000},
            {"metric": "noise_laeq_db", "code": "LA", "decimals": 1, "kind": "noise"},
            {"metric": "dust_pm10_mgm3", "code": "a34002", "decimals": 3},
        ],
        maintenance=[{"device": "noise-1", "start": "2026-05-01T09:00:00+08:00", "end": "2026-05-01T11:00:00+08:00"}],
    )
    p = realtime_packet(point, {
        "dust_tsp_mgm3": RealtimeValue(0.1234, "good", "dust-1", now),
        "noise_laeq_db": RealtimeValue(71.0, "out_of_range", "noise-1", now),
        "dust_pm10_mgm3": RealtimeValue(0.05, "good", "dust-1", datetime(2026, 5, 1, 1, 50, tzinfo=timezone.utc)),
        "unmapped": RealtimeValue(1.0),
    }, now=now, qn="20260501100000000")
    cp = p.cp_values()
    assert cp["a34001-Rtd"] == "123"  # mg/m3 -> ug/m3, 0 decimals
    assert cp["LA-Flag"] == "M"  # maintenance wins over out-of-range
    assert cp["a34002-Flag"] == "B"  # 10 minutes old
    assert not any(k.startswith("unmapped") for k in cp)
    assert decode_frame(encode_packet(p)) == p


def test_data_reply_form() -> None:
    upload = decode_frame(
        "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80"
    )
    reply = encode_packet(data_reply(upload)).decode()
    assert reply.startswith("##0087QN=20160801085857223;ST=91;CN=9014;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&")


def test_period_start_local() -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Shanghai")
    at = datetime(2026, 4, 30, 16, 7, 0, tzinfo=timezone.utc)  # 00:07 on 1 May local
    assert period_start(PeriodKind.DAY, at, tz).isoformat() == "2026-05-01T00:00:00+08:00"
    assert period_start(PeriodKind.MINUTE, at, tz, 5).isoformat() == "2026-05-01T00:05:00+08:00"
    assert period_start(PeriodKind.HOUR, at, tz).isoformat() == "2026-05-01T00:00:00+08:00"


# --------------------------------------------------------------------------- config

BASE = dict(name="p1", mn="010000A8900016F000169DC0", pw="100000", st="39", site="gs-demo", devices=["dust-1", "noise-1"],
            host="127.0.0.1", port=9000)


def test_config_defaults() -> None:
    p = PointConfig(**BASE)
    codes = {m.metric: m.code for m in p.metrics}
    assert codes == {
        "dust_tsp_mgm3": "a34001", "dust_pm10_mgm3": "a34002", "dust_pm25_mgm3": "a34004",
        "noise_laeq_db": "LA", "air_temp_c": "a01001", "humidity_pct": "a01002",
        "pressure_kpa": "a01006", "wind_speed_ms": "a01007", "wind_dir_deg": "a01008",
    }
    assert (p.rtd_interval_s, p.min_interval_min, p.reply_timeout_s, p.max_tries) == (30, 10, 10.0, 3)
    assert p.timezone == "Asia/Shanghai" and p.protocol_version == "2017"
    assert all(f.description for f in PointConfig.model_fields.values())


@pytest.mark.parametrize(
    "override,message",
    [
        ({"rtd_interval_s": 10}, "rtd_interval_s"),
        ({"min_interval_min": 7}, "min_interval_min"),
        ({"protocol_version": "2025"}, "HJ 212-2025's differences are not confirmed"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"st": "91"}, "ST 91 is for system replies"),
        ({"rtd_intervall_s": 30}, "Extra inputs are not permitted"),
        ({"metrics": [{"metric": "a", "code": "a34001", "decimals": 3},
                      {"metric": "a", "code": "a34002", "decimals": 3}]},
         "metrics[1]: metric 'a' already mapped in metrics[0]"),
        ({"metrics": [{"metric": "a", "code": "a34001", "decimals": 3},
                      {"metric": "b", "code": "a34001", "decimals": 3}]},
         "metrics[1]: code 'a34001' already used by metrics[0]"),
        ({"maintenance": [{"device": "d", "start": "2026-05-01T10:00:00+08:00", "end": "2026-05-01T09:00:00+08:00"}]},
         "is not after start"),
    ],
)
def test_config_rejects(override: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        PointConfig(**{**BASE, **override})
    assert message in str(info.value)


def test_docs_toml_example_loads() -> None:
    import re
    import tomllib

    doc = (Path(__file__).resolve().parents[3] / "docs" / "hj212.md").read_text()
    block = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert block, "docs/hj212.md has no toml example"
    data = tomllib.loads(block.group(1))
    points = [PointConfig(**p) for p in data["hj212"]]
    assert points and points[0].mn


def test_server_example_point_loads_when_uncommented(tmp_path) -> None:
    """The commented [[hj212]] block in config/server.example.toml is a valid point of the demo site."""
    from greenmine.checkcmd import load_any

    example = Path(__file__).resolve().parents[3] / "config" / "server.example.toml"
    text = example.read_text(encoding="utf-8")
    start = text.index("# [[hj212]]")
    end = text.find("\n\n", start)  # the block ends at the first blank line; what follows stays as it is
    end = len(text) if end < 0 else end
    block = "\n".join(line[2:] if line.startswith("# ") else line for line in text[start:end].splitlines())
    cfg_file = tmp_path / "server.toml"
    cfg_file.write_text(text[:start] + block + text[end:] + "\n", encoding="utf-8")
    kind, cfg = load_any(cfg_file)
    assert kind == "server"
    (p,) = cfg.hj212
    assert (p.site, p.devices, p.rtd_interval_s) == ("gs-jinchang-cu01", ["dust-north", "noise-east", "weather-mast"], 30)


def test_server_config_rejects_bad_points(tmp_path) -> None:
    from greenmine.configfile import ConfigError
    from greenmine.server.config import load_server_config

    point = dict(BASE, site="gs-demo")
    doc = {"kind": "server", "sites": [{"id": "gs-demo"}], "hj212": [point, dict(point, name="p2")]}
    with pytest.raises(ConfigError, match="MN 010000A8900016F000169DC0 already used by hj212\\[0\\]"):
        load_server_config(tmp_path / "s.toml", doc=doc)
    doc["hj212"] = [dict(point, site="elsewhere")]
    with pytest.raises(ConfigError, match="hj212\\[0\\] 'p1': site 'elsewhere' is not in sites"):
        load_server_config(tmp_path / "s.toml", doc=doc)
    doc["ingest"] = {"unknown_site": "accept"}
    assert load_server_config(tmp_path / "s.toml", doc=doc).hj212[0].site == "elsewhere"
