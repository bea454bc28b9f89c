"""A simulated site: every meter of a site config served as a real Modbus server.

    site = SimulatedSite(load_sim_config("config/site.example.toml"))
    await site.start(); ...; await site.stop()

or, from synchronous code (tests, the demo), with the asyncio loop in a thread:

    with SiteRunner(cfg) as sim:
        port = sim.port("gateway-1")           # bound TCP port (0 in the config = a free port)
        sim.clock.set(datetime(2025, 6, 2, 21, 59)); sim.clock.freeze()
        sim.set_scenarios(["reuse_drop"])      # site-wide; or device="crusher-meter"
        sim.inject("crusher-meter", "device_offline")
        value = sim.expected_value("crusher-meter", "import_kwh")
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime

from greenmine.agent.codec import DataType, RegisterType, decode, encode
from greenmine.agent.registermap import Profile, Register
from greenmine.simulators.clock import SimClock
from greenmine.simulators.config import SimDeviceConfig, SimServerConfig, SimSiteConfig
from greenmine.simulators.physics import PhysicsError, SiteModel
from greenmine.simulators.scenarios import EffectKind, Scenario, check_names, load_scenarios

log = logging.getLogger(__name__)


class SimError(ValueError):
    """A control request the site cannot honour (unknown device, scenario or register)."""


def _is_total(reg: Register) -> bool:
    return reg.counter_width_bits is not None or (reg.metric_name.endswith("_total"))


def encode_value(reg: Register, value: float | None, profile: Profile, fallback: str = "") -> list[int]:
    """Engineering value -> register words, with the profile's own rules (shared codec)."""
    order = reg.order(profile.word_order)
    if reg.data_type is DataType.STRING:
        return encode(fallback, DataType.STRING, order, length=reg.length)
    if reg.data_type is DataType.BIT:
        return [1 << (reg.bit or 0)] if value else [0]
    raw = ((value or 0.0) - reg.offset) / reg.scale
    if reg.data_type in (DataType.FLOAT32, DataType.FLOAT64):
        return encode(raw, reg.data_type, order)
    if _is_total(reg):
        # A counter counts whole units: truncate (the epsilon absorbs float noise such as 12.5/0.001).
        iraw = math.floor(raw + 1e-6)
        if reg.counter_width_bits:
            iraw %= 1 << reg.counter_width_bits
    else:
        iraw = round(raw)
        if reg.data_type.value.startswith("uint"):
            iraw = max(0, iraw)
    return encode(iraw, reg.data_type, order)


@dataclass(eq=False)
class DeviceRuntime:
    cfg: SimDeviceConfig
    server: str
    profile: Profile
    site: SimulatedSite
    reads: int = 0
    requests: int = 0
    exc_index: int = 0
    zero_next: bool = False
    spans: dict[RegisterType, list[tuple[int, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for reg in self.profile.registers:
            if not reg.type.is_bit:
                self.spans.setdefault(reg.type, []).append((reg.address, reg.end))

    @property
    def name(self) -> str:
        return self.cfg.name

    def register(self, name: str) -> Register:
        for reg in self.profile.registers:
            if reg.name == name:
                return reg
        raise SimError(f'device "{self.name}" ({self.cfg.profile}) has no register "{name}"')

    def words(self, reg: Register, t: float) -> list[int]:
        value = self.site.model.quantity(self.name, reg.metric_name, t)
        return encode_value(reg, value, self.profile, f"{self.profile.model}-{self.cfg.unit_id}")

    def expected_value(self, reg: Register, t: float) -> float | int | bool | str:
        """What a correct client decodes from this register at simulated time t (scale and offset applied)."""
        raw = decode(self.words(reg, t), reg.data_type, reg.order(self.profile.word_order), bit=reg.bit)
        if isinstance(raw, (str, bool)):
            return raw
        return raw * reg.scale + reg.offset

    def effects(self):
        return self.site.model.device_effects(self.site.model.devices[self.name])

    # -- called for every request, in the server's loop ---------------------------------------
    def link_hook(self) -> str | None:
        """Link-level faults, decided before the meter sees the request (flapping_link)."""
        self.requests += 1
        for e in self.effects():
            if e.kind is EffectKind.FLAP and (self.requests - 1) % (e.every_n or 1) == 0:
                self.site.count("dropped_connections")
                return "drop"
        return None

    async def action(self, fc, start_address, address, count, registers, set_values):
        from greenmine.simulators import server as mb

        if set_values is not None:
            return mb.ILLEGAL_FUNCTION  # the simulated meters are read-only
        if fc not in (3, 4):
            return None
        if count > self.profile.max_registers_per_request:
            return mb.ILLEGAL_VALUE  # as the meter itself answers an oversize read
        for e in self.effects():
            if e.kind is EffectKind.OFFLINE:
                self.site.count("unanswered")
                await asyncio.Event().wait()  # never answers; cancelled when the server stops
            if e.kind is EffectKind.SLOW:
                await asyncio.sleep((e.delay_ms or 0) / 1000)
            if e.kind is EffectKind.EXCEPTION:
                code = e.codes[self.exc_index % len(e.codes)]
                self.exc_index += 1
                return mb.exc_code(code)
        t = self.site.clock.now()
        rtype = RegisterType.HOLDING if fc == 3 else RegisterType.INPUT
        self.reads += 1
        zero = self.zero_next
        for e in self.effects():
            if e.kind is EffectKind.ZERO_GLITCH and (self.reads - 1) % (e.every_n or 1) == 0:
                zero = True
        self.zero_next = False
        end = address + count - 1
        for i in range(address - start_address, end - start_address + 1):
            registers[i] = 0
        if zero:
            self.site.count("zero_reads")
            return None
        for reg in self.profile.registers:
            if reg.type is rtype and reg.address <= end and reg.end >= address:
                for k, word in enumerate(self.words(reg, t)):
                    a = reg.address + k
                    if address <= a <= end:
                        registers[a - start_address] = word
        return None


class SimulatedSite:
    """The site's servers, its physics, its clock and its control interface, on one asyncio loop."""

    def __init__(self, cfg: SimSiteConfig, *, clock: SimClock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SimClock.from_config(cfg.clock)
        self.scenarios: dict[str, Scenario] = load_scenarios(cfg.scenario_dirs())
        self.model = SiteModel(cfg.seed, cfg.physics, cfg.clock.timezone, self.scenarios, cfg.scenarios)
        self.devices: dict[str, DeviceRuntime] = {}
        self.by_unit: dict[tuple[str, int], DeviceRuntime] = {}
        for srv, dev in cfg.devices():
            prof = dev.resolved_profile
            try:
                self.model.add_device(dev.name, prof.kind, dev.role, dev.params, dev.scenarios)
            except PhysicsError as exc:
                raise SimError(str(exc)) from None
            rt = DeviceRuntime(dev, srv.name, prof, self)
            self.devices[dev.name] = rt
            self.by_unit[(srv.name, dev.unit_id)] = rt
        self.model.start(self.clock.now())
        self._apply_counter_effects(self.clock.now(), {d: d.cfg.scenarios for d in self.devices.values()})
        self.servers: dict[str, object] = {}
        self.ports: dict[str, int | None] = {}
        self.counters: dict[str, int] = {}
        self._control = None
        self.control_port: int | None = None
        self._lock = threading.RLock()

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        from greenmine.simulators import server as mb

        try:
            for srv in self.cfg.servers:
                await self._start_server(srv, mb)
            if self.cfg.control_port is not None:
                from greenmine.simulators.control import start_control

                self._control, self.control_port = await start_control(self, self.cfg.control_port)
        except BaseException:
            await self.stop()
            raise

    async def _start_server(self, srv: SimServerConfig, mb) -> None:
        devs = [self.by_unit[(srv.name, d.unit_id)] for d in srv.devices]
        simdevs = [mb.build_simdevice(d.cfg.unit_id, d.spans, d.action) for d in devs]
        hooks = {d.cfg.unit_id: d.link_hook for d in devs}
        server, port = await mb.start_server(
            transport=srv.transport.value, host=srv.host, port=srv.port, serial_port=srv.serial_port,
            devices=simdevs, link_hooks=hooks, baudrate=srv.baudrate, bytesize=srv.bytesize,
            parity=srv.parity, stopbits=srv.stopbits, emulate_baud=srv.emulate_baud,
        )
        self.servers[srv.name] = server
        self.ports[srv.name] = port

    async def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            await self._control.wait_closed()
            self._control = None
        for name, server in list(self.servers.items()):
            await server.stop()  # type: ignore[attr-defined]
            del self.servers[name]

    # ---- control ---------------------------------------------------------------------------
    def _device(self, name: str) -> DeviceRuntime:
        rt = self.devices.get(name)
        if rt is None:
            raise SimError(f'no device "{name}" (devices: {", ".join(self.devices)})')
        return rt

    def set_clock(self, when: datetime | float) -> None:
        """Move the simulated clock. Forward, the meters count through the skipped time;
        backward, every totalizer keeps its current value (a real register never runs back).

        The totals are re-anchored here, at the new time, so no Modbus request
        afterwards pays for integrating across the jump.
        """
        with self._lock:
            before = self.clock.now()
            self.clock.set(when)
            after = self.clock.now()
            self.model.reanchor(max(before, after))
            for dev in self.model.devices.values():
                for tot in dev.totals.values():
                    tot.anchor_t = after
            self.model.rebase(after)

    def set_scenarios(self, names: list[str], device: str | None = None) -> None:
        """Replace the site's scenario list, or one device's. Totals stay continuous."""
        with self._lock:
            problems = check_names(names, self.scenarios, device_level=device is not None)
            if problems:
                raise SimError("; ".join(problems))
            t = self.clock.now()
            self.model.reanchor(t)
            if device is None:
                self.model.site_scenarios = list(names)
            else:
                rt = self._device(device)
                new = [n for n in names if n not in self.model.devices[device].scenarios]
                self.model.devices[device].scenarios = list(names)
                self._apply_counter_effects(t, {rt: new})
                rt.exc_index = 0
                rt.reads = rt.requests = 0
                if any(e.kind is EffectKind.ZERO_GLITCH for n in new for e in self.scenarios[n].effects):
                    rt.zero_next = True
                if any(e.kind is EffectKind.FLAP for n in new for e in self.scenarios[n].effects):
                    srv = self.servers.get(rt.server)
                    if srv is not None:
                        loop = getattr(srv, "loop", None)
                        if loop is not None:
                            loop.call_soon_threadsafe(srv.drop_connections)  # type: ignore[attr-defined]
            self.model.after_change()
            log.info("scenarios of %s: %s", device or "site", ", ".join(names) or "none")

    def inject(self, device: str, scenario: str) -> None:
        """Add one scenario (usually a fault) to a device."""
        current = self.model.devices[self._device(device).name].scenarios
        self.set_scenarios([*current, scenario] if scenario not in current else current, device)

    def clear(self, device: str) -> None:
        """Back to the device's configured scenarios."""
        self.set_scenarios(list(self._device(device).cfg.scenarios), device)

    def _apply_counter_effects(self, t: float, new: dict[DeviceRuntime, list[str]]) -> None:
        for rt, names in new.items():
            dev = self.model.devices[rt.name]
            for name in names:
                for e in self.scenarios[name].effects:
                    if e.kind is EffectKind.METER_REPLACED:
                        for metric in dev.totals:
                            tot = dev.totals[metric]
                            tot.shift = float(e.value) - self.model.true_total(dev, metric, t)  # type: ignore[arg-type]
                    elif e.kind is EffectKind.COUNTER_ROLLOVER:
                        # The narrowest counter is the one that wraps in practice (MagFlux: the U32 litres, not the U64 mm3).
                        counters = [r for r in rt.profile.registers if r.counter_width_bits]
                        reg = min(counters, key=lambda r: r.counter_width_bits or 64) if counters else None
                        if reg is None or not dev.totals:
                            raise SimError(f'device "{rt.name}": counter_rollover needs a register with counter_width_bits')
                        metric = next(iter(dev.totals))
                        target = ((1 << reg.counter_width_bits) - (e.headroom_raw or 0)) * reg.scale + reg.offset
                        dev.totals[metric].shift = target - self.model.true_total(dev, metric, t)

    # ---- inspection ------------------------------------------------------------------------
    def expected_value(self, device: str, register: str, t: float | None = None):
        rt = self._device(device)
        return rt.expected_value(rt.register(register), self.clock.now() if t is None else t)

    def expected_words(self, device: str, register: str, t: float | None = None) -> list[int]:
        rt = self._device(device)
        return rt.words(rt.register(register), self.clock.now() if t is None else t)

    def state(self) -> dict:
        now = self.clock.now()
        devices = {}
        for name, rt in self.devices.items():
            values = {}
            for reg in rt.profile.registers:
                if reg.data_type is not DataType.STRING:
                    v = rt.expected_value(reg, now)
                    values[reg.name] = round(v, 6) if isinstance(v, float) else v
            devices[name] = {
                "server": rt.server,
                "unit_id": rt.cfg.unit_id,
                "profile": rt.cfg.profile,
                "role": rt.cfg.role,
                "scenarios": self.model.devices[name].scenarios,
                "values": values,
            }
        return {
            "site": self.cfg.site,
            "clock": self.clock.state(),
            "scenarios": self.model.site_scenarios,
            "ports": self.ports,
            "counters": self.counters,
            "devices": devices,
        }

    def table(self) -> list[dict]:
        """One row per device: where it is served, its unit id and its profile (for `sim run`)."""
        rows = []
        for srv in self.cfg.servers:
            where = srv.serial_port if srv.transport.value == "rtu" else f"{srv.host}:{self.ports.get(srv.name, srv.port)}"
            for d in srv.devices:
                rows.append(
                    {"device": d.name, "transport": srv.transport.value, "address": where, "unit_id": d.unit_id,
                     "profile": d.profile, "role": d.role or ""}
                )
        return rows


class SiteRunner:
    """Runs a SimulatedSite on its own asyncio loop in a background thread (tests, the demo)."""

    def __init__(self, cfg: SimSiteConfig, *, start: datetime | float | None = None, speed: float | None = None) -> None:
        clock = SimClock.from_config(cfg.clock, speed)
        if start is not None:
            clock.set(start)
        self.site = SimulatedSite(cfg, clock=clock)
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> SiteRunner:
        ready = threading.Event()
        error: list[BaseException] = []

        async def main() -> None:
            self._stopped = asyncio.Event()
            try:
                await self.site.start()
            except BaseException as exc:  # reported to the starting thread
                error.append(exc)
                ready.set()
                return
            ready.set()
            await self._stopped.wait()
            await self.site.stop()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(main())
                # Cancel whatever pymodbus left behind (reconnect tasks, late replies).
                pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name=f"sim-{self.site.cfg.site}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if error:
            self._thread.join(10)
            raise error[0]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(15)
        self._thread = None

    def __enter__(self) -> SiteRunner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Thin, thread-safe pass-throughs.
    def port(self, server: str) -> int:
        port = self.site.ports.get(server)
        if port is None:
            raise SimError(f'server "{server}" has no TCP port')
        return port

    @property
    def control_port(self) -> int | None:
        return self.site.control_port

    def set_clock(self, when: datetime | float) -> None:
        """Move the simulated clock. Forward, the meters count through the skipped time;
        backward, every totalizer keeps its current value (a real register never runs back)."""
        with self._lock:
            before = self.clock.now()
            pinned = self.model.reanchor(before)
            self.clock.set(when)
            after = self.clock.now()
            if after < before:
                for dev, totals in pinned.items():
                    for metric, value in totals.items():
                        tot = self.model.devices[dev].totals[metric]
                        tot.anchor_t, tot.anchor_total = after, value

    def set_scenarios(self, names: list[str], device: str | None = None) -> None:
        self.site.set_scenarios(names, device)

    def inject(self, device: str, scenario: str) -> None:
        self.site.inject(device, scenario)

    def clear(self, device: str) -> None:
        self.site.clear(device)

    def expected_value(self, device: str, register: str, t: float | None = None):
        return self.site.expected_value(device, register, t)

    def expected_words(self, device: str, register: str, t: float | None = None) -> list[int]:
        return self.site.expected_words(device, register, t)

    def state(self) -> dict:
        return self.site.state()
