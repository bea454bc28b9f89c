"""The server under systemd: READY=1 once its roles run, WATCHDOG=1 only while every role thread is alive."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from greenmine.sdnotify import Notifier, Watchdog
from tests.agent.test_watchdog import NotifySocket
from tests.server.conftest import make_config, running, server_doc, write_toml
from tests.support.processes import ROOT, stop_process
from tests.support.services import wait_for


def test_a_dead_role_thread_stops_the_pings(tmp_path, mosquitto):
    systemd = NotifySocket(str(tmp_path / "notify"))
    now = [0.0]
    try:
        cfg = make_config(tmp_path, mosquitto.port)
        with running(cfg, roles={"ingest", "monitor"}) as app:
            watchdog = Watchdog(Notifier(systemd.address, 2_000_000), app.stalled, clock=lambda: now[0])
            wait_for(lambda: app.monitor.connected, 10, what="monitor connected")
            assert app.stalled() == [] and watchdog.tick() and systemd.pings() == 1
            now[0] += 1.0
            app.writer.stop()  # the store writer's thread ends: ingest would spool and never store
            assert app.stalled() == ["ingest (store writer thread)"]
            assert not watchdog.tick()
            now[0] += 10.0
            assert not watchdog.tick() and systemd.pings() == 1
    finally:
        systemd.close()


def test_the_server_process_notifies_ready_pings_and_stopping(tmp_path, mosquitto):
    systemd = NotifySocket(f"@greenmine-test-{uuid.uuid4().hex}")
    cfg_file = write_toml(tmp_path / "server.toml", server_doc(tmp_path, mosquitto.port))
    env = {**os.environ, "NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    with open(tmp_path / "server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "greenmine", "server", "run", "--config", str(cfg_file)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while systemd.pings() < 2:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.05)
        assert systemd.messages[0][1] == "READY=1\nSTATUS=running ingest, monitor, uplink"
        assert stop_process(proc) == 0
        systemd.drain()
        assert systemd.messages[-1][1] == "STOPPING=1"
    finally:
        if proc.poll() is None:
            stop_process(proc)
        systemd.close()
