"""The systemd watchdog protocol: READY=1 at start, WATCHDOG=1 only while the agent's loops run.

The NOTIFY_SOCKET is a real datagram socket bound by the test (a path, and an abstract name for the
child process), so what is checked is exactly what systemd would receive. A hung agent (its poll
scheduler paused: running but not ticking) stops pinging while the rest of it keeps running, and
pings again once the scheduler ticks again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid

from greenmine.agent.config import load_agent_config
from greenmine.agent.runtime import Agent
from greenmine.sdnotify import Notifier
from tests.agent.helpers import write_config
from tests.support.processes import ROOT, stop_process
from tests.support.services import free_port

POLL_S = 0.5
WATCHDOG_USEC = 600_000  # pings every 0.3 s


class NotifySocket:
    """What systemd's end of NOTIFY_SOCKET sees: one datagram per sd_notify call."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        got = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return got
            self.messages.append((time.monotonic(), data.decode()))
            got.append(data.decode())

    def pings(self, since: float = 0.0) -> int:
        self.drain()
        return sum(1 for t, m in self.messages if t >= since and m == "WATCHDOG=1")

    def close(self) -> None:
        self.sock.close()


def _config(tmp_path, broker_port: int):
    # the meter's port is closed: every poll fails and the scheduler goes on ticking, as with a dead meter
    return write_config(tmp_path / "agent.toml", broker_port=broker_port,
                        buses=[{"name": "plant", "transport": "tcp", "host": "127.0.0.1", "port": free_port(), "timeout_ms": 100}],
                        devices=[{"name": "pump-3", "bus": "plant", "unit_id": 3, "profile": "eastron-sdm630",
                                  "poll_groups": {"fast": POLL_S, "totals": POLL_S}, "backoff_max_s": 1}])


async def _until(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_a_hung_scheduler_stops_the_watchdog_pings_and_a_ticking_one_resumes_them(tmp_path, mosquitto):
    systemd = NotifySocket(str(tmp_path / "notify"))
    agent = Agent(load_agent_config(_config(tmp_path, mosquitto.port)), notifier=Notifier(systemd.address, WATCHDOG_USEC))

    async def main():
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        try:
            await _until(lambda: systemd.drain() or systemd.messages, 10, "READY=1")
            assert systemd.messages[0][1].startswith("READY=1\nSTATUS=polling 1 device(s)")
            start = time.monotonic()
            await _until(lambda: systemd.pings(start) >= 3, 5, "three watchdog pings")
            assert agent.stalled() == []

            agent.scheduler._sched.pause()  # the scheduler hangs: still "running", no more ticks
            await _until(lambda: agent.stalled() != [], 2 * POLL_S + 3, "the stall to be seen")
            assert agent.stalled()[0].startswith("poll scheduler (every 0.5 s: no tick for")
            systemd.drain()
            quiet = time.monotonic()
            await asyncio.sleep(4 * WATCHDOG_USEC / 1e6)  # four ping intervals: watching that nothing comes
            assert systemd.pings(quiet) == 0, "a hung agent must not ping the watchdog"
            assert not run.done() and agent.publisher.alive  # the rest of the agent runs on: only the pings stop

            agent.scheduler._sched.resume()
            back = time.monotonic()
            await _until(lambda: systemd.pings(back) >= 2, 2 * POLL_S + 3, "pings after the scheduler ticks again")
        finally:
            stop.set()
            await run
        systemd.drain()
        assert systemd.messages[-1][1] == "STOPPING=1"

    try:
        asyncio.run(main())
    finally:
        systemd.close()


def test_a_dead_publisher_thread_stops_the_pings(tmp_path, mosquitto):
    systemd = NotifySocket(str(tmp_path / "notify"))
    agent = Agent(load_agent_config(_config(tmp_path, mosquitto.port)), notifier=Notifier(systemd.address, WATCHDOG_USEC))

    async def main():
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        try:
            start = time.monotonic()
            await _until(lambda: systemd.pings(start) >= 2, 10, "watchdog pings")
            await asyncio.get_running_loop().run_in_executor(None, agent.publisher._client.loop_stop)  # paho's thread ends
            assert agent.stalled() == ["MQTT publisher (network thread)"]
            systemd.drain()
            quiet = time.monotonic()
            await asyncio.sleep(3 * WATCHDOG_USEC / 1e6)
            assert systemd.pings(quiet) == 0
        finally:
            stop.set()
            await run

    try:
        asyncio.run(main())
    finally:
        systemd.close()


def test_the_agent_process_notifies_systemd_through_an_abstract_socket(tmp_path, mosquitto):
    systemd = NotifySocket(f"@greenmine-test-{uuid.uuid4().hex}")
    env = {**os.environ, "NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    with open(tmp_path / "agent.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "greenmine", "agent", "run", "--config",
                                 str(_config(tmp_path, mosquitto.port))], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while systemd.pings() < 2:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.05)
        first = [m for _, m in systemd.messages if m != "WATCHDOG=1"][0]
        assert first.startswith("READY=1\nSTATUS=polling 1 device(s)")
        assert stop_process(proc) == 0
        systemd.drain()
        assert systemd.messages[-1][1] == "STOPPING=1"
    finally:
        if proc.poll() is None:
            stop_process(proc)
        systemd.close()
