"""The indicator mapping is data: six first-level indicators, each monitored KPI mapped to known ones, and the
indicators without evidence stated as not measured (never scored)."""

from __future__ import annotations

import pytest

from greenmine.server.monitor.kpi.model import CATALOG
from greenmine.server.supervision import indicators


def test_mapping_names_the_six_indicators_and_known_kpis():
    m = indicators.load()
    assert [i["name"] for i in m.indicators] == ["矿区环境", "资源开发", "资源综合利用", "绿色低碳", "生态修复与环境治理", "科技创新与规范管理"]
    assert all(k["kpi"] in CATALOG for k in m.kpis)
    assert "自然资规〔2024〕1号" in m.source and "GB/T 44823-2024" in m.source
    rows = {r[0]: r[2] for r in m.rows()}
    assert rows["资源综合利用"].startswith("选矿废水循环利用率")
    assert rows["资源开发"].startswith("未监测") and rows["科技创新与规范管理"].startswith("未监测")


def test_a_kpi_mapped_to_an_unknown_indicator_fails_at_load(tmp_path):
    bad = tmp_path / "indicators.toml"
    bad.write_text(indicators.PATH.read_text(encoding="utf-8").replace('indicators = ["资源综合利用"]', 'indicators = ["资源利用"]'),
                   encoding="utf-8")
    with pytest.raises(ValueError, match='kpis\\[0\\] "water_reuse_daily": unknown indicator\\(s\\) 资源利用'):
        indicators.load(bad)
