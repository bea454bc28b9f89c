"""Planner: optimal against an exhaustive search (fewest requests under TCP's cost model, least bus
time then fewest requests under RTU's), and limits and forbidden ranges are respected."""

from __future__ import annotations

import heapq
import random
from collections import deque

import pytest

from greenmine.agent.codec import DataType, RegisterType
from greenmine.agent.planner import CostModel, plan_registers
from greenmine.agent.registermap import Register

WIDTH = {DataType.UINT16: 1, DataType.FLOAT32: 2, DataType.FLOAT64: 4}


def random_map(rng: random.Random, space: int = 40):
    regs, addr, i = [], rng.randrange(0, 4), 0
    while addr < space and len(regs) < 9:
        dt = rng.choice(list(WIDTH))
        if addr + WIDTH[dt] > space:
            break
        regs.append(Register(name=f"r{i}", address=addr, data_type=dt))
        addr += WIDTH[dt] + rng.choice([0, 0, 1, 2, 3, 5, 8])
        i += 1
    return regs


def feasible_ranges(regs, max_count, max_gap, forbidden, space=48):
    """Every address range [a, b] that satisfies the limits (any start, any end): (mask of the
    registers it covers whole, its count)."""
    used = set()
    for r in regs:
        used.update(range(r.address, r.end + 1))
    bad = set()
    for lo, hi in forbidden:
        bad.update(range(lo, hi + 1))
    covers = set()
    for a in range(space):
        for b in range(a, min(space, a + max_count)):
            if any(x in bad for x in range(a, b + 1)):
                break
            run = longest = 0
            for x in range(a, b + 1):
                run = 0 if x in used else run + 1
                longest = max(longest, run)
            if longest > max_gap:
                continue
            mask = sum(1 << i for i, r in enumerate(regs) if a <= r.address and r.end <= b)
            if mask:
                covers.add((mask, b - a + 1))
    return covers


def exhaustive_min_requests(regs, max_count, max_gap, forbidden):
    """The true optimum: fewest feasible ranges covering every register, by breadth-first search over covered sets."""
    covers = {m for m, _ in feasible_ranges(regs, max_count, max_gap, forbidden)}
    full = (1 << len(regs)) - 1
    seen, todo = {0: 0}, deque([0])
    while todo:
        m = todo.popleft()
        if m == full:
            return seen[m]
        for c in covers:
            n = m | c
            if n not in seen:
                seen[n] = seen[m] + 1
                todo.append(n)
    return None


def check_plan(plan, regs, max_count, max_gap, forbidden):
    served = [r.name for req in plan for r in req.registers]
    assert sorted(served) == sorted(r.name for r in regs), "every register exactly once"
    for req in plan:
        assert req.count <= max_count
        assert all(req.address <= r.address and r.end <= req.end for r in req.registers)
        assert not any(req.address <= hi and req.end >= lo for lo, hi in forbidden)
        used = set()
        for r in req.registers:
            used.update(range(r.address, r.end + 1))
        run = longest = 0
        for x in range(req.address, req.end + 1):
            run = 0 if x in used else run + 1
            longest = max(longest, run)
        assert longest <= max_gap


def test_planner_is_optimal_on_random_maps():
    rng = random.Random(4)
    checked = 0
    for _ in range(400):
        regs = random_map(rng)
        if not regs:
            continue
        max_count = rng.choice([4, 5, 6, 8, 10, 16, 125])
        max_gap = rng.choice([0, 1, 2, 4, 8])
        forbidden = []
        if rng.random() < 0.5:
            used = {a for r in regs for a in range(r.address, r.end + 1)}
            free = [a for a in range(44) if a not in used]
            if free:
                lo = rng.choice(free)
                hi = lo
                while hi + 1 in free and hi + 1 not in used and rng.random() < 0.6:
                    hi += 1
                forbidden = [(lo, hi)]
        if any(r.count > max_count for r in regs):
            continue
        plan = plan_registers(regs, max_count=max_count, max_gap=max_gap, forbidden=forbidden)
        check_plan(plan, regs, max_count, max_gap, forbidden)
        assert len(plan) == exhaustive_min_requests(regs, max_count, max_gap, forbidden), (regs, max_count, max_gap, forbidden)
        checked += 1
    assert checked > 300


def exhaustive_least_time(regs, max_count, max_gap, forbidden, cost):
    """The true optimum under `cost`: (bus time units, requests) over every set of feasible ranges
    covering every register, by Dijkstra over covered sets."""
    covers = feasible_ranges(regs, max_count, max_gap, forbidden)
    full = (1 << len(regs)) - 1
    done, todo = set(), [((0, 0), 0)]
    while todo:
        key, m = heapq.heappop(todo)
        if m == full:
            return key
        if m in done:
            continue
        done.add(m)
        for c, count in covers:
            if m | c != m:
                heapq.heappush(todo, ((key[0] + cost.units(RegisterType.HOLDING, count), key[1] + 1), m | c))
    return None


def test_planner_takes_least_rtu_bus_time_on_random_maps():
    rng = random.Random(12)
    cost = CostModel.rtu(9600)
    checked = 0
    for _ in range(150):
        regs = random_map(rng)
        max_count = rng.choice([4, 8, 16, 125])
        max_gap = rng.choice([0, 4, 8, 12, 20])
        if not regs or any(r.count > max_count for r in regs):
            continue
        plan = plan_registers(regs, max_count=max_count, max_gap=max_gap, cost=cost)
        check_plan(plan, regs, max_count, max_gap, [])
        got = (sum(cost.units(r.type, r.count) for r in plan), len(plan))
        assert got == exhaustive_least_time(regs, max_count, max_gap, [], cost), (regs, max_count, max_gap)
        checked += 1
    assert checked > 100


def test_rtu_reads_across_a_wide_gap_only_when_it_is_cheaper():
    # 3.5 chars + 8 out + 5 back open a request: 16.5 characters, i.e. the cost of reading 8.25 unused registers.
    regs = [Register(name="a", address=0), Register(name="b", address=10)]
    rtu = CostModel.rtu(9600)
    assert [(r.address, r.count) for r in plan_registers(regs, max_gap=12, cost=rtu)] == [(0, 1), (10, 1)]
    assert [(r.address, r.count) for r in plan_registers(regs, max_gap=12)] == [(0, 11)]  # TCP: one round trip
    near = [Register(name="a", address=0), Register(name="b", address=9)]  # 8 unused: 16 < 16.5 characters
    assert [(r.address, r.count) for r in plan_registers(near, max_gap=12, cost=rtu)] == [(0, 10)]
    # 9600 baud, 8N1: 10 bits a character; two one-register requests are 2 * (16.5 + 2) characters
    plan = plan_registers(regs, max_gap=12, cost=rtu)
    assert rtu.seconds(plan) == pytest.approx(2 * 18.5 * 10 / 9600)


def test_respects_max_registers_per_request():
    regs = [Register(name=f"f{i}", address=2 * i, data_type=DataType.FLOAT32) for i in range(100)]  # 200 registers
    plan = plan_registers(regs, max_count=125)
    assert [(r.address, r.count) for r in plan] == [(0, 124), (124, 76)]  # a float is never split
    assert len(plan_registers(regs, max_count=80)) == 3


def test_max_gap_zero_reads_no_unused_register_and_gap_merges():
    regs = [Register(name="a", address=0), Register(name="b", address=2), Register(name="c", address=10)]
    assert len(plan_registers(regs, max_gap=0)) == 3
    assert [(r.address, r.count) for r in plan_registers(regs, max_gap=1)] == [(0, 3), (10, 1)]
    assert len(plan_registers(regs, max_gap=7)) == 1


def test_forbidden_range_is_never_read_across():
    regs = [Register(name="a", address=0), Register(name="b", address=4)]
    plan = plan_registers(regs, max_gap=8, forbidden=[(2, 2)])
    assert [(r.address, r.count) for r in plan] == [(0, 1), (4, 1)]
    with pytest.raises(ValueError, match="forbidden"):
        plan_registers([Register(name="x", address=2)], forbidden=[(2, 3)])


def test_types_are_planned_separately_and_bits_up_to_2000():
    regs = [Register(name="h", address=0), Register(name="i", address=1, type=RegisterType.INPUT)]
    regs += [Register(name=f"c{i}", address=i * 100, type=RegisterType.COIL, data_type=DataType.BIT) for i in range(25)]
    plan = plan_registers(regs, max_gap=99)
    assert [(r.function, r.address, r.count) for r in plan] == [(1, 0, 1901), (1, 2000, 401), (3, 0, 1), (4, 1, 1)]


def test_bits_of_one_register_share_one_read():
    regs = [Register(name=f"b{i}", address=7, data_type=DataType.BIT, bit=i) for i in range(4)]
    (req,) = plan_registers(regs)
    assert (req.address, req.count, len(req.registers)) == (7, 1, 4)
