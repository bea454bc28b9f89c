"""Ingest throughput against a real Mosquitto, compared with a bare paho subscriber.

    python bench/server.py [--messages 30000] [--readings 20] [--synchronous full|normal]

What it does, all on loopback:

1. starts Mosquitto and VictoriaMetrics (from Debian) on free ports;
2. registers the persistent QoS 1 sessions: two bare paho subscribers (auto
   ack, nothing else), the server with the SQLite sink, and the server with
   the VictoriaMetrics sink (line protocol over /api/v2/write);
3. publishes N telemetry batches of R readings once; the broker queues a copy
   for each session;
4. lets each consumer drain its queue in turn and times it, from connecting
   until the last message was received (bare paho) or the last reading was
   written to the store (server: validation, spool commit, ack, writer, sink);
   every consumer drains twice, in two rounds (bare paho, SQLite,
   VictoriaMetrics, then the three again; each server run with its own
   session, spool and SQLite file), and the faster of its two runs counts:
   the machine may be busier during one of them, and the bare subscriber,
   the reference, is treated no better than the server;
5. scale-out: two `greenmine server run --role ingest` processes, each with its own
   client_id and spool, on one shared subscription (`mqtt.shared_group`) and
   one SQLite store. Both are started and subscribed, then stopped (SIGSTOP)
   while the same N batches are published (the broker splits them between
   the two sessions), then continued (SIGCONT) and timed until the store
   holds every reading. `scale_2_processes` is their combined rate over the
   single-process SQLite rate of step 4. It is reported, not gated: on a
   2-core machine the two processes, the broker and this script share the
   cores.

6. the monitor: (a) its capacity: `greenmine server run --role monitor` in
   its own process (its own session and replica) is stopped (SIGSTOP) while
   the stream of (b) is published to its session, then continued and timed
   until it has committed every batch (`monitor.capacity`, and
   `capacity_vs_sqlite_ingest` against step 4's per-process rate); (b) it
   keeps up: a fresh monitor on an accelerated `[clock]` from 21:58 to 00:02
   site-local, so the hours, the noise day and the day close, while this
   script publishes pre-built batches of `--monitor-sites` sites of 10
   gateways (one batch per gateway per simulated minute), stamped with the
   simulated "now", at half the capacity of (a) (the rate the sizing table
   plans a monitor for; `--monitor-rate` sets another). The clock
   runs `speed` = rate x 60 / gateways times faster than real time, so a
   simulated hour holds 3600 / speed seconds of the stream, and its KPIs
   must be computed in 60 / speed real seconds: stricter than real time for
   the closing work and equal to it for the stream. For every KPI period that
   ends in the window, the lag is the time from the period's end to when its
   value first appeared in the monitor's KPI store (polled every 20 ms), in
   simulated seconds (`monitor.max_lag_sim_s`; target <= 60: periods close
   within one simulated minute of their end) and real ones. The monitor
   computes closed periods at each 15-minute edge of its clock (every period
   ends on one) and its role ticks at least twice per
   `alerts.tick_interval_s` of the clock, at most every 0.05 s real, so the
   floor is about 0.05 x speed simulated seconds.
   `consumed_behind_s` is how long after the last publish the monitor had
   committed every batch (`greenmine_role_messages_total{role="monitor"}`).

7. VictoriaMetrics' own capacity on this machine, for the sizing table:
   pre-built, gzip-compressed line-protocol bodies (10,000 readings each,
   1,000 series, as ingest writes them) posted to /api/v2/write from two
   threads for `--vm-seconds`; `victoriametrics_capacity.samples_per_s`
   counts the two samples (value, quality) of each line. The client does
   nothing but post, so this is the single node's rate with this script's
   posting beside it on the same cores.

Steps 1-4 time one ingest process (`App(cfg, roles=("ingest",))`, what
`greenmine server run --role ingest` runs): the per-process figure. The
monitor is timed on its own in step 6. No HJ 212 points are configured
(they need a platform to connect to).

Draining a backlog measures what a consumer sustains, independent of how
fast one Python publisher can publish. Prints one JSON line; the figures
that count are per ingest process: `ratio_sqlite_vs_raw` (target >= 0.3)
and `ratio_victoriametrics_vs_raw` (target >= 0.25). More throughput comes
from more processes (step 5), not from one process. The default 30,000
messages make each drain last several seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from tests.server.conftest import write_toml  # noqa: E402
from tests.support.processes import spawn_greenmine, stop_process  # noqa: E402
from tests.support.services import Mosquitto, VictoriaMetrics, free_port, wait_for  # noqa: E402

SITE = "bench-site"
#: a site's usual mix: KPI inputs (totalizers, dust, noise) and plain metrics; device i reports METRICS[i % 10]
METRICS = [("power_kw", "kW"), ("energy_kwh_total", "kWh"), ("water_reused_m3_total", "m3"), ("water_fresh_m3_total", "m3"),
           ("dust_tsp_mgm3", "mg/m3"), ("dust_pm10_mgm3", "mg/m3"), ("noise_laeq_db", "dB"), ("ore_t_total", "t"),
           ("current_a", "A"), ("voltage_v", "V")]
FILTER = "greenmine/v1/+/+/telemetry"


def payloads(n_msgs: int, n_readings: int) -> list[tuple[str, bytes]]:
    t0 = datetime.now(timezone.utc) - timedelta(days=1)
    out = []
    for seq in range(n_msgs):
        agent = f"gw{seq % 10}"
        ts = (t0 + timedelta(seconds=seq // 10)).isoformat()
        doc = {
            "schema": "greenmine.telemetry.v1", "site": SITE, "agent": agent, "seq": seq, "sent_at": ts,
            "readings": [
                {"device": f"{agent}-m{i:02d}", "metric": METRICS[i % 10][0], "ts": ts, "value": 100.0 + seq + i / 10,
                 "unit": METRICS[i % 10][1], "quality": "good"}
                for i in range(n_readings)
            ],
        }
        out.append((f"greenmine/v1/{SITE}/{agent}/telemetry", json.dumps(doc).encode()))
    return out


def raw_client(port: int, client_id: str) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    return c


def connect_v5(c: paho.Client, port: int) -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 1000
    c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)


def register_raw(port: int, client_id: str) -> None:
    c = raw_client(port, client_id)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.on_connect = lambda client, *a: client.subscribe(FILTER, qos=1)
    connect_v5(c, port)
    c.loop_start()
    done.wait(10)
    c.disconnect()
    c.loop_stop()


def drain_raw(port: int, n_msgs: int, client_id: str) -> float:
    c = raw_client(port, client_id)
    got = [0]
    done = threading.Event()

    def on_message(client, userdata, msg):
        got[0] += 1
        if got[0] >= n_msgs:
            done.set()

    c.on_message = on_message
    c.on_connect = lambda client, *a: client.subscribe(FILTER, qos=1)
    t0 = time.perf_counter()
    connect_v5(c, port)
    c.loop_start()
    done.wait(600)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    if got[0] < n_msgs:
        raise SystemExit(f"bare subscriber got {got[0]} of {n_msgs}")
    return dt


def server_doc(tmp: Path, port: int, name: str, store: dict, synchronous: str) -> dict:
    return {
        "kind": "server",
        "mqtt": {"port": port, "client_id": f"bench-{name}", "receive_maximum": 1000},
        "ingest": {"spool_path": str(tmp / f"{name}-spool.sqlite"), "unknown_site": "reject", "spool_synchronous": synchronous},
        "store": store,
        # a configured site, so the KPI engine and alert monitor (attached by App, as in `server run`) see every reading
        "sites": [{"id": SITE, "name": "bench", "timezone": "Asia/Shanghai"}],
        "alerts": {"db_path": str(tmp / f"{name}-alerts" / "alerts.sqlite")},
    }


def server_config(tmp: Path, port: int, name: str, store: dict, synchronous: str):
    from greenmine.server.config import load_server_config

    return load_server_config(tmp / f"{name}.toml", doc=server_doc(tmp, port, name, store, synchronous))


def register_server(cfg) -> None:
    from greenmine.server.app import App

    app = App(cfg, roles=("ingest",))
    app.start()
    wait_for(lambda: app.mqtt.subscribed, 10, what="server subscribed")
    app.stop()


def drain_server(cfg, n_readings_total: int) -> float:
    from greenmine.server.app import App

    app = App(cfg, roles=("ingest",))
    written = [0]
    done = threading.Event()

    def on_written(readings) -> None:  # writer thread, after each stored batch
        written[0] += len(readings)
        if written[0] >= n_readings_total:
            done.set()

    app.writer.add_listener(on_written)
    t0 = time.perf_counter()
    app.start()
    done.wait(600)
    dt = time.perf_counter() - t0
    app.stop()
    if written[0] < n_readings_total:
        raise SystemExit(f"server wrote {written[0]} of {n_readings_total} readings")
    return dt


def publish(port: int, msgs: list[tuple[str, bytes]]) -> None:
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port, 30)
    pub.loop_start()
    infos = [pub.publish(t, p, qos=1) for t, p in msgs]
    for info in infos:
        info.wait_for_publish(600)
    pub.disconnect()
    pub.loop_stop()


def _healthy(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return json.load(resp)["mqtt_subscribed"]
    except urllib.error.HTTPError as exc:  # 503 while a role is not yet connected: the body still says
        try:
            return json.load(exc)["mqtt_subscribed"]
        except (ValueError, KeyError):
            return False
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return False


def drain_shared(tmp: Path, port: int, msgs: list[tuple[str, bytes]], n_readings_total: int, synchronous: str,
                 n_procs: int = 2) -> float:
    """`n_procs` `greenmine server run` processes on one shared subscription and one SQLite store, stopped while
    `msgs` are published, then timed from SIGCONT until the store holds `n_readings_total` readings."""
    from greenmine.server.store.sqlite import SqliteReader

    store = tmp / "shared-store.sqlite"
    procs, http_ports = [], []
    for i in range(n_procs):
        doc = server_doc(tmp, port, f"shared{i}", {"kind": "sqlite", "path": str(store)}, synchronous)
        http_ports.append(free_port())
        doc["http_port"] = http_ports[-1]
        doc["mqtt"].update(shared_group="bench", keepalive_s=600)  # stopped for a while: the broker must not drop us
        path = write_toml(tmp / f"shared{i}.toml", doc)
        procs.append(spawn_greenmine(["server", "run", "--config", str(path), "--role", "ingest"], tmp / f"shared{i}.log"))
    reader = SqliteReader(store)
    try:
        wait_for(lambda: all(_healthy(p) for p in http_ports), 60, what="shared-subscription servers subscribed")
        for proc in procs:
            os.kill(proc.pid, signal.SIGSTOP)
        publish(port, msgs)
        t0 = time.perf_counter()
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 600
        while reader.count() < n_readings_total:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"shared-subscription servers wrote {reader.count()} of {n_readings_total} readings")
            time.sleep(0.05)  # a poll of the store from this process: the servers run in their own
        return time.perf_counter() - t0
    finally:
        reader.close()
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)
            stop_process(proc)


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def monitor_stream(base: float, end: float, agents: list[tuple[str, str]], n_readings: int) -> list[tuple[float, str, bytes]]:
    """One batch per gateway per simulated minute from `base` to `end`, each stamped with its simulated time."""
    interval = 60.0  # simulated seconds between one gateway's batches
    stream: list[tuple[float, str, bytes]] = []
    j = 0
    while base + j * interval < end:
        for k, (site, agent) in enumerate(agents):
            t = base + j * interval + k * interval / len(agents)
            ts = datetime.fromtimestamp(t, timezone.utc).isoformat()
            doc_ = {
                "schema": "greenmine.telemetry.v1", "site": site, "agent": agent, "seq": j, "sent_at": ts,
                "readings": [
                    {"device": f"{agent}-m{i:02d}", "metric": METRICS[i % 10][0], "ts": ts,
                     "value": 1000.0 + j * (1 + i) if METRICS[i % 10][0].endswith("_total") else 0.5 + (i % 3) / 10,
                     "unit": METRICS[i % 10][1], "quality": "good"}
                    for i in range(n_readings)
                ],
            }
            stream.append((t, f"greenmine/v1/{site}/{agent}/telemetry", json.dumps(doc_).encode()))
        j += 1
    return stream


def monitor_config(tmp: Path, port: int, name: str, agents: list[tuple[str, str]], clock: dict) -> tuple[Path, int]:
    """A `--role monitor` config of its own (session, replica, KPI and alert state) for the bench's sites."""
    http_port = free_port()
    doc = server_doc(tmp, port, name, {"kind": "sqlite", "path": str(tmp / f"{name}-unused.sqlite")}, "full")
    doc["http_port"] = http_port
    doc["sites"] = [{"id": site, "timezone": "Asia/Shanghai", "recipients": ["officer@example.test"]}
                    for site in dict.fromkeys(s for s, _ in agents)]
    doc["monitor"] = {"replica_path": str(tmp / f"{name}-replica.sqlite")}
    doc["notify"] = {"eml_dir": str(tmp / f"{name}-mail")}
    doc["clock"] = clock
    return write_toml(tmp / f"{name}.toml", doc), http_port


def _monitor_http(http_port: int):
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{http_port}"

    def get(path: str) -> str:
        with urllib.request.urlopen(url + path, timeout=5) as r:
            return r.read().decode()

    def health() -> dict:
        try:
            return json.loads(get("/health"))
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())
        except OSError:
            return {}

    def consumed() -> float:
        return _metric(get("/metrics"), 'greenmine_role_messages_total{role="monitor"}') or 0.0

    return health, consumed


def _monitor_window(n_sites: int) -> tuple[float, float, list[tuple[str, str]]]:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Shanghai")
    base = datetime(2026, 11, 20, 21, 58, tzinfo=tz).timestamp()
    end = datetime(2026, 11, 21, 0, 2, tzinfo=tz).timestamp()
    return base, end, [(f"bench-site{i:03d}", f"gw{k}") for i in range(n_sites) for k in range(10)]


def monitor_drain(tmp: Path, port: int, n_sites: int, n_readings: int) -> dict:
    """Step 6a: the monitor's capacity. Its session gets step 6's whole stream as a backlog (the process is
    stopped while it is published); from SIGCONT to the last batch committed, on a real-time clock just after
    the stream (no period closes while it drains)."""
    from zoneinfo import ZoneInfo

    base, end, agents = _monitor_window(n_sites)
    stream = monitor_stream(base, end, agents, n_readings)
    clock = {"mode": "accelerated", "sim_start": datetime.fromtimestamp(end + 60, ZoneInfo("Asia/Shanghai")).isoformat(),
             "real_start_epoch_s": time.time(), "speed": 1.0}
    config, http_port = monitor_config(tmp, port, "monitor-drain", agents, clock)
    health, consumed = _monitor_http(http_port)
    proc = spawn_greenmine(["server", "run", "--config", str(config), "--role", "monitor"], tmp / "monitor-drain.log")
    try:
        wait_for(lambda: health().get("monitor_subscribed"), 30, what="monitor subscribed")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            publish(port, [(topic, body) for _t, topic, body in stream])
        finally:
            t0 = time.perf_counter()
            os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: consumed() >= len(stream), 300, what="monitor drained its backlog", interval_s=0.05)
        dt = time.perf_counter() - t0
    finally:
        stop_process(proc, 30)
    return {"msgs": len(stream), "seconds": round(dt, 2), "msgs_per_s": round(len(stream) / dt),
            "readings_per_s": round(len(stream) * n_readings / dt)}


def monitor_lag(tmp: Path, port: int, rate_msgs_s: float, n_sites: int, n_readings: int) -> dict:
    """Step 6b: `n_sites` sites of 10 gateways, each sending a batch per simulated minute, on a clock
    accelerated so that the stream is `rate_msgs_s`, to a `greenmine server run --role monitor` process;
    how late, in simulated and real seconds, each KPI period closes."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Shanghai")
    base, end, agents = _monitor_window(n_sites)
    interval = 60.0
    speed = rate_msgs_s * interval / len(agents)
    # the stream, built before the clock starts so that publishing costs this process little
    stream = monitor_stream(base, end, agents, n_readings)
    real0 = time.time() + 5.0  # when simulated time is `base`: after the monitor has started and subscribed
    config, http_port = monitor_config(tmp, port, "monitor", agents, {
        "mode": "accelerated", "sim_start": datetime.fromtimestamp(base, tz).isoformat(), "real_start_epoch_s": real0,
        "speed": speed})
    kpi_db = tmp / "monitor-alerts" / "kpi.sqlite"
    health, consumed = _monitor_http(http_port)

    first_seen: dict[tuple, tuple[float, float]] = {}
    stop = threading.Event()

    def poll() -> None:  # new and replaced rows only (INSERT OR REPLACE gives a replaced row a new rowid)
        db, last = None, 0
        while not stop.wait(0.02):
            try:
                db = db or sqlite3.connect(f"file:{kpi_db}?mode=ro", uri=True, timeout=1)
                rows = db.execute("SELECT rowid, site, kpi, subject, period_kind, period_start, period_end FROM kpi_values "
                                  "WHERE rowid>?", (last,)).fetchall()
            except sqlite3.Error:
                db = None
                continue
            now = time.time()
            for r in rows:
                last = max(last, r[0])
                first_seen.setdefault(r[1:6], (r[6], now))

    proc = spawn_greenmine(["server", "run", "--config", str(config), "--role", "monitor"], tmp / "monitor.log")
    poller = threading.Thread(target=poll, daemon=True)
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-monitor-pub")
    pub.max_inflight_messages_set(1000)
    try:
        wait_for(lambda: health().get("monitor_subscribed"), 30, what="monitor subscribed")
        pub.connect("127.0.0.1", port, 30)
        pub.loop_start()
        poller.start()
        if time.time() > real0:
            raise SystemExit("step 6: the monitor took longer than 5 s to start; its clock started without data")
        time.sleep(real0 - time.time())  # pacing: simulated time starts at `base` now
        for t, topic_, body in stream:
            ahead = real0 + (t - base) / speed - time.time()
            if ahead > 0:
                time.sleep(ahead)  # pacing the publisher to the stream's schedule
            pub.publish(topic_, body, qos=1)
        real_s = time.time() - real0
        kept_up = True
        try:
            wait_for(lambda: consumed() >= len(stream), 120, what="monitor consumed every batch")
            behind_s = time.time() - real0 - real_s
            wait_for(lambda: len({first_seen[k][0] for k in list(first_seen) if base < first_seen[k][0] <= end}) >= 2,
                     60, what="KPI periods closed")
        except AssertionError:  # it did not keep up: report how far it got, not nothing
            kept_up, behind_s = False, None
        done = consumed()
    finally:
        stop.set()
        pub.disconnect()
        pub.loop_stop()
        stop_process(proc, 30)
    lags: dict[str, float] = {}
    for (site, kpi, subject, kind, start), (pend, seen) in first_seen.items():
        if base < pend <= end and kind != "rolling24h":  # rolling 24 h is recomputed every rolling_every_s, not closed
            lags[kind] = max(lags.get(kind, 0.0), seen - (real0 + (pend - base) / speed))
    worst = max(lags.values()) if lags else None
    return {
        "sites": n_sites, "gateways": len(agents), "speed": round(speed, 1), "target_msgs_per_s": round(rate_msgs_s),
        "published_msgs_per_s": round(len(stream) / real_s), "kept_up": kept_up,
        "consumed_fraction": round(done / len(stream), 3),
        "consumed_behind_s": round(behind_s, 2) if behind_s is not None else None,
        "max_lag_real_s_by_period": {k: round(v, 2) for k, v in sorted(lags.items())},
        "max_lag_sim_s_by_period": {k: round(v * speed, 1) for k, v in sorted(lags.items())},
        "max_lag_sim_s": round(worst * speed, 1) if worst is not None else None,
        "max_lag_real_s": round(worst, 2) if worst is not None else None,
    }


def vm_capacity(vm, seconds: float) -> dict:
    """Step 7: how many samples per second a single VictoriaMetrics node takes from pre-built bodies."""
    import gzip

    import urllib3

    from greenmine.server.store.base import StoredReading
    from greenmine.server.store.influx import build_lines

    t0_ms = int((time.time() - 86400) * 1000)
    bodies = []
    for b in range(20):
        rows = [StoredReading(f"cap-site{i % 10}", "gw1", f"m{i % 100:03d}", METRICS[i % 10][0], t0_ms + (b * 10 + i // 1000) * 1000,
                              float(i), METRICS[i % 10][1], "good") for i in range(10_000)]
        bodies.append(gzip.compress("\n".join(build_lines(rows)[0]).encode()))
    http = urllib3.PoolManager(maxsize=4)
    url = f"{vm.url}/api/v2/write?precision=ms"
    posted = [0, 0]
    stop_at = time.perf_counter() + seconds

    def post(k: int) -> None:
        i = k
        while time.perf_counter() < stop_at:
            r = http.request("POST", url, body=bodies[i % len(bodies)], headers={"Content-Encoding": "gzip"})
            if r.status != 204:
                raise SystemExit(f"VictoriaMetrics answered {r.status}: {r.data[:200]!r}")
            posted[k] += 10_000
            i += 2

    t0 = time.perf_counter()
    threads = [threading.Thread(target=post, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    lines = sum(posted)
    return {"lines_per_s": round(lines / dt), "samples_per_s": round(2 * lines / dt), "seconds": round(dt, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--readings", type=int, default=20, help="readings per message")
    ap.add_argument("--synchronous", choices=["full", "normal"], default="full", help="spool durability mode")
    ap.add_argument("--monitor-sites", type=int, default=50,
                    help="step 6: sites of 10 gateways each, one batch per gateway per simulated minute (default 50)")
    ap.add_argument("--monitor-rate", type=float, metavar="MSGS_S",
                    help="step 6b: the stream's rate in messages/s (default: half the monitor's capacity of step 6a, "
                         "the rate the sizing plans one monitor for)")
    ap.add_argument("--vm-seconds", type=float, default=8.0, help="step 7: how long to post to VictoriaMetrics")
    args = ap.parse_args()
    n, r = args.messages, args.readings
    with tempfile.TemporaryDirectory(prefix="greenmine-bench-") as d:
        tmp = Path(d)
        (tmp / "mq").mkdir()
        (tmp / "vm").mkdir()
        broker, vm = Mosquitto(tmp / "mq"), VictoriaMetrics(tmp / "vm")
        broker.conf.write_text(broker.conf.read_text().replace("max_queued_messages 100000", "max_queued_messages 0")
                               .replace("persistence true", "persistence false"))
        broker.start()
        vm.start()
        try:
            sqlite_cfgs = [server_config(tmp, broker.port, f"sqlite{i}", {"kind": "sqlite", "path": str(tmp / f"store{i}.sqlite")},
                                         args.synchronous) for i in (1, 2)]
            vm_cfgs = [server_config(tmp, broker.port, f"vm{i}", {"kind": "influxdb", "url": vm.url}, args.synchronous)
                       for i in (1, 2)]
            for i in (1, 2):
                register_raw(broker.port, f"bench-raw-{i}")
            for cfg in sqlite_cfgs + vm_cfgs:
                register_server(cfg)

            msgs = payloads(n, r)
            publish(broker.port, msgs)

            raw_runs, sqlite_runs, vm_runs = [], [], []
            for i in (1, 2):  # two rounds; each consumer's faster run counts
                raw_runs.append(drain_raw(broker.port, n, f"bench-raw-{i}"))
                sqlite_runs.append(drain_server(sqlite_cfgs[i - 1], n * r))
                vm_runs.append(drain_server(vm_cfgs[i - 1], n * r))
            raw_s, sqlite_s, vm_s = min(raw_runs), min(sqlite_runs), min(vm_runs)
            shared_s = drain_shared(tmp, broker.port, msgs, n * r, args.synchronous)
            capacity_m = monitor_drain(tmp, broker.port, args.monitor_sites, r)
            monitor = monitor_lag(tmp, broker.port, args.monitor_rate or capacity_m["msgs_per_s"] / 2,
                                  args.monitor_sites, r)
            monitor["capacity"] = capacity_m
            monitor["capacity_vs_sqlite_ingest"] = round(capacity_m["msgs_per_s"] * sqlite_s / n, 3)
            capacity = vm_capacity(vm, args.vm_seconds)
        finally:
            vm.stop()
            broker.stop()
    def figures(best: float, runs: list[float]) -> dict:
        return {"msgs_per_s": round(n / best), "readings_per_s": round(n * r / best),
                "runs_msgs_per_s": [round(n / s) for s in runs], "seconds": round(best, 2)}

    result = {
        "messages": n,
        "readings_per_message": r,
        "spool_synchronous": args.synchronous,
        "raw_paho": figures(raw_s, raw_runs),
        "sqlite": figures(sqlite_s, sqlite_runs),
        "victoriametrics": figures(vm_s, vm_runs),
        "ratio_sqlite_vs_raw": round(raw_s / sqlite_s, 3),
        "ratio_victoriametrics_vs_raw": round(raw_s / vm_s, 3),
        "sqlite_2_processes": {"msgs_per_s": round(n / shared_s), "readings_per_s": round(n * r / shared_s),
                               "seconds": round(shared_s, 2)},
        "scale_2_processes": round(sqlite_s / shared_s, 3),
        "monitor": monitor,
        "victoriametrics_capacity": capacity,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
