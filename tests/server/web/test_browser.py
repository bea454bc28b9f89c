"""The console in a real headless Chromium (Debian's chromium and chromium-driver, driven by selenium), against the
running server of conftest.py: log in, the overview shows the breaching site red, the site page draws its charts
with the limit lines, an alert is acknowledged with a comment (in the database and the audit log), a CSV is
downloaded and its rows checked, and every page is screenshotted and checked to have rendered."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from tests.server.web.conftest import DAY, PASSWORD, SITES, STEPS
from tests.support.services import need_binary, wait_for

ERROR_TEXT = ("Traceback", "Internal Server Error", "Jinja", "Undefined", "Exception")


@pytest.fixture
def browser(tmp_path):
    chromium = need_binary("chromium", "chromium")
    driver_path = need_binary("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100",
                "--lang=zh-CN", f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log")),
                              options=opts)
    driver.set_page_load_timeout(60)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def rendered(driver, tmp_path, name: str) -> None:
    """The page rendered: no error text, something drawn, and a screenshot that is not blank."""
    body = driver.find_element("tag name", "body").text
    for word in ERROR_TEXT:
        assert word not in body, f"{name}: error text {word!r} on the page"
    assert not driver.find_elements("css selector", ".err"), f"{name}: an error message is shown"
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, f"{name}: screenshot empty"


def chart_drawn(driver, ident: str, *, limit: bool = True) -> None:
    svg = driver.find_element("id", ident)
    box = svg.rect
    assert box["width"] > 300 and box["height"] > 80, f"{ident} not laid out: {box}"
    marks = svg.find_elements("css selector", "rect.bar, circle.point")
    assert marks, f"{ident}: nothing plotted"
    assert all(m.rect["width"] > 0 for m in marks[:5])
    if limit:
        line = svg.find_elements("css selector", "path.limit-line")
        assert line and line[0].get_attribute("d").startswith("M"), f"{ident}: no limit line"
    assert not svg.find_elements("css selector", "text.no-data")


def test_officer_workflow_in_chromium(console, browser, tmp_path):
    b = browser
    base = console.base
    b.get(base + "/")
    assert "/login" in b.current_url
    rendered(b, tmp_path, "login")
    b.find_element("id", "username").send_keys("op")
    b.find_element("id", "password").send_keys(PASSWORD)
    b.find_element("id", "login-submit").click()
    wait_for(lambda: b.current_url.rstrip("/") == base, 10, what="the overview after login")

    # overview: the breaching site is red for yesterday (reuse 80 %, TSP over the limit); the other is green
    rendered(b, tmp_path, "overview")
    red = b.find_element("css selector", 'tr[data-site="gs-red"] [data-kpi="water"][data-window="yesterday"]')
    assert "light-red" in red.get_attribute("class") and red.text == "80.0 %"
    assert red.value_of_css_property("background-color") in ("rgba(197, 48, 48, 1)", "rgb(197, 48, 48)")
    dust = b.find_element("css selector", 'tr[data-site="gs-red"] [data-kpi="dust"][data-window="yesterday"]')
    assert "light-red" in dust.get_attribute("class")
    green = b.find_element("css selector", 'tr[data-site="gs-green"] [data-kpi="water"][data-window="yesterday"]')
    assert "light-green" in green.get_attribute("class") and green.text == "90.0 %"
    assert "金昌市" in b.page_source and "白银市" in b.page_source

    # site page: the week to yesterday, charts drawn with their limit lines; the day's reuse bar below 85 %
    day = DAY.date().isoformat()
    b.get(f"{base}/sites/gs-red?range=week&date={day}")
    rendered(b, tmp_path, "site")
    assert "Asia/Shanghai" in b.find_element("tag name", "body").text
    chart_drawn(b, "chart-reuse")
    bar = b.find_element("css selector", "#chart-reuse rect.bar")
    assert "80" in bar.find_element("tag name", "title").get_attribute("textContent")
    limit = b.find_element("css selector", "#chart-reuse path.limit-line")
    # the 85 % line is drawn above the 80 % bar (SVG y grows downwards)
    assert limit.rect["y"] < bar.rect["y"]
    chart_drawn(b, "chart-dust")
    chart_drawn(b, "chart-noise")
    chart_drawn(b, "chart-energy", limit=False)
    chart_drawn(b, "chart-volumes", limit=False)
    # the month view reads the same KPI periods
    b.get(f"{base}/sites/gs-red?range=month&date={day}")
    chart_drawn(b, "chart-reuse")

    # device page: latest readings with their quality and age, a chart of the metric
    b.get(f"{base}/sites/gs-red/devices/dust1?range=day&date={day}")
    rendered(b, tmp_path, "device")
    assert "dust_tsp_mgm3" in b.find_element("id", "latest").text and "good" in b.find_element("id", "latest").text
    chart_drawn(b, "chart-metric", limit=False)

    # alerts: acknowledge the reuse alert with a comment
    alert = next(a for a in console.engine.alerts(("firing",)) if a.site == "gs-red" and a.rule == "water_reuse_daily")
    b.get(f"{base}/alerts?site=gs-red")
    rendered(b, tmp_path, "alerts")
    b.find_element("css selector", f'tr[data-alert="{alert.id}"] a').click()
    wait_for(lambda: b.current_url.endswith(f"/alerts/{alert.id}"), 10, what="the alert page")
    comment = "回用水泵检修中 pump under repair"
    b.find_element("id", "ack-comment").send_keys(comment)
    b.find_element("id", "ack-submit").click()
    wait_for(lambda: b.find_elements("id", "ack-ok"), 10, what="the acknowledgement shown")
    rendered(b, tmp_path, "alert")
    assert "op" in b.find_element("id", "alert-acked").text
    assert comment in b.find_element("id", "audit").text
    acked = next(a for a in console.engine.alerts(("firing",)) if a.id == alert.id)
    assert acked.acked_by == "op" and acked.acked_ts is not None
    [entry] = [e for e in console.users.audit_log(f"alert:{alert.id}") if e.action == "alert.ack"]
    assert (entry.user, entry.detail["comment"], entry.detail["via"]) == ("op", comment, "session")

    # health page
    b.get(f"{base}/system")
    rendered(b, tmp_path, "system")
    assert "gw1" in b.find_element("id", "agents").text

    # maintenance windows: the operator adds one from the alerts page's link, sees it listed, removes it
    b.get(f"{base}/alerts")
    b.find_element("id", "maintenance-link").click()
    wait_for(lambda: b.current_url.endswith("/maintenance"), 10, what="the maintenance page")
    b.execute_script("document.querySelector('#m-site').value='gs-green';"
                     "document.querySelector('#m-from').value='2026-12-03T08:00';"
                     "document.querySelector('#m-to').value='2026-12-03T10:00';")
    b.find_element("id", "m-reason").send_keys("更换噪声仪 replacing the noise meter")
    b.find_element("id", "m-submit").click()
    wait_for(lambda: b.find_elements("id", "maintenance-added"), 10, what="the window added")
    rendered(b, tmp_path, "maintenance")
    [w] = [w for w in console.engine.maintenance_windows(include_past=True) if w.reason.startswith("更换噪声仪")]
    assert w.site == "gs-green" and "2026-12-03 10:00" in b.find_element("id", "maintenance").text
    b.find_element("id", f"remove-{w.id}").click()
    wait_for(lambda: b.find_elements("id", "maintenance-removed"), 10, what="the window removed")
    assert all(x.id != w.id for x in console.engine.maintenance_windows(include_past=True))

    # export: yesterday's readings of gs-red as CSV
    b.get(f"{base}/export")
    rendered(b, tmp_path, "export")
    b.execute_script("document.querySelector('[name=site]').value='gs-red';"
                     "document.querySelector('[name=from]').value=arguments[0];"
                     "document.querySelector('[name=to]').value=arguments[0];", day)
    b.find_element("id", "export-submit").click()
    files = wait_for(lambda: [p for p in b.downloads.iterdir() if p.suffix == ".csv"], 20, what="the CSV download")
    rows = list(csv.reader(io.StringIO(files[0].read_text(encoding="utf-8"))))
    assert rows[0] == ["time_local", "site", "device", "metric", "value", "unit", "quality"]
    data = rows[1:]
    # six metrics, every 5 minutes of the local day (the 24:00 read belongs to the next day)
    assert len(data) == 6 * (STEPS - 1)
    assert {r[1] for r in data} == {"gs-red"}
    assert all(r[0].startswith(day) and r[0].endswith("+08:00") for r in data)
    reused = sorted((r for r in data if r[3] == "water_reused_m3_total"), key=lambda r: r[0])
    assert reused[0][0] == f"{day}T00:00:00+08:00" and float(reused[-1][4]) == 1000 + SITES["gs-red"]["reuse"] * (STEPS - 2)
    assert (DAY + timedelta(days=1)).date().isoformat() not in files[0].read_text()

    # the English switch
    b.get(f"{base}/?lang=en")
    assert "Water reuse" in b.page_source and "Overview" in b.page_source
    b.get(f"{base}/")
    assert "Water reuse" in b.page_source  # kept in a cookie
