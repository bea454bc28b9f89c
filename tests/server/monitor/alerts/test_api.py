"""The alerts' JSON API on the server's HTTP port, over a real socket: listing is open, acknowledging needs an
API token and is audited with who, when and the comment."""

import json
import urllib.error
import urllib.request

from greenmine.server.config import SiteConfig, load_server_config
from greenmine.server.metrics import Metrics
from greenmine.server.monitor.alerts.config import AlertsConfig
from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.server.web.app import WebContext, create_app
from greenmine.server.web.server import WebServer
from greenmine.server.web.users import UserDb


def call(port, method, path, body=None, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_list_open_ack_needs_a_token_and_is_audited(tmp_path):
    cfg = load_server_config(tmp_path / "server.toml", doc={"kind": "server", "sites": [{"id": "s1"}]})
    eng = AlertEngine(AlertsConfig(), [SiteConfig(id="s1")], open_db(tmp_path / "a.sqlite"), clock=lambda: 1000.0)
    eng.observe_agent_status("s1", "gw1", online=False)
    eng.tick(1000.0 + 300)  # still offline after its grace (for_s): firing
    users = UserDb(tmp_path / "users.sqlite")
    users.add("wang", "officer", "correct horse battery", sites=["s1"])
    users.add("li", "viewer", "correct horse battery")
    _, token = users.create_token("wang", "script")
    _, viewer = users.create_token("li", "script")
    ctx = WebContext(cfg, metrics=Metrics("sqlite"), health=lambda: {"status": "ok"}, alerts=eng, users=users,
                     clock=lambda: 1234.0)
    http = WebServer(create_app(ctx), "127.0.0.1", 0)
    http.start()
    try:
        code, doc = call(http.port, "GET", "/alerts")
        assert code == 200 and [(a["rule"], a["state"]) for a in doc] == [("agent_offline", "firing")]
        aid = doc[0]["id"]
        # no token, a wrong token, a viewer's token: refused, and nothing acknowledged
        assert call(http.port, "POST", f"/alerts/{aid}/ack", {"comment": "x"})[0] == 401
        assert call(http.port, "POST", f"/alerts/{aid}/ack", {"comment": "x"}, token="gmt_wrong")[0] == 401
        assert call(http.port, "POST", f"/alerts/{aid}/ack", {"comment": "x"}, token=viewer)[0] == 403
        assert call(http.port, "GET", "/alerts")[1][0]["acked_by"] is None
        assert users.audit_log(f"alert:{aid}") == []
        code, doc = call(http.port, "POST", f"/alerts/{aid}/ack", {"comment": "gateway power cut, crew sent"}, token=token)
        assert (code, doc["acknowledged"], doc["by"]) == (200, True, "wang")
        assert call(http.port, "POST", f"/alerts/{aid}/ack", token=token)[0] == 404
        assert call(http.port, "GET", f"/alerts/{aid}/ack")[0] == 405
        assert call(http.port, "POST", f"/alerts/{aid}/ack", token=token, body=[1])[0] == 400
        assert call(http.port, "GET", "/alerts")[1][0]["acked_by"] == "wang"
        [entry] = users.audit_log(f"alert:{aid}")
        assert (entry.user, entry.action, entry.ts, entry.detail["comment"], entry.detail["via"]) == (
            "wang", "alert.ack", 1234.0, "gateway power cut, crew sent", "token")
        assert call(http.port, "GET", "/health") == (200, {"status": "ok"})
    finally:
        http.stop()
        eng.db.close()
        users.close()
