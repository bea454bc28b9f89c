"""The request planner: a device's registers in one poll group -> the fewest read requests.

A request is one contiguous address range of one register type. It must
- read at most `max_count` registers (bits, for coils and discrete inputs: at most 2000, the
  Modbus limit of function codes 1 and 2);
- not read across more than `max_gap` consecutive addresses that no register of the group uses;
- not touch a forbidden address range (holding and input registers);
- contain each register it serves whole (a float32 is never split across two requests).

Why greedy is optimal: the registers a request can serve are a run of consecutive registers in
address order, and any part of a feasible run is feasible too (it is shorter, has no new gaps,
and covers no new addresses). For such "hereditary" runs, taking the longest feasible run from
the left at every step gives the fewest runs (the usual exchange argument). The unit test checks
this against an exhaustive search over every possible set of address ranges on random maps.
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


def _hits_forbidden(lo: int, hi: int, forbidden: Sequence[tuple[int, int]]) -> bool:
    return any(lo <= f_hi and hi >= f_lo for f_lo, f_hi in forbidden)


def plan_registers(
    registers: Iterable[Register],
    *,
    max_count: int = 125,
    max_gap: int = 0,
    forbidden: Sequence[tuple[int, int]] = (),
) -> list[ReadRequest]:
    """The fewest requests reading `registers`, ordered by type then address.

    Raises ValueError if one register alone cannot be read (wider than max_count, or forbidden).
    """
    by_type: dict[RegisterType, list[Register]] = {}
    for reg in registers:
        by_type.setdefault(reg.type, []).append(reg)
    out: list[ReadRequest] = []
    for rtype in RegisterType:  # coil, discrete, holding, input: a stable order on the bus
        regs = sorted(by_type.get(rtype, []), key=lambda r: (r.address, r.end, r.bit or 0))
        if not regs:
            continue
        limit = MAX_BITS_PER_REQUEST if rtype.is_bit else max_count
        banned = () if rtype.is_bit else forbidden
        run: list[Register] = []
        start = end = 0
        for reg in regs:
            if reg.count > limit or _hits_forbidden(reg.address, reg.end, banned):
                raise ValueError(f'register "{reg.name}" ({reg.address}..{reg.end}) cannot be read: '
                                 f"wider than {limit} or in a forbidden range")
            if run:
                new_end = max(end, reg.end)
                gap = reg.address - end - 1
                if new_end - start + 1 <= limit and gap <= max_gap and not _hits_forbidden(start, new_end, banned):
                    run.append(reg)
                    end = new_end
                    continue
                out.append(ReadRequest(rtype, start, end - start + 1, tuple(run)))
            run, start, end = [reg], reg.address, reg.end
        out.append(ReadRequest(rtype, start, end - start + 1, tuple(run)))
    return out


def plan_device(device) -> dict[str, list[ReadRequest]]:
    """Per poll group (sorted by name), the requests for one `DeviceConfig`'s resolved registers."""
    groups: dict[str, list[Register]] = {g: [] for g in sorted(device.poll_groups)}
    for reg in device.resolved_registers:
        groups[reg.poll_group].append(reg)
    return {
        g: plan_registers(regs, max_count=device.max_registers, max_gap=device.max_gap, forbidden=device.forbidden)
        for g, regs in groups.items()
        if regs
    }
