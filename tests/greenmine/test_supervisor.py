"""greenmine.supervisor: a thread whose work raises is logged, counted and restarted, or marks the process failed."""

from __future__ import annotations

import logging
import threading

from greenmine.supervisor import Policy, Supervisor
from tests.support.services import wait_for

log = logging.getLogger("greenmine.test.supervisor")


def test_a_restart_thread_is_restarted_after_each_crash_and_counted(caplog):
    caplog.set_level(logging.ERROR, logger=log.name)
    crashed: list[str] = []
    sup = Supervisor(log, on_crash=crashed.append, restart_min_s=0.01, restart_max_s=0.02)
    calls = []
    done = threading.Event()

    def work() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError(f"fault {len(calls)}")
        done.wait(5)  # the third run keeps working until it is told to stop

    t = sup.thread("worker", work, policy=Policy.RESTART)
    t.start()
    wait_for(lambda: len(calls) == 3, 5, what="two restarts")
    assert crashed == ["worker", "worker"] and sup.failed is None
    assert sup.snapshot()["worker"] == {"alive": True, "policy": "restart", "crashes": 2, "last_error": "ValueError: fault 2"}
    errors = [r for r in caplog.records if r.name == log.name]
    assert len(errors) == 2 and errors[0].exc_info is not None and "restarting it" in errors[0].getMessage()
    done.set()
    t.join(5)
    assert not t.is_alive() and sup.snapshot()["worker"]["alive"] is False


def test_a_fatal_thread_is_not_restarted_and_fails_the_supervisor():
    sup = Supervisor(log, restart_min_s=0.01)
    calls = []

    def work() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    t = sup.thread("ingest", work, policy=Policy.FATAL)
    t.start()
    assert sup.wait_failed(5)
    t.join(5)
    assert calls == [1] and sup.failed == "ingest: RuntimeError: boom"
    assert sup.snapshot()["ingest"]["alive"] is False


def test_join_cancels_a_pending_restart():
    sup = Supervisor(log, restart_min_s=30, restart_max_s=30)
    t = sup.thread("slow", lambda: 1 / 0, policy=Policy.RESTART)
    t.start()
    wait_for(lambda: sup.snapshot()["slow"]["crashes"] == 1, 5, what="the crash")
    t.join(5)  # does not wait the 30 s back-off
    assert not t.is_alive()
