"""The reports officers file, as one document each (JSON-ready dict) that `render` writes as XLSX and PDF:

- `monthly(...)`: one site's month: the evidence summary, daily table, alerts, counter events, completeness;
- `annual(...)`: a prefecture's year (the report due before 10 December), up to a date for a running year;
- `public_list(...)`: the green-mine list (名录) with the published fields only.

A report is {"schema", "title_zh", "title_en", "notes", ..., "parts": [{"id", "title", "columns", "rows"}]}:
the parts are the tables, one XLSX sheet and one PDF section each; the rest is for machines.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from greenmine.server.supervision import indicators
from greenmine.server.supervision.config import ON_LIST
from greenmine.server.supervision.evidence import Sources, evidence

#: the fields of the public list (名录); the credit code, the officer's email and the history stay internal
PUBLIC_FIELDS = ("name", "prefecture", "county", "mineral", "scale", "level", "listed_since", "status", "licence_no")
LEVEL_ZH = {"national": "国家级", "provincial": "省级", "none": "无"}
STATUS_ZH = {"listed": "在库", "under_rectification": "整改中", "removed": "已移出"}
SCALES = ("大型", "中型", "小型")
LARGE_MEDIUM_TARGET_PCT = 25.0


def _part(pid: str, title: str, columns: list[str], rows: list[list]) -> dict:
    return {"id": pid, "title": title, "columns": columns, "rows": rows}


def _mapping_part() -> dict:
    m = indicators.load()
    return _part("indicators", "指标对应 Indicators", ["一级指标", "indicator", "监测证据 / evidence"], m.rows())


def _summary_rows(ev: dict) -> list[list]:
    if not ev.get("monitored"):
        return [["在线监测 monitoring", "未接入 not monitored", ""]]
    w, d, n, e, a = ev["water"], ev["dust"], ev["noise"], ev["energy"], ev["alerts"]
    return [
        ["选矿废水循环利用率 判定日数 days judged (reuse)", w["days_judged"], "d"],
        [f"达标日数 (≥ {w['limit_pct']:g} %) days compliant", w["days_compliant"], "d"],
        ["未达标日数 days below the floor", w["days_breached"], "d"],
        ["达标率 compliance rate", w["compliance_rate_pct"], "%"],
        ["回用水量 water reused", w["reused_m3"], "m³"],
        ["新水量 fresh water", w["fresh_m3"], "m³"],
        [f"颗粒物超限小时数 hours over dust limit ({d['limit_mgm3']:g} mg/m³)", d["hours_over"], "h"],
        ["颗粒物判定小时数 dust hours judged", d["hours_judged"], "h"],
        ["颗粒物最大小时均值 max 1-h TSP", d["max_hourly_mgm3"], "mg/m³"],
        ["噪声昼间超限日数 days over (day noise)", n["days_over"], "d"],
        ["噪声昼间判定日数 days judged (day noise)", n["days_judged"], "d"],
        ["噪声夜间超限夜数 nights over (night noise)", n["nights_over"], "night"],
        ["噪声夜间判定夜数 nights judged (night noise)", n["nights_judged"], "night"],
        ["用电量 electricity", e["kwh"], "kWh"],
        ["综合能耗 energy (standard coal)", e["kgce"], "kgce"],
        ["处理矿石量 ore processed", e["ore_t"], "t"],
        ["单位矿石能耗 energy intensity", e["intensity_kgce_t"], "kgce/t"],
        ["告警 alerts raised", a["raised"], ""],
        ["已确认 acknowledged", a["acknowledged"], ""],
        ["已解除 resolved", a["resolved"], ""],
        ["解除时长中位数 median time to resolve", a["median_resolve_h"], "h"],
    ]


def _completeness_rows(ev: dict) -> list[list]:
    if not ev.get("monitored"):
        return []
    return [
        ["选矿废水 water reuse (days)", ev["water"]["completeness_pct"], ev["water"]["days_with_value"], ev["water"]["days_expected"]],
        ["能耗 energy (days)", ev["energy"]["completeness_pct"], ev["energy"]["days_with_value"], ev["water"]["days_expected"]],
        ["颗粒物 dust (hours)", ev["dust"]["completeness_pct"], ev["dust"]["hours_judged"], ev["dust"]["hours_expected"]],
        ["噪声 noise (day and night periods)", ev["noise"]["completeness_pct"], ev["noise"]["days_judged"] + ev["noise"]["nights_judged"],
         2 * ev["days"]],
    ]


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def monthly(cfg, src: Sources, reg, site_id: str, year: int, month: int) -> dict:
    d0 = date(year, month, 1)
    d1 = date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    ev = evidence(cfg, src, site_id, d0, d1)
    mine = reg.mine(site_id) if reg is not None else None
    name = (mine.name if mine else None) or ev.get("name") or site_id
    daily_cols = ["日期 date", "循环利用率 reuse %", "回用 reused m³", "新水 fresh m³", "完整率 completeness %", "判定 judged",
                  "用电 kWh", "能耗 kgce", "单耗 kgce/t", "颗粒物最大小时均值 max 1-h TSP mg/m³", "颗粒物超限小时 dust h over",
                  "昼间 Leq dB(A)", "夜间 Leq dB(A)"]
    daily = [[r["date"], r["reuse_pct"], r["reused_m3"], r["fresh_m3"], r["reuse_completeness_pct"], r["reuse_judged"] or "—",
              r["kwh"], r["kgce"], r["intensity_kgce_t"], r["dust_max_hourly_mgm3"], r["dust_hours_over"],
              r["noise_day_leq_db"], r["noise_night_leq_db"]] for r in ev.get("daily", [])]
    alerts = [[x["id"], x["rule"], x["title_zh"], x["subject"], x["severity"], x["state"], x["fired"], x["resolved"] or "—",
               x["acknowledged_by"] or "—", x["value"], x["limit"], x["unit"]] for x in ev.get("alert_list", [])]
    events = [[x["time"], x["device"], x["metric"], x["kind"], x["prev"], x["new"], x["detail"]] for x in ev.get("counter_events", [])]
    notes = [
        "数据来自监测服务的 KPI 与告警记录(与 greenmine kpi show 相同),未以其他规则重新计算。"
        " / Numbers are the monitor's stored KPIs and alerts (what `greenmine kpi show` prints), never recomputed.",
        "数据不完整的时段不判定。 / Incomplete periods are reported but not judged.",
    ]
    if not ev.get("monitored"):
        notes.append("该矿山未接入在线监测。 / This mine is not monitored.")
    elif not ev.get("has_data"):
        notes.append("本月无监测数据。 / No monitoring data this month.")
    return {
        "schema": "greenmine.report.monthly.v1",
        "title_zh": f"{name} 绿色矿山月度监测报告 {year:04d}年{month:02d}月",
        "title_en": f"{name}: green-mine monthly monitoring report, {year:04d}-{month:02d}",
        "generated_at": _now_iso(), "site": site_id, "month": f"{year:04d}-{month:02d}",
        "mine": mine.as_dict() if mine else None, "evidence": ev, "notes": notes,
        "indicators": {"source": indicators.load().source, "rows": indicators.load().rows()},
        "parts": [
            _part("summary", "摘要 Summary", ["项目 item", "数值 value", "单位 unit"], _summary_rows(ev)),
            _part("daily", "日数据 Daily", daily_cols, daily),
            _part("alerts", "告警 Alerts", ["编号 id", "规则 rule", "内容", "对象 subject", "级别 severity", "状态 state",
                                             "触发 fired", "解除 resolved", "确认 acked by", "值 value", "限值 limit", "单位 unit"], alerts),
            _part("counter_events", "计数器事件 Counter events", ["时间 time", "设备 device", "指标 metric", "类型 kind",
                                                              "前值 prev", "新值 new", "说明 detail"], events),
            _part("completeness", "数据完整率 Completeness", ["数据 data", "完整率 %", "有值时段 periods with value",
                                                          "应有时段 periods expected"], _completeness_rows(ev)),
            _mapping_part(),
        ],
    }


def annual(cfg, src: Sources, reg, prefecture: str, year: int, until: date | None = None) -> dict:
    y0 = date(year, 1, 1)
    y_end = date(year, 12, 31)
    end = min(y_end, until) if until else y_end
    if end < y0:
        raise ValueError(f"--until {until} is before the year {year}")
    partial = end < y_end
    before = y0 - timedelta(days=1)
    mines = reg.mines(prefecture)
    if not mines:
        raise ValueError(f"no mines of prefecture {prefecture!r} in the registry")

    def on_list(m, day):
        return reg.listed_on(m.id, day)

    def level_on(m, day):
        s = reg.status_on(m.id, day)
        return s[1] if s else None

    start_list = [m for m in mines if on_list(m, before)]
    end_list = [m for m in mines if on_list(m, end)]
    entered, removed = [], []
    for m in mines:
        for h in reg.history(m.id):
            if not (y0.isoformat() <= h.day <= end.isoformat()):
                continue
            was = h.prev_status in ON_LIST and h.prev_level not in (None, "none")
            now = h.status in ON_LIST and h.level != "none"
            if now and not was:
                entered.append([m.id, m.name, h.day, LEVEL_ZH.get(h.level, h.level), h.reason])
            if was and not now:
                removed.append([m.id, m.name, h.day, STATUS_ZH.get(h.status, h.status), h.reason])

    def matrix(lst, day):
        rows = []
        for lv in ("national", "provincial"):
            row = [LEVEL_ZH[lv] + " " + lv]
            for sc in SCALES:
                row.append(sum(1 for m in lst if level_on(m, day) == lv and m.scale == sc))
            row.append(sum(1 for m in lst if level_on(m, day) == lv))
            rows.append(row)
        rows.append(["合计 total"] + [sum(1 for m in lst if m.scale == sc) for sc in SCALES] + [len(lst)])
        return rows

    lm_end = sum(1 for m in end_list if m.scale in ("大型", "中型"))
    lm_all = sum(1 for m in mines if m.scale in ("大型", "中型"))
    share_listed = round(100.0 * lm_end / len(end_list), 2) if end_list else None
    share_all = round(100.0 * lm_all / len(mines), 2)

    ids = {m.id for m in mines}
    in_year = lambda d: d is not None and y0.isoformat() <= d <= end.isoformat()  # noqa: E731
    checks = [c for c in reg.checks() if c.mine_id in ids and in_year(c.day or c.planned_day)]
    draws = [d for d in reg.draws(prefecture) if in_year(d["day"])]
    rects = [r for r in reg.rectifications() if r.mine_id in ids]
    opened = [r for r in rects if in_year(r.opened)]
    closed = [r for r in rects if in_year(r.closed)]
    overdue = [r for r in rects if r.opened <= end.isoformat() and (r.closed is None or r.closed > end.isoformat())
               and end > date.fromisoformat(r.deadline)] + [r for r in closed if r.status == "lapsed"]

    per_mine, not_measured = [], []
    totals = {"days_judged": 0, "days_compliant": 0, "hours_over": 0, "hours_judged": 0, "days_over": 0, "nights_over": 0,
              "noise_days_judged": 0, "nights_judged": 0, "kwh": 0.0, "kgce": 0.0, "alerts": 0, "resolved": 0}
    evidence_by_mine = {}
    for m in mines:
        if not (on_list(m, end) or on_list(m, before) or any(r[0] == m.id for r in entered + removed)):
            continue
        ev = evidence(cfg, src, m.id, y0, end)
        evidence_by_mine[m.id] = ev
        if not ev["monitored"]:
            not_measured.append([m.id, m.name, "未接入在线监测 not monitored", ""])
            per_mine.append([m.id, m.name, m.scale, LEVEL_ZH.get(m.level, m.level), STATUS_ZH.get(m.status, m.status), "未监测 not monitored"]
                            + [None] * 9)
            continue
        w, d, n, e, a = ev["water"], ev["dust"], ev["noise"], ev["energy"], ev["alerts"]
        if not ev["has_data"]:
            not_measured.append([m.id, m.name, "已接入但无数据 monitored, no data", f"{y0} – {end}"])
        elif w["completeness_pct"] is not None and w["completeness_pct"] < cfg.kpi.completeness_min_pct:
            not_measured.append([m.id, m.name, f"数据不完整 incomplete: water {w['completeness_pct']} %, "
                                 f"{w['days_expected'] - w['days_judged']} day(s) not judged",
                                 ", ".join(_ranges(ev["incomplete_days"]))])
        if ev["has_data"]:
            span = f"{y0} – {end}"
            if not d["monitors"]:
                not_measured.append([m.id, m.name, "颗粒物无数据 no boundary dust data", span])
            if not n["monitors"]:
                not_measured.append([m.id, m.name, "噪声无数据 no boundary noise data", span])
            if e["kgce"] is None:
                not_measured.append([m.id, m.name, "能耗无数据 no energy data", span])
            if e["ore_t"] is None:
                not_measured.append([m.id, m.name, "矿石量无数据 no ore tonnage: no intensity", span])
        per_mine.append([m.id, m.name, m.scale, LEVEL_ZH.get(m.level, m.level), STATUS_ZH.get(m.status, m.status),
                         "已监测 monitored", w["days_judged"], w["days_compliant"], w["compliance_rate_pct"], d["hours_over"],
                         n["days_over"], n["nights_over"], e["kwh"], e["kgce"], e["intensity_kgce_t"]])
        totals["days_judged"] += w["days_judged"]
        totals["days_compliant"] += w["days_compliant"]
        totals["hours_over"] += d["hours_over"]
        totals["hours_judged"] += d["hours_judged"]
        totals["days_over"] += n["days_over"]
        totals["nights_over"] += n["nights_over"]
        totals["noise_days_judged"] += n["days_judged"]
        totals["nights_judged"] += n["nights_judged"]
        totals["kwh"] += e["kwh"] or 0.0
        totals["kgce"] += e["kgce"] or 0.0
        totals["alerts"] += a["raised"]
        totals["resolved"] += a["resolved"]
    rate = lambda a, b: round(100.0 * a / b, 2) if b else None  # noqa: E731
    holds = f"数据截至 {end.isoformat()}(年度未结束,部分年度)/ data up to {end.isoformat()} (partial year)" if partial \
        else f"全年数据 {y0} – {y_end} / the whole year"
    summary = [
        ["数据截至 data up to", end.isoformat(), "部分年度 partial year" if partial else "全年 whole year"],
        ["年初在库矿山 listed at the start", len(start_list), before.isoformat()],
        ["期末在库矿山 listed at the end", len(end_list), end.isoformat()],
        ["新入库 entered", len(entered), ""],
        ["移出 removed", len(removed), ""],
        ["在库大中型矿山占比 large and medium share of listed mines", share_listed, f"目标 target ≥ {LARGE_MEDIUM_TARGET_PCT:g} %"],
        ["登记矿山中大中型占比 large and medium share of all registered mines", share_all, f"目标 target ≥ {LARGE_MEDIUM_TARGET_PCT:g} %"],
        ["抽查次数(抽取)draws", len(draws), ""],
        ["完成检查 checks done", sum(1 for c in checks if c.result != "planned"), ""],
        ["检查合格 passed", sum(1 for c in checks if c.result == "pass"), ""],
        ["检查不合格 failed", sum(1 for c in checks if c.result == "fail"), ""],
        ["检查未完成 planned, not done", sum(1 for c in checks if c.result == "planned"), ""],
        ["整改 新开 rectifications opened", len(opened), ""],
        ["整改 关闭 rectifications closed", len(closed), ""],
        ["整改 逾期 rectifications overdue", len({r.id for r in overdue}), ""],
        ["循环利用率 判定日数 reuse days judged (all mines)", totals["days_judged"], "d"],
        ["循环利用率 达标日数 reuse days compliant", totals["days_compliant"], "d"],
        ["循环利用率 达标率 reuse compliance rate", rate(totals["days_compliant"], totals["days_judged"]), "%"],
        ["颗粒物超限小时 dust hours over", totals["hours_over"], "h"],
        ["颗粒物 达标率 dust hours compliant rate", rate(totals["hours_judged"] - totals["hours_over"], totals["hours_judged"]), "%"],
        ["噪声昼间超限日 days over (day noise)", totals["days_over"], "d"],
        ["噪声夜间超限夜 nights over (night noise)", totals["nights_over"], "night"],
        ["噪声 达标率 noise periods compliant rate",
         rate(totals["noise_days_judged"] + totals["nights_judged"] - totals["days_over"] - totals["nights_over"],
              totals["noise_days_judged"] + totals["nights_judged"]), "%"],
        ["用电量 electricity", round(totals["kwh"], 3), "kWh"],
        ["综合能耗 energy", round(totals["kgce"], 3), "kgce"],
        ["告警 alerts raised / resolved", f"{totals['alerts']} / {totals['resolved']}", ""],
    ]
    check_rows = [[c.id, c.draw_id, c.mine_id, c.planned_day, c.day or "—", ", ".join(c.inspectors), c.result, c.findings]
                  for c in checks]
    draw_rows = [[d["id"], d["day"], d["seed"], d["n_mines"], d["n_inspectors"], ", ".join(d["mines"]), ", ".join(d["inspectors"]),
                  len(d["mine_pool"]), len(d["inspector_pool"])] for d in draws]
    rect_rows = [[r.id, r.mine_id, r.check_id, r.opened, r.deadline, r.status, r.closed or "—",
                  "是 yes" if r in overdue else "否 no", r.note] for r in rects if r in opened or r in closed or r in overdue]
    notes = [holds,
             "监测数据来自监测服务的 KPI 与告警记录,未以其他规则重新计算;未监测的指标不评分。"
             " / Evidence is the monitor's stored KPIs and alerts; indicators not measured are not scored.",
             "未监测和数据不完整的矿山见“未测量”表。 / Mines without monitoring or with incomplete data are listed under 'Not measured'."]
    return {
        "schema": "greenmine.report.annual.v1",
        "title_zh": f"{prefecture} {year}年度绿色矿山建设进展报告",
        "title_en": f"{prefecture}: green-mine progress report {year}",
        "generated_at": _now_iso(), "prefecture": prefecture, "year": year, "until": end.isoformat(), "partial": partial,
        "holds_up_to": end.isoformat(), "notes": notes,
        "listed": {"start": len(start_list), "end": len(end_list), "entered": len(entered), "removed": len(removed),
                   "large_medium_share_of_listed_pct": share_listed, "large_medium_share_of_all_pct": share_all,
                   "target_pct": LARGE_MEDIUM_TARGET_PCT},
        "checks": {"draws": len(draws), "done": sum(1 for c in checks if c.result != "planned"),
                   "passed": sum(1 for c in checks if c.result == "pass"), "failed": sum(1 for c in checks if c.result == "fail")},
        "rectifications": {"opened": len(opened), "closed": len(closed), "overdue": len({r.id for r in overdue})},
        "totals": totals, "evidence": evidence_by_mine,
        "indicators": {"source": indicators.load().source, "rows": indicators.load().rows()},
        "parts": [
            _part("summary", "概况 Summary", ["项目 item", "数值 value", "说明 note"], summary),
            _part("list_start", f"年初名录 Listed at the start ({before})", ["级别 level", *SCALES, "合计 total"], matrix(start_list, before)),
            _part("list_end", f"期末名录 Listed at the end ({end})", ["级别 level", *SCALES, "合计 total"], matrix(end_list, end)),
            _part("entered", "新入库 Entered", ["编号 id", "名称 name", "日期 date", "级别 level", "依据 reason"], entered),
            _part("removed", "移出 Removed", ["编号 id", "名称 name", "日期 date", "状态 status", "原因 reason"], removed),
            _part("draws", "双随机抽取 Draws", ["编号 id", "日期 date", "种子 seed", "矿山数 mines", "检查人员数 inspectors",
                                            "抽中矿山 mines drawn", "抽中人员 inspectors drawn", "矿山池 mine pool", "人员池 inspector pool"], draw_rows),
            _part("checks", "抽查 Spot checks", ["编号 id", "抽取 draw", "矿山 mine", "计划 planned", "检查日期 date",
                                              "检查人员 inspectors", "结果 result", "发现问题 findings"], check_rows),
            _part("rectifications", "整改 Rectifications", ["编号 id", "矿山 mine", "检查 check", "开始 opened", "期限 deadline",
                                                          "状态 status", "关闭 closed", "逾期 overdue", "说明 note"], rect_rows),
            _part("mines", "各矿证据 Evidence per mine", ["编号 id", "名称 name", "规模 scale", "级别 level", "状态 status",
                                                       "监测 monitoring", "判定日 days judged", "达标日 days compliant",
                                                       "达标率 rate %", "颗粒物超限小时 dust h over", "昼间超限日 day noise over",
                                                       "夜间超限夜 night noise over", "用电 kWh", "能耗 kgce", "单耗 kgce/t"], per_mine),
            _part("not_measured", "未测量 Not measured", ["编号 id", "名称 name", "情况 what", "时段 periods"], not_measured),
            _mapping_part(),
        ],
    }


def _ranges(days: list[str]) -> list[str]:
    """Consecutive ISO dates folded into 'a – b' ranges."""
    out: list[list[date]] = []
    for s in days:
        d = date.fromisoformat(s)
        if out and (d - out[-1][1]).days == 1:
            out[-1][1] = d
        else:
            out.append([d, d])
    return [a.isoformat() if a == b else f"{a} – {b}" for a, b in out]


def public_list(reg, prefecture: str | None = None, day: date | None = None) -> list[dict]:
    """The published list (名录): mines on the list on `day`, the published fields only, Chinese values."""
    day = day or date.today()
    out = []
    for m in reg.mines(prefecture):
        if not reg.listed_on(m.id, day):
            continue
        d = m.as_dict()
        row = {k: d[k] for k in PUBLIC_FIELDS}
        row["level"] = LEVEL_ZH.get(row["level"], row["level"])
        row["status"] = STATUS_ZH.get(row["status"], row["status"])
        out.append(row)
    return out
