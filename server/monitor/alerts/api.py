"""The alerts' HTTP API, served on the server's /metrics port (`server.metrics.HttpEndpoint`):

    GET  /alerts                 open alerts (pending, firing) as JSON; ?all=1 adds resolved ones
    POST /alerts/<id>/ack        acknowledge; JSON body {"by": "name"} optional; 404 if no such open alert

The endpoint binds to `http_host` (127.0.0.1 by default) and has no
authentication of its own: expose it only behind a proxy that has.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

from greenmine.server.monitor.alerts.engine import AlertEngine

_ACK = re.compile(r"^/alerts/(\d+)/ack/?$")


class AlertsApi:
    def __init__(self, engine: AlertEngine) -> None:
        self.engine = engine

    def __call__(self, method: str, path: str, query: str, body: bytes | None) -> tuple[int, dict | list] | None:
        """(status, JSON document) for our paths; None for paths that are not ours."""
        if method == "GET" and path.rstrip("/") == "/alerts":
            states = ("pending", "firing", "resolved") if "all=1" in query.split("&") else ("pending", "firing")
            return 200, [asdict(a) for a in self.engine.alerts(states)]
        m = _ACK.match(path)
        if m is None:
            return None
        if method != "POST":
            return 405, {"error": "use POST"}
        by = ""
        if body:
            try:
                doc = json.loads(body)
                by = str(doc.get("by", ""))[:100] if isinstance(doc, dict) else ""
            except (ValueError, UnicodeDecodeError):
                return 400, {"error": "body must be JSON, e.g. {\"by\": \"wang\"}"}
        alert_id = int(m.group(1))
        if self.engine.ack(alert_id, by=by):
            return 200, {"id": alert_id, "acknowledged": True, "by": by}
        return 404, {"error": f"alert {alert_id}: no such open, unacknowledged alert"}
