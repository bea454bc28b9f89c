"""`greenmine broker init | add-agent | add-server`: a Mosquitto 2 broker folder, and its clients.

The folder `broker init DIR` writes:

    DIR/mosquitto.conf            the broker's configuration (conf.render)
    DIR/broker.toml               what the other commands need: sizing, where the admin connects,
                                  what clients put in their [mqtt] section
    DIR/admin.secret              the dynamic-security admin's user name and password (mode 0600)
    DIR/dynamic-security.json     clients, roles, ACLs: the plugin's own file (mode 0600; made by
                                  `mosquitto_ctrl dynsec init`, then changed only by the plugin)
    DIR/data/                     persistence (owned by the user Mosquitto runs as)
    DIR/tls/                      with --make-ca: ca.pem, ca.key, server.pem, server.key
    DIR/clients/<user>.toml       each client's [mqtt] section with its password (mode 0600)

Running `init` again on the folder rewrites mosquitto.conf and broker.toml (new sizing, new
certificates) and keeps the clients, the admin and the data.
"""

from __future__ import annotations

import getpass
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from greenmine.configfile import ConfigError, dump_toml, read_toml
from greenmine.server.broker import certs
from greenmine.server.broker.conf import BrokerSettings, Listeners, Sizing, find_dynsec_plugin, render, writable_by
from greenmine.server.broker.dynsec import (SERVER_ROLE, Admin, Endpoint, agent_acls, agent_username,
                                            server_acls)

IDENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ADMIN_USER = "greenmine-admin"
DEFAULT_SERVER_USER = "greenmine-server"


class ProvisionError(RuntimeError):
    pass


@dataclass(frozen=True)
class InitOptions:
    sizing: Sizing
    tls_port: int = 8883
    tls_bind: str = "0.0.0.0"
    local_port: int | None = 1883
    hostnames: tuple[str, ...] = ()
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    make_ca: bool = False
    require_client_cert: bool = False
    user: str | None = None
    max_inflight_messages: int = 100
    autosave_interval_s: int = 60


def _write_secret(path: Path, text: str, owner: str | None = None) -> None:
    """Write `text` to `path` with mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)
    if owner:
        _chown(path, owner)


def _chown(path: Path, user: str) -> None:
    """Give `path` to `user` (when we run as root and the user differs); else nothing to do."""
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ProvisionError(f"user {user!r} does not exist on this machine (--user)") from None
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _find(binary: str, package: str) -> str:
    path = shutil.which(binary, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"]))
    if path is None:
        raise ProvisionError(f"{binary} not found: install it with 'sudo apt-get install -y {package}'")
    return path


def init(folder: Path, opt: InitOptions) -> dict[str, Any]:
    """Write (or rewrite) the broker folder. Returns what was done, for the CLI to print."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    user = opt.user or getpass.getuser()
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ProvisionError(f"user {user!r} does not exist on this machine (--user)") from None
    if user != getpass.getuser() and os.geteuid() != 0:
        raise ProvisionError(f"--user {user}: only root can give the data folder to another user; run init as root "
                             "(sudo), or without --user to run Mosquitto as yourself")
    plugin = find_dynsec_plugin()
    if plugin is None:
        raise ProvisionError("mosquitto_dynamic_security.so not found: install Mosquitto 2 with "
                             "'sudo apt-get install -y mosquitto'")
    hostnames = list(opt.hostnames) or [socket.gethostname()]
    done: dict[str, Any] = {"folder": str(folder), "created": []}

    # TLS files for the network listener
    tls = folder / "tls"
    if opt.make_ca:
        if opt.certfile or opt.keyfile:
            raise ProvisionError("--make-ca makes the certificate: do not also give --certfile/--keyfile")
        ca = (tls / "ca.pem", tls / "ca.key")
        if not ca[0].exists():
            certs.make_ca(tls)
            done["created"].append(str(ca[0]))
        names = list(dict.fromkeys([*hostnames, "localhost", "127.0.0.1"]))
        certfile, keyfile = certs.make_cert(tls, "server", ca, names)
        cafile: Path | None = ca[0]
        done["created"].append(str(certfile))
    else:
        if not (opt.certfile and opt.keyfile):
            raise ProvisionError("the TLS listener needs a certificate: give --certfile and --keyfile "
                                 "(and --cafile), or --make-ca to make a CA and a server certificate in DIR/tls")
        certfile, keyfile, cafile = opt.certfile.resolve(), opt.keyfile.resolve(), opt.cafile.resolve() if opt.cafile else None
        for f in (certfile, keyfile, cafile):
            if f is not None and not f.is_file():
                raise ProvisionError(f"{f}: no such file")
    if opt.require_client_cert and cafile is None:
        raise ProvisionError("--require-client-cert needs --cafile (the CA that signs the client certificates)")
    _chown(keyfile, user)  # Mosquitto reads its key after dropping to `user`

    # persistence, writable by the user Mosquitto runs as
    data = folder / "data"
    data.mkdir(exist_ok=True)
    os.chmod(data, 0o700)
    _chown(data, user)
    problem = writable_by(data, user)
    if problem is not None:
        raise ProvisionError(f"persistence: {problem}; Mosquitto could not save its sessions. Choose a DIR that "
                             f"{user!r} can reach (e.g. under /var/lib or /etc), or run Mosquitto as another --user")

    # the dynamic-security file with its admin (only when there is none yet)
    dynsec = folder / "dynamic-security.json"
    admin_file = folder / "admin.secret"
    if not dynsec.exists():
        ctrl = _find("mosquitto_ctrl", "mosquitto")  # Debian ships it in mosquitto
        password = secrets.token_urlsafe(24)
        out = subprocess.run([ctrl, "dynsec", "init", str(dynsec), ADMIN_USER, password],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0 or not dynsec.exists():
            raise ProvisionError(f"mosquitto_ctrl dynsec init failed: {(out.stderr or out.stdout).strip()[-500:]}")
        _write_secret(admin_file, "# the dynamic-security admin of this broker; keep it secret\n"
                      + dump_toml({"username": ADMIN_USER, "password": password}))
        done["created"] += [str(dynsec), str(admin_file)]
    elif not admin_file.exists():
        raise ProvisionError(f"{dynsec} exists but {admin_file} does not: cannot administer this broker")
    os.chmod(dynsec, 0o600)
    _chown(dynsec, user)

    listeners = Listeners(tls_port=opt.tls_port, tls_bind=opt.tls_bind, certfile=str(certfile), keyfile=str(keyfile),
                          cafile=str(cafile) if cafile else "", require_certificate=opt.require_client_cert,
                          local_port=opt.local_port)
    settings = BrokerSettings(sizing=opt.sizing, listeners=listeners, persistence_dir=data, dynsec_file=dynsec,
                              plugin=plugin, user=user, max_inflight_messages=opt.max_inflight_messages,
                              autosave_interval_s=opt.autosave_interval_s)
    conf = folder / "mosquitto.conf"
    conf.write_text(render(settings), encoding="utf-8")
    if opt.local_port is not None:
        admin = {"host": "127.0.0.1", "port": opt.local_port, "tls": False}
    else:
        admin = {"host": "127.0.0.1", "port": opt.tls_port, "tls": True, "ca_file": str(cafile) if cafile else ""}
    sidecar = {
        "conf": str(conf),
        "sizing": asdict(opt.sizing),
        "admin": admin,
        "clients": {"host": hostnames[0], "port": opt.tls_port, "ca_file": str(cafile) if cafile else "",
                    "require_client_cert": opt.require_client_cert},
    }
    (folder / "broker.toml").write_text("# written by 'greenmine broker init'; read by add-agent, add-server, check\n"
                                        + dump_toml(sidecar), encoding="utf-8")
    done["conf"] = str(conf)
    done["user"] = user
    done["sizing"] = opt.sizing
    return done


# --- clients -------------------------------------------------------------------------------------


def read_folder(folder: Path) -> dict[str, Any]:
    side = folder / "broker.toml"
    if not side.exists():
        raise ProvisionError(f"{folder} is not a broker folder (no broker.toml): run 'greenmine broker init {folder}'")
    try:
        return read_toml(side)
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None


def admin_endpoint(folder: Path, host: str | None = None, port: int | None = None) -> Endpoint:
    side = read_folder(folder)
    try:
        secret = read_toml(folder / "admin.secret")
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None
    a = side["admin"]
    return Endpoint(host=host or a["host"], port=port or a["port"], username=secret["username"],
                    password=secret["password"], tls=bool(a.get("tls")), ca_file=a.get("ca_file") or None)


def sizing_of(folder: Path) -> Sizing:
    return Sizing(**read_folder(folder)["sizing"])


def _client_section(side: dict[str, Any], username: str, password: str, *, agent: bool) -> dict[str, Any]:
    c = side["clients"]
    mqtt: dict[str, Any] = {"host": c["host"], "port": c["port"], "username": username, "password": password}
    tls: dict[str, Any] = {}
    if c.get("ca_file"):
        tls["ca_file"] = c["ca_file"]
    if c.get("require_client_cert"):
        tls["cert_file"] = "client.pem"
        tls["key_file"] = "client.key"
    mqtt["tls"] = tls
    return {"mqtt": mqtt}


def _write_client(folder: Path, username: str, doc: dict[str, Any], what: str, out: Path | None) -> Path:
    path = out or folder / "clients" / f"{username}.toml"
    text = (f"# MQTT credentials of {what}, written by 'greenmine broker'. Merge this [mqtt] section into its\n"
            "# config, or keep the password out of the config with password = \"${GREENMINE_MQTT_PASSWORD}\".\n"
            + dump_toml(doc))
    if doc["mqtt"]["tls"].get("cert_file"):
        text += ("# The broker requires a client certificate: put this client's certificate and key where\n"
                 "# cert_file and key_file say (see docs/broker.md, 'Certificates').\n")
    _write_secret(path, text)
    return path


def add_agent(folder: Path, site: str, agent: str, *, rotate: bool = False, out: Path | None = None,
              admin: Endpoint | None = None) -> tuple[str, str, Path]:
    """Create (or with `rotate`, re-key) the client of one agent. Returns (username, password, file)."""
    for what, value in (("site", site), ("agent", agent)):
        if not IDENT.match(value):
            raise ProvisionError(f"--{what} {value!r}: use 1-64 letters, digits, '_' or '-' (as in the agent's config)")
    side = read_folder(folder)
    username = agent_username(site, agent)
    password = secrets.token_urlsafe(24)
    adm = Admin(admin or admin_endpoint(folder))
    try:
        adm.ensure_role(username, agent_acls(site, agent), f"agent {agent} of site {site}: publish its own topics")
        adm.upsert_client(username, password, username, f"greenmine agent {site}/{agent}", replace=rotate)
    finally:
        adm.close()
    path = _write_client(folder, username, _client_section(side, username, password, agent=True),
                         f"agent {agent!r} of site {site!r}", out)
    return username, password, path


def add_server(folder: Path, name: str = DEFAULT_SERVER_USER, *, rotate: bool = False, out: Path | None = None,
               admin: Endpoint | None = None) -> tuple[str, str, Path]:
    """Create (or re-key) a server client: subscribe to every site's telemetry and status."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ProvisionError(f"--name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    side = read_folder(folder)
    password = secrets.token_urlsafe(24)
    adm = Admin(admin or admin_endpoint(folder))
    try:
        adm.ensure_role(SERVER_ROLE, server_acls(), "greenmine server roles: read telemetry and status")
        adm.upsert_client(name, password, SERVER_ROLE, "greenmine server", replace=rotate)
    finally:
        adm.close()
    path = _write_client(folder, name, _client_section(side, name, password, agent=False), f"server client {name!r}", out)
    return name, password, path
