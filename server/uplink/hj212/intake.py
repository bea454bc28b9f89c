"""What a platform may send us, bounded before anything is parsed.

`FrameIntake` cuts the byte stream from a platform into `\\r\\n`-terminated lines and
applies two bounds first:
- size: a line longer than `max_frame_bytes` is dropped whole (the bytes up to its
  `\\r\\n` are discarded as they arrive, never buffered), counted as `oversize`;
- rate: a token bucket of `max_frames_per_s` with `frame_burst` tokens; a line
  that finds the bucket empty is dropped, counted as `rate`.

Neither ends the link: the platform keeps its connection and our uploads keep
flowing. (A 9014 dropped by the rate bound is retried like one lost on the wire.)
Pure: no I/O; the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; `take()` spends one if there is one."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self.rate, self.burst = rate, burst
        self._now = now
        self._tokens = float(burst)
        self._at = now()

    def take(self) -> bool:
        t = self._now()
        self._tokens = min(float(self.burst), self._tokens + (t - self._at) * self.rate)
        self._at = t
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FrameIntake:
    """Feed it bytes as they arrive; it returns the lines to parse and counts what it dropped."""

    def __init__(self, *, max_frame_bytes: int, max_frames_per_s: float, frame_burst: int,
                 now: Callable[[], float]) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._bucket = TokenBucket(max_frames_per_s, frame_burst, now)
        self._buf = bytearray()
        self._skipping = False  # inside an oversize line: discard up to its end
        self.dropped: dict[str, int] = {"oversize": 0, "rate": 0}

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n")
            if end < 0:
                if len(self._buf) > self.max_frame_bytes:
                    if not self._skipping:
                        self._skipping = True
                        self.dropped["oversize"] += 1
                    # keep a trailing '\r' that may be the first half of the line end
                    keep = 1 if self._buf.endswith(b"\r") else 0
                    del self._buf[: len(self._buf) - keep]
                return out
            line = bytes(self._buf[: end + 2])
            del self._buf[: end + 2]
            if self._skipping:
                self._skipping = False  # the end of the oversize line, already counted
                continue
            if len(line) > self.max_frame_bytes:
                self.dropped["oversize"] += 1
                continue
            if not self._bucket.take():
                self.dropped["rate"] += 1
                continue
            out.append(line)

    @property
    def partial(self) -> bytes:
        """Bytes of an unfinished line (for the log when the link closes mid-frame)."""
        return bytes(self._buf)
