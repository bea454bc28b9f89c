"""greenmine.server.child: a worker in a child process, over pipes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from greenmine.server.child import Child, ChildFailed, ChildGone


class Echo:
    """A test worker: echoes, fails on request, or says what it was built with."""

    def __init__(self, init) -> None:
        if init == "refuse":
            raise RuntimeError("cannot start: told to refuse")
        self.init = init

    def handle(self, op: str, arg):
        if op == "echo":
            return arg
        if op == "init":
            return self.init
        if op == "block":  # busy until killed (the test kills it)
            time.sleep(arg)
            return arg
        raise KeyError(f"no such op {op!r}")


FACTORY = "tests.server.test_child:Echo"


def test_large_requests_and_replies_in_flight_do_not_deadlock():
    """Two 4 MiB requests sent before the first reply is read: the child's 4 MiB reply would fill the pipe and
    block it while we are still writing the second request, unless replies are taken off the pipe as they come."""
    child = Child(FACTORY, "x", name="echo")
    try:
        big = [os.urandom(4 << 20), os.urandom(4 << 20)]
        waits = [child.send("echo", b) for b in big]
        assert [w() for w in waits] == big
        assert child.call("init") == "x"
    finally:
        child.close()


def test_a_worker_exception_is_raised_here_and_the_worker_goes_on():
    child = Child(FACTORY, None, name="echo")
    try:
        with pytest.raises(ChildFailed) as info:
            child.call("nope")
        assert info.value.kind == "KeyError" and "nope" in info.value.message
        assert child.call("echo", 1) == 1
    finally:
        child.close()


def test_a_dead_child_fails_what_was_in_flight_and_the_next_request_starts_another():
    child = Child(FACTORY, None, name="echo")
    try:
        assert child.call("echo", 1) == 1
        first = child.pid
        child.send("block", 30)  # the child is busy with this one when it is killed
        waits = [child.send("echo", 2), child.send("echo", 2)]
        os.kill(first, signal.SIGKILL)
        with pytest.raises(ChildGone):  # every request in flight learns it, none hangs
            waits[0]()
        with pytest.raises(ChildGone):
            waits[1]()
        assert child.call("echo", 3) == 3
        assert child.pid not in (None, first)
    finally:
        child.close()
    assert child.pid is None
    with pytest.raises(ChildGone):
        child.send("echo", 4)


def test_a_worker_that_cannot_start_says_why():
    child = Child(FACTORY, "refuse", name="echo")
    try:
        with pytest.raises(ChildFailed) as info:
            child.call("echo", 1)
        assert info.value.kind == "RuntimeError" and "told to refuse" in info.value.message
    finally:
        child.close()


def test_start_brings_the_child_up_before_the_first_request_once():
    child = Child(FACTORY, "x", name="echo")
    try:
        assert child.pid is None
        child.start()
        pid = child.pid
        assert pid is not None
        child.start()
        assert child.pid == pid and child.call("init") == "x"
    finally:
        child.close()
