"""Helpers for the simulator tests: small sites on free ports, a frozen clock at 21:59 local."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from greenmine.simulators.config import load_sim_config
from greenmine.simulators.site import SiteRunner

#: A Monday, so the Wednesday maintenance stop is out of the way; 21:59 local (Asia/Shanghai).
T0 = datetime(2025, 6, 2, 21, 59)

ALL_PROFILES = [
    ("sdm630", "eastron-sdm630", None, {"rated_kw": 900}),
    ("dtsu666", "chint-dtsu666", None, {"rated_kw": 2200}),
    ("flow-fresh", "xylem-magflux", "fresh", {}),
    ("dust", "boling-dust", None, {}),
    ("noise", "tranball-qm7903b", None, {}),
    ("belt", "siemens-bw500", None, {}),
    ("weather", "elsner-wsc11", None, {}),
]


def site_doc(devices=ALL_PROFILES, *, transport="tcp", extra_server: dict | None = None, **top) -> dict:
    """A site config document with one server (port 0 = a free port) holding `devices` as unit ids 1..n."""
    devs = []
    for i, (name, profile, role, params) in enumerate(devices, start=1):
        d = {"name": name, "unit_id": i, "profile": profile, "params": params}
        if role:
            d["role"] = role
        devs.append(d)
    server = {"name": "gw", "transport": transport, "host": "127.0.0.1", "port": 0, "devices": devs}
    if extra_server:
        server.update(extra_server)
    doc = {"kind": "sim", "site": "test-site", "seed": 7, "servers": [server]}
    doc.update(top)
    return doc


def make_runner(tmp_path: Path, doc: dict, start=T0, speed: float = 0.0) -> SiteRunner:
    cfg = load_sim_config(tmp_path / "site.toml", doc)
    return SiteRunner(cfg, start=start, speed=speed)


@pytest.fixture
def site(tmp_path):
    """All profiles behind one Modbus TCP gateway, clock frozen at 21:59 local."""
    with make_runner(tmp_path, site_doc()) as sim:
        yield sim
