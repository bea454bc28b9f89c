"""greenmine.latch: the first failure at error, repeats at debug, the recovery once at info."""

from __future__ import annotations

import logging

from greenmine.latch import Latch

log = logging.getLogger("greenmine.test.latch")


def levels(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == log.name]


def test_first_failure_error_repeats_debug_recovery_info_once(caplog):
    caplog.set_level(logging.DEBUG, logger=log.name)
    link = Latch(log)
    assert not link.ok("up again")  # nothing was failing: silent
    assert link.fail("down: %s", "refused")
    assert not link.fail("down: %s", "timeout")
    assert link.ok("up again")
    assert not link.ok("up again")
    assert link.fail("down: %s", "reset")  # a new outage is a new first failure
    assert levels(caplog) == [
        (logging.ERROR, "down: refused"),
        (logging.DEBUG, "down: timeout"),
        (logging.INFO, "up again"),
        (logging.ERROR, "down: reset"),
    ]


def test_failure_level_and_traceback_can_be_given(caplog):
    caplog.set_level(logging.DEBUG, logger=log.name)
    link = Latch(log)
    try:
        raise ValueError("bad")
    except ValueError as exc:
        link.fail("lost it", level=logging.WARNING, exc_info=exc)
    (record,) = [r for r in caplog.records if r.name == log.name]
    assert record.levelno == logging.WARNING and record.exc_info[0] is ValueError
    assert link.failing
