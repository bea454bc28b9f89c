"""Console page times under load: 20 concurrent users on the overview and a site page.

    .venv/bin/python bench/web.py [--sites 10] [--days 30] [--users 20] [--requests 10]

What it does:

1. fills, for N sites, a month of 1-minute readings (reuse and fresh water
   totals, TSP, noise, kWh, ore: six series a site) into the SQLite store and
   into the monitor's replica, and computes every KPI period of every day with
   the monitor's KPI engine (what the monitor role does as data arrives);
2. starts the web role (uvicorn in a thread) on those files, with one user a
   client, each logged in with its own session;
3. each of the U clients, in its own thread, requests the overview and a
   site page (`range=month`, a random site) R times each, back to back;
4. prints one JSON line: p50 and p99 of each page's time (seconds, from the
   request to the last byte), requests per second, and how long the fill took.

The site page reads the KPI store's periods (31 days, 744 hours), never the
month's raw readings: `raw_readings_per_site` says how many it does not read.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from greenmine.server.config import load_server_config  # noqa: E402
from greenmine.server.store.base import StoredReading  # noqa: E402

TZ = "Asia/Shanghai"
PASSWORD = "bench password 1"


def fill(cfg, sites: list[str], days: int, first: date) -> dict:
    from greenmine.server.monitor.alerts.service import kpi_db_path
    from greenmine.server.monitor.kpi.engine import KpiEngine
    from greenmine.server.monitor.kpi.store import KpiStore, Point
    from greenmine.server.store.replica import SeriesReplica
    from greenmine.server.store.sqlite import SqliteStore

    t0 = time.perf_counter()
    store = SqliteStore(cfg.resolve(cfg.store.path), site_timezones={s: TZ for s in sites}, maintenance_interval_s=None)
    replica = SeriesReplica(cfg.resolve(cfg.monitor.replica_path))
    start = datetime.combine(first, datetime.min.time(), ZoneInfo(TZ)).timestamp()
    n = 0
    rnd = random.Random(1)
    source = _IndexedSource(Point)
    for k, site in enumerate(sites):
        reuse_rate = 3.5 + k * 0.3  # some sites below the 85 % floor, some above
        rows = []
        for i in range(days * 1440 + 1):
            ts_ms = int((start + 60 * i) * 1000)
            hour = (i // 60) % 24
            for dev, metric, value, unit in (
                ("reuse1", "water_reused_m3_total", 1000 + reuse_rate * i / 5, "m3"),
                ("fresh1", "water_fresh_m3_total", 500 + i / 5, "m3"),
                ("dust1", "dust_tsp_mgm3", 0.4 + (0.8 if hour in (10, 11) and k % 3 == 0 else 0) + rnd.random() * 0.1, "mg/m3"),
                ("noise1", "noise_laeq_db", (52 if 6 <= hour < 22 else 44) + rnd.random() * 4, "dB(A)"),
                ("kwh1", "energy_kwh_total", 20000 + 8.0 * i, "kWh"),
                ("belt1", "ore_t_total", 7000 + 1.7 * i, "t"),
            ):
                rows.append(StoredReading(site, "gw1", dev, metric, ts_ms, float(value), unit, "good"))
                source.add(site, metric, dev, ts_ms / 1000, float(value))
            if len(rows) >= 20_000:
                store.write(rows)
                with replica.transaction() as con:
                    replica.add(rows, con)
                n += len(rows)
                rows = []
        if rows:
            store.write(rows)
            with replica.transaction() as con:
                replica.add(rows, con)
            n += len(rows)
    t_readings = time.perf_counter() - t0
    kstore = KpiStore(kpi_db_path(cfg))
    kstore._db.execute("PRAGMA synchronous=OFF")  # a bench fill: no fsync per KPI period
    # the monitor's KPI engine, reading the generated series from memory (the same points as the replica holds;
    # reading them back series by series would make the fill, not the pages, the slow part of this bench)
    engine = KpiEngine(cfg.kpi, cfg.sites, source, kstore)
    for site in sites:
        for d in range(days):
            engine.compute_day(site, first + timedelta(days=d))
        for m in sorted({(first + timedelta(days=d)).replace(day=1) for d in range(days)}):
            from greenmine.server.monitor.kpi import periods

            engine.compute(site, periods.month(m.year, m.month, TZ))
    kstore.close()
    replica.close()
    store.close()
    return {"readings": n, "fill_readings_s": round(t_readings, 1), "fill_kpis_s": round(time.perf_counter() - t0 - t_readings, 1)}


class _IndexedSource:
    """A ReadingSource over sorted in-memory lists: bisect instead of a scan."""

    def __init__(self, point) -> None:
        self._point = point
        self._ts: dict[tuple[str, str], list[float]] = {}
        self._pts: dict[tuple[str, str], list] = {}

    def add(self, site: str, metric: str, device: str, ts: float, value: float) -> None:
        self._ts.setdefault((site, metric), []).append(ts)
        self._pts.setdefault((site, metric), []).append(self._point(device, ts, value))

    def points(self, site: str, metric: str, start: float, end: float) -> list:
        import bisect

        ts = self._ts.get((site, metric), [])
        return self._pts.get((site, metric), [])[bisect.bisect_left(ts, start):bisect.bisect_left(ts, end)]


class Client:
    def __init__(self, base: str, name: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        body = self.get("/login")[1]
        csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
        data = urllib.parse.urlencode({"csrf": csrf, "username": name, "password": PASSWORD, "next": "/"}).encode()
        with self.opener.open(urllib.request.Request(base + "/login", data=data), timeout=60) as r:
            assert r.status == 200, r.status

    def get(self, path: str) -> tuple[float, str]:
        t = time.perf_counter()
        with self.opener.open(urllib.request.Request(self.base + path, headers={"Accept": "text/html"}), timeout=120) as r:
            body = r.read().decode()
            assert r.status == 200
        return time.perf_counter() - t, body


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))], 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--requests", type=int, default=10, help="requests of each page per user")
    args = ap.parse_args()
    from greenmine.server.web.role import WebRole

    with tempfile.TemporaryDirectory(prefix="greenmine-bench-web-") as tmp:
        tmp = Path(tmp)
        sites = [f"gs-bench-{i:02d}" for i in range(args.sites)]
        first = date(2026, 10, 1)
        end_day = first + timedelta(days=args.days - 1)
        doc = {"kind": "server", "store": {"kind": "sqlite", "path": str(tmp / "store.sqlite")},
               "kpi": {"counter_interval_s": 60, "sample_interval_s": 60},
               "alerts": {"db_path": str(tmp / "alerts.sqlite")}, "monitor": {"replica_path": str(tmp / "replica.sqlite")},
               "ingest": {"spool_path": str(tmp / "spool.sqlite")},
               "web": {"port": 0, "users_db": str(tmp / "users.sqlite")},
               "sites": [{"id": s, "name": f"矿山 {i}", "prefecture": ("金昌市", "白银市", "张掖市")[i % 3], "timezone": TZ}
                         for i, s in enumerate(sites)]}
        cfg = load_server_config(tmp / "server.toml", doc=doc)
        filled = fill(cfg, sites, args.days, first)
        now = datetime.combine(end_day + timedelta(days=1), datetime.min.time(), ZoneInfo(TZ)).timestamp() + 3600
        role = WebRole(cfg, clock=lambda: now)
        # argon2 hashing at the default cost: one user a client
        for u in range(args.users):
            role.users.add(f"user{u:02d}", "operator", PASSWORD)
        role.start()
        try:
            base = f"http://127.0.0.1:{role.port}"
            clients = [Client(base, f"user{u:02d}") for u in range(args.users)]
            times: dict[str, list[float]] = {"overview": [], "site_month": []}
            lock = threading.Lock()
            errors: list[str] = []

            def work(c: Client, seed: int) -> None:
                rnd = random.Random(seed)
                try:
                    for _ in range(args.requests):
                        a, body = c.get("/")
                        assert "light-" in body
                        site = rnd.choice(sites)
                        b, body = c.get(f"/sites/{site}?range=month&date={end_day.isoformat()}")
                        assert 'class="limit-line"' in body
                        with lock:
                            times["overview"].append(a)
                            times["site_month"].append(b)
                except Exception as exc:  # noqa: BLE001
                    errors.append(repr(exc))

            threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        finally:
            role.stop()
        out = {
            "bench": "web", "sites": args.sites, "days": args.days, "users": args.users, **filled,
            "raw_readings_per_site": filled["readings"] // max(args.sites, 1),
            "overview_p50_s": pct(times["overview"], 50), "overview_p99_s": pct(times["overview"], 99),
            "site_month_p50_s": pct(times["site_month"], 50), "site_month_p99_s": pct(times["site_month"], 99),
            "requests": len(times["overview"]) + len(times["site_month"]),
            "requests_per_s": round((len(times["overview"]) + len(times["site_month"])) / wall, 1),
            "mean_s": round(statistics.mean(times["overview"] + times["site_month"]), 4) if times["overview"] else None,
            "errors": errors[:3],
        }
        print(json.dumps(out))
        return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
