"""Evidence from a real run: two sites, two simulated months of hourly readings through real Mosquitto, the
server's ingest and monitor roles; then the reports, checked against `greenmine kpi show` on the same files.

Figures by hand (hourly reads, every interval present):
- both sites: reuse 9 m³ of 10 per hour = 90 %; 500 kWh and 100 t of ore per hour -> 360,000 kWh in November,
  44,244 kgce (0.1229 kgce/kWh), 0.6145 kgce/t;
- site gs-a has no boundary dust or noise monitor; gs-b has them from 1 November on;
- site gs-b: TSP 0.4 mg/m³; noise 55 dB(A) by day, 45 by night (class 2: ok); a reuse drop on 2026-11-10..12 (7 reused, 3 fresh = 70 %: three days below 85 %) and a dust
  episode on 2026-11-20 10:00-14:00 (1.5 mg/m³: four hours over 1.0).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from greenmine.configfile import dump_toml
from tests.server.conftest import Publisher, server_doc, topic
from tests.support.services import need_binary, wait_for

TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 10, 1, tzinfo=TZ)
END = datetime(2026, 12, 1, tzinfo=TZ)
NOV = datetime(2026, 11, 1, tzinfo=TZ)
SITES = ("gs-a", "gs-b")


def batches(site: str) -> list[bytes]:
    out = []
    n = int((END - START).total_seconds() // 3600)
    reused = fresh = 0.0
    for i in range(n + 1):  # hourly, the last read (Dec 1 00:00) closes November
        ts = START + timedelta(hours=i)
        rs = readings(site, i, ts, reused, fresh)
        # totals are cumulative: the hour starting at ts adds its rate to the next read
        d = site == "gs-b" and datetime(2026, 11, 10, tzinfo=TZ) <= ts < datetime(2026, 11, 13, tzinfo=TZ)
        reused += 7.0 if d else 9.0
        fresh += 3.0 if d else 1.0
        doc = {"schema": "greenmine.telemetry.v1", "site": site, "agent": "gw1", "seq": i, "sent_at": ts.isoformat(),
               "readings": [{**r, "ts": ts.isoformat(), "quality": "good"} for r in rs]}
        out.append(json.dumps(doc).encode())
    return out


def readings(site: str, i: int, ts: datetime, reused: float, fresh: float) -> list[dict]:
    episode = site == "gs-b" and datetime(2026, 11, 20, 10, tzinfo=TZ) <= ts < datetime(2026, 11, 20, 14, tzinfo=TZ)
    night = ts.hour >= 22 or ts.hour < 6
    out = [
        {"device": "reuse1", "metric": "water_reused_m3_total", "value": 1000 + reused, "unit": "m3"},
        {"device": "fresh1", "metric": "water_fresh_m3_total", "value": 500 + fresh, "unit": "m3"},
        {"device": "mill-meter", "metric": "energy_kwh_total", "value": 20000 + 500.0 * i, "unit": "kWh"},
        {"device": "belt-scale", "metric": "ore_t_total", "value": 7000 + 100.0 * i, "unit": "t"},
    ]
    # gs-a has no boundary monitors, and gs-b's were commissioned on 1 November: the reports say what was not
    # measured (and fewer hourly KPI periods keep the test fast)
    if site == "gs-b" and ts >= NOV:
        out += [
            {"device": "dust1", "metric": "dust_tsp_mgm3", "value": 1.5 if episode else 0.4, "unit": "mg/m3"},
            {"device": "noise1", "metric": "noise_laeq_db", "value": 45.0 if night else 55.0, "unit": "dB(A)"},
        ]
    return out


MINES = [
    {"id": "gs-a", "name": "测试甲铜矿", "credit_code": "91620300224400123J", "licence_no": "C-A-1", "prefecture": "测试市",
     "county": "甲区", "mineral": "铜", "scale": "大型", "level": "provincial", "listed_since": "2024-01-10"},
    {"id": "gs-b", "name": "测试乙镍矿", "credit_code": "91620302710200456M", "licence_no": "C-B-2", "prefecture": "测试市",
     "county": "乙县", "mineral": "镍", "scale": "小型", "level": "national", "listed_since": "2026-03-01"},
    {"id": "gs-c", "name": "测试丙石灰岩矿", "credit_code": "91620321MA7L00789Y", "licence_no": "C-C-3", "prefecture": "测试市",
     "county": "乙县", "mineral": "石灰岩", "scale": "小型", "level": "provincial", "listed_since": "2022-05-01"},
]


def config_doc(tmp_path, port: int) -> dict:
    doc = server_doc(tmp_path, port, name="sup")
    doc["kpi"] = {"counter_interval_s": 3600, "sample_interval_s": 3600}
    doc["alerts"] = {"db_path": str(tmp_path / "alerts.sqlite"), "tick_interval_s": 1}
    doc["monitor"] = {"replica_path": str(tmp_path / "replica.sqlite"), "replica_retention_days": 120}
    doc["sites"] = [{"id": s, "name": s, "timezone": "Asia/Shanghai", "recipients": ["officer@example.test"]} for s in SITES]
    doc["notify"] = {"eml_dir": str(tmp_path / "mail")}
    doc["supervision"] = {"db_path": str(tmp_path / "supervision.sqlite"), "report_dir": str(tmp_path / "reports"),
                          "mines": MINES}
    return doc


def run_months(tmp_path, port: int):
    from greenmine.server.app import App
    from greenmine.server.config import load_server_config

    path = tmp_path / "server.toml"
    path.write_text(dump_toml(config_doc(tmp_path, port)))
    cfg = load_server_config(path)
    start = time.time()
    base = (END + timedelta(hours=1)).timestamp()
    app = App(cfg, clock=lambda: base + (time.time() - start))
    app.start()
    pub = Publisher(port, client_id="pub-sup")
    try:
        wait_for(lambda: app.mqtt.subscribed and app.monitor.consumer.mqtt.subscribed, 10, what="both roles subscribed")
        for site in SITES:
            pub.publish_many([(topic(site=site), b) for b in batches(site)])
        store = app.monitor.monitor.kpi_store

        def done():
            # the read at 1 December 00:00 closes November and opens a (short) 1 December
            return (all(len(store.values(s, "water_reuse_daily", START.timestamp(), END.timestamp())) == 61 for s in SITES)
                    and not store.dirty_closed(base) and app.spool.queue.depth()[0] == 0)

        wait_for(done, 150, interval_s=0.5, what="two months of KPIs computed for both sites")
        wait_for(lambda: any(a.rule == "dust_tsp_hourly" and a.state == "resolved"
                             for a in app.monitor.monitor.alerts.alerts(("resolved",))), 15, what="the dust alert resolved")
    finally:
        pub.close()
        app.stop()
    return path, cfg


def kpi_show(capsys, cfg_path, site: str, kpi: str, d0: str, d1: str) -> list[tuple[str, str, float | None, str]]:
    from greenmine.cli import main

    capsys.readouterr()
    assert main(["kpi", "show", "--config", str(cfg_path), "--site", site, "--kpi", kpi, "--from", d0, "--to", d1]) == 0
    out = []
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"^(\S+(?: (?:day|night))?)\s+(\S+)\s+(—|-?[\d.]+)\s.*?(BREACH|ok|not judged)\s*$", line)
        assert m, line
        out.append((m.group(1), m.group(2), None if m.group(3) == "—" else float(m.group(3)), m.group(4)))
    return out


@pytest.mark.timeout(300)
def test_reports_from_two_months_of_real_readings(tmp_path, mosquitto, capsys):
    pdftoppm = need_binary("pdftoppm", "poppler-utils")
    pdftotext = need_binary("pdftotext", "poppler-utils")
    from greenmine.cli import main

    cfg_path, cfg = run_months(tmp_path, mosquitto.port)

    # --- the monthly report of the site with the drop and the episode
    capsys.readouterr()
    assert main(["report", "monthly", "--config", str(cfg_path), "--site", "gs-b", "--month", "2026-11"]) == 0
    files = capsys.readouterr().out.split()
    assert sorted(p.rsplit(".", 1)[1] for p in files) == ["json", "pdf", "xlsx"]
    rep = json.loads((tmp_path / "reports" / "monthly-gs-b-2026-11.json").read_text())
    ev = rep["evidence"]
    assert ev["water"]["days_judged"] == 30 and ev["water"]["days_compliant"] == 27 and ev["water"]["days_breached"] == 3
    assert ev["dust"]["hours_over"] == 4 and ev["dust"]["max_hourly_mgm3"] == 1.5
    assert ev["noise"]["days_over"] == 0 and ev["noise"]["nights_over"] == 0 and ev["noise"]["nights_judged"] >= 29
    assert ev["energy"]["kwh"] == pytest.approx(360_000) and ev["energy"]["kgce"] == pytest.approx(360_000 * 0.1229)
    assert ev["energy"]["intensity_kgce_t"] == pytest.approx(0.6145)
    assert ev["water"]["completeness_pct"] == 100.0
    # the drop and the episode raised alerts in November, and they resolved
    assert ev["alerts"]["by_rule"].get("water_reuse_daily") == 1 and ev["alerts"]["by_rule"].get("dust_tsp_hourly") == 1
    assert ev["alerts"]["resolved"] >= 2 and ev["alerts"]["median_resolve_h"] is not None

    # the same numbers as `greenmine kpi show` over the same files, day by day
    shown = kpi_show(capsys, cfg_path, "gs-b", "water_reuse_daily", "2026-11-01", "2026-11-30")
    assert len(shown) == 30
    for (label, _subj, value, judged), row in zip(shown, ev["daily"]):
        assert label == row["date"] and value == round(row["reuse_pct"], 2)
        assert {"BREACH": "breach", "ok": "ok"}[judged] == row["reuse_judged"]
    assert [r[0] for r in shown if r[3] == "BREACH"] == ["2026-11-10", "2026-11-11", "2026-11-12"]
    (month_kwh,) = kpi_show(capsys, cfg_path, "gs-b", "energy_kwh_monthly", "2026-11-01", "2026-11-30")[-1:]
    assert month_kwh[2] == round(ev["energy"]["kwh"], 2)
    hours = kpi_show(capsys, cfg_path, "gs-b", "dust_tsp_hourly", "2026-11-01", "2026-11-30")
    assert sum(1 for h in hours if h[3] == "BREACH") == ev["dust"]["hours_over"]
    kwh_days = kpi_show(capsys, cfg_path, "gs-b", "energy_kwh_daily", "2026-11-01", "2026-11-30")
    assert [r[2] for r in kwh_days if r[1] == "site"] == [round(r["kwh"], 2) for r in ev["daily"]]

    # the October report of the other site: every day compliant, no dust hour over
    assert main(["report", "monthly", "--config", str(cfg_path), "--site", "gs-a", "--month", "2026-10", "--format", "json"]) == 0
    oct_a = json.loads((tmp_path / "reports" / "monthly-gs-a-2026-10.json").read_text())["evidence"]
    assert (oct_a["water"]["days_judged"], oct_a["water"]["days_compliant"], oct_a["dust"]["monitors"]) == (31, 31, [])
    assert oct_a["energy"]["kwh"] == pytest.approx(31 * 24 * 500)

    # --- the XLSX reopens with the same numbers, as numbers
    from openpyxl import load_workbook

    wb = load_workbook(tmp_path / "reports" / "monthly-gs-b-2026-11.xlsx")
    summary = {r[0]: r[1] for r in wb["摘要 Summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["选矿废水循环利用率 判定日数 days judged (reuse)"] == 30
    assert summary["未达标日数 days below the floor"] == 3
    assert isinstance(summary["用电量 electricity"], (int, float)) and summary["用电量 electricity"] == pytest.approx(360_000)
    daily = list(wb["日数据 Daily"].iter_rows(min_row=2, values_only=True))
    assert [d[1] for d in daily] == [r["reuse_pct"] for r in ev["daily"]]
    assert daily[10][1] == pytest.approx(70.0) and daily[10][5] == "breach"
    assert {ws.title for ws in wb.worksheets} >= {"告警 Alerts", "计数器事件 Counter events", "数据完整率 Completeness", "指标对应 Indicators"}

    # --- the PDF renders: pages not blank, the CJK text extractable (not tofu)
    pdf = tmp_path / "reports" / "monthly-gs-b-2026-11.pdf"
    text = subprocess.run([pdftotext, str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    flat = re.sub(r"\s+", "", text)  # a table cell may wrap a long name over two lines
    for needle in ("绿色矿山月度监测报告", "选矿废水循环利用率", "资源综合利用", "科技创新与规范管理", "未监测"):
        assert needle in flat, needle
    subprocess.run([pdftoppm, "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert pages
    from PIL import Image  # Pillow comes with WeasyPrint

    for page in pages:
        with Image.open(page) as img:
            grey = img.convert("L")
            ink = sum(grey.histogram()[:200]) / (grey.width * grey.height)
        assert ink > 0.005, f"{page.name} is blank ({ink:.4f} of it inked)"

    # --- the annual prefecture report, for a partial year
    assert main(["report", "annual", "--config", str(cfg_path), "--prefecture", "测试市", "--year", "2026",
                 "--until", "2026-11-30"]) == 0
    ann = json.loads((tmp_path / "reports" / "annual-测试市-2026.json").read_text())
    assert ann["partial"] is True and ann["holds_up_to"] == "2026-11-30"
    assert "数据截至 2026-11-30" in ann["notes"][0] and "partial year" in ann["notes"][0]
    assert ann["listed"]["start"] == 2 and ann["listed"]["end"] == 3 and ann["listed"]["entered"] == 1
    assert ann["listed"]["large_medium_share_of_listed_pct"] == pytest.approx(100 / 3, abs=0.01)
    per = {r[0]: r for r in next(p for p in ann["parts"] if p["id"] == "mines")["rows"]}
    assert per["gs-b"][6:9] == [61, 58, pytest.approx(100 * 58 / 61, abs=0.01)] and per["gs-b"][9] == 4
    assert per["gs-a"][6:8] == [61, 61]
    not_measured = next(p for p in ann["parts"] if p["id"] == "not_measured")["rows"]
    what = {(r[0], r[2]) for r in not_measured}
    assert ("gs-c", "未接入在线监测 not monitored") in what
    # monitoring ran for October and November only: the rest of the year is stated, not hidden
    assert {w.split(":")[0] for m, w in what if m == "gs-a"} == {
        "数据不完整 incomplete", "颗粒物无数据 no boundary dust data", "噪声无数据 no boundary noise data"}
    assert any(m == "gs-b" and w.startswith("数据不完整") for m, w in what)
    # gs-b's boundary monitors ran for November only: its dust completeness over the year says so
    assert 0 < ann["evidence"]["gs-b"]["dust"]["completeness_pct"] < 50
    assert ann["totals"]["days_judged"] == 122 and ann["totals"]["days_compliant"] == 119
    text = subprocess.run([pdftotext, str(tmp_path / "reports" / "annual-测试市-2026.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout
    flat = re.sub(r"\s+", "", text)
    assert "数据截至2026-11-30" in flat and "测试市2026年度绿色矿山建设进展报告" in flat
