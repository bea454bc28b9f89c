"""Access control of the console, against the running server of conftest.py (real ingest, real roles)."""

from __future__ import annotations

import json

from tests.server.web.conftest import PASSWORD, Client


def _red_alert(console, rule="dust_tsp_hourly"):
    return next(a for a in console.engine.alerts(("pending", "firing")) if a.site == "gs-red" and a.rule == rule
                and a.acked_ts is None)


def test_pages_need_a_login(console):
    c = Client(console.base)
    for path in ("/", "/sites/gs-red", "/alerts", "/system", "/export"):
        code, headers, _ = c.request("GET", path)
        assert code == 303 and headers["location"].startswith("/login?next="), path


def test_officer_sees_only_assigned_sites_on_pages_and_api(console):
    c = Client(console.base)
    assert c.login("wang") == 303
    code, _, body = c.request("GET", "/")
    assert code == 200 and 'data-site="gs-red"' in body and 'data-site="gs-other"' not in body
    assert c.request("GET", "/sites/gs-red")[0] == 200
    assert c.request("GET", "/sites/gs-other")[0] == 403
    assert c.request("GET", "/sites/gs-other/devices/dust1")[0] == 403
    assert c.request("GET", "/export.csv?site=gs-other&kind=readings&from=2026-11-20&to=2026-11-20")[0] == 403
    other = next(a for a in console.engine.alerts(("pending", "firing", "resolved")) if a.site == "gs-other") \
        if any(a.site == "gs-other" for a in console.engine.alerts(("pending", "firing", "resolved"))) else None
    if other is not None:
        assert c.request("GET", f"/alerts/{other.id}")[0] == 403
    _, token = console.users.create_token("wang", "test")
    api = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    code, _, body = c.request("GET", "/api/sites", headers=api)
    assert code == 200 and {s["id"] for s in json.loads(body)} == {"gs-red", "gs-green"}
    assert c.request("GET", "/api/sites/gs-other/kpis", headers=api)[0] == 403
    assert c.request("GET", "/api/sites/gs-red/kpis?kpi=water_reuse_daily&days=5", headers=api)[0] == 200
    code, _, body = c.request("GET", "/api/alerts?all=1", headers=api)
    assert code == 200 and {a["site"] for a in json.loads(body)} <= {"gs-red", "gs-green"}


def test_viewer_cannot_acknowledge(console):
    a = _red_alert(console)
    c = Client(console.base)
    assert c.login("li") == 303
    code, _, body = c.request("GET", f"/alerts/{a.id}")
    assert code == 200 and 'id="ack-form"' not in body
    token = c.csrf(f"/alerts/{a.id}")
    code, _, _ = c.request("POST", f"/alerts/{a.id}/ack", {"csrf": token, "comment": "viewer tries"})
    assert code == 403
    _, api = console.users.create_token("li", "viewer script")
    code, _, _ = c.request("POST", f"/api/alerts/{a.id}/ack", headers={"Authorization": f"Bearer {api}"},
                           body=b'{"comment": "x"}')
    assert code == 403
    assert _red_alert(console).acked_ts is None
    assert console.users.audit_log(f"alert:{a.id}") == []


def test_post_without_csrf_is_refused(console):
    a = _red_alert(console)
    c = Client(console.base)
    assert c.login("op") == 303
    assert c.request("POST", f"/alerts/{a.id}/ack", {"comment": "no token"})[0] == 403
    assert c.request("POST", f"/alerts/{a.id}/ack", {"comment": "bad token", "csrf": "forged"})[0] == 403
    assert c.request("POST", "/logout", {})[0] == 403
    # the login form has its own token: a forged login POST is refused before the password is looked at
    fresh = Client(console.base)
    assert fresh.request("POST", "/login", {"username": "op", "password": PASSWORD})[0] == 403
    assert _red_alert(console).acked_ts is None


def test_api_without_token_is_refused(console):
    c = Client(console.base)
    for path in ("/api/sites", "/api/sites/gs-red/kpis"):
        assert c.request("GET", path, headers={"Accept": "application/json"})[0] == 401
    a = _red_alert(console)
    assert c.request("POST", f"/api/alerts/{a.id}/ack", body=b"{}", headers={"Accept": "application/json"})[0] == 401
    assert c.request("GET", "/api/sites", headers={"Authorization": "Bearer gmt_not-a-token"})[0] == 401


def test_wrong_password_is_refused_and_rate_limited(console):
    from greenmine.server.web.role import WebRole

    # a console of its own (the limit is per process), on the same files
    role = WebRole(console.cfg, clock=console.app.web.console.clock)
    role.start()
    try:
        c = Client(f"http://127.0.0.1:{role.port}")
        for _ in range(console.cfg.web.login_max_failures):
            assert c.login("op", "wrong password!") == 401
            assert not any(k.name == "gm_session" for k in c.jar)
        # now even the right password is refused for the window
        assert c.login("op") == 429
        assert not any(k.name == "gm_session" for k in c.jar)
        assert any(e.action == "login.limited" for e in role.users.audit_log("user:op"))
    finally:
        role.stop()


def test_disabled_user_loses_the_session(console):
    console.users.add("temp", "viewer", PASSWORD)
    c = Client(console.base)
    assert c.login("temp") == 303
    assert c.request("GET", "/")[0] == 200
    console.users.set_disabled("temp")
    assert c.request("GET", "/")[0] == 303
