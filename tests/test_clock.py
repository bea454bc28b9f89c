"""greenmine.clock: the shared system / accelerated clock (driven real time, no sleeps)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from greenmine.clock import Clock, ClockConfig, ClockMode

CST = timezone(timedelta(hours=8))


def accelerated(speed=60.0, real0=1_700_000_000.0):
    return ClockConfig(mode="accelerated", sim_start=datetime(2025, 6, 2, 21, 50, tzinfo=CST),
                       real_start_epoch_s=real0, speed=speed)


def test_system_clock_is_the_default_and_is_the_real_clock():
    real = [1_700_000_123.25]
    clock = Clock(real=lambda: real[0])
    assert ClockConfig().mode is ClockMode.SYSTEM and not clock.accelerated
    assert clock.now() == 1_700_000_123.25
    assert clock.to_sim(5.0) == clock.to_real(5.0) == 5.0
    assert clock.now_datetime() == datetime.fromtimestamp(1_700_000_123.25, timezone.utc)


def test_accelerated_clock_runs_speed_times_faster_from_its_anchor():
    real = [1_700_000_000.0]
    clock = Clock(accelerated(), real=lambda: real[0])
    start = datetime(2025, 6, 2, 21, 50, tzinfo=CST)
    assert clock.now_datetime() == start
    real[0] += 10  # ten real seconds ...
    assert clock.now_datetime() == start + timedelta(minutes=10)  # ... are ten simulated minutes at 60x
    assert clock.to_real(clock.to_sim(1_700_000_007.5)) == pytest.approx(1_700_000_007.5)
    assert clock.sim_datetime(1_700_000_001.0) == start + timedelta(minutes=1)


def test_two_processes_with_the_same_anchor_agree():
    """The agent and the server each build their own Clock; the same config gives the same time."""
    real = [1_700_000_042.0]
    a, b = Clock(accelerated(), real=lambda: real[0]), Clock(accelerated(), real=lambda: real[0])
    assert a.now() == b.now()


@pytest.mark.parametrize("doc, message", [
    ({"mode": "accelerated"}, "needs sim_start and real_start_epoch_s"),
    ({"mode": "accelerated", "sim_start": "2025-06-02T21:50:00+08:00"}, "needs real_start_epoch_s"),
    ({"mode": "accelerated", "sim_start": "2025-06-02T21:50:00", "real_start_epoch_s": 1.0e9}, "timezone"),
    ({"speed": 60}, "only apply to mode"),
    ({"sim_start": "2025-06-02T21:50:00+08:00"}, "only apply to mode"),
    ({"mode": "accelerated", "sim_start": "2025-06-02T21:50:00+08:00", "real_start_epoch_s": 1.0e9, "speed": 0}, "greater than 0"),
    ({"mode": "warp"}, "system"),
    ({"modus": "system"}, "Extra inputs"),
])
def test_bad_clock_configs_are_refused(doc, message):
    with pytest.raises(ValidationError, match=message):
        ClockConfig.model_validate(doc)


def test_agent_and_server_configs_take_an_optional_clock_section(tmp_path):
    from greenmine.server.config import load_server_config

    assert load_server_config(tmp_path / "s.toml", doc={"kind": "server"}).clock.mode is ClockMode.SYSTEM
    cfg = load_server_config(tmp_path / "s.toml", doc={"kind": "server", "clock": {
        "mode": "accelerated", "sim_start": "2025-06-02T21:50:00+08:00", "real_start_epoch_s": 1.7e9, "speed": 60}})
    assert Clock(cfg.clock).speed == 60


def test_the_simulator_agrees_when_given_the_same_anchor():
    """The simulator keeps its own settable clock; given the real start epoch it reads what Clock reads."""
    import time

    from greenmine.simulators.clock import SimClock

    real0 = time.time() - 30.0  # the demo started 30 s ago; the simulator only now
    cfg = ClockConfig(mode="accelerated", sim_start=datetime(2025, 6, 2, 21, 50, tzinfo=CST), real_start_epoch_s=real0, speed=60)
    sim = SimClock(cfg.sim_start, 60, "Asia/Shanghai", real_start_epoch_s=real0)
    assert abs(sim.now() - Clock(cfg).now()) < 60 * 0.5  # within half a real second of each other
    assert sim.now() - cfg.sim_start.timestamp() >= 30 * 60
