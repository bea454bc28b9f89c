"""`greenmine alerts list|ack|test-email` as a real subprocess."""

import subprocess
import sys
from pathlib import Path

from greenmine.server.monitor.alerts.config import AlertsConfig
from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.server.config import load_server_config

ROOT = Path(__file__).resolve().parents[4]


def run(*args):
    return subprocess.run([sys.executable, "-m", "greenmine", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_list_ack_and_test_email(tmp_path):
    cfg_path = tmp_path / "server.toml"
    cfg_path.write_text(
        'default_recipients = ["officer@example.test"]\n[[sites]]\nid = "s1"\nname = "测试矿"\n'
        '[alerts]\ndb_path = "alerts.sqlite"\n[notify]\neml_dir = "mail"\n', encoding="utf-8")
    cfg = load_server_config(cfg_path)
    eng = AlertEngine(AlertsConfig(), cfg.sites, open_db(tmp_path / "alerts.sqlite"), clock=lambda: 1000.0)
    eng.observe_agent_status("s1", "gw1", online=False)
    eng.tick(1000.0 + 300)  # still offline after its grace (for_s): firing
    (a,) = eng.alerts()
    eng.db.close()

    out = run("alerts", "list", "--config", str(cfg_path))
    assert out.returncode == 0, out.stderr
    assert "agent_offline" in out.stdout and "firing" in out.stdout and "gw1" in out.stdout

    out = run("alerts", "ack", str(a.id), "--config", str(cfg_path), "--by", "wang")
    assert out.returncode == 0 and "acknowledged" in out.stdout
    out = run("alerts", "ack", str(a.id), "--config", str(cfg_path))
    assert out.returncode == 1
    out = run("alerts", "list", "--config", str(cfg_path))
    assert "wang" in out.stdout

    out = run("alerts", "test-email", "--config", str(cfg_path), "--to", "me@example.test")
    assert out.returncode == 0, out.stderr
    (eml,) = (tmp_path / "mail").glob("*.eml")
    import email
    import email.policy

    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert "测试邮件" in str(msg["Subject"]) and "测试矿" in msg.get_content()


def test_bad_config_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[alerts]\nrules = [{kind = "threshold", name = "x"}]\n', encoding="utf-8")
    out = run("alerts", "list", "--config", str(p))
    assert out.returncode == 2 and "series" in out.stderr
