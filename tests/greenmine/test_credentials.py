"""`${cred:NAME}` in a config file reads the systemd credential NAME from $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from greenmine.configfile import ConfigError, read_toml
from tests.support.processes import ROOT

AGENT = """\
site = "gs-demo"
agent_id = "gw-01"
[mqtt]
username = "gw-01"
password = "${cred:mqtt_password}"
[[buses]]
name = "plant"
transport = "tcp"
host = "127.0.0.1"
[[devices]]
name = "pump-3"
bus = "plant"
unit_id = 3
profile = "eastron-sdm630"
poll_groups = { fast = 1, totals = 60 }
"""


def test_a_credential_is_read_from_the_credentials_directory(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("s3cr3t-Ω\n")  # systemd keeps the file's bytes; editors add a newline
    (creds / "influx.token").write_text("tok")
    f = tmp_path / "x.toml"
    f.write_text('a = "${cred:mqtt_password}"\nb = "Bearer ${cred:influx.token}"\nc = "$${cred:mqtt_password}"\n'
                 'd = "${HOME_FOR_TEST}/x"\n')
    doc = read_toml(f, env={"CREDENTIALS_DIRECTORY": str(creds), "HOME_FOR_TEST": "/h"})
    assert doc == {"a": "s3cr3t-Ω", "b": "Bearer tok", "c": "${cred:mqtt_password}", "d": "/h/x"}


@pytest.mark.parametrize("text,env,message", [
    ('p = "${cred:nope}"', "dir", "p: credential nope: no such credential in $CREDENTIALS_DIRECTORY"),
    ('p = "${cred:pw}"', None, "p: credential pw: CREDENTIALS_DIRECTORY is not set (give the unit LoadCredential=pw:FILE)"),
    ('p = "${cred:../etc/shadow}"', "dir", "p: not a credential reference"),
    ('p = "${cred:}"', "dir", "p: not a credential reference"),
])
def test_a_missing_or_malformed_credential_names_its_place(tmp_path, text, env, message):
    (tmp_path / "creds").mkdir()
    f = tmp_path / "x.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        read_toml(f, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")} if env else {})
    assert err.value.messages[0].startswith(message), err.value.messages


def _greenmine(args, env):
    return subprocess.run([sys.executable, "-m", "greenmine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in {**os.environ, **env}.items() if v is not None})


def test_the_agent_config_takes_its_password_from_a_credential_and_check_config_says_when_it_is_missing(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-systemd\n")
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(AGENT)
    from greenmine.agent.config import load_agent_config

    os.environ["CREDENTIALS_DIRECTORY"] = str(creds)
    try:
        assert load_agent_config(cfg_file).mqtt.password.get_secret_value() == "from-systemd"
    finally:
        del os.environ["CREDENTIALS_DIRECTORY"]

    ok = _greenmine(["check-config", str(cfg_file)], {"CREDENTIALS_DIRECTORY": str(creds)})
    assert ok.returncode == 0, ok.stderr
    bad = _greenmine(["check-config", str(cfg_file)], {"CREDENTIALS_DIRECTORY": None})
    assert bad.returncode == 2
    assert "mqtt.password: credential mqtt_password: CREDENTIALS_DIRECTORY is not set" in bad.stderr
    assert "from-systemd" not in bad.stdout + bad.stderr
