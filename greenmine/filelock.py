"""An exclusive lock on a state file, so that two processes never own the same state.

    lock = FileLock(f"{path}.lock")
    if not lock.acquire("monitor"):
        raise SomeError(f"{path} is in use by {lock.holder()}")
    ...
    lock.release()

An flock(2) on an open descriptor: the kernel drops it when the process ends, however it ends (SIGKILL
included), so a crash leaves no stale lock to clean up, and a restarted process takes it again at once. The
holder writes its pid and what it is into the file, so that a refused process can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FileLock:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, owner: str) -> bool:
        """Take the lock without waiting; False if another process (or another FileLock here) holds it.
        `owner` says what holds it, for the refusal of the next one ("monitor", "kpi recompute")."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {owner}\n".encode(), 0)
        except OSError:
            pass  # the lock holds without the note; a refused process then cannot name the holder
        self._fd = fd
        return True

    def holder(self) -> str:
        """Who holds the lock, as its file says: "process 1234 (monitor)", or "another process"."""
        try:
            pid, _, owner = self.path.read_text(encoding="utf-8", errors="replace").strip().partition(" ")
        except OSError:
            return "another process"
        if not pid.isdigit():
            return "another process"
        return f"process {pid} ({owner})" if owner else f"process {pid}"

    def release(self) -> None:
        """Let go (the file stays: removing it could let two processes lock two different files)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
