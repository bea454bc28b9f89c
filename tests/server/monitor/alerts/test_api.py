"""The alerts' HTTP API on the server's /metrics port, over a real socket."""

import json
import urllib.error
import urllib.request

from greenmine.server.monitor.alerts.api import AlertsApi
from greenmine.server.monitor.alerts.config import AlertsConfig
from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.server.config import SiteConfig
from greenmine.server.metrics import HttpEndpoint, Metrics


def call(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_list_and_ack_over_http(tmp_path):
    eng = AlertEngine(AlertsConfig(), [SiteConfig(id="s1")], open_db(tmp_path / "a.sqlite"), clock=lambda: 1000.0)
    eng.observe_agent_status("s1", "gw1", online=False)
    eng.tick(1000.0 + 300)  # still offline after its grace (for_s): firing
    http = HttpEndpoint("127.0.0.1", 0, Metrics("sqlite"), lambda: {"status": "ok"}, api=AlertsApi(eng))
    http.start()
    try:
        code, doc = call(http.port, "GET", "/alerts")
        assert code == 200 and [(a["rule"], a["state"]) for a in doc] == [("agent_offline", "firing")]
        aid = doc[0]["id"]
        assert call(http.port, "POST", f"/alerts/{aid}/ack", {"by": "wang"}) == (200, {"id": aid, "acknowledged": True, "by": "wang"})
        assert call(http.port, "POST", f"/alerts/{aid}/ack")[0] == 404
        assert call(http.port, "GET", f"/alerts/{aid}/ack")[0] == 405
        assert call(http.port, "GET", "/alerts")[1][0]["acked_by"] == "wang"
        assert call(http.port, "GET", "/health") == (200, {"status": "ok"})
    finally:
        http.stop()
        eng.db.close()
