"""The request planner: a device's registers in one poll group -> the read requests that take the
least bus time, fewest requests as the tie-break.

A request is one contiguous address range of one register type. It must
- read at most `max_count` registers (bits, for coils and discrete inputs: at most 2000, the
  Modbus limit of function codes 1 and 2);
- not read across more than `max_gap` consecutive addresses that no register of the group uses;
- not touch a forbidden address range (holding and input registers);
- contain each register it serves whole (a float32 is never split across two requests).

Cost model (`CostModel`), per request of n registers (or bits):
- RTU, on a serial port or behind an rtu_over_tcp gateway: the 3.5-character silence that opens
  a frame, 8 bytes out and 5 + 2n bytes back (5 + ceil(n/8) for bits), at the bus's character time
  (1 start bit, 8 or 7 data bits, parity if any, stop bits). Reading across a gap of k unused
  registers costs 2k bytes; starting a second request costs 16.5 characters plus its own 2n.
- TCP: one round trip per request (assumed 1 ms on a site LAN) plus 12 bytes out and 9 + 2n back
  at 100 Mbit/s: in practice the fewest requests, then the fewest bytes.

Why the dynamic programme is exact: registers never overlap (load rejects it), so with them sorted
by address the registers one request serves can be taken to be a run of consecutive ones (a
register between two that a request serves lies inside its range anyway), and a request's cost
depends only on its range. The best plan of the first j registers is then the best, over every
feasible last run i..j, of the best plan of the first i plus that run's request. The unit test
checks it against an exhaustive search over every possible set of address ranges on random maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from greenmine.agent.codec import RegisterType
from greenmine.agent.registermap import Register

#: Function codes 1 and 2 return at most 2000 bits (Modbus Application Protocol V1.1b3, §6.1-6.2).
MAX_BITS_PER_REQUEST = 2000


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus read: function code, first address and count, and the registers it serves."""

    type: RegisterType
    address: int
    count: int
    registers: tuple[Register, ...]

    @property
    def function(self) -> int:
        return self.type.read_function

    @property
    def end(self) -> int:
        return self.address + self.count - 1

    def to_dict(self) -> dict:
        return {
            "function": self.function,
            "type": self.type.value,
            "address": self.address,
            "count": self.count,
            "registers": [r.name for r in self.registers],
        }


@dataclass(frozen=True)
class CostModel:
    """Bus time of one request, in integer units (exact comparisons), and the length of a unit."""

    name: str
    fixed_units: int  # per request, whatever its size
    units_per_byte: int
    unit_s: float

    @classmethod
    def rtu(cls, baudrate: int = 9600, bits_per_char: int = 10) -> CostModel:
        # Half-characters as the unit: the 3.5-character silence is 7 of them.
        return cls("rtu", 7 + 2 * (8 + 5), 2, bits_per_char / baudrate / 2)

    @classmethod
    def tcp(cls) -> CostModel:
        # Bytes at 100 Mbit/s as the unit; a 1 ms round trip is 12500 of them.
        return cls("tcp", 12500 + 12 + 9, 1, 8 / 100e6)

    @classmethod
    def for_bus(cls, bus) -> CostModel:
        """The model of a `BusConfig`: RTU framing (serial, or rtu_over_tcp) at its character time, or TCP."""
        if bus.transport.value == "tcp":
            return cls.tcp()
        return cls.rtu(bus.baudrate, 1 + bus.bytesize + (bus.parity != "N") + bus.stopbits)

    def units(self, rtype: RegisterType, count: int) -> int:
        data_bytes = -(-count // 8) if rtype.is_bit else 2 * count
        return self.fixed_units + self.units_per_byte * data_bytes

    def seconds(self, requests: Iterable[ReadRequest]) -> float:
        """Estimated bus time of these requests."""
        return sum(self.units(r.type, r.count) for r in requests) * self.unit_s


def _hits_forbidden(lo: int, hi: int, forbidden: Sequence[tuple[int, int]]) -> bool:
    return any(lo <= f_hi and hi >= f_lo for f_lo, f_hi in forbidden)


def plan_registers(
    registers: Iterable[Register],
    *,
    max_count: int = 125,
    max_gap: int = 0,
    forbidden: Sequence[tuple[int, int]] = (),
    cost: CostModel | None = None,
) -> list[ReadRequest]:
    """The requests reading `registers` in the least bus time under `cost` (default: TCP's), then the
    fewest; ordered by type then address.

    Raises ValueError if one register alone cannot be read (wider than max_count, or forbidden).
    """
    cost = cost or CostModel.tcp()
    by_type: dict[RegisterType, list[Register]] = {}
    for reg in registers:
        by_type.setdefault(reg.type, []).append(reg)
    out: list[ReadRequest] = []
    for rtype in RegisterType:  # coil, discrete, holding, input: a stable order on the bus
        regs = sorted(by_type.get(rtype, []), key=lambda r: (r.address, r.end, r.bit or 0))
        if regs:
            out += _plan_one_type(rtype, regs, max_count, max_gap, forbidden, cost)
    return out


def _plan_one_type(rtype: RegisterType, regs: list[Register], max_count: int, max_gap: int,
                   forbidden: Sequence[tuple[int, int]], cost: CostModel) -> list[ReadRequest]:
    limit = MAX_BITS_PER_REQUEST if rtype.is_bit else max_count
    banned = () if rtype.is_bit else forbidden
    for reg in regs:
        if reg.count > limit or _hits_forbidden(reg.address, reg.end, banned):
            raise ValueError(f'register "{reg.name}" ({reg.address}..{reg.end}) cannot be read: '
                             f"wider than {limit} or in a forbidden range")
    n = len(regs)
    # best[j]: (units, requests) of the best plan of regs[:j], and where its last run starts.
    best: list[tuple[int, int] | None] = [(0, 0)] + [None] * n
    start_of: list[int] = [0] * (n + 1)
    for i in range(n):
        base = best[i]
        assert base is not None  # regs[i] alone is always feasible, so every prefix has a plan
        start, end = regs[i].address, regs[i].end
        for j in range(i, n):
            reg = regs[j]
            if j > i:
                # Feasibility is hereditary: once a run is infeasible, longer runs from i are too.
                new_end = max(end, reg.end)
                if (reg.address - end - 1 > max_gap or new_end - start + 1 > limit
                        or _hits_forbidden(start, new_end, banned)):
                    break
                end = new_end
            cand = (base[0] + cost.units(rtype, end - start + 1), base[1] + 1)
            # On a tie the later start wins: earlier requests are as long as they can be, as a
            # greedy left-to-right plan would make them.
            if best[j + 1] is None or cand <= best[j + 1]:
                best[j + 1], start_of[j + 1] = cand, i
    runs: list[ReadRequest] = []
    j = n
    while j > 0:
        i = start_of[j]
        run = regs[i:j]
        lo, hi = run[0].address, max(r.end for r in run)
        runs.append(ReadRequest(rtype, lo, hi - lo + 1, tuple(run)))
        j = i
    return runs[::-1]


def plan_device(device, bus=None) -> dict[str, list[ReadRequest]]:
    """Per poll group (sorted by name), the requests for one `DeviceConfig`'s resolved registers,
    under the cost model of its `BusConfig` (TCP's without one)."""
    cost = CostModel.for_bus(bus) if bus is not None else CostModel.tcp()
    groups: dict[str, list[Register]] = {g: [] for g in sorted(device.poll_groups)}
    for reg in device.resolved_registers:
        groups[reg.poll_group].append(reg)
    return {
        g: plan_registers(regs, max_count=device.max_registers, max_gap=device.max_gap, forbidden=device.forbidden,
                          cost=cost)
        for g, regs in groups.items()
        if regs
    }
