"""Shared fixtures: real services on free loopback ports, and a leak check.

The leak check (STYLE.md §9) fails any test that leaves behind threads,
child processes or asyncio tasks it started.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.services import Mosquitto, VictoriaMetrics


def _children() -> set[int]:
    try:
        import os

        pid = os.getpid()
        out = set()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out = {int(x) for x in f.read().split()}
        return out
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks(request):
    threads_before = set(threading.enumerate())
    children_before = _children()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))
        ]
        kids = _children() - children_before
        if not leaked and not kids:
            break
        if time.monotonic() > deadline:
            names = ", ".join(t.name for t in leaked)
            pytest.fail(f"test leaked threads [{names}] and child processes {sorted(kids)}", pytrace=False)
        time.sleep(0.05)


@pytest.fixture
def mosquitto(tmp_path):
    """A real Mosquitto broker on a free loopback port, started for this test."""
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def victoria(tmp_path):
    """A real VictoriaMetrics on a free loopback port, started for this test."""
    vm = VictoriaMetrics(tmp_path)
    vm.start()
    yield vm
    vm.stop()
