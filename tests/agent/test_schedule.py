"""Scheduling rules with driven time (no sleeps): ts alignment, no overlap, skip counting."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from agent.schedule import GroupJob, PollScheduler, slot_of


def utc(s: float) -> datetime:
    return datetime.fromtimestamp(s, timezone.utc)


def test_slot_alignment():
    assert slot_of(1_700_000_000.37, 1) == 1_700_000_000
    assert slot_of(1_700_000_017.9, 60) == 1_699_999_980  # on the minute
    assert slot_of(1_699_999_979.999, 60) == 1_699_999_980  # a timer firing a hair early keeps its slot
    assert slot_of(10.26, 0.25) == 10.25


def test_ts_is_scheduled_slot_and_runs_never_overlap_and_skips_are_counted():
    async def main():
        started: list[datetime] = []
        release = asyncio.Event()

        async def run(ts):
            started.append(ts)
            await release.wait()

        skips = []
        job = GroupJob("m1", "fast", 1.0, run, on_skip=skips.append)
        t = 1_700_000_000.0
        task = job.fire(t + 0.013)  # fired 13 ms late: ts is still the slot
        await asyncio.sleep(0)
        assert started == [utc(t)]
        assert job.fire(t + 1.002) is None  # previous run still going: skipped, not queued
        assert job.fire(t + 2.001) is None
        assert job.skipped == 2 and skips == [1, 1] and len(started) == 1
        release.set()
        await task
        task = job.fire(t + 3.0)
        await task
        assert started[-1] == utc(t + 3)
        assert job.fire(t + 3.4) is None  # a second tick in the same slot does nothing
        assert job.skipped == 2
        task = job.fire(t + 7.05)  # late by 4 slots (e.g. the loop was blocked): 3 missed, counted
        await task
        assert job.skipped == 5 and started[-1] == utc(t + 7)
        assert job.runs == 3

    asyncio.run(main())


def test_two_groups_of_one_device_have_their_own_clocks():
    async def main():
        seen = []

        async def run_for(name):
            async def run(ts):
                seen.append((name, ts))
            return run

        fast = GroupJob("m", "fast", 1, await run_for("fast"))
        totals = GroupJob("m", "totals", 60, await run_for("totals"))
        base = 1_700_000_040.0  # a minute boundary
        for i in range(3):
            for job in (fast, totals):
                t = job.fire(base + i + 0.01)
                if t:
                    await t
        assert seen == [("fast", utc(base)), ("totals", utc(base)), ("fast", utc(base + 1)), ("fast", utc(base + 2))]
        assert fast.skipped == totals.skipped == 0

    asyncio.run(main())


def test_apscheduler_drives_the_jobs_with_a_driven_clock():
    """apscheduler fires the ticks; the job's clock is ours, so the slots are exact regardless of timer jitter."""

    async def main():
        fake_now = [5000.0]
        got = []
        done = asyncio.Event()

        async def run(ts):
            got.append(ts)
            fake_now[0] += 0.1  # the clock advances one slot per tick
            if len(got) == 3:
                done.set()

        job = GroupJob("m", "g", 0.1, run)
        sched = PollScheduler([job], clock=lambda: fake_now[0])
        sched.start()
        await asyncio.wait_for(done.wait(), 5)
        await sched.stop()
        assert got == [utc(5000.0), utc(5000.1), utc(5000.2)]
        assert job.skipped == 0

    asyncio.run(main())
