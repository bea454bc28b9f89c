"""Maintenance windows set from the console, against the running server of conftest.py (real app over HTTP)."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from zoneinfo import ZoneInfo

from tests.server.web.conftest import Client


def _rows(console):
    db = sqlite3.connect(console.tmp / "alerts.sqlite")
    try:
        return db.execute("SELECT id, site, device, from_ts, to_ts, reason, source FROM maintenance").fetchall()
    finally:
        db.close()


def test_operator_adds_and_removes_a_window(console):
    c = Client(console.base)
    assert c.login("op") == 303
    code, _, body = c.request("GET", "/maintenance")
    assert code == 200 and 'id="maintenance-form"' in body
    token = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    form = {"csrf": token, "site": "gs-red", "device": "dust1", "from": "2026-12-05T08:00", "to": "2026-12-05T12:30",
            "reason": "校准粉尘仪 calibrating"}
    code, headers, _ = c.request("POST", "/maintenance", form)
    assert code == 303 and headers["location"].startswith("/maintenance?added=")
    wid = int(headers["location"].rsplit("=", 1)[1])
    tz = ZoneInfo("Asia/Shanghai")  # the site's zone: the form's times are local
    row = next(r for r in _rows(console) if r[0] == wid)
    assert row[1:] == ("gs-red", "dust1", datetime(2026, 12, 5, 8, 0, tzinfo=tz).timestamp(),
                       datetime(2026, 12, 5, 12, 30, tzinfo=tz).timestamp(), "校准粉尘仪 calibrating", "cli")
    # the engine the monitor runs sees it (same file)
    assert any(w.id == wid for w in console.engine.maintenance_windows(include_past=True))
    (entry,) = console.users.audit_log(f"maintenance:{wid}")
    assert (entry.user, entry.action) == ("op", "maintenance.add")
    assert entry.detail["from"] == "2026-12-05 08:00" and entry.detail["timezone"] == "Asia/Shanghai"
    code, _, body = c.request("GET", "/maintenance")
    assert f'data-window="{wid}"' in body and "校准粉尘仪" in body and "2026-12-05 12:30" in body

    # bad input: a clear 400, nothing written
    before = len(_rows(console))
    for bad in ({"to": "2026-12-05T07:00"}, {"from": "tomorrow"}, {"reason": " "}, {"site": "gs-nowhere"},
                {"device": "../x"}):
        code, _, body = c.request("POST", "/maintenance", {**form, **bad})
        assert code == 400, bad
        assert 'id="error-message"' in body
    assert len(_rows(console)) == before

    code, headers, _ = c.request("POST", f"/maintenance/{wid}/remove", {"csrf": token})
    assert code == 303 and headers["location"] == f"/maintenance?removed={wid}"
    assert all(r[0] != wid for r in _rows(console))
    assert [e.action for e in console.users.audit_log(f"maintenance:{wid}")] == ["maintenance.remove", "maintenance.add"]
    assert c.request("POST", f"/maintenance/{wid}/remove", {"csrf": token})[0] == 404
    # without the CSRF token: refused
    assert c.request("POST", "/maintenance", {k: v for k, v in form.items() if k != "csrf"})[0] == 403


def test_officer_and_viewer_may_not_set_windows(console):
    wid = console.engine.add_maintenance("gs-red", None, 1_900_000_000, 1_900_003_600, "set by the CLI")
    try:
        for name in ("wang", "li"):
            c = Client(console.base)
            assert c.login(name) == 303
            code, _, body = c.request("GET", "/maintenance")
            # they see the windows, without the form or the remove buttons
            assert code == 200 and f'data-window="{wid}"' in body
            assert 'id="maintenance-form"' not in body and f'id="remove-{wid}"' not in body
            token = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
            n = len(_rows(console))
            code, _, _ = c.request("POST", "/maintenance", {"csrf": token, "site": "gs-red", "from": "2026-12-06T08:00",
                                                             "to": "2026-12-06T09:00", "reason": "not allowed"})
            assert code == 403, name
            assert c.request("POST", f"/maintenance/{wid}/remove", {"csrf": token})[0] == 403
            assert len(_rows(console)) == n and any(r[0] == wid for r in _rows(console))
        assert not [e for e in console.users.audit_log() if e.action.startswith("maintenance.") and e.user in ("wang", "li")]
    finally:
        console.engine.remove_maintenance(wid)
