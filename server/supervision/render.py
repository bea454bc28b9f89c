"""Writing a report (`reports.py`) as JSON, XLSX (openpyxl: one sheet per part, numbers as numbers) and PDF
(WeasyPrint: Chinese first, tables and SVG charts drawn here, fonts from Debian's fonts-noto-cjk).

Only this module imports openpyxl and weasyprint; their failures become `RenderError`.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path


class RenderError(Exception):
    pass


def write_json(report: dict, path: Path) -> Path:
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


_BAD_SHEET = re.compile(r"[\[\]:*?/\\]")


def _sheet_name(title: str, used: set[str]) -> str:
    name = _BAD_SHEET.sub(" ", title)[:31].strip() or "sheet"
    base, i = name, 2
    while name in used:
        name = f"{base[:28]}-{i}"
        i += 1
    used.add(name)
    return name


def write_xlsx(report: dict, path: Path) -> Path:
    try:
        from openpyxl import Workbook
        from openpyxl.styles import Font
    except ImportError as exc:
        raise RenderError(f"XLSX needs openpyxl: pip install 'greenmine[server]' ({exc})") from exc
    wb = Workbook()
    cover = wb.active
    cover.title = "说明 About"
    used = {cover.title}
    cover.append([report["title_zh"]])
    cover.append([report["title_en"]])
    cover["A1"].font = Font(bold=True, size=14)
    for k in ("month", "prefecture", "year", "until", "generated_at"):
        if k in report:
            cover.append([k, report[k]])
    for n in report.get("notes", []):
        cover.append([n])
    cover.append(["依据 indicator source", report["indicators"]["source"]])
    for part in report["parts"]:
        ws = wb.create_sheet(_sheet_name(part["title"], used))
        ws.append(part["columns"])
        for c in ws[1]:
            c.font = Font(bold=True)
        for row in part["rows"]:
            ws.append([v if v is None or isinstance(v, (int, float, str)) else str(v) for v in row])
        ws.freeze_panes = "A2"
        for i, col in enumerate(part["columns"], 1):
            ws.column_dimensions[ws.cell(1, i).column_letter].width = min(40, max(10, len(str(col)) + 2))
    try:
        wb.save(path)
    except OSError as exc:
        raise RenderError(f"cannot write {path}: {exc}") from exc
    return path


# --- charts -------------------------------------------------------------------


def bar_chart(labels: list[str], values: list[float | None], *, limit: float | None = None, unit: str = "",
              width: int = 680, height: int = 180, good_below: bool = True) -> str:
    """An SVG bar chart; bars on the wrong side of `limit` are red, the limit a dashed line. None: no bar."""
    pad_l, pad_b, pad_t = 44, 22, 8
    vals = [v for v in values if v is not None]
    top = max(vals + ([limit] if limit is not None else []) + [0.0]) or 1.0  # an empty chart still has an axis
    top *= 1.1
    n = max(1, len(values))
    bw = (width - pad_l - 4) / n
    h = height - pad_b - pad_t
    y = lambda v: pad_t + h - h * (v / top)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="Noto Sans CJK SC, sans-serif" font-size="9">',
           f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{width - 4}" y2="{pad_t + h}" stroke="#444"/>',
           f'<text x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end">{top / 1.1:.4g}</text>',
           f'<text x="{pad_l - 4}" y="{pad_t + h}" text-anchor="end">0</text>',
           f'<text x="2" y="{pad_t + h / 2}">{html.escape(unit)}</text>']
    for i, v in enumerate(values):
        if v is None:
            continue
        bad = limit is not None and ((v > limit) if good_below else (v < limit))
        x = pad_l + i * bw
        out.append(f'<rect x="{x + 0.5:.1f}" y="{y(v):.1f}" width="{max(1.0, bw - 1):.1f}" height="{pad_t + h - y(v):.1f}" '
                   f'fill="{"#c0392b" if bad else "#2e86c1"}"/>')
    step = max(1, n // 10)
    for i in range(0, n, step):
        out.append(f'<text x="{pad_l + i * bw + bw / 2:.1f}" y="{height - 8}" text-anchor="middle">{html.escape(labels[i])}</text>')
    if limit is not None:
        out.append(f'<line x1="{pad_l}" y1="{y(limit):.1f}" x2="{width - 4}" y2="{y(limit):.1f}" stroke="#c0392b" '
                   f'stroke-dasharray="4 3"/><text x="{width - 6}" y="{y(limit) - 2:.1f}" text-anchor="end" fill="#c0392b">'
                   f'{limit:g}</text>')
    out.append("</svg>")
    return "".join(out)


def _charts(report: dict) -> list[tuple[str, str]]:
    if report["schema"] == "greenmine.report.monthly.v1":
        ev = report["evidence"]
        if not ev.get("daily"):
            return []
        days = ev["daily"]
        labels = [r["date"][8:] for r in days]
        return [
            ("选矿废水循环利用率(日)Daily water reuse %", bar_chart(labels, [r["reuse_pct"] for r in days],
                                                         limit=ev["water"]["limit_pct"], unit="%", good_below=False)),
            ("颗粒物最大小时均值 Max 1-h TSP mg/m³", bar_chart(labels, [r["dust_max_hourly_mgm3"] for r in days],
                                                          limit=ev["dust"]["limit_mgm3"], unit="mg/m³")),
            ("日用电量 Daily electricity kWh", bar_chart(labels, [r["kwh"] for r in days], unit="kWh")),
            ("夜间等效声级 Night Leq dB(A)", bar_chart(labels, [r["noise_night_leq_db"] for r in days],
                                                  limit=ev["noise"]["night_limit_db"], unit="dB(A)")),
        ]
    rows = next(p for p in report["parts"] if p["id"] == "mines")["rows"]
    monitored = [r for r in rows if r[8] is not None]
    if not monitored:
        return []
    return [("各矿循环利用率达标率 Reuse compliance rate per mine %",
             bar_chart([r[0][-12:] for r in monitored], [r[8] for r in monitored], unit="%"))]


# --- PDF ----------------------------------------------------------------------

_CSS = """
@page { size: A4 landscape; margin: 14mm 12mm; @bottom-right { content: counter(page) " / " counter(pages); font-size: 8pt; } }
body { font-family: "Noto Sans CJK SC", "Noto Sans CJK", sans-serif; font-size: 8.5pt; color: #111; }
h1 { font-size: 15pt; margin: 0 0 2pt 0; } h2 { font-size: 11pt; margin: 12pt 0 4pt 0; border-bottom: 1px solid #888; }
.en { color: #555; font-size: 10pt; margin-bottom: 6pt; }
table { border-collapse: collapse; width: 100%; margin-bottom: 6pt; }
th, td { border: 0.5pt solid #999; padding: 1.5pt 3pt; text-align: left; vertical-align: top; }
th { background: #eef2f5; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.indicators td:first-child, table.daily td:first-child { white-space: nowrap; }
.note { font-size: 8pt; color: #333; margin: 1pt 0; } .chart { margin: 4pt 0 8pt 0; }
"""


def _fmt(v) -> tuple[str, bool]:
    if v is None:
        return "—", False
    if isinstance(v, bool):
        return ("是" if v else "否"), False
    if isinstance(v, int):
        return str(v), True
    if isinstance(v, float):
        return (f"{v:.2f}" if abs(v) < 1e6 else f"{v:.0f}"), True
    return str(v), False


def to_html(report: dict) -> str:
    e = html.escape
    out = [f"<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><style>{_CSS}</style></head><body>",
           f"<h1>{e(report['title_zh'])}</h1><div class='en'>{e(report['title_en'])}</div>"]
    for n in report.get("notes", []):
        out.append(f"<p class='note'>{e(n)}</p>")
    charts = _charts(report)
    for part in report["parts"]:
        out.append(f"<h2>{e(part['title'])}</h2>")
        if not part["rows"]:
            out.append("<p class='note'>无 / none</p>")
        else:
            out.append(f"<table class='{e(part['id'])}'><thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in part["columns"]) + "</tr></thead><tbody>")
            for row in part["rows"]:
                cells = []
                for v in row:
                    text, num = _fmt(v)
                    cells.append(f"<td class='n'>{e(text)}</td>" if num else f"<td>{e(text)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        if part["id"] == "summary":
            for title, svg in charts:
                out.append(f"<h2>{e(title)}</h2><div class='chart'>{svg}</div>")
    out.append(f"<p class='note'>指标依据 Indicator source: {e(report['indicators']['source'])}</p>")
    out.append(f"<p class='note'>生成 generated {e(report['generated_at'])} · greenmine</p></body></html>")
    return "".join(out)


def write_pdf(report: dict, path: Path) -> Path:
    import logging

    # WeasyPrint logs every layout step at INFO; its warnings (a missing font, a bad CSS rule) still show
    for name in ("weasyprint", "weasyprint.progress", "fontTools"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: pango missing (apt-get install libpango-1.0-0 libpangoft2-1.0-0)
        raise RenderError(f"PDF needs WeasyPrint and pango: {exc}") from exc
    try:
        HTML(string=to_html(report)).write_pdf(path)
    except OSError as exc:
        raise RenderError(f"cannot write {path}: {exc}") from exc
    return path


FORMATS = {"json": write_json, "xlsx": write_xlsx, "pdf": write_pdf}


def write(report: dict, out_dir: Path, stem: str, formats: list[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [FORMATS[f](report, out_dir / f"{stem}.{f}") for f in formats]
