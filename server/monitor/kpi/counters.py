"""Cumulative totalizers (kWh, m³, t) → true consumption per interval.

Every KPI reads the increments made here, never raw totals. The rules
(docs/kpi-alerts.md "Counters"):

- **Rollover**: a drop where the previous value sat in the top band of the
  register's declared width and the new one in the bottom band (or, when a max
  rate is configured, where the wrapped increment is a plausible rate) is a
  wrap: the increment is ``width - prev + new``.
- **Reset**: a drop below ``reset_ratio`` (0.9) of the previous value is a
  reset or a meter replacement, once the next read confirms it (continues from
  the low value): counting restarts from the new value (the interval that
  contains the swap counts nothing, because a replaced meter may start at any
  reading) and an event is recorded. If the next read continues from the old
  value instead, the low read was a glitch and is ignored.
- **Dip**: a smaller drop is noise: nothing is counted and the baseline stays
  at the previous value, so the recovery is not counted twice.
- **Zero read**: a single 0 is a low read like any other (held as suspect,
  see Reset), flagged with its own event. Either way no fake jump appears.
- **Negative** totals are rejected with an `invalid` event.
- **Spike**: an increment implying more than ``max_rate_per_s`` is rejected
  and flagged. The value is held as suspect: if the next read continues from
  the old baseline the spike was garbage; if it continues from the spike, the
  meter jumped (e.g. replaced by one with a higher reading) and the baseline
  moves there, counting nothing for the jump itself.

`CounterTracker` is pure and incremental: its `state` is a small dict so the
caller can persist it between batches. It is fed in time order; delivery is
not (a backlog re-sent after an outage arrives alongside live data), so the
KPI engine replays the stored reads sorted by time (`increments` sorts too),
and a read older than the tracker's baseline is ignored, never taken for a
reset or a dip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class IncrementFlag(str, Enum):
    OK = "ok"
    ROLLOVER = "rollover"
    RESET = "reset"
    DIP = "dip"
    SPIKE = "spike"
    ZERO = "zero"
    REBASE = "rebase"
    INVALID = "invalid"


@dataclass(frozen=True)
class CounterSpec:
    """How one totalizer behaves. `width` is the register span (2**16, 2**32) or None for floats."""

    width: float | None = None
    reset_ratio: float = 0.9
    max_rate_per_s: float | None = None
    rollover_band_ratio: float = 0.1


@dataclass(frozen=True)
class Increment:
    """Consumption in the interval (start_ts, end_ts]. Epoch seconds."""

    start_ts: float
    end_ts: float
    value: float
    flag: IncrementFlag = IncrementFlag.OK


@dataclass(frozen=True)
class CounterEvent:
    """Something worth recording about a meter: a reset, spike, rollover, zero read."""

    ts: float
    kind: IncrementFlag
    prev: float
    new: float
    detail: str = ""


@dataclass
class CounterTracker:
    spec: CounterSpec = field(default_factory=CounterSpec)
    #: baseline value and its time; suspect (value, ts) held for one more read
    state: dict = field(default_factory=dict)

    def feed(self, ts: float, value: float) -> tuple[list[Increment], list[CounterEvent]]:
        """Take one reading (in time order). Returns the increments and events it produced."""
        st = self.state
        base = st.get("base")
        if base is not None and 0 <= base <= value and not st.get("suspect") and ts > st["base_ts"]:
            # the common case, decided as _judge / _step / _emit decide it: a total that went up (or stayed),
            # within the max rate when there is one
            start = st["base_ts"]
            limit = self.spec.max_rate_per_s
            if limit is None or value - base <= limit * (ts - start):
                st["base"], st["base_ts"] = value, ts
                return [Increment(start, ts, value - base, IncrementFlag.OK)], []
        if base is None:
            st.update(base=value, base_ts=ts)
            return [], []
        if ts <= st["base_ts"] or (st.get("suspect") and ts <= st["suspect"][1]):
            return [], []  # duplicate or out-of-order read: totals are only meaningful in order
        base, base_ts = st["base"], st["base_ts"]
        suspect = st.get("suspect")
        incs: list[Increment] = []
        events: list[CounterEvent] = []

        if suspect is not None:
            s_val, s_ts, s_kind = suspect
            st["suspect"] = None
            ok_from_base = self._step(base, base_ts, ts, value)
            if ok_from_base is not None and ok_from_base[1] != IncrementFlag.RESET:
                # the suspect read was a glitch: continue from the old baseline
                inc, flag = ok_from_base
                return self._emit(base_ts, ts, value, inc, flag, base, incs, events)
            ok_from_suspect = self._step(s_val, s_ts, ts, value)
            if ok_from_suspect is not None and ok_from_suspect[1] in (IncrementFlag.OK, IncrementFlag.ROLLOVER):
                kind = IncrementFlag.REBASE if s_kind == IncrementFlag.SPIKE else IncrementFlag.RESET
                events.append(CounterEvent(s_ts, kind, base, s_val, "confirmed by the next read"))
                # nothing is counted for the jump itself (base_ts, s_ts]
                incs.append(Increment(base_ts, s_ts, 0.0, kind))
                inc, flag = ok_from_suspect
                return self._emit(s_ts, ts, value, inc, flag, s_val, incs, events)
            # neither continues: judge this read against the baseline as usual
        return self._judge(base, base_ts, ts, value, incs, events)

    def _judge(self, base, base_ts, ts, value, incs, events):
        st = self.state
        if value < 0:
            # a totalizer never reads negative: a decoding or device fault, not consumption
            events.append(CounterEvent(ts, IncrementFlag.INVALID, base, value, "negative total: rejected"))
            return incs, events
        step = self._step(base, base_ts, ts, value)
        if step is None:
            st["suspect"] = (value, ts, IncrementFlag.SPIKE)
            events.append(CounterEvent(ts, IncrementFlag.SPIKE, base, value, "increment above the max rate: rejected"))
            return incs, events
        inc, flag = step
        if flag == IncrementFlag.RESET:
            # held until the next read: one low read (0 or garbage) must not become a reset and then a jump
            kind = IncrementFlag.ZERO if value == 0 else IncrementFlag.RESET
            st["suspect"] = (value, ts, kind)
            if kind == IncrementFlag.ZERO:
                events.append(CounterEvent(ts, IncrementFlag.ZERO, base, value, "zero read held as suspect"))
            return incs, events
        if flag == IncrementFlag.DIP:
            # keep the old baseline (and its time): the recovery must not count twice
            incs.append(Increment(base_ts, ts, 0.0, flag))
            st["base_ts"] = ts
            return incs, events
        return self._emit(base_ts, ts, value, inc, flag, base, incs, events)

    def _emit(self, start, ts, value, inc, flag, prev, incs, events):
        if flag == IncrementFlag.ROLLOVER:
            events.append(CounterEvent(ts, flag, prev, value, f"wrapped at {self.spec.width:g}"))
        if flag == IncrementFlag.DIP:
            incs.append(Increment(start, ts, 0.0, flag))
            self.state.update(base=prev, base_ts=ts)
            return incs, events
        incs.append(Increment(start, ts, inc, flag))
        self.state.update(base=value, base_ts=ts)
        return incs, events

    def _step(self, prev: float, prev_ts: float, ts: float, value: float) -> tuple[float, IncrementFlag] | None:
        """Classify prev→value. None means a spike (implausible rate)."""
        spec = self.spec
        dt = ts - prev_ts
        limit = spec.max_rate_per_s * dt if spec.max_rate_per_s is not None else None
        if value >= prev:
            inc = value - prev
            if limit is not None and inc > limit:
                return None
            return inc, IncrementFlag.OK
        if spec.width:
            wrapped = spec.width - prev + value
            band = spec.rollover_band_ratio * spec.width
            plausible = wrapped <= limit if limit is not None else (prev >= spec.width - band and value <= band)
            if plausible and wrapped > 0:
                return wrapped, IncrementFlag.ROLLOVER
        if value < spec.reset_ratio * prev:
            return 0.0, IncrementFlag.RESET
        return 0.0, IncrementFlag.DIP


def increments(points: list[tuple[float, float]], spec: CounterSpec | None = None) -> tuple[list[Increment], list[CounterEvent]]:
    """Run a whole series of (ts, total) through a fresh tracker."""
    tr = CounterTracker(spec or CounterSpec())
    incs: list[Increment] = []
    events: list[CounterEvent] = []
    for ts, v in sorted(points):
        i, e = tr.feed(ts, v)
        incs += i
        events += e
    return incs, events


def total(incs: list[Increment]) -> float:
    return sum(i.value for i in incs)
