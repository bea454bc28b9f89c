"""Counters: each fault gives the true consumption, never a fake jump."""

import pytest

from greenmine.server.monitor.kpi.counters import CounterSpec, CounterTracker, IncrementFlag, increments, total


def series(values, step=60.0, t0=1_700_000_000.0):
    return [(t0 + i * step, v) for i, v in enumerate(values)]


def test_plain_increments():
    incs, events = increments(series([100, 101, 103.5, 103.5, 110]))
    assert [i.value for i in incs] == [1, 2.5, 0, 6.5]
    assert events == []


def test_rollover_at_16_bit_width():
    # 65530 -> 4 wraps: true consumption 65536 - 65530 + 4 = 10
    incs, events = increments(series([65520, 65530, 4, 14]), CounterSpec(width=2**16))
    assert [i.value for i in incs] == [10, 10, 10]
    assert incs[1].flag is IncrementFlag.ROLLOVER
    assert [e.kind for e in events] == [IncrementFlag.ROLLOVER]


def test_rollover_at_32_bit_width_with_max_rate():
    w = 2**32
    incs, _ = increments(series([w - 100, 50, 250]), CounterSpec(width=w, max_rate_per_s=10))
    assert [i.value for i in incs] == [150, 200]


def test_reset_counts_from_new_value_and_records_event():
    # meter replaced: 5000 -> 12 (new meter); true consumption after is 12->20 = 8
    incs, events = increments(series([4990, 5000, 12, 20]))
    assert total(incs) == pytest.approx(10 + 8)
    assert [e.kind for e in events] == [IncrementFlag.RESET]
    assert events[0].prev == 5000 and events[0].new == 12


def test_small_dip_is_ignored_and_recovery_not_double_counted():
    incs, events = increments(series([1000, 1010, 1008, 1012, 1020]))
    # true consumption 1000 -> 1020
    assert total(incs) == pytest.approx(20)
    assert incs[1].flag is IncrementFlag.DIP
    assert events == []


def test_single_zero_read_is_not_a_reset_and_jump():
    incs, events = increments(series([1000, 1005, 0, 1010, 1015]))
    assert total(incs) == pytest.approx(15)
    assert max(i.value for i in incs) == pytest.approx(5)
    assert [e.kind for e in events] == [IncrementFlag.ZERO]


def test_zero_then_counting_from_zero_is_a_real_reset():
    incs, events = increments(series([1000, 1005, 0, 3, 7]))
    assert total(incs) == pytest.approx(5 + 3 + 4)
    assert IncrementFlag.RESET in [e.kind for e in events]


def test_zero_read_at_rollover_is_a_wrap():
    incs, _ = increments(series([65526, 65531, 0, 5]), CounterSpec(width=2**16))
    assert total(incs) == pytest.approx(15)


def test_spike_is_rejected_and_flagged():
    spec = CounterSpec(max_rate_per_s=1.0)  # at most 60 per minute
    incs, events = increments(series([1000, 1030, 999_999, 1090, 1120]), spec)
    assert total(incs) == pytest.approx(120)
    assert [e.kind for e in events] == [IncrementFlag.SPIKE]


def test_jump_confirmed_by_next_read_rebases_without_counting_it():
    spec = CounterSpec(max_rate_per_s=1.0)
    incs, events = increments(series([1000, 1030, 50_000, 50_020, 50_050]), spec)
    assert total(incs) == pytest.approx(30 + 20 + 30)
    assert [e.kind for e in events] == [IncrementFlag.SPIKE, IncrementFlag.REBASE]


def test_duplicate_and_out_of_order_reads_are_ignored():
    tr = CounterTracker()
    tr.feed(100, 10)
    assert tr.feed(160, 12)[0][0].value == 2
    assert tr.feed(160, 12) == ([], [])
    assert tr.feed(120, 11) == ([], [])


def test_state_is_a_plain_dict_that_can_be_persisted():
    import json

    tr = CounterTracker()
    tr.feed(0, 10)
    tr.feed(60, 0)  # zero held as suspect
    saved = json.loads(json.dumps(tr.state))
    tr2 = CounterTracker(state={k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()})
    incs, _ = tr2.feed(120, 12)
    assert [i.value for i in incs] == [2]


def test_single_garbage_low_read_is_not_a_reset_and_jump():
    incs, events = increments(series([1000, 1005, 7, 1010, 1015]))
    assert total(incs) == pytest.approx(15)
    assert events == []


def test_negative_total_is_rejected():
    incs, events = increments(series([1000, 1005, -3, 1010]))
    assert total(incs) == pytest.approx(10)
    assert [e.kind for e in events] == [IncrementFlag.INVALID]
