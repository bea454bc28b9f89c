"""greenmine.backoff: doubling up to the cap, never above it, spread by jitter, reproducible with a seed."""

from __future__ import annotations

import random

import pytest

from greenmine.backoff import Backoff


def test_without_jitter_it_doubles_to_the_cap_and_resets():
    b = Backoff(1.0, 10.0, jitter=0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    b.reset()
    assert b.next() == 1.0
    assert b.delay_s(10_000) == 10.0  # a huge attempt count does not overflow


def test_jitter_stays_within_bounds_and_spreads():
    b = Backoff(2.0, 60.0, jitter=0.2, rng=random.Random(1))
    for attempt in range(12):
        base = min(2.0 * 2**attempt, 60.0)
        delays = [b.delay_s(attempt) for _ in range(200)]
        assert all(0.8 * base <= d <= base for d in delays), attempt
        assert max(delays) - min(delays) > 0.1 * base  # clients that failed together do not retry in step


def test_a_seeded_random_gives_the_same_delays():
    a = Backoff(1.0, 300.0, rng=random.Random(42))
    b = Backoff(1.0, 300.0, rng=random.Random(42))
    assert [a.next() for _ in range(10)] == [b.next() for _ in range(10)]


def test_a_cap_below_the_first_delay_is_the_first_delay():
    assert Backoff(5.0, 1.0, jitter=0).next() == 5.0


@pytest.mark.parametrize("kw", [{"initial_s": 0, "max_s": 1}, {"initial_s": 1, "max_s": 1, "factor": 0.5},
                                {"initial_s": 1, "max_s": 1, "jitter": 1.0}])
def test_bad_parameters_are_refused(kw):
    with pytest.raises(ValueError):
        Backoff(**kw)
