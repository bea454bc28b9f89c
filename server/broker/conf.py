"""The Mosquitto 2 configuration `greenmine broker init` writes, the queue arithmetic behind it, and a
reader of mosquitto.conf files for `greenmine broker check`.

Why these settings (Mosquitto's defaults lose data for greenmine):

- `max_queued_messages` defaults to 1000 per client. While a server process is away the broker
  queues its QoS 1 messages in its persistent session; the 1001st is dropped, silently, after the
  agent has already deleted it from its outbox. The bound is sized for the outage the server must
  survive (`Sizing`).
- Persistence is off by default: a restart loses every session and queue. It is on, in a folder
  owned by the user Mosquitto runs as, saved every `autosave_interval` seconds and at shutdown.
- `allow_anonymous false` and the dynamic-security plugin: every client has a user name, and a
  role that says which topics it may publish or subscribe to.
- `per_listener_settings false`: in Mosquitto 2.0 the dynamic-security plugin loaded once per
  listener keeps duplicate state (each listener's copy reads the same file), so one plugin serves
  all listeners. Certificates, ports and bind addresses stay per listener in any case.
"""

from __future__ import annotations

import getpass
import grp
import math
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

#: Where Debian's mosquitto package installs the plugin (`dpkg -L mosquitto`).
DEBIAN_DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
#: Mosquitto's own default when max_queued_messages is not set.
MOSQUITTO_DEFAULT_QUEUE = 1000


def find_dynsec_plugin() -> str | None:
    """The dynamic-security plugin's path: from `dpkg -L mosquitto`, else the usual places."""
    dpkg = shutil.which("dpkg")
    if dpkg:
        try:
            out = subprocess.run([dpkg, "-L", "mosquitto"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            if line.endswith("/mosquitto_dynamic_security.so") and Path(line).exists():
                return line
    for cand in (DEBIAN_DYNSEC, "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
                 "/usr/lib/mosquitto_dynamic_security.so", "/usr/local/lib/mosquitto_dynamic_security.so"):
        if Path(cand).exists():
            return cand
    return None


@dataclass(frozen=True)
class Sizing:
    """What the broker must hold for one server process (one persistent session) that is away.

    Every agent publishes `batches_per_minute` telemetry batches and `status_per_minute` status
    messages; the broker queues all of them for the absent server session, for `outage_hours`.
    """

    outage_hours: float = 24.0
    agents: int = 1
    batches_per_minute: float = 60.0
    status_per_minute: float = 1.0
    message_bytes: int = 4096
    margin: float = 1.5

    def messages_needed(self) -> int:
        """Messages that arrive during the outage, without the margin (what `check` compares against)."""
        return math.ceil(self.agents * (self.batches_per_minute + self.status_per_minute) * 60 * self.outage_hours)

    def max_queued_messages(self) -> int:
        return math.ceil(self.messages_needed() * self.margin)

    def max_queued_bytes(self) -> int:
        return self.max_queued_messages() * self.message_bytes

    def arithmetic(self) -> list[str]:
        """The sum, as comment lines for the config file."""
        n = self.messages_needed()
        return [
            f"Queue bound: the server may be away {self.outage_hours:g} h while {self.agents} agent(s) publish",
            f"{self.batches_per_minute:g} batches + {self.status_per_minute:g} status messages a minute each:",
            f"  {self.agents} x ({self.batches_per_minute:g} + {self.status_per_minute:g}) /min x 60 min/h x "
            f"{self.outage_hours:g} h = {n} messages",
            f"  x {self.margin:g} margin = {self.max_queued_messages()} messages (max_queued_messages)",
            f"  x {self.message_bytes} bytes a message = {self.max_queued_bytes()} bytes (max_queued_bytes)",
            "Mosquitto holds queued messages in memory (one copy shared by all sessions that queue it):",
            f"plan for about {self.max_queued_bytes() / 2**20:.0f} MiB of RAM at a full queue.",
            "Re-run 'greenmine broker init' with new --outage-hours/--agents/--batches-per-minute when they change.",
        ]


@dataclass(frozen=True)
class Listeners:
    tls_port: int = 8883
    tls_bind: str = "0.0.0.0"
    certfile: str = ""
    keyfile: str = ""
    cafile: str = ""
    require_certificate: bool = False
    local_port: int | None = 1883  # plain MQTT on 127.0.0.1 only; None: off


@dataclass(frozen=True)
class BrokerSettings:
    sizing: Sizing
    listeners: Listeners
    persistence_dir: Path
    dynsec_file: Path
    plugin: str
    user: str
    max_inflight_messages: int = 100
    autosave_interval_s: int = 60


def render(s: BrokerSettings) -> str:
    z = s.sizing
    L = s.listeners
    lines = [
        "# Mosquitto 2 configuration for greenmine, written by 'greenmine broker init'.",
        "# Start it with: mosquitto -c <this file>. Regenerate it rather than editing it; clients, roles and",
        "# passwords live in the dynamic-security file and change through 'greenmine broker add-agent' etc.",
        "",
        "# One dynamic-security plugin for every listener (in Mosquitto 2.0, one plugin per listener keeps",
        "# duplicate state), so anonymous access is off everywhere. TLS, ports and bind addresses are",
        "# per listener anyway.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {s.plugin}",
        f"plugin_opt_config_file {s.dynsec_file}",
        "",
        "# Mosquitto runs as this user after start (as root it would switch to 'mosquitto'); it must be able",
        "# to write the persistence folder and the dynamic-security file.",
        f"user {s.user}",
        "",
        "# Sessions and queued messages survive a restart. Mosquitto writes its database every",
        "# autosave_interval seconds and at a clean shutdown; a crash (kill -9, power) loses what arrived",
        "# since the last save.",
        "persistence true",
        f"persistence_location {s.persistence_dir}/",
        f"autosave_interval {s.autosave_interval_s}",
        "",
        *[f"# {line}" for line in z.arithmetic()],
        f"max_queued_messages {z.max_queued_messages()}",
        f"max_queued_bytes {z.max_queued_bytes()}",
        "# QoS 1 messages on their way to one client at once (greenmine's server also bounds it with its",
        "# MQTT 5 receive_maximum).",
        f"max_inflight_messages {s.max_inflight_messages}",
        "",
        "log_dest stdout",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S%z",
        "",
        "# MQTT over TLS for agents and servers on the network.",
        f"listener {L.tls_port} {L.tls_bind}",
        f"certfile {L.certfile}",
        f"keyfile {L.keyfile}",
    ]
    if L.cafile:
        lines.append(f"cafile {L.cafile}")
    lines.append("tls_version tlsv1.2")
    lines.append(f"require_certificate {'true' if L.require_certificate else 'false'}")
    lines.append("")
    if L.local_port is not None:
        lines += [
            "# Plain MQTT for this host only (administration, a server on the same machine).",
            f"listener {L.local_port} 127.0.0.1",
        ]
    else:
        lines.append("# No plain listener (--local-port 0).")
    return "\n".join(lines) + "\n"


def writable_by(folder: Path, user: str) -> str | None:
    """None if `user` can create files in `folder` (every parent searchable, the folder writable); else why not."""
    if not folder.is_dir():
        return f"{folder} does not exist"
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return f"{folder}: user {user!r} does not exist"
    if pw.pw_uid == 0:
        return None
    if user == getpass.getuser():
        return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable by {user!r}"
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}

    def allows(path: Path, bits: int) -> bool:  # bits: 0o1 search, 0o3 write+search, as for "other"
        st = path.stat()
        if st.st_uid == pw.pw_uid:
            return st.st_mode & (bits << 6) == bits << 6
        if st.st_gid in groups:
            return st.st_mode & (bits << 3) == bits << 3
        return st.st_mode & bits == bits

    folder = folder.resolve()
    for parent in reversed(folder.parents):
        if not allows(parent, 0o1):
            return f"{folder} is out of reach of {user!r}: it may not enter {parent}"
    if not allows(folder, 0o3):
        return f"{folder} is not writable by {user!r}, the user Mosquitto runs as"
    return None


# --- reading a mosquitto.conf (for `broker check`) ----------------------------------------------

LOCAL_ADDRESSES = {"127.0.0.1", "::1", "localhost"}


@dataclass
class ConfListener:
    port: int
    bind: str | None
    line: int
    tls: bool = False

    @property
    def local(self) -> bool:
        return self.bind is not None and (self.bind in LOCAL_ADDRESSES or self.bind.startswith("127.")
                                          or self.bind.startswith("unix:") or self.port == 0)


@dataclass
class ParsedConf:
    path: Path
    options: dict[str, str] = field(default_factory=dict)  # global options, last one wins
    listeners: list[ConfListener] = field(default_factory=list)
    includes: list[Path] = field(default_factory=list)

    def flag(self, name: str, default: bool) -> bool:
        v = self.options.get(name)
        return default if v is None else v.strip().lower() == "true"

    def number(self, name: str, default: int) -> int:
        try:
            return int(self.options[name])
        except (KeyError, ValueError):
            return default


#: Options that belong to the listener they follow (always, whatever per_listener_settings says).
_LISTENER_TLS = {"certfile", "keyfile", "psk_hint", "cafile", "capath"}


def parse_conf(path: Path) -> ParsedConf:
    """The options of a mosquitto.conf and its `include_dir` files, and its listeners with whether each
    has TLS. A `port` without `listener` is Mosquitto's default listener on every address."""
    conf = ParsedConf(path=path)
    _parse_into(conf, path, depth=0)
    return conf


def _parse_into(conf: ParsedConf, path: Path, depth: int) -> None:
    current: ConfListener | None = None
    for no, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if key == "listener":
            parts = value.split()
            try:
                port = int(parts[0])
            except (IndexError, ValueError):
                continue
            current = ConfListener(port=port, bind=parts[1] if len(parts) > 1 else None, line=no)
            conf.listeners.append(current)
        elif key == "port" and current is None:
            current = ConfListener(port=int(value) if value.isdigit() else 1883, bind=None, line=no)
            conf.listeners.append(current)
        elif key == "bind_address" and current is not None and current.bind is None:
            current.bind = value
        elif key in _LISTENER_TLS and current is not None:
            if key in ("certfile", "psk_hint"):
                current.tls = True
        elif key == "include_dir" and depth < 3:
            folder = Path(value)
            conf.includes.append(folder)
            for f in sorted(folder.glob("*.conf")) if folder.is_dir() else []:
                _parse_into(conf, f, depth + 1)
        else:
            conf.options[key] = value
    if depth == 0 and not conf.listeners:
        # no listener at all: Mosquitto 2 listens on 1883, local only, and refuses network clients
        conf.listeners.append(ConfListener(port=1883, bind="127.0.0.1", line=0))

