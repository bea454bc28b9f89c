"""`greenmine demo`: a whole simulated mine site, end to end, on one machine.

It composes every part (the one module allowed to import all of them), each as its own
process, exactly as they run in production:

    broker      Mosquitto 2, provisioned exactly as in production by `greenmine broker
                init` (a test CA made with openssl, a TLS listener, the dynamic-security
                plugin, no anonymous access), then `add-server` and `add-agent`: the
                agent may publish only its own topics, the server only subscribe. When
                mosquitto is not installed the demo prints the command and stops.
    sim run     the example site's meters (config/site.example.toml), on free ports
    server run  ingest into an embedded SQLite store, KPIs, alerts, .eml emails
    agent run   polls the simulated meters and publishes (config/agent.example.toml)
    sim energy-platform
                one data centre of the provincial energy platform (variant A with SM4, real
                HTTPS with a test CA made for the run); the server's energy role registers
                and sends the site's kWh and kgce to it (15-minute records, day and month
                when they close). The terminal shows the records as the platform receives them.

The configs it generates go into a fresh data folder, named on start, so a run
never collides with an earlier one and the user can read and reuse them.

Time: all three processes run on one accelerated simulated clock
(`greenmine.clock`, x60: a simulated minute per real second, from 21:50
yesterday, site time). The demo gives the simulator, the agent and the server
the same start, speed and real start epoch, so they agree on "now" without
talking to each other. The agent still polls on real seconds (every poll group
once a real second = once a simulated minute, the cadence the server's KPI
settings expect); readings carry simulated time, and the server judges them by
simulated time.

The script, in simulated time (see SCRIPT below): reuse_drop and night_noise
from 22:00, the belt scale offline from 22:05 to 22:25. Within about 80 real
seconds the reuse rate, the night noise and the offline belt scale raise
alerts, the belt scale's resolves, and their emails appear as .eml files. The
terminal shows each alert as it changes state, read from the server's alert
API (GET /alerts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, time as dtime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from greenmine import CONFIG_DIR
from greenmine.clock import Clock, ClockConfig

#: Simulated seconds per real second. At x60 one real second is one simulated minute: the agent
#: polls every group once a real second, which is the one-minute cadence that the example server
#: config's KPI settings (counter_interval_s, sample_interval_s) and the 5-minute deadman expect.
SPEED = 60.0
#: Simulated start, site local time, on the day before the demo runs: ten minutes before the
#: night (22:00) when reuse_drop and night_noise begin.
SIM_START = dtime(21, 50)
#: Site-wide scenarios for the whole run.
SITE_SCENARIOS = ["reuse_drop", "night_noise"]
#: (simulated minutes after the start, action, device, scenario): injected through the simulator's control interface.
SCRIPT = [
    (15, "inject", "mill-feed-belt", "device_offline"),  # 22:05: the belt scale stops answering
    (35, "clear", "mill-feed-belt", None),               # 22:25: back
]
#: Rules the demo adds to the example server config, so that what the script breaks is judged
#: within minutes rather than at the end of a simulated day or night (the shipped rules stay on).
DEMO_RULES = [
    # The daily rule judges complete days only; the demo has data from 21:50, so it judges the
    # rolling 24 h rate over the data so far (incomplete windows allowed, as the e2e test does).
    {"kind": "threshold", "name": "water_reuse_24h_demo", "series": "water_reuse_24h", "require_complete": False,
     "clear_hysteresis": 1.0, "severity": "critical"},
    # The shipped rule judges the whole night (22-06); this one judges each complete night hour's Leq
    # against the same GB 12348 night limit.
    {"kind": "threshold", "name": "noise_night_leq_hourly", "series": "noise_leq_hourly", "clear_hysteresis": 1.0,
     "severity": "warning"},
]
#: The rolling 24 h reuse rate is recomputed every 5 simulated minutes (default 15).
ROLLING_EVERY_S = 300.0
#: The energy platform profile the demo's data centre speaks, and what the server reports to it.
ENERGY_PROFILE = "variant-a-sm4"
ENERGY_ITEMS = [
    {"code": "00-00-0000-010100-30", "source": "site_kwh", "decimals": 2},               # the site's kWh
    {"code": "00-00-0000-000000-30", "source": "site_kgce", "scale": 0.001, "decimals": 4},  # 综合能耗, kgce -> tce
]
#: statType -> how the demo names it
STAT_NAMES = {"0": "15-min", "1": "day", "2": "month", "3": "year"}

#: Cap of the agent's back-off for a failing device, in real seconds (default 300): the belt
#: scale is probed again within seconds of coming back.
BACKOFF_MAX_S = 5.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run a simulated mine site, the agent, Mosquitto (TLS, ACL) and the server together",
        description="Start a simulated mine site (real Modbus servers), Mosquitto (provisioned by 'greenmine broker "
        "init': TLS with a demo CA, one client for the agent and one for the server, ACLs), the server and the "
        "agent, and a simulated energy platform (one data centre, HTTPS) that the server's energy role reports to, "
        "all on this machine and on free loopback ports, and show what flows. Needs mosquitto installed, "
        "no internet and no config. Everything the run writes (generated configs, stores, logs, emails) goes into a new "
        "folder that is printed at start.",
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds and exit 0")
    p.add_argument(
        "--data-dir", type=Path, default=Path("greenmine-data"), metavar="DIR",
        help="parent folder of the run's data folder (default: ./greenmine-data)",
    )
    p.set_defaults(func=run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


#: What the user runs when mosquitto is missing (the demo never falls back to a home-made broker).
INSTALL_MOSQUITTO = "sudo apt-get install -y mosquitto"


def start_broker(run_dir: Path, children: list) -> tuple[dict, dict] | None:
    """Provision and start Mosquitto in run_dir/broker, as `greenmine broker init --make-ca`, `add-server`
    and `add-agent` do. Returns the agent's and the server's [mqtt] sections, or None (after printing why)."""
    from greenmine.server.broker.certs import CertError
    from greenmine.server.broker.conf import Sizing
    from greenmine.server.broker.dynsec import DynsecError
    from greenmine.server.broker.provision import InitOptions, ProvisionError, add_agent, add_server, init

    mosq = find_mosquitto()
    if mosq is None:
        print("error: the demo runs on Mosquitto, which is not installed. Install it with:\n"
              f"    {INSTALL_MOSQUITTO}\n(or run 'bash scripts/demo.sh', which installs it)", file=sys.stderr)
        return None
    folder = run_dir / "broker"
    tls_port, local_port = free_port(), free_port()
    try:
        done = init(folder, InitOptions(sizing=Sizing(outage_hours=1), tls_port=tls_port, tls_bind="127.0.0.1",
                                        local_port=local_port, hostnames=("localhost",), make_ca=True))
    except (ProvisionError, CertError, OSError) as exc:
        print(f"error: broker init: {exc}", file=sys.stderr)
        return None
    broker = Child("broker", [mosq, "-c", done["conf"]], run_dir / "mosquitto.log")
    children.append(broker)
    if not (wait_port(tls_port, 10, broker) and wait_port(local_port, 10, broker)):
        print(f"error: mosquitto did not start:\n{broker.tail()}", file=sys.stderr)
        return None
    site, agent_id = agent_identity()
    try:
        sections = []
        for make in (lambda: add_agent(folder, site, agent_id), lambda: add_server(folder)):
            _, _, path = make()
            from greenmine.configfile import read_toml

            sections.append(read_toml(path)["mqtt"])
    except (ProvisionError, DynsecError, OSError) as exc:
        print(f"error: broker add-agent/add-server: {exc}\n{broker.tail()}", file=sys.stderr)
        return None
    print(f"  broker     mosquitto, TLS on localhost:{tls_port} (demo CA {folder / 'tls' / 'ca.pem'}), "
          f"dynamic security: client {sections[0]['username']} may publish greenmine/v1/{site}/{agent_id}/# only, "
          f"{sections[1]['username']} may subscribe (config {done['conf']}; 'greenmine broker init' wrote it)")
    return sections[0], sections[1]


def new_run_dir(parent: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        d = parent / (f"demo-{stamp}" + (f"-{i}" if i else ""))
        try:
            d.mkdir(parents=True)
            return d.resolve()
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder under {parent}")


def demo_clock(tz: str, real_now_s: float | None = None) -> ClockConfig:
    """The run's clock: SIM_START yesterday (site time) at the current whole real second, SPEED times faster."""
    real0 = float(math.floor(time.time() if real_now_s is None else real_now_s))
    zone = ZoneInfo(tz)
    day = datetime.fromtimestamp(real0, zone).date() - timedelta(days=1)
    return ClockConfig(mode="accelerated", sim_start=datetime.combine(day, SIM_START, zone),
                       real_start_epoch_s=real0, speed=SPEED)


def site_timezone() -> str:
    from greenmine.configfile import read_toml

    sites = read_toml(CONFIG_DIR / "server.example.toml").get("sites") or [{}]
    return sites[0].get("timezone", "Asia/Shanghai")


def agent_identity() -> tuple[str, str]:
    """(site, agent_id) of the example agent: the broker client the demo creates for it."""
    from greenmine.configfile import read_toml

    doc = read_toml(CONFIG_DIR / "agent.example.toml")
    return doc["site"], doc["agent_id"]


def build_configs(run_dir: Path, agent_mqtt: dict, server_mqtt: dict, clock: ClockConfig | None = None,
                  energy: dict | None = None) -> dict[str, Path]:
    """Rewrite the example configs for this run: free ports, data paths inside run_dir, the broker
    connections (`[mqtt]` sections from `broker add-agent` / `add-server`); with `clock`, the shared
    accelerated clock, the script's scenarios and the demo's rules and poll cadence; with `energy`
    ({"url", "ca_file"} of a `greenmine sim energy-platform`), an `[energy]` section for the site."""
    from greenmine.configfile import dump_toml, read_toml

    site = read_toml(CONFIG_DIR / "site.example.toml")
    agent = read_toml(CONFIG_DIR / "agent.example.toml")
    server = read_toml(CONFIG_DIR / "server.example.toml")

    # Every simulated server gets a free port; the agent's bus with the same
    # old port follows it.
    port_map: dict[int, int] = {}
    for srv in site["servers"]:
        if srv.get("transport", "tcp") == "rtu":
            continue
        new = free_port()
        port_map[srv["port"]] = new
        srv["port"] = new
        srv["host"] = "127.0.0.1"
    site["control_port"] = free_port()
    for bus in agent["buses"]:
        if bus.get("port") in port_map:
            bus["port"] = port_map[bus["port"]]
            bus["host"] = "127.0.0.1"
    agent.setdefault("mqtt", {}).update(agent_mqtt)
    agent.setdefault("outbox", {})["path"] = str(run_dir / "agent-outbox.sqlite")
    agent["metrics_port"] = free_port()
    agent["profile_dirs"] = [str(CONFIG_DIR / "profiles")]

    server.setdefault("mqtt", {}).update(server_mqtt)
    server.setdefault("ingest", {})["spool_path"] = str(run_dir / "server-spool.sqlite")
    server["store"] = {"kind": "sqlite", "path": str(run_dir / "greenmine.sqlite")}
    server.setdefault("alerts", {})["db_path"] = str(run_dir / "alerts.sqlite")  # alert state + email outbox
    server["http_port"] = free_port()
    # the officers' console (web role) on a free port; its users in this run's folder
    server["web"] = {**server.get("web", {}), "host": "127.0.0.1", "port": free_port(), "users_db": str(run_dir / "users.sqlite")}
    server.pop("smtp", None)  # demo mode: emails are written as .eml files
    server.setdefault("notify", {})["eml_dir"] = str(run_dir / "emails")
    sup = server.setdefault("supervision", {})  # the registry and the reports (greenmine report annual ...)
    sup.update(db_path=str(run_dir / "supervision.sqlite"), report_dir=str(run_dir / "reports"))
    if clock is not None:
        _accelerate(site, agent, server, clock)
    if energy is not None:
        server["energy"] = energy_section(run_dir, site["site"], energy)

    out = {}
    for name, doc in (("site", site), ("agent", agent), ("server", server)):
        path = run_dir / f"{name}.toml"
        path.write_text(f"# generated by 'greenmine demo' from config/{name}.example.toml\n" + dump_toml(doc))
        out[name] = path
    return out


def energy_section(run_dir: Path, site_id: str, centre: dict) -> dict:
    """The server's [energy] for the demo: one data centre (the simulator), the site's kWh and kgce. Periods
    follow the simulated clock: a 15-minute slot is sent 2 simulated minutes after it ends."""
    return {
        "state_dir": str(run_dir / "energy"), "replica_path": str(run_dir / "energy-replica.sqlite"),
        "close_delay_s": 120, "late_data_wait_s": 300, "tick_s": 0.5,
        "centres": [{"name": "dc1", "url": centre["url"], "profile": ENERGY_PROFILE, "ca_file": centre["ca_file"],
                     "connect_timeout_s": 2, "read_timeout_s": 5, "retry_initial_s": 0.5, "retry_max_s": 5}],
        "enterprises": [{"site": site_id, "enterprise_code": "91620300MA74ABCD1X", "region": "620300",
                         "items": [dict(i) for i in ENERGY_ITEMS]}],
    }


class EnergyWatcher:
    """Reads what the simulated data centre received (GET /_sim/state, over its test CA)."""

    def __init__(self, url: str, ca_file: str) -> None:
        import ssl

        self.url = url.rstrip("/") + "/_sim/state"
        self._ctx = ssl.create_default_context(cafile=ca_file)
        self.state: dict = {}

    def poll(self) -> dict | None:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url, timeout=2.0, context=self._ctx) as resp:
                self.state = json.loads(resp.read())
        except (OSError, ValueError):
            return None  # busy or stopping: the last state stands
        return self.state

    def line(self) -> str:
        st = self.state
        by = st.get("by_stat_type") or {}
        parts = ", ".join(f"{STAT_NAMES.get(k, k)} {by.get(k, 0)}" for k in ("0", "1", "2"))
        return (f"energy platform: {st.get('records', 0)} records received ({parts}), "
                f"{st.get('duplicates', 0)} duplicates, {st.get('registrations', 0)} registration(s)")


def _accelerate(site: dict, agent: dict, server: dict, clock: ClockConfig) -> None:
    """All three on one simulated clock; polls once a real second (a simulated minute); the script's rules."""
    shared = {"mode": clock.mode.value, "sim_start": clock.sim_start.isoformat(),
              "real_start_epoch_s": clock.real_start_epoch_s, "speed": clock.speed}
    site["clock"] = {**site.get("clock", {}), "start": clock.sim_start.isoformat(), "speed": clock.speed,
                     "real_start_epoch_s": clock.real_start_epoch_s}
    site["scenarios"] = list(SITE_SCENARIOS)
    agent["clock"] = dict(shared)
    for dev in agent["devices"]:
        # the example's intervals are simulated seconds; at SPEED they become real ones, at least 1 s
        dev["poll_groups"] = {g: max(1.0, float(v) / clock.speed) for g, v in dev.get("poll_groups", {}).items()}
        dev["backoff_max_s"] = BACKOFF_MAX_S
    server["clock"] = dict(shared)
    server.setdefault("kpi", {})["rolling_every_s"] = ROLLING_EVERY_S
    rules = server.setdefault("alerts", {}).setdefault("rules", [])
    rules += [r for r in DEMO_RULES if r["name"] not in {x.get("name") for x in rules}]


def _console_login(server_doc: dict, run_dir: Path) -> str:
    """Create this run's console user with a one-time password; the line that tells the user how to log in."""
    import secrets

    from greenmine.server.web.users import UserDb

    password = secrets.token_urlsafe(12)
    db = UserDb(run_dir / "users.sqlite")
    try:
        db.add("demo", "operator", password, by="demo")
    finally:
        db.close()
    web = server_doc["web"]
    return (f"  console    http://{web['host']}:{web['port']}/  user demo, password {password} (made for this run; "
            f"more users: greenmine users add NAME --role officer --config {run_dir / 'server.toml'})")


class Child:
    """A part of the demo running as its own process, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, show: Any = None) -> None:
        self.name = name
        self.log_path = log
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_port(port: int, timeout_s: float, child: Child | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class FlowWatcher:
    """Subscribes to the site's telemetry and status to show what is flowing."""

    def __init__(self, mqtt_cfg: dict) -> None:
        """`mqtt_cfg`: the server's [mqtt] section (the watcher reads what the server may read)."""
        import paho.mqtt.client as mqtt

        from greenmine.mqtttls import TlsConfig, ssl_context

        from greenmine.schemas import TopicKind, WireError, parse_telemetry, parse_topic, subscription

        self._parse = parse_telemetry
        self._parse_topic = parse_topic
        self._wire_error = WireError
        self._kind = TopicKind
        self.lock = threading.Lock()
        self.batches = 0
        self.readings = 0
        self.last: dict[tuple[str, str], tuple[float, str]] = {}
        self.status: dict[str, str] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"greenmine-demo-watch-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: (
            c.subscribe(subscription(TopicKind.TELEMETRY)),
            c.subscribe(subscription(TopicKind.STATUS)),
        )
        self.client.username_pw_set(mqtt_cfg["username"], mqtt_cfg["password"])
        self.client.tls_set_context(ssl_context(TlsConfig(**mqtt_cfg["tls"])))
        self.client.connect(mqtt_cfg["host"], mqtt_cfg["port"], keepalive=30)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            topic = self._parse_topic(msg.topic)
            if topic.kind is self._kind.STATUS:
                import json

                with self.lock:
                    self.status[topic.agent] = json.loads(msg.payload).get("state", "?")
                return
            batch = self._parse(msg.payload)
        except (self._wire_error, ValueError):
            return
        with self.lock:
            self.batches += 1
            self.readings += len(batch.readings)
            for r in batch.readings:
                self.last[(r.device, r.metric)] = (r.value, r.unit)

    def first_batch(self) -> bool:
        with self.lock:
            return self.batches > 0

    def line(self, stamp: str, stored: int | None) -> str:
        with self.lock:
            picks = []
            for key in (("crusher-meter", "power_kw"), ("mill-meter", "power_kw"), ("fresh-intake", "water_flow_m3h"),
                        ("dust-north", "dust_tsp_mgm3"), ("noise-east", "noise_laeq_db")):
                if key in self.last:
                    v, u = self.last[key]
                    picks.append(f"{key[0]} {v:.1f} {u}")
            if not picks:
                picks = [f"{d} {m}={v:.1f}{u}" for (d, m), (v, u) in list(self.last.items())[:4]]
            st = " ".join(f"{a}:{s}" for a, s in self.status.items())
            stored_s = f" stored {stored}" if stored is not None else ""
            return (f"{stamp} batches {self.batches} readings {self.readings}{stored_s}"
                    f" | {st} | " + ", ".join(picks))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _http(method: str, url: str, body: dict | None = None, timeout_s: float = 2.0) -> Any:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read() or b"null")


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)


class AlertWatcher:
    """Polls the server's alert API (GET /alerts?all=1) and reports each state change once."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/alerts?all=1"
        self.seen: dict[int, str] = {}
        self.fired: dict[int, str] = {}     # alert id -> rule, every alert that reached firing
        self.resolved: dict[int, str] = {}  # alert id -> rule
        self._failing = False

    def poll(self) -> list[str]:
        try:
            alerts = _http("GET", self.url, timeout_s=1.0)
        except (OSError, ValueError):
            return []  # the server is starting or busy: the next poll catches up
        lines = []
        for a in alerts if isinstance(alerts, list) else []:
            if self.seen.get(a["id"]) == a["state"]:
                continue
            self.seen[a["id"]] = a["state"]
            if a["state"] in ("firing", "resolved"):
                self.fired[a["id"]] = a["rule"]
            if a["state"] == "resolved":
                self.resolved[a["id"]] = a["rule"]
            lines.append(self.describe(a))
        return lines

    @staticmethod
    def describe(a: dict) -> str:
        f = a.get("facts") or {}
        unit = f.get("unit") or ""
        sep = "" if unit in ("%", "") else " "
        value = f"{_num(f.get('value'))}{sep}{unit}"
        if f.get("kind") == "deadman":
            value, limit = f"silent {value}", f"limit {_num(f.get('limit'))}{sep}{unit}"
        else:  # the limit as the email states it: what is allowed, e.g. reuse >= 85 %
            ok = {"<": "≥", "<=": ">", ">": "≤", ">=": "<"}.get(f.get("comparison", ""), "")
            limit = f"limit {ok} {_num(f.get('limit'))}{sep}{unit}"
        period = f" [{f['period_label']}]" if f.get("period_label") else ""
        return (f"ALERT {a['state'].upper():<8} {a['severity']:<8} {a['rule']} | {f.get('site_name') or a['site']} "
                f"{a['subject']}: {f.get('title_zh', '')} / {f.get('title_en', '')}: {value} ({limit}){period}")

    def summary(self) -> str:
        fired = sorted(set(self.fired.values()))
        resolved = sorted(set(self.resolved.values()))
        return (f"alerts: {len(self.fired)} fired ({', '.join(fired) or 'none'}), "
                f"{len(self.resolved)} resolved ({', '.join(resolved) or 'none'})")


class Script:
    """Runs SCRIPT against the simulator's control interface at its simulated times."""

    def __init__(self, control_port: int, clock: Clock) -> None:
        self.base = f"http://127.0.0.1:{control_port}"
        start = clock.cfg.sim_start.timestamp()
        self.clock = clock
        self.steps = [(start + minutes * 60, action, device, scenario) for minutes, action, device, scenario in SCRIPT]

    def due(self) -> list[str]:
        lines = []
        now = self.clock.now()
        while self.steps and self.steps[0][0] <= now:
            _, action, device, scenario = self.steps.pop(0)
            body = {"device": device} | ({"scenario": scenario} if scenario else {})
            try:
                _http("POST", f"{self.base}/{action}", body)
                what = f"{scenario} injected on {device}" if action == "inject" else f"{device} back to normal"
                lines.append(f"SCRIPT {what} (simulator control interface)")
            except (OSError, ValueError) as exc:
                lines.append(f"SCRIPT {action} {device} failed: {exc}")
        return lines


def new_emails(folder: Path, known: set[str]) -> list[Path]:
    try:
        found = sorted(p for p in folder.glob("*.eml") if p.name not in known)
    except OSError:
        return []
    known.update(p.name for p in found)
    return found


def email_subject(path: Path) -> str:
    from email import policy
    from email.parser import BytesParser

    try:
        with open(path, "rb") as f:
            return str(BytesParser(policy=policy.default).parse(f, headersonly=True)["Subject"])
    except (OSError, ValueError):
        return "?"


def stored_count(db: Path) -> int | None:
    import sqlite3

    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return con.execute("SELECT count(*) FROM readings").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return None


def run(args: argparse.Namespace) -> int:
    run_dir = new_run_dir(args.data_dir)
    print(f"greenmine demo: writing everything under {run_dir}")
    children: list[Child] = []
    watcher = None
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    exe = [sys.executable, "-m", "greenmine"]
    tz = site_timezone()
    zone = ZoneInfo(tz)
    emails_dir = run_dir / "emails"
    try:
        broker_mqtt = start_broker(run_dir, children)
        if broker_mqtt is None:
            return 2 if find_mosquitto() is None else 1
        agent_mqtt, server_mqtt = broker_mqtt
        # the simulated clock starts once the broker is up: provisioning it (keys, clients) is no part of the script
        clock_cfg = demo_clock(tz)
        clock = Clock(clock_cfg)
        # one data centre of the energy platform, its test CA made in the run folder
        energy_port = free_port()
        energy_tls = run_dir / "energy-platform-tls"
        platform = Child("energy-platform", [*exe, "sim", "energy-platform", "--profile", ENERGY_PROFILE, "--port",
                                             str(energy_port), "--tls-dir", str(energy_tls)], run_dir / "energy-platform.log")
        children.append(platform)
        if not wait_port(energy_port, 20, platform):
            print(f"error: the energy platform simulator did not start:\n{platform.tail()}", file=sys.stderr)
            return 1
        energy = {"url": f"https://127.0.0.1:{energy_port}", "ca_file": str(energy_tls / "ca.pem")}
        cfg = build_configs(run_dir, agent_mqtt, server_mqtt, clock_cfg, energy=energy)
        sim_start = clock_cfg.sim_start.astimezone(zone)
        print(f"  clock      simulated, x{SPEED:g} (a simulated minute per real second) from "
              f"{sim_start:%Y-%m-%d %H:%M} {tz}; the simulator, server and agent share it")
        sim = Child("sim", [*exe, "sim", "run", "--site", str(cfg["site"])], run_dir / "sim.log")
        children.append(sim)
        from greenmine.configfile import read_toml

        site_doc = read_toml(cfg["site"])
        for srv in site_doc["servers"]:
            if srv.get("port") and not wait_port(srv["port"], 20, sim):
                print(f"error: the simulated site did not start:\n{sim.tail()}", file=sys.stderr)
                return 1
        devices = sum(len(s["devices"]) for s in site_doc["servers"])
        print(f"  simulator  {devices} meters on {len(site_doc['servers'])} Modbus endpoints, scenarios "
              f"{', '.join(SITE_SCENARIOS)} (log {sim.log_path.name})")

        watcher = FlowWatcher(server_mqtt)
        # The agent starts first and the server once data flows, so the server's deadman grace
        # (counted from its start) never sees the agent's own start-up as silence.
        agent = Child("agent", [*exe, "agent", "run", "--config", str(cfg["agent"])], run_dir / "agent.log")
        children.append(agent)
        print(f"  agent      polling {devices} meters once a real second, publishing to the broker "
              f"(log {agent.log_path.name})")
        deadline_first = time.monotonic() + 30
        while not watcher.first_batch() and time.monotonic() < deadline_first and not stop.is_set():
            if not agent.alive():
                break
            stop.wait(0.1)
        server = Child("server", [*exe, "server", "run", "--config", str(cfg["server"])], run_dir / "server.log")
        children.append(server)
        server_doc = read_toml(cfg["server"])
        print(f"  server     ingest → SQLite store {run_dir / 'greenmine.sqlite'}, KPIs, alerts, emails as .eml "
              f"files in {emails_dir} (log {server.log_path.name})")
        print("  script     (simulated time) 22:00 reuse falls to 78 % (reuse_drop) and boundary noise +10 dB "
              "(night_noise); 22:05-22:25 the belt scale mill-feed-belt does not answer")
        print("  judged by  the rolling 24 h reuse rate over the data so far (demo rule water_reuse_24h_demo: "
              "the daily rule needs a complete day), each complete night hour's Leq against the GB 12348 night "
              "limit (demo rule noise_night_leq_hourly), and the shipped device_offline rule (5 min silence)")
        print(f"  energy     the energy role sends the site's kWh and kgce (15-minute, day, month records) to a "
              f"simulated energy platform ({ENERGY_PROFILE}, HTTPS) on {energy['url']} (log {platform.log_path.name})")
        print("  Ctrl-C stops the demo." if args.duration is None else f"  stopping after {args.duration:g} s.")

        print(_console_login(server_doc, run_dir))
        alerts = AlertWatcher(server_doc["http_port"])
        script = Script(site_doc["control_port"], clock)
        platform_view = EnergyWatcher(energy["url"], energy["ca_file"])
        energy_seen = 0
        emails: set[str] = set()
        started = time.monotonic()
        deadline = started + args.duration if args.duration is not None else None
        next_line = started + 1.0

        def stamp() -> str:
            sim_now = datetime.fromtimestamp(clock.now(), zone)
            return f"[{time.monotonic() - started:5.0f}s sim {sim_now:%H:%M}]"

        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            for child in children:
                if not child.alive():
                    print(f"error: {child.name} exited with {child.proc.returncode}:\n{child.tail()}", file=sys.stderr)
                    return 1
            if now >= next_line:
                for line in script.due() + alerts.poll():
                    print(f"{stamp()} {line}", flush=True)
                for path in new_emails(emails_dir, emails):
                    print(f"{stamp()} EMAIL  {path.name}: {email_subject(path)}", flush=True)
                print(watcher.line(stamp(), stored_count(run_dir / "greenmine.sqlite")), flush=True)
                if int(now - started) % 5 == 0 and platform_view.poll() is not None:
                    if platform_view.state.get("records", 0) != energy_seen:
                        energy_seen = platform_view.state.get("records", 0)
                        print(f"{stamp()} ENERGY {platform_view.line()}", flush=True)
                next_line += 1.0
            stop.wait(min(0.2, max(0.0, next_line - time.monotonic())))
        for line in alerts.poll():
            print(f"{stamp()} {line}", flush=True)
        readings = watcher.readings
        platform_view.poll()
        print(platform_view.line())
        print(f"demo finished: {readings} readings flowed; data, configs and logs are in {run_dir}")
        print(alerts.summary())
        if readings == 0:
            print("error: no readings flowed; see the logs above", file=sys.stderr)
            return 1
        return 0
    finally:
        if watcher is not None:
            watcher.close()
        for child in reversed(children):
            child.stop()
        for s, h in old.items():
            signal.signal(s, h)
        files = sorted(emails_dir.glob("*.eml")) if emails_dir.is_dir() else []
        print(f"emails written ({len(files)}) in {emails_dir}:" if files else f"emails written: none (folder {emails_dir})")
        for path in files:
            print(f"  {path.name}: {email_subject(path)}")
