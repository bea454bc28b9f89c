"""The `[supervision]` section of the server config: the registry's file, the mines' supervision facts, the
inspector pool and the rectification defaults.

`[[sites]]` stays the source of monitoring settings (limits, time zone, recipients); a mine here adds the
supervision facts (credit code, licence, prefecture, scale, green-mine level, list status). A mine whose
`id` is a configured site is monitored; one that is not is listed but unmonitored, and the reports say so.
Mines can also be imported from CSV or XLSX (`greenmine supervision import`), with the same fields.
"""

from __future__ import annotations

import re
from datetime import date
from enum import Enum

from pydantic import Field, field_validator, model_validator

from greenmine.configbase import IDENT, ConfigModel

#: GB 32100-2015 unified social credit code: 18 characters of 0-9 and A-Z without I, O, S, V, Z.
CREDIT_CODE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}$")
_CREDIT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def credit_code_ok(code: str) -> bool:
    """The GB 32100-2015 check character (the 18th) matches the first 17."""
    if not CREDIT_CODE.match(code):
        return False
    total = sum(_CREDIT_ALPHABET.index(c) * w for c, w in zip(code[:17], _CREDIT_WEIGHTS))
    return _CREDIT_ALPHABET[(31 - total % 31) % 31] == code[17]


class Scale(str, Enum):
    LARGE = "大型"
    MEDIUM = "中型"
    SMALL = "小型"


class Level(str, Enum):
    NATIONAL = "national"
    PROVINCIAL = "provincial"
    NONE = "none"


class ListStatus(str, Enum):
    LISTED = "listed"
    RECTIFYING = "under_rectification"
    REMOVED = "removed"


#: the statuses in which a mine is on the list (名录)
ON_LIST = (ListStatus.LISTED.value, ListStatus.RECTIFYING.value)


class MineConfig(ConfigModel):
    """One mine's supervision facts (a row of the registry)."""

    id: str = Field(pattern=IDENT, description="mine id; the same as its [[sites]] id when it is monitored")
    name: str = Field(min_length=1, max_length=100, description="the mine's name, e.g. 金昌示范铜矿")
    credit_code: str = Field(description="unified social credit code of the mining company (18 characters, GB 32100-2015 check digit)")
    licence_no: str = Field(min_length=1, max_length=64, description="mining licence number (采矿许可证号)")
    prefecture: str = Field(min_length=1, max_length=30, description="prefecture (市州), e.g. 金昌市")
    county: str = Field(min_length=1, max_length=30, description="county or district (县区), e.g. 金川区")
    mineral: str = Field(min_length=1, max_length=30, description="main mineral, e.g. 铜")
    scale: Scale = Field(description="production scale: 大型 | 中型 | 小型")
    level: Level = Field(default=Level.NONE, description="green-mine level: national | provincial | none")
    listed_since: date | None = Field(default=None, description="date the mine entered the green-mine list (required unless level is none)")
    status: ListStatus = Field(
        default=ListStatus.LISTED,
        description="list status on entry: listed | under_rectification | removed; later changes come from checks "
        "and rectifications and are kept in the history",
    )
    assessment_date: date | None = Field(default=None, description="date of the last third-party assessment")
    assessor: str = Field(default="", max_length=100, description="the third-party assessor (评估机构)")
    officer: str = Field(default="", max_length=200, description="email of the officer responsible for the mine; absent: supervision.officers")

    @field_validator("credit_code")
    @classmethod
    def _code(cls, v: str) -> str:
        v = v.strip().upper()
        if not credit_code_ok(v):
            raise ValueError(f"credit_code {v!r}: not a unified social credit code (18 characters, check digit per GB 32100-2015)")
        return v

    @model_validator(mode="after")
    def _listed(self) -> MineConfig:
        if self.level is not Level.NONE and self.listed_since is None:
            raise ValueError(f'mine "{self.id}": a {self.level.value} green mine needs listed_since')
        # a row that leaves the level out (an import updating other facts) keeps the registry's level
        if ("level" in self.model_fields_set and self.level is Level.NONE and self.status is not ListStatus.REMOVED
                and self.listed_since is not None):
            raise ValueError(f'mine "{self.id}": level none with listed_since: give its level (national or provincial)')
        return self


class InspectorConfig(ConfigModel):
    id: str = Field(pattern=IDENT, description="inspector id (as recorded in draws and checks)")
    name: str = Field(min_length=1, max_length=50, description="inspector's name")
    prefecture: str = Field(default="", max_length=30, description="the prefecture whose pool the inspector is in; empty: every prefecture's")
    unit: str = Field(default="", max_length=100, description="the inspector's office, e.g. 金昌市自然资源局")


class SupervisionConfig(ConfigModel):
    db_path: str = Field(
        default="supervision.sqlite",
        description="the registry: mines, list history, draws, checks, rectifications (SQLite); relative to the config file",
    )
    mines: list[MineConfig] = Field(default_factory=list, description="[[supervision.mines]]: mines and their supervision facts")
    inspectors: list[InspectorConfig] = Field(default_factory=list, description="[[supervision.inspectors]]: the inspector pool for draws")
    officers: list[str] = Field(default_factory=list, description="who is told of an overdue rectification when the mine names no officer")
    rectification_days: int = Field(default=90, ge=1, le=730, description="default deadline of a rectification, days after the failed check")
    overdue_check_s: float = Field(
        default=3600.0, ge=0, description="a running monitor checks for overdue rectifications this often (seconds) and "
        "tells their officers once; 0: never (run 'greenmine supervision check-overdue' yourself)",
    )
    report_dir: str = Field(default="reports", description="where `greenmine report` writes its files; relative to the config file")

    @model_validator(mode="after")
    def _unique(self) -> SupervisionConfig:
        for what, items in (("mines", self.mines), ("inspectors", self.inspectors)):
            seen: set[str] = set()
            for i, m in enumerate(items):
                if m.id in seen:
                    raise ValueError(f'{what}[{i}] "{m.id}": duplicate id')
                seen.add(m.id)
        codes: dict[str, str] = {}
        for i, m in enumerate(self.mines):
            if m.licence_no in codes:
                raise ValueError(f'mines[{i}] "{m.id}": licence_no {m.licence_no} is also mine "{codes[m.licence_no]}"\'s')
            codes[m.licence_no] = m.id
        return self
