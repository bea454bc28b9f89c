"""greenmine.clock's one rule, and the simulators' clock following it (tests/test_clock.py covers Clock itself)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from greenmine.clock import Clock, ClockConfig, sim_time
from greenmine.simulators.clock import SimClock


def test_the_rule():
    assert sim_time(1_000.0, 5_000.0, 900.0, 60.0) == 5_000.0 + 100.0 * 60.0
    assert sim_time(900.0, 5_000.0, 900.0, 60.0) == 5_000.0


def test_the_simulators_clock_tells_the_agents_time():
    start = datetime(2026, 5, 1, 21, 59, tzinfo=timezone.utc)
    real0 = time.time() - 30.0  # the demo started half a minute ago
    agent = Clock(ClockConfig(mode="accelerated", sim_start=start, real_start_epoch_s=real0, speed=120))
    sim = SimClock(start, speed=120, real_start_epoch_s=real0)
    # read both within one real millisecond or so: 120x turns that into well under a second
    assert abs(sim.now() - agent.now()) < 1.0
    assert sim.now() > start.timestamp() + 30 * 120 - 1
