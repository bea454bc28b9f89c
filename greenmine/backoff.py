"""Capped exponential back-off with jitter: how long to wait before the next attempt.

Attempt n (0 for the first retry) waits `initial_s * factor**n`, capped at `max_s`, less a random
share of up to `jitter` of it: a delay d becomes uniform in [(1 - jitter) * d, d]. So the cap is
never exceeded, and clients that failed together (every agent of a site when the broker
restarts) do not retry in step. A seeded `random.Random` makes the delays reproducible in tests.

    retry = Backoff(1.0, 300.0)
    await asyncio.sleep(retry.next())     # 1, 2, 4, ... 300 s (each up to 20 % shorter)
    retry.reset()                         # after a success
    retry.delay_s(attempts)               # stateless, for a count kept elsewhere (a database row)
"""

from __future__ import annotations

import math
import random


_RNG = random.Random()


class Backoff:
    def __init__(self, initial_s: float, max_s: float, *, factor: float = 2.0, jitter: float = 0.2,
                 rng: random.Random | None = None) -> None:
        if initial_s <= 0 or max_s <= 0:
            raise ValueError("back-off delays must be positive")
        if factor < 1:
            raise ValueError("the back-off factor must be at least 1")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.initial_s, self.max_s = initial_s, max(max_s, initial_s)
        self.factor, self.jitter = factor, jitter
        # one shared generator by default: seeding a new one reads the OS's entropy pool, and a back-off is
        # made for every spool commit that might need one
        self._rng = rng or _RNG
        # the attempt from which the cap applies; computing factor**n beyond it could overflow a float
        ratio = self.max_s / self.initial_s
        self._cap_at = 0 if factor == 1 or ratio <= 1 else math.ceil(math.log(ratio, factor))
        self.attempts = 0

    def delay_s(self, attempt: int) -> float:
        """The delay before retry number `attempt` (0-based), jitter included."""
        n = min(max(attempt, 0), self._cap_at)
        base = min(self.initial_s * self.factor**n, self.max_s)
        return base * (1 - self.jitter * self._rng.random())

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        delay = self.delay_s(self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits `initial_s` again."""
        self.attempts = 0
