"""Real services for tests, each on a free loopback port: Mosquitto, VictoriaMetrics.

A service whose binary is missing (or a test that needs root, without it) is a
failure under CI=true (or CI=1/yes/on) and a skip only outside CI: `missing()`
decides, and tests/test_services.py pins both. Each service can be stopped and
started again on the same port, so tests can stage outages.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def ci_from_env(value: str | None) -> bool:
    """CI's own convention is CI=true; CI=1 / yes / on count too, so no CI runner ever gets a silent skip."""
    return (value or "").strip().lower() in {"true", "1", "yes", "on"}


IN_CI = ci_from_env(os.environ.get("CI"))


def missing(msg: str) -> None:
    """What this machine lacks for a test: under CI=true the test fails; only outside CI it is skipped, so a
    developer without the package (or root) still runs the rest."""
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def need_binary(name: str, package: str) -> str:
    """The binary's path. Missing: a failure under CI=true, a skip (with the install command) elsewhere."""
    # Debian puts daemons such as mosquitto in /usr/sbin, which a non-root PATH often lacks.
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"]))
    if path is None:
        missing(f"{name} not found: install it with 'sudo apt-get install -y {package}'")
    return path


def need_root(why: str) -> None:
    """Return if running as root. Otherwise: a failure under CI=true, a skip elsewhere (`why` says what needs it)."""
    if os.geteuid() == 0:
        return
    missing(f"needs root: {why}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Service:
    """A child process on a fixed port that can be stopped and restarted."""

    name = "service"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{self.name}.log"

    def command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def ready(self) -> bool:
        return port_open(self.port)

    def start(self) -> None:
        assert self.proc is None, f"{self.name} already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            wait_for(lambda: self.ready() or self.proc.poll() is not None, 20, what=f"{self.name} to listen")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            raise RuntimeError(f"{self.name} exited with {code}: {self.log.read_text()[-2000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        wait_for(lambda: not port_open(self.port), 10, what=f"{self.name} port to close")

    def restart(self) -> None:
        self.stop()
        self.start()


class Mosquitto(Service):
    name = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = need_binary("mosquitto", "mosquitto")
        self.conf = workdir / "mosquitto.conf"
        # persistence keeps persistent sessions and queued QoS 1 messages across a restart
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto drops to user 'mosquitto', which cannot write
            # its store in our folder; it then silently loses persisted messages.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\n"
        )

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]


class VictoriaMetrics(Service):
    name = "victoria-metrics"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = need_binary("victoria-metrics", "victoria-metrics")
        self.data = workdir / "vmdata"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            self.binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data}",
            "-search.latencyOffset=0s",
            "-retentionPeriod=100y",
        ]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False

    def export(self, match: str = '{__name__!=""}') -> list[dict]:
        """All series matching `match`, via /api/v1/export (JSON lines)."""
        import json
        import urllib.parse

        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5).read()
        q = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=10) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]


class ProvisionedMosquitto(Service):
    """Mosquitto exactly as `greenmine broker init` configures it (TLS with a test CA made by --make-ca, the
    dynamic-security plugin, no anonymous access), on free loopback ports: `port` is the TLS listener,
    `local_port` the plain one on 127.0.0.1. `add_server()` / `add_agent()` create clients through the
    running broker's $CONTROL API, as `greenmine broker add-server/add-agent` do."""

    name = "mosquitto"

    def __init__(self, workdir: Path, sizing=None, **init_options) -> None:
        super().__init__(workdir)
        from greenmine.server.broker.conf import Sizing
        from greenmine.server.broker.provision import InitOptions, init

        self.binary = need_binary("mosquitto", "mosquitto")
        need_binary("openssl", "openssl")
        self.local_port = free_port()
        self.dir = workdir / "broker"
        opts = {"tls_port": self.port, "tls_bind": "127.0.0.1", "local_port": self.local_port,
                "hostnames": ("localhost",), "make_ca": True, **init_options}
        if opts.get("certfile"):
            opts["make_ca"] = False
        if opts["local_port"] is None:
            self.local_port = None
        init(self.dir, InitOptions(sizing=sizing or Sizing(), **opts))
        self.conf = self.dir / "mosquitto.conf"
        self.ca_file = self.dir / "tls" / "ca.pem"

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def ready(self) -> bool:
        return port_open(self.port) and (self.local_port is None or port_open(self.local_port))

    def add_server(self, name: str = "greenmine-server") -> tuple[str, str]:
        from greenmine.server.broker.provision import add_server

        user, password, _ = add_server(self.dir, name)
        return user, password

    def add_agent(self, site: str, agent: str) -> tuple[str, str]:
        from greenmine.server.broker.provision import add_agent

        user, password, _ = add_agent(self.dir, site, agent)
        return user, password

    def tls_mqtt(self, user: str, password: str, **extra) -> dict:
        """A server config's [mqtt] section for this broker over TLS, verifying it with the test CA."""
        return {"host": "localhost", "port": self.port, "username": user, "password": password,
                "tls": {"ca_file": str(self.ca_file)}, **extra}
