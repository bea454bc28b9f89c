"""The indicator mapping, as data (`indicators.toml` beside this module): each monitored KPI -> the national
green-mine first-level indicator(s) it evidences. Loaded and checked here; the reports show it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

PATH = Path(__file__).with_name("indicators.toml")


@dataclass(frozen=True)
class Mapping:
    source: str
    indicators: list[dict]  # name, name_en, in the evaluation's order
    kpis: list[dict]  # kpi, evidence, indicators

    def measured(self) -> set[str]:
        return {i for k in self.kpis for i in k["indicators"]}

    def rows(self) -> list[list]:
        """One row per first-level indicator: name, English name, the KPIs that evidence it, or 'not measured'."""
        out = []
        for ind in self.indicators:
            ks = [k for k in self.kpis if ind["name"] in k["indicators"]]
            out.append([ind["name"], ind["name_en"], "; ".join(k["evidence"] for k in ks) if ks else
                        "未监测:greenmine 无此项证据,不评分 / not measured: no evidence, not scored"])
        return out


def load(path: Path = PATH) -> Mapping:
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    names = [i["name"] for i in doc["indicators"]]
    if len(names) != len(set(names)):
        raise ValueError(f"{path}: duplicate indicator")
    for i, k in enumerate(doc["kpis"]):
        bad = [n for n in k["indicators"] if n not in names]
        if bad:
            raise ValueError(f'{path}: kpis[{i}] "{k["kpi"]}": unknown indicator(s) {", ".join(bad)}')
    return Mapping(doc["source"], doc["indicators"], doc["kpis"])
