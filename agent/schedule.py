"""Poll scheduling: each device's poll groups on their own intervals, via apscheduler 3.

apscheduler's AsyncIOScheduler fires one job per distinct interval (it fires every (device, poll
group) of that interval) on an IntervalTrigger
whose start is aligned to a multiple of the interval since the Unix epoch (coalesce=True,
max_instances=1). The job only hands the tick to `GroupJob.fire`, which owns the rules, so they
can be tested with driven time:

- `ts` of every reading = the slot the tick belongs to: floor(now / interval) * interval, so the
  series of different meters line up (with an accelerated `greenmine.clock.Clock`, the slot is
  still a real-time slot and `ts` is its simulated time);
- runs of one group never overlap: a tick while the previous run is still going is skipped and
  counted;
- a late tick does not queue the slots it missed: they are counted as skipped, and the run
  takes the current slot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from greenmine.clock import Clock

log = logging.getLogger(__name__)

#: A tick that arrives this early (a timer firing a hair before its time) still counts for its slot.
_EARLY_TOLERANCE_S = 0.005


def slot_of(now_s: float, interval_s: float) -> float:
    """The start of the interval slot `now_s` falls in (epoch-aligned)."""
    return math.floor((now_s + _EARLY_TOLERANCE_S) / interval_s) * interval_s


class GroupJob:
    """One device's poll group: turns ticks into non-overlapping runs with aligned timestamps."""

    def __init__(
        self,
        device: str,
        group: str,
        interval_s: float,
        run: Callable[[datetime], Awaitable[None]],
        *,
        on_skip: Callable[[int], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.device, self.group, self.interval_s = device, group, interval_s
        self._clock = clock or Clock()
        self._run = run
        self._on_skip = on_skip
        self.last_slot: float | None = None
        self.task: asyncio.Task | None = None
        self.runs = 0
        self.skipped = 0
        self._skip_logged = False

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def _skip(self, n: int) -> None:
        self.skipped += n
        if self._on_skip:
            self._on_skip(n)
        if not self._skip_logged:  # once per streak, not per skip
            log.warning("%s/%s: %d poll run(s) skipped (previous run still going or late)", self.device, self.group, n)
            self._skip_logged = True

    def fire(self, now_s: float) -> asyncio.Task | None:
        """A tick at `now_s`. Starts a run for its slot, or skips. Returns the run's task."""
        slot = slot_of(now_s, self.interval_s)
        missed = 0
        if self.last_slot is not None:
            if slot <= self.last_slot:
                return None  # a second tick for a slot already handled
            missed = round((slot - self.last_slot) / self.interval_s) - 1
            if missed > 0:
                self._skip(missed)
        self.last_slot = slot
        if self.running:
            self._skip(1)
            return None
        if missed <= 0:
            self._skip_logged = False  # the streak of skips (if any) is over
        self.runs += 1
        ts = self._clock.sim_datetime(slot)
        self.task = asyncio.get_running_loop().create_task(self._run(ts), name=f"poll-{self.device}-{self.group}")
        return self.task


class PollScheduler:
    """apscheduler's AsyncIOScheduler driving a set of GroupJobs."""

    def __init__(self, jobs: list[GroupJob], clock: Callable[[], float] = time.time) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        self.jobs = jobs
        self.clock = clock
        aps_log = logging.getLogger("apscheduler")
        if aps_log.level == logging.NOTSET:
            # apscheduler logs every run at info; GroupJob logs what matters (skips), once.
            aps_log.setLevel(logging.WARNING)
        self._sched = AsyncIOScheduler(timezone=timezone.utc)
        # One apscheduler job per distinct interval, firing every GroupJob of that interval: with
        # hundreds of devices, one apscheduler job each costs tens of ms of lateness per tick.
        self._last_tick: dict[float, float] = {}  # interval -> monotonic time of its last tick (the watchdog reads it)
        by_interval: dict[float, list[GroupJob]] = {}
        for job in jobs:
            by_interval.setdefault(job.interval_s, []).append(job)
        now = clock()
        for interval, group in by_interval.items():
            first = (math.floor(now / interval) + 1) * interval
            trigger = IntervalTrigger(seconds=interval, start_date=datetime.fromtimestamp(first, timezone.utc),
                                      timezone=timezone.utc)

            async def tick(group: list[GroupJob] = group, interval: float = interval) -> None:
                self._last_tick[interval] = time.monotonic()
                now_s = self.clock()
                for job in group:
                    job.fire(now_s)

            # The tick returns at once (each run is its own task), so max_instances=1 never bites;
            # overlap and lateness are GroupJob's to count. coalesce: never queue missed ticks.
            self._sched.add_job(tick, trigger, id=f"every-{interval:g}s", coalesce=True, max_instances=1,
                                misfire_grace_time=max(1, int(interval)))

    def start(self) -> None:
        now = time.monotonic()
        self._last_tick = {job.interval_s: now for job in self.jobs}  # the first tick is at most one interval away
        self._sched.start()

    def stalled(self) -> list[str]:
        """What keeps the scheduler from polling: stopped, or an interval that has not ticked for two of its
        periods and a second (a hung event loop or scheduler). Empty: ticking. For the systemd watchdog."""
        if not self._sched.running:
            return ["poll scheduler (stopped)"]
        now = time.monotonic()
        return [f"poll scheduler (every {i:g} s: no tick for {now - t:.0f} s)"
                for i, t in sorted(self._last_tick.items()) if now - t > 2 * i + 1]

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop ticking and wait (bounded) for runs in progress."""
        self._sched.shutdown(wait=False)
        running = [j.task for j in self.jobs if j.running]
        if running:
            done, pending = await asyncio.wait(running, timeout=timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
