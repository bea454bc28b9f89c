"""Reading mines from CSV or XLSX for `greenmine supervision import`: every row is validated first, and one
bad row means nothing is imported; the error names every bad row (its line, the mine id, the field).

The header row names the fields (`MINE_FIELDS`, English names; `COLUMN_ALIASES` gives the Chinese headers a
prefecture's spreadsheet may use). Unknown columns are an error, so a misspelt header cannot drop a field.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from pathlib import Path

from pydantic import ValidationError

from greenmine.server.supervision.config import MineConfig
from greenmine.server.supervision.registry import MINE_FIELDS

COLUMN_ALIASES = {
    "矿山编号": "id", "矿山名称": "name", "统一社会信用代码": "credit_code", "采矿许可证号": "licence_no",
    "市州": "prefecture", "县区": "county", "矿种": "mineral", "规模": "scale", "绿色矿山级别": "level",
    "入库日期": "listed_since", "名录状态": "status", "第三方评估日期": "assessment_date", "评估机构": "assessor",
    "责任人邮箱": "officer",
}
_VALUE_ALIASES = {
    "level": {"国家级": "national", "省级": "provincial", "无": "none"},
    "status": {"在库": "listed", "整改中": "under_rectification", "已移出": "removed"},
}


class MineImportError(Exception):
    """The file cannot be imported; `errors` lists every problem, one line each."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{source}: nothing imported, {len(errors)} problem(s):\n  " + "\n  ".join(errors))


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.date().isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every row, the header first."""
    if path.suffix.lower() == ".xlsx":
        from openpyxl import load_workbook

        try:
            wb = load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a bad file
            raise MineImportError(str(path), [f"not a readable XLSX file: {type(exc).__name__}: {exc}"]) from None
        try:
            ws = wb.worksheets[0]
            return [(i, [_cell(c) for c in row]) for i, row in enumerate(ws.iter_rows(values_only=True), 1)]
        finally:
            wb.close()
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MineImportError(str(path), [f"not UTF-8 text: {exc}"]) from None
    return [(i, [c.strip() for c in row]) for i, row in enumerate(csv.reader(io.StringIO(text)), 1)]


def read_mines(path: str | Path) -> list[MineConfig]:
    """Every row of the file as a MineConfig. Raises MineImportError listing every bad row (and imports nothing)."""
    path = Path(path)
    rows = [(n, cells) for n, cells in _rows(path) if any(cells)]
    if not rows:
        raise MineImportError(str(path), ["the file is empty: the first row must name the columns"])
    header = [COLUMN_ALIASES.get(h, h) for h in rows[0][1]]
    errors: list[str] = []
    unknown = [h for h in header if h and h not in MINE_FIELDS]
    if unknown:
        errors.append(f"line {rows[0][0]}: unknown column(s) {', '.join(unknown)}; columns: {', '.join(MINE_FIELDS)}")
    missing = [f for f in ("id", "name", "credit_code", "licence_no", "prefecture", "county", "mineral", "scale")
               if f not in header]
    if missing:
        errors.append(f"line {rows[0][0]}: missing column(s) {', '.join(missing)}")
    if errors:
        raise MineImportError(str(path), errors)
    out: list[MineConfig] = []
    seen: dict[str, int] = {}
    licences: dict[str, int] = {}
    for n, cells in rows[1:]:
        if len(cells) > len(header):
            errors.append(f"line {n}: {len(cells)} cells for {len(header)} columns")
            continue
        doc = {h: c for h, c in zip(header, cells) if h and c != ""}
        for field, aliases in _VALUE_ALIASES.items():
            if field in doc:
                doc[field] = aliases.get(doc[field], doc[field])
        label = f'line {n} "{doc.get("id", "?")}"'
        try:
            m = MineConfig.model_validate(doc)
        except ValidationError as exc:
            for e in exc.errors():
                where = ".".join(str(x) for x in e["loc"]) or "row"
                errors.append(f"{label}: {where}: {e['msg'].removeprefix('Value error, ')}")
            continue
        if m.id in seen:
            errors.append(f"{label}: duplicate id (also line {seen[m.id]})")
            continue
        if m.licence_no in licences:
            errors.append(f"{label}: licence_no {m.licence_no} is also on line {licences[m.licence_no]}")
            continue
        seen[m.id] = n
        licences[m.licence_no] = n
        out.append(m)
    if errors:
        raise MineImportError(str(path), errors)
    if not out:
        raise MineImportError(str(path), ["no rows below the header"])
    return out
