"""One running server for the console tests: real Mosquitto, the real ingest, monitor and web roles in one App,
and a day of readings for three sites published over MQTT, as agents would.

- gs-red: water reuse 80 % (below the 85 % floor), TSP 1.5 mg/m³ from 10:00 to midnight (its dust alert stays firing): red on the overview;
- gs-green: reuse 90 %, TSP 0.4 mg/m³: green;
- gs-other: a site the officer is not assigned.

The server's clock is the next day at noon (Asia/Shanghai), running at real speed, so the day is "yesterday"
and its KPI periods are closed as the readings arrive.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.cookiejar import CookieJar
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.server.conftest import Publisher, server_doc, topic
from tests.support.services import Mosquitto, wait_for

TZ = ZoneInfo("Asia/Shanghai")
DAY = datetime(2026, 11, 20, tzinfo=TZ)
PASSWORD = "correct horse battery"
SITES = {
    "gs-red": {"reuse": 4.0, "fresh": 1.0, "tsp": 1.5},  # 80 %
    "gs-green": {"reuse": 9.0, "fresh": 1.0, "tsp": 0.4},  # 90 %
    "gs-other": {"reuse": 9.0, "fresh": 1.0, "tsp": 0.4},
}
STEPS = 24 * 12 + 1  # every 5 minutes, 00:00 .. 24:00


def day_batches(site: str) -> list[bytes]:
    p = SITES[site]
    out = []
    for i in range(STEPS):
        ts = DAY + timedelta(minutes=5 * i)
        tsp = p["tsp"] if 10 <= ts.hour and i < STEPS - 1 else 0.3
        laeq = 55.0 if 6 <= ts.hour < 22 else 45.0
        readings = [
            {"device": "reuse1", "metric": "water_reused_m3_total", "value": 1000 + p["reuse"] * i, "unit": "m3"},
            {"device": "fresh1", "metric": "water_fresh_m3_total", "value": 500 + p["fresh"] * i, "unit": "m3"},
            {"device": "dust1", "metric": "dust_tsp_mgm3", "value": tsp, "unit": "mg/m3"},
            {"device": "noise1", "metric": "noise_laeq_db", "value": laeq, "unit": "dB(A)"},
            {"device": "kwh1", "metric": "energy_kwh_total", "value": 20000 + 50.0 * i, "unit": "kWh"},
            {"device": "belt1", "metric": "ore_t_total", "value": 7000 + 10.0 * i, "unit": "t"},
        ]
        doc = {"schema": "greenmine.telemetry.v1", "site": site, "agent": "gw1", "seq": i, "sent_at": ts.isoformat(),
               "readings": [{**r, "ts": ts.isoformat(), "quality": "good"} for r in readings]}
        out.append(json.dumps(doc).encode())
    return out


@dataclass
class Env:
    app: object
    cfg: object
    base: str
    tmp: Path

    @property
    def users(self):
        return self.app.web.users

    @property
    def engine(self):
        return self.app.monitor.monitor.alerts


@pytest.fixture(scope="package")
def console(tmp_path_factory):
    from greenmine.server.app import App
    from greenmine.server.config import load_server_config

    tmp = tmp_path_factory.mktemp("console")
    broker = Mosquitto(tmp)
    broker.start()
    doc = server_doc(tmp, broker.port, name="console")
    doc["kpi"] = {"counter_interval_s": 300, "sample_interval_s": 300}
    doc["alerts"] = {"db_path": str(tmp / "alerts.sqlite"), "tick_interval_s": 0.5}
    doc["monitor"] = {"replica_path": str(tmp / "replica.sqlite")}
    doc["notify"] = {"eml_dir": str(tmp / "mail")}
    doc["web"] = {"port": 0, "users_db": str(tmp / "users.sqlite")}
    doc["sites"] = [
        {"id": "gs-red", "name": "金昌某铜矿", "prefecture": "金昌市", "timezone": "Asia/Shanghai"},
        {"id": "gs-green", "name": "白银某铅锌矿", "prefecture": "白银市", "timezone": "Asia/Shanghai"},
        {"id": "gs-other", "name": "张掖某钨矿", "prefecture": "张掖市", "timezone": "Asia/Shanghai"},
    ]
    cfg = load_server_config(tmp / "server.toml", doc=doc)
    start = time.time()
    base = (DAY + timedelta(days=1, hours=12)).timestamp()
    app = App(cfg, clock=lambda: base + (time.time() - start))
    app.web.users.add("op", "operator", PASSWORD)
    app.web.users.add("wang", "officer", PASSWORD, sites=["gs-red", "gs-green"])
    app.web.users.add("li", "viewer", PASSWORD)
    app.start()
    pub = Publisher(broker.port, client_id="console-pub")
    try:
        wait_for(lambda: app.mqtt.subscribed and app.monitor.consumer.mqtt.subscribed, 10, what="roles subscribed")
        pub.publish_many([(topic(site=s), b) for s in SITES for b in day_batches(s)])
        seen = (DAY + timedelta(days=1, hours=11)).isoformat()
        for site, state in (("gs-red", "online"), ("gs-green", "online"), ("gs-other", "offline")):
            pub.publish(topic("status", site=site), json.dumps({
                "schema": "greenmine.status.v1", "site": site, "agent": "gw1", "state": state, "ts": seen,
                "version": "0.1.0", "outbox_depth": 3, "dropped_batches": 0, "dropped_readings": 0}).encode())
        wait_for(lambda: len(app.spool.agents.load()) == 3, 20, what="the agents' status")
        kpis = app.monitor.monitor.kpi_store
        def missing():
            return [(s, k) for s in SITES for k in ("water_reuse_daily", "energy_intensity_daily", "noise_leq_night")
                    if not kpis.values(s, k)] + [(s, "dust") for s in SITES if len(kpis.values(s, "dust_tsp_hourly")) < 24]

        try:
            wait_for(lambda: not missing(), 60, what="the day's KPIs")
        except AssertionError:
            raise AssertionError(f"KPIs missing: {missing()}") from None
        wait_for(lambda: {"water_reuse_daily", "dust_tsp_hourly"} <= {
            a.rule for a in app.monitor.monitor.alerts.alerts(("firing", "resolved")) if a.site == "gs-red"}, 20,
            what="gs-red's alerts")
        wait_for(lambda: app.spool.queue.depth()[0] == 0, 20, what="spool drained into the store")
        yield Env(app, cfg, f"http://127.0.0.1:{app.web.port}", tmp)
    finally:
        pub.close()
        app.stop()
        broker.stop()


class Client:
    """A cookie-keeping HTTP client (what a browser without JavaScript does)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None,
                body: bytes | None = None):
        data = urllib.parse.urlencode(form).encode() if form is not None else body
        h = {"Accept": "text/html", **(headers or {})}
        if form is not None:
            h["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with self.opener.open(req, timeout=20) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def csrf(self, path: str) -> str:
        import re

        _, _, body = self.request("GET", path)
        return re.search(r'name="csrf" value="([^"]+)"', body).group(1)

    def login(self, name: str, password: str = PASSWORD) -> int:
        token = self.csrf("/login")
        code, headers, _ = self.request("POST", "/login", {"csrf": token, "username": name, "password": password, "next": "/"})
        return code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None
