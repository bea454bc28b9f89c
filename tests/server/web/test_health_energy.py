"""The health page shows the energy-platform uplink's queues (per data centre) when [energy] is configured."""

from __future__ import annotations

import re

from greenmine.server.uplink.energy.config import EnergyConfig
from greenmine.server.uplink.energy.queue import Record
from greenmine.server.uplink.energy.service import state_paths
from greenmine.server.web.role import WebRole
from tests.server.uplink.energy.conftest import ENTERPRISE, items
from tests.server.web.conftest import Client


def _energy_cfg(console):
    energy = EnergyConfig.model_validate({
        "state_dir": str(console.tmp / "energy"),
        "centres": [{"name": "province", "url": "https://127.0.0.1:9/", "profile": "variant-a"},
                    {"name": "national", "url": "https://127.0.0.1:9/", "profile": "variant-a"}],
        "enterprises": [{"site": "gs-red", "enterprise_code": ENTERPRISE, "region": "620300", "items": items()}],
    })
    return console.cfg.model_copy(update={"energy": energy})


def test_health_page_shows_energy_queues(console):
    from greenmine.server.uplink.energy.queue import EnergyState

    cfg = _energy_cfg(console)
    role = WebRole(cfg, clock=console.app.web.console.clock)
    role.start()
    try:
        c = Client(f"http://127.0.0.1:{role.port}")
        assert c.login("op") == 303
        # before the energy role has run: the centres are listed with the reason there is nothing to show
        code, _, body = c.request("GET", "/system")
        assert code == 200 and 'id="energy-uplink"' in body and 'data-centre="province"' in body
        assert 'id="energy-error"' in body and "has not run" in body

        state = EnergyState(state_paths(cfg)[0])
        try:
            recs = [(Record("gs-red", "00-00-0000-010100-30", 1, 1_763_568_000 + 86400 * i, 1_763_568_000 + 86400 * (i + 1),
                            100.0 + i, True, 1.0, 1, 1), ["province", "national"]) for i in range(3)]
            state.produce("gs-red", 1, 1_763_568_000 + 86400 * 3, recs)
            ids = [r[0] for r in state._read("SELECT id FROM records ORDER BY id")]
            state.acked("national", ids[:2])
            state.failed("province", ids, 0.0, "HTTP 503 from the centre", rejected=False)
        finally:
            state.close()

        code, _, body = c.request("GET", "/system")
        assert code == 200 and 'id="energy-error"' not in body
        rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr data-centre="([^"]+)">(.*?)</tr>', body, re.S)}
        assert set(rows) == {"province", "national"}
        depth = {k: re.search(r'class="depth">(\d+)<', v).group(1) for k, v in rows.items()}
        assert depth == {"province": "3", "national": "1"}
        assert "HTTP 503 from the centre" in rows["province"] and "HTTP 503" not in rows["national"]
        assert re.search(r'class="last-ack">\d{4}-\d\d-\d\dT', rows["national"])
        assert 'class="last-ack">从未<' in rows["province"]

        # an officer (assigned sites only) does not see the cross-site queues
        o = Client(f"http://127.0.0.1:{role.port}")
        assert o.login("wang") == 303
        code, _, body = o.request("GET", "/system")
        assert code == 200 and 'id="energy-uplink"' not in body
    finally:
        role.stop()


def test_health_page_without_energy_has_no_energy_table(console):
    c = Client(console.base)
    assert c.login("op") == 303
    code, _, body = c.request("GET", "/system")
    assert code == 200 and 'id="uplink"' in body and 'id="energy-uplink"' not in body
