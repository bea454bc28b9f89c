"""Site physics: what every simulated meter reads at any simulated time.

Everything is a deterministic function of (seed, simulated time, active
scenarios), so reads at any time are consistent and two runs with the same
seed give the same series:

- Rates (power, flows, belt rate) and ambient values (dust, noise, wind) are
  piecewise constant per simulated minute, built from the shift pattern plus
  seeded hash noise. No state, no random.Random call order to depend on.
- Totals are the exact integral of their rate: per-minute rates are cached in
  day-sized chunks with prefix sums, so total(t) is closed-form at any t and
  the energy test can check "energy = integral of power" to float rounding.
- When scenarios change at run time, each total is re-anchored at that moment
  (a real meter's register never jumps because the plant changed behaviour).

Physics produce engineering values keyed by metric name (power_kw,
energy_kwh_total, water_flow_m3h, ...): the profile's `metric` says which
quantity a register carries, its unit is the metric's unit, and scale/offset
turn it into raw counts.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate
from zoneinfo import ZoneInfo

from greenmine.simulators.scenarios import Effect, EffectKind, Scenario

CHUNK_MIN = 1440  # minutes per cache chunk
WATER_ROLES = ("fresh", "reused", "discharge")

#: Parameters each kind of meter accepts (params = {...} in the site config), with defaults.
KIND_PARAMS: dict[str, dict[str, float]] = {
    "energy_meter": {"rated_kw": 500.0, "idle_fraction": 0.15, "initial_total": -1.0},
    "flowmeter": {"initial_total": -1.0},
    "belt_scale": {"rate_tph": 350.0, "initial_total": -1.0},
    "dust_monitor": {"base_tsp_mgm3": 0.10},
    "noise_meter": {"day_base_db": 52.0, "night_base_db": 42.0},
    "weather": {"mean_wind_ms": 2.5},
    "other": {},
}
_INITIAL_TOTAL = {"energy_meter": (80_000.0, 60_000.0), "flowmeter": (30_000.0, 20_000.0), "belt_scale": (400_000.0, 200_000.0)}


class PhysicsError(ValueError):
    """A device the physics cannot simulate (unknown role, bad parameter)."""


def _u(*key: object) -> float:
    """Seeded hash noise in [-1, 1): the same key always gives the same number."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return struct.unpack(">Q", digest)[0] / 2**63 - 1.0


def _hhmm(text: str) -> int:
    hh, mm = text.split(":")
    return int(hh) * 60 + int(mm)


@dataclass
class _Total:
    """A totalizer: anchor_total at anchor_t, then the integral of its rate."""

    anchor_t: float
    anchor_total: float
    key: tuple  # effects signature the anchor was computed under
    shift: float = 0.0  # meter_replaced / counter_rollover adjustments of the served value


@dataclass
class DeviceModel:
    name: str
    kind: str
    role: str | None
    params: dict[str, float]
    scenarios: list[str] = field(default_factory=list)
    totals: dict[str, _Total] = field(default_factory=dict)


class SiteModel:
    """The physics of one site. Thread-safe for reads once built (caches only grow)."""

    def __init__(self, seed: int, physics, tz: str, scenarios: dict[str, Scenario], site_scenarios: list[str]) -> None:
        self.seed = seed
        self.phys = physics
        self.tz = ZoneInfo(tz)
        self.known = scenarios
        self.site_scenarios = list(site_scenarios)
        self.devices: dict[str, DeviceModel] = {}
        self._shifts = sorted((_hhmm(s.start), s.load) for s in physics.shifts)
        self._day = (_hhmm(physics.day_start), _hhmm(physics.night_start))
        self._blasts = [_hhmm(t) for t in physics.blast_times]
        self._tod: dict[int, list[tuple[int, int]]] = {}
        self._rates: dict[tuple, list[float]] = {}
        self._prefix: dict[tuple, list[float]] = {}
        self._chunk_sum: dict[tuple, float] = {}
        self.origin_chunk = 0

    # ---- devices -------------------------------------------------------
    def add_device(self, name: str, kind: str, role: str | None, params: dict[str, float], scenarios: list[str]) -> None:
        allowed = KIND_PARAMS.get(kind, {})
        unknown = set(params) - set(allowed)
        if unknown:
            raise PhysicsError(
                f'device "{name}": unknown params {sorted(unknown)} for a {kind} (allowed: {", ".join(sorted(allowed)) or "none"})'
            )
        if kind == "flowmeter" and role not in WATER_ROLES:
            raise PhysicsError(f'device "{name}": a flowmeter needs role = {" | ".join(WATER_ROLES)}, got {role!r}')
        merged = dict(allowed) | dict(params)
        if merged.get("initial_total", 0) < 0 and kind in _INITIAL_TOTAL:
            base, spread = _INITIAL_TOTAL[kind]
            merged["initial_total"] = round(base + spread * (_u(self.seed, name, "initial") + 1) / 2, 1)
        self.devices[name] = DeviceModel(name, kind, role, merged, list(scenarios))

    def start(self, t0: float) -> None:
        """Anchor every total at simulated time t0 (the clock's start)."""
        self.origin_chunk = math.floor(t0 / 60) // CHUNK_MIN
        origin_t = self.origin_chunk * CHUNK_MIN * 60.0
        for dev in self.devices.values():
            for metric in self.total_metrics(dev):
                key = self.effects_key(dev)
                # The initial total is the meter's reading at the start of the clock's first chunk (a fixed
                # time for a fixed clock start), so the whole series is a function of seed and time only.
                dev.totals[metric] = _Total(origin_t, dev.params.get("initial_total", 0.0), key)

    @staticmethod
    def total_metrics(dev: DeviceModel) -> list[str]:
        return {
            "energy_meter": ["energy_kwh_total"],
            "flowmeter": ["water_m3_total"],
            "belt_scale": ["ore_t_total"],
        }.get(dev.kind, [])

    # ---- scenarios -----------------------------------------------------
    def effects_key(self, dev: DeviceModel) -> tuple:
        return tuple(self.site_scenarios) + ("|",) + tuple(dev.scenarios)

    def physics_effects(self, dev: DeviceModel) -> list[Effect]:
        out = []
        for name in self.site_scenarios + dev.scenarios:
            sc = self.known.get(name)
            if sc is not None:
                out += [e for e in sc.effects if not e.kind.is_device_effect]
        return out

    def device_effects(self, dev: DeviceModel) -> list[Effect]:
        out = []
        for name in dev.scenarios:
            sc = self.known.get(name)
            if sc is not None:
                out += [e for e in sc.effects if e.kind.is_device_effect]
        return out

    def reanchor(self, t: float) -> dict[str, dict[str, float]]:
        """Before scenarios change: pin every total at its current value. Returns {device: {metric: total}}."""
        pinned: dict[str, dict[str, float]] = {}
        for dev in self.devices.values():
            for metric, tot in dev.totals.items():
                value = self.true_total(dev, metric, t)
                tot.anchor_t, tot.anchor_total = t, value
                pinned.setdefault(dev.name, {})[metric] = value
        return pinned

    def rebase(self, t: float) -> None:
        """Integrate from t's chunk from now on. Values are differences of integrals, so the
        origin only sets the cost of reaching a time, never a value."""
        self.origin_chunk = math.floor(t / 60) // CHUNK_MIN

    def after_change(self) -> None:
        for dev in self.devices.values():
            key = self.effects_key(dev)
            for tot in dev.totals.values():
                tot.key = key

    # ---- time ----------------------------------------------------------
    def _time_of_day(self, chunk: int) -> list[tuple[int, int]]:
        tod = self._tod.get(chunk)
        if tod is None:
            tod = []
            base = chunk * CHUNK_MIN
            for i in range(CHUNK_MIN):
                local = datetime.fromtimestamp((base + i) * 60, self.tz)
                tod.append((local.hour * 60 + local.minute, local.weekday()))
            self._tod[chunk] = tod
        return tod

    def is_day(self, mod: int) -> bool:
        day, night = self._day
        return day <= mod < night if day < night else not (night <= mod < day)

    @staticmethod
    def _in_window(e: Effect, mod: int, is_day: bool) -> bool:
        win = e.window_minutes()
        if win is not None:
            start, length = win
            return (mod - start) % 1440 < length
        if e.period == "day":
            return is_day
        if e.period == "night":
            return not is_day
        return True

    # ---- per-minute signals ---------------------------------------------
    def _smooth(self, name: str, m: int, knot_min: int = 15) -> float:
        k, frac = divmod(m, knot_min)
        a, b = _u(self.seed, name, k), _u(self.seed, name, k + 1)
        return a + (b - a) * frac / knot_min

    def _shift_load(self, mod: int, weekday: int) -> float:
        p = self.phys
        if p.maintenance_weekday is not None and weekday == p.maintenance_weekday:
            start = _hhmm(p.maintenance_start)
            if (mod - start) % 1440 < p.maintenance_h * 60:
                return 0.05
        load = self._shifts[-1][1]
        for start, value in self._shifts:
            if mod >= start:
                load = value
        return load

    def _minute_values(self, dev: DeviceModel, m: int, mod: int, weekday: int, effects: list[Effect]) -> dict[str, float]:
        """All quantities of `dev` during simulated minute m (minute of day `mod`)."""
        day = self.is_day(mod)
        active = [e for e in effects if self._in_window(e, mod, day)]

        def factor(kind: EffectKind) -> float:
            return math.prod(e.value for e in active if e.kind is kind)  # type: ignore[misc]

        def added(kind: EffectKind) -> float:
            return sum(e.value for e in active if e.kind is kind)  # type: ignore[misc]

        load = self._shift_load(mod, weekday) * factor(EffectKind.LOAD_FACTOR)
        load *= 1 + 0.03 * _u(self.seed, "load", m)
        prm = dev.params
        s = self.seed
        out: dict[str, float] = {}
        if dev.kind == "energy_meter":
            idle = prm["idle_fraction"]
            kw = prm["rated_kw"] * (idle + (1 - idle) * load) * (1 + 0.02 * _u(s, dev.name, "p", m))
            kw *= factor(EffectKind.POWER_FACTOR)
            volts = 230.0 + 2.0 * self._smooth("volts", m)
            pf = 0.88 + 0.03 * self._smooth(dev.name + "pf", m)
            amps = kw * 1000 / (3 * volts * pf)
            out.update(
                power_kw=kw, frequency_hz=50.0 + 0.03 * self._smooth("hz", m, 5),
                voltage_l1_v=volts, voltage_l2_v=volts + 0.8, voltage_l3_v=volts - 0.6,
                current_l1_a=amps * 1.01, current_l2_a=amps, current_l3_a=amps * 0.99, power_factor=pf,
            )
            out["energy_kwh_total"] = kw / 60.0  # rate per minute, integrated by the caller
        elif dev.kind == "flowmeter":
            demand = self.phys.process_water_m3h * (0.15 + 0.85 * load) * (1 + 0.02 * _u(s, "demand", m))
            overrides = [e.value for e in active if e.kind is EffectKind.REUSE_FRACTION]
            r = overrides[-1] if overrides else self.phys.reuse_fraction + 0.006 * self._smooth("reuse", m, 60)
            r = min(1.0, max(0.0, r))  # type: ignore[type-var]
            flow = {
                "fresh": demand * (1 - r),
                "reused": demand * r,
                "discharge": demand * self.phys.discharge_fraction * (1 + 0.1 * _u(s, "discharge", m)),
            }[dev.role or "fresh"]
            out["water_flow_m3h"] = flow
            out["water_m3_total"] = flow / 60.0
        elif dev.kind == "belt_scale":
            running = load > 0.1
            rate = prm["rate_tph"] * load * (1 + 0.04 * _u(s, dev.name, "belt", m)) if running else 0.0
            speed = 2.5 if running else 0.0
            out.update(belt_rate_tph=rate, belt_speed_ms=speed, belt_load_kgm=rate * 1000 / 3600 / speed if speed else 0.0)
            out["ore_t_total"] = rate / 60.0
        elif dev.kind in ("dust_monitor", "weather", "noise_meter"):
            hour = mod / 60
            wind = max(0.2, prm.get("mean_wind_ms", 2.5) + 1.8 * math.sin(2 * math.pi * (hour - 9) / 24)
                       + 1.0 * self._smooth("wind", m))
            if dev.kind == "weather":
                out.update(
                    wind_speed_ms=wind,
                    wind_dir_deg=(290 + 40 * self._smooth("winddir", m, 30)) % 360,
                    air_temp_c=8 + 7 * math.sin(2 * math.pi * (hour - 9) / 24) + 0.5 * self._smooth("temp", m),
                )
            elif dev.kind == "dust_monitor":
                blast = 0.0
                for b in self._blasts:
                    since = (mod - b) % 1440
                    if since < 60:
                        blast += 0.9 * math.exp(-since / 10)
                tsp = prm["base_tsp_mgm3"] + 0.05 * wind + 0.2 * load + blast + 0.02 * _u(s, dev.name, "tsp", m)
                tsp += added(EffectKind.DUST_ADD)
                tsp = max(0.005, tsp)
                out.update(dust_tsp_mgm3=tsp, dust_pm10_mgm3=0.52 * tsp, dust_pm25_mgm3=0.23 * tsp)
            else:
                base = prm["day_base_db"] + 6 * load if day else prm["night_base_db"] + 5 * load
                out["noise_laeq_db"] = base + 1.2 * _u(s, dev.name, "noise", m) + added(EffectKind.NOISE_ADD)
        return out

    def _chunk(self, dev: DeviceModel, key: tuple, chunk: int) -> dict[str, list[float]]:
        """Per-minute values of all quantities of `dev` in one chunk, cached."""
        ck = (dev.name, key, chunk)
        cached = self._rates.get(ck)
        if cached is None:
            effects = self._effects_for_key(dev, key)  # the key, not the device's current list: old anchors stay valid
            tod = self._time_of_day(chunk)
            base = chunk * CHUNK_MIN
            rows = [self._minute_values(dev, base + i, mod, wd, effects) for i, (mod, wd) in enumerate(tod)]
            cached = {q: [r[q] for r in rows] for q in (rows[0] if rows else {})}
            self._rates[ck] = cached  # type: ignore[assignment]
        return cached  # type: ignore[return-value]

    def _effects_for_key(self, dev: DeviceModel, key: tuple) -> list[Effect]:
        sep = key.index("|")
        names = list(key[:sep]) + list(key[sep + 1 :])
        out = []
        for name in names:
            sc = self.known.get(name)
            if sc is not None:
                out += [e for e in sc.effects if not e.kind.is_device_effect]
        return out

    # ---- reading -------------------------------------------------------
    def minute_value(self, dev: DeviceModel, quantity: str, t: float) -> float:
        m = math.floor(t / 60)
        chunk, i = divmod(m, CHUNK_MIN)
        series = self._chunk(dev, self.effects_key(dev), chunk).get(quantity)
        if series is None:
            raise KeyError(quantity)
        return series[i]

    def _integral_to(self, dev: DeviceModel, key: tuple, quantity: str, t: float) -> float:
        """Integral of the per-minute rate from the origin chunk's start to t (negative before it)."""
        m_float = t / 60
        m = math.floor(m_float)
        chunk, i = divmod(m, CHUNK_MIN)
        pk = (dev.name, key, chunk, quantity)
        prefix = self._prefix.get(pk)
        if prefix is None:
            series = self._chunk(dev, key, chunk)[quantity]
            prefix = [0.0, *accumulate(series)]
            self._prefix[pk] = prefix
        within = prefix[i] + self._chunk(dev, key, chunk)[quantity][i] * (m_float - m)
        whole = 0.0
        if chunk >= self.origin_chunk:
            for c in range(self.origin_chunk, chunk):
                whole += self._chunk_total(dev, key, c, quantity)
        else:
            for c in range(chunk, self.origin_chunk):
                whole -= self._chunk_total(dev, key, c, quantity)
        return whole + within

    def _chunk_total(self, dev: DeviceModel, key: tuple, chunk: int, quantity: str) -> float:
        ck = (dev.name, key, chunk, quantity)
        total = self._chunk_sum.get(ck)
        if total is None:
            total = math.fsum(self._chunk(dev, key, chunk)[quantity])
            self._chunk_sum[ck] = total
        return total

    def true_total(self, dev: DeviceModel, metric: str, t: float) -> float:
        tot = dev.totals[metric]
        return tot.anchor_total + self._integral_to(dev, tot.key, metric, t) - self._integral_to(dev, tot.key, metric, tot.anchor_t)

    def served_total(self, dev: DeviceModel, metric: str, t: float) -> float:
        return self.true_total(dev, metric, t) + dev.totals[metric].shift

    def quantity(self, device: str, metric: str, t: float) -> float | None:
        """The engineering value of `metric` on `device` at simulated time t; None if not simulated."""
        dev = self.devices[device]
        base = _total_metric(dev, metric)
        if base is not None:
            return self.served_total(dev, base, t)
        try:
            return self.minute_value(dev, metric, t)
        except KeyError:
            return None


def _total_metric(dev: DeviceModel, metric: str) -> str | None:
    """Which of the device's totals a register's metric reads (water_fresh_m3_total -> water_m3_total)."""
    if dev.kind == "flowmeter" and metric.startswith("water_") and metric.endswith("_m3_total"):
        return "water_m3_total"
    if metric in SiteModel.total_metrics(dev):
        return metric
    return None
