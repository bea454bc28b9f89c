"""The agent's and the server's HTTP endpoints listen on 127.0.0.1 unless a config says otherwise.

Checked on the sockets the real endpoints open: reachable on loopback, refused on this host's
other addresses (when it has any).
"""

from __future__ import annotations

import socket
import urllib.request

from greenmine.agent.config import AgentConfig, load_agent_config
from greenmine.agent.metrics import AgentMetrics
from greenmine.server.config import ServerConfig, load_server_config
from greenmine.server.metrics import Metrics
from greenmine.server.web.app import WebContext, create_app
from greenmine.server.web.server import WebServer
from tests.support.processes import ROOT


def _other_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses (a UDP connect sends nothing: it only picks the route)."""
    found = set()
    for probe in ("192.0.2.1", "10.255.255.255"):  # documentation / private ranges: never contacted
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
                found.add(s.getsockname()[0])
            except OSError:
                pass
    return sorted(a for a in found if not a.startswith("127."))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_the_defaults_and_the_example_configs_bind_to_loopback():
    assert AgentConfig.model_fields["metrics_host"].default == "127.0.0.1"
    assert ServerConfig.model_fields["http_host"].default == "127.0.0.1"
    assert load_server_config(ROOT / "config" / "server.example.toml").http_host == "127.0.0.1"
    for name in ("agent.example.toml", "agent.minimal.toml"):
        assert load_agent_config(ROOT / "config" / name).metrics_host == "127.0.0.1"


def test_the_server_endpoint_answers_on_loopback_only(tmp_path):
    cfg = load_server_config(tmp_path / "server.toml", doc={"kind": "server"})
    ctx = WebContext(cfg, metrics=Metrics("none"), health=lambda: {"status": "ok"})
    http = WebServer(create_app(ctx), cfg.http_host, 0, name="greenmine-http")
    http.start()
    try:
        assert urllib.request.urlopen(f"http://127.0.0.1:{http.port}/health", timeout=5).status == 200
        others = _other_addresses()
        assert not [a for a in others if _reachable(a, http.port)], others
    finally:
        http.stop()
        ctx.close()


def test_the_agent_metrics_answer_on_loopback_only():
    metrics = AgentMetrics()
    port = metrics.serve(AgentConfig.model_fields["metrics_host"].default, 0)
    try:
        assert b"greenmine_agent" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        others = _other_addresses()
        assert not [a for a in others if _reachable(a, port)], others
    finally:
        metrics.close()
