"""Scheduling rules with driven time (no sleeps): ts alignment, no overlap, skip counting."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from greenmine.agent.schedule import GroupJob, PollScheduler, slot_of


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


def test_accelerated_clock_stamps_the_simulated_time_of_the_real_slot():
    """Schedules stay in real seconds; `ts` is the slot's simulated time, so meters still line up."""
    from datetime import timedelta

    from greenmine.clock import Clock, ClockConfig

    real0 = 1_700_000_000.0
    sim0 = datetime(2025, 6, 2, 21, 50, tzinfo=timezone(timedelta(hours=8)))
    clock = Clock(ClockConfig(mode="accelerated", sim_start=sim0, real_start_epoch_s=real0, speed=60))

    async def main():
        seen = []

        def run_for(name):
            async def run(ts):
                seen.append((name, ts))
            return run

        a = GroupJob("meter-a", "totals", 1, run_for("a"), clock=clock)
        b = GroupJob("meter-b", "fast", 2, run_for("b"), clock=clock)
        for job in (a, b):
            await job.fire(real0 + 10.03)  # late by 30 ms real (1.8 s simulated): ts is still the slot's
        await a.fire(real0 + 11.01)
        # real slot t0+10 s is simulated 21:50 + 10 min, for both meters
        assert seen == [("a", sim0 + timedelta(minutes=10)), ("b", sim0 + timedelta(minutes=10)),
                        ("a", sim0 + timedelta(minutes=11))]

    asyncio.run(main())


def test_agent_status_ts_follows_the_configured_clock(tmp_path):
    """The agent builds one Clock from `[clock]`: its status is stamped in simulated time too."""
    import time

    from greenmine.agent.config import load_agent_config
    from greenmine.agent.runtime import Agent
    from tests.agent.helpers import write_config

    real0 = time.time()
    path = write_config(
        tmp_path / "agent.toml", broker_port=1883,
        buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": 1502}],
        devices=[{"name": "m1", "bus": "gw", "unit_id": 1, "profile": "eastron-sdm630", "poll_groups": {"fast": 1, "totals": 60}}],
    )
    path.write_text(path.read_text() + f'[clock]\nmode = "accelerated"\nsim_start = "2025-06-02T21:50:00+08:00"\n'
                    f"real_start_epoch_s = {real0!r}\nspeed = 60\n")
    agent = Agent(load_agent_config(path))
    try:
        ts = agent.status().ts
    finally:
        asyncio.run(agent.outbox.close())
    sim0 = datetime(2025, 6, 2, 13, 50, tzinfo=timezone.utc)  # 21:50 +08:00
    assert 0 <= (ts - sim0).total_seconds() <= (time.time() - real0) * 60 + 1
