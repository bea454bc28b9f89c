"""`greenmine.filelock`: one owner per state file, across real processes; the kernel frees it when the owner dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from greenmine.filelock import FileLock
from greenmine.server.errors import SpoolError, StateInUse

HOLDER = ("import sys\nfrom greenmine.filelock import FileLock\n"
          "lock = FileLock(sys.argv[1])\nassert lock.acquire('test holder')\nprint('held', flush=True)\nsys.stdin.read()\n")


def test_a_lock_held_by_another_process_is_refused_with_its_pid_and_freed_when_it_is_killed(tmp_path):
    path = tmp_path / "state.sqlite.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = FileLock(path)
        assert not lock.acquire("second")
        assert lock.holder() == f"process {holder.pid} (test holder)"
        holder.send_signal(signal.SIGKILL)  # no clean-up of its own: the kernel drops the flock
        holder.wait(10)
        assert lock.acquire("second") and lock.held
        assert lock.holder() == f"process {os.getpid()} (second)"
        lock.release()
        assert not lock.held and path.exists()  # the file stays; only the flock goes
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_a_second_lock_in_the_same_process_is_refused_too(tmp_path):
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    assert first.acquire("first") and first.acquire("first")  # taking it again is a no-op
    assert not second.acquire("second")
    first.release()
    assert second.acquire("second")
    second.release()


def test_the_spool_and_the_replica_each_have_one_owner(tmp_path):
    from greenmine.server.spool.spool import Spool
    from greenmine.server.store.replica import SeriesReplica

    spool = Spool(tmp_path / "spool.sqlite")
    try:
        with pytest.raises(SpoolError, match=rf"in use by another server process, process {os.getpid()} \(ingest\)"):
            Spool(tmp_path / "spool.sqlite")
        Spool(tmp_path / "spool.sqlite", lock=False).close()  # the CLI's read-only look (`greenmine spool ...`)
    finally:
        spool.close()
    Spool(tmp_path / "spool.sqlite").close()  # free again once closed

    replica = SeriesReplica(tmp_path / "replica.sqlite", owner="monitor")
    try:
        with pytest.raises(StateInUse, match=rf"replica .* is in use by process {os.getpid()} \(monitor\)"):
            SeriesReplica(tmp_path / "replica.sqlite", owner="kpi recompute")
        SeriesReplica(tmp_path / "replica.sqlite").close()  # a reader (the console) needs no lock
    finally:
        replica.close()
    SeriesReplica(tmp_path / "replica.sqlite", owner="kpi recompute").close()
