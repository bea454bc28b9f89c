"""Emails link their alert id to the console's page of the alert when [web] public_url is set."""

from greenmine.server.config import load_server_config
from greenmine.server.notify.templates import Templates

FACTS = {"kind": "threshold", "alert_id": 17, "value": 80.0, "limit": 85.0, "comparison": "<", "unit": "%",
         "site_id": "s1", "site_name": "金昌某铜矿"}


def test_notices_link_to_the_console():
    _, body = Templates(console_url="https://console.example.cn/").notice("firing", FACTS)
    assert "控制台:      https://console.example.cn/alerts/17" in body
    assert "Console:            https://console.example.cn/alerts/17" in body
    _, body = Templates(console_url="https://console.example.cn").notice("reminder", FACTS)
    assert body.count("https://console.example.cn/alerts/17") == 2
    _, body = Templates().notice("firing", FACTS)
    assert "/alerts/17" not in body and "Console:" not in body


def test_the_monitor_takes_the_link_from_the_web_section(tmp_path):
    from greenmine.server.monitor.alerts.service import Monitor

    doc = {"kind": "server", "sites": [{"id": "s1"}], "web": {"public_url": "https://console.example.cn"},
           "alerts": {"db_path": str(tmp_path / "alerts.sqlite")}, "monitor": {"replica_path": str(tmp_path / "r.sqlite")}}
    mon = Monitor.from_config(load_server_config(tmp_path / "server.toml", doc=doc))
    try:
        assert mon.notifier.templates.console_url == "https://console.example.cn"
    finally:
        mon.close()
