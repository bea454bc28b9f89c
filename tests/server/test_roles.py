"""One config for many processes: `--instance` gives each its own sessions and files; partitions split sites."""

from __future__ import annotations

from greenmine.server.config import load_server_config
from greenmine.server.monitor.config import MonitorConfig, parse_partition
from tests.server.conftest import server_doc

import pytest


def test_an_instance_has_its_own_client_ids_and_state_files(tmp_path):
    doc = server_doc(tmp_path, 1883, mqtt={"client_id": "srv"})
    doc["alerts"] = {"db_path": "alerts.sqlite"}
    cfg = load_server_config(tmp_path / "server.toml", doc=doc)
    a, b = cfg.for_instance("a"), cfg.for_instance("b")
    assert cfg.for_instance(None) is cfg

    def identity(c):
        files = [c.resolve(p) for p in (c.ingest.spool_path, c.alerts.db_path, c.monitor.replica_path, c.uplink.replica_path)]
        return [c.mqtt.client_id, c.monitor_client_id, c.uplink_client_id], files

    (ids_a, files_a), (ids_b, files_b), (ids, files) = identity(a), identity(b), identity(cfg)
    assert ids_a == ["srv-a", "srv-a-monitor", "srv-a-uplink"]
    assert not set(ids_a) & set(ids_b) and not set(ids_a) & set(ids)
    assert not set(files_a) & set(files_b) and not set(files_a) & set(files)
    assert all(f.parent == tmp_path for f in files_a)  # still relative to the config file, not the cwd
    assert files_a[1].name == "alerts-a.sqlite"

    doc["monitor"] = {"client_id": "mon"}
    assert load_server_config(tmp_path / "server.toml", doc=doc).for_instance("a").monitor_client_id == "mon-a"


def test_hash_partitions_give_every_site_to_exactly_one_monitor():
    sites = [f"gs-site-{i:04d}" for i in range(500)]
    for n in (1, 2, 3, 7):
        owners = {s: [i for i in range(n) if MonitorConfig(partition=f"{i}/{n}").judges(s)] for s in sites}
        assert all(len(v) == 1 for v in owners.values())
        if n > 1:
            assert len({v[0] for v in owners.values()}) == n  # every monitor gets some


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "0/0", "-1/2"])
def test_a_bad_partition_names_the_form(bad):
    with pytest.raises(ValueError, match="I/N"):
        parse_partition(bad)
