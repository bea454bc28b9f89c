"""Helpers for the energy uplink tests: config documents, a driven clock, meter reads in a replica."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from greenmine.server.store.base import StoredReading

SITE = "gs-demo"
TZ = ZoneInfo("Asia/Shanghai")
ENTERPRISE = "91620300MA74ABCD1X"
SECRET = "0123456789abcdeffedcba9876543210"
PASSWORD = "s3cret-pw"
CODE_M1 = "01-01-0101-010100-30"    # meter-1 kWh
CODE_SITE = "00-00-0000-010100-30"  # the site's kWh
CODE_KGCE = "00-00-0000-000000-30"  # 综合能耗, kgce -> tce


def local(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp()


class Clock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def items(decimals: int = 3) -> list[dict]:
    return [
        {"code": CODE_M1, "source": "meter_kwh", "device": "meter-1", "decimals": decimals, "input_type": 4, "scope": 4},
        {"code": CODE_SITE, "source": "site_kwh", "decimals": decimals},
        {"code": CODE_KGCE, "source": "site_kgce", "scale": 0.001, "decimals": 6, "stat_types": ["day", "month"]},
    ]


def centre(name: str, sim, profile: str, **kw) -> dict:
    doc = {"name": name, "url": sim.url, "profile": profile, "ca_file": str(sim.ca_file), "retry_initial_s": 0.05,
           "retry_max_s": 0.2, "connect_timeout_s": 2, "read_timeout_s": 2, **kw}
    if profile == "variant-b":
        doc.setdefault("password", PASSWORD)
    return doc


def energy_doc(tmp_path: Path, centres: list[dict], *, item_docs: list[dict] | None = None, **kw) -> dict:
    return {"state_dir": str(tmp_path / "energy"), "replica_path": str(tmp_path / "energy-replica.sqlite"),
            "close_delay_s": 120, "tick_s": 0.05, "centres": centres,
            "enterprises": [{"site": SITE, "enterprise_code": ENTERPRISE, "region": "620300", "name": "金昌某铜矿",
                             "items": item_docs or items()}], **kw}


def server_cfg(tmp_path: Path, energy: dict, **top):
    from greenmine.server.config import load_server_config

    doc = {"kind": "server", "sites": [{"id": SITE, "timezone": "Asia/Shanghai"}], "energy": energy, **top}
    return load_server_config(tmp_path / "server.toml", doc=doc)


def meter_reads(device: str, start: float, end: float, *, step_s: float = 60.0, kw: float = 120.0, base: float = 1000.0,
                skip=lambda ts: False, metric: str = "energy_kwh_total") -> list[StoredReading]:
    """A totalizer read every step_s from start to end (inclusive), rising at `kw`."""
    out = []
    t = start
    while t <= end:
        if not skip(t):
            out.append(StoredReading(SITE, "gw1", device, metric, int(t * 1000), base + kw * (t - start) / 3600.0, "kWh", "good"))
        t += step_s
    return out


def fill(replica, rows, svc=None) -> None:
    """Readings into the replica, as the role's consumer commits them (and tells the service how far they reach)."""
    with replica.transaction() as con:
        replica.add(rows, con)
    if svc is not None and rows:
        svc.seen(rows[0].site, max(r.ts_ms for r in rows) / 1000.0)
