"""Shared fixtures: real services on free loopback ports, and a leak check.

The leak check fails any test that leaves behind threads,
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


def _pending_tasks() -> set:
    import asyncio

    # asyncio keeps a weak set of every live task; a pending one after the test
    # is a task the test (or the code under test) started and never finished.
    return {t for t in list(asyncio.tasks._all_tasks) if not t.done()}


@pytest.fixture(autouse=True)
def no_leaks(request):
    threads_before = set(threading.enumerate())
    children_before = _children()
    tasks_before = _pending_tasks()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))
        ]
        kids = _children() - children_before
        tasks = _pending_tasks() - tasks_before
        if not leaked and not kids and not tasks:
            break
        if time.monotonic() > deadline:
            names = ", ".join(t.name for t in leaked)
            coros = ", ".join(repr(t.get_coro()) for t in tasks)
            pytest.fail(
                f"test leaked threads [{names}], child processes {sorted(kids)}, asyncio tasks [{coros}]",
                pytrace=False,
            )
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
