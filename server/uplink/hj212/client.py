"""HJ 212 transmission: one persistent TCP link from one monitoring point to its platform.

`Hj212Client` owns, for one `PointConfig`:
- the connection, reconnecting with capped exponential back-off (greenmine.backoff,
  with jitter, so the points of one server do not reconnect to a platform in step);
- delivery: every upload (Flag=5) waits for the platform's 9014 with the same
  QN, is resent on timeout up to `max_tries` times, and leaves the durable
  `PacketQueue` only once acknowledged; a failed delivery drops the link
  (a platform that does not answer is indistinguishable from a half-open TCP
  connection) and the queue is resent oldest-first on the next link;
- the real-time (2011) loop at RtdInterval and the minute/hour/day
  (2051/2061/2031) schedule, fed by two small protocols the server
  implements (`RealtimeSource`, `HistoryProvider`);
- answers to platform commands: 1011/1012 time, 1061/1062 RtdInterval,
  1063/1064 MinInterval, 2011/2012 real-time on/off, 2051/2061/2031 history;
- per-point counters (`UplinkMetrics`).

It knows nothing about where data is stored; the codec and message builders
do the HJ 212 syntax and meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol, TypeVar

from greenmine.server.uplink.hj212.codec import (
    FrameError,
    Packet,
    decode_frame,
    encode_packet,
    format_data_time,
    format_qn,
    parse_data_time,
    split_packet,
)
from greenmine.server.uplink.hj212.config import MIN_INTERVALS_MIN, PointConfig
from greenmine.server.uplink.hj212.intake import FrameIntake
from greenmine.server.uplink.hj212.messages import (
    ExeRtn,
    PeriodKind,
    PeriodRecord,
    QnRtn,
    RealtimeValue,
    answer_packet,
    execution_result,
    notification_reply,
    period_length,
    period_packet,
    period_start,
    realtime_packet,
    request_reply,
)
from greenmine.server.uplink.hj212.queue import PacketQueue
from greenmine.backoff import Backoff
from greenmine.latch import Latch
from greenmine.sqlite import MovedAside

log = logging.getLogger(__name__)


def _no_pw(frame: bytes) -> bytes:
    """A frame's text for a log line, with the access password (PW=) masked: secrets are never logged."""
    return re.sub(rb"PW=[^;&]*", b"PW=***", frame)

T = TypeVar("T")

# Bytes read from the platform at a time; frames are cut and bounded by `FrameIntake`.
_READ_CHUNK_BYTES = 65_536


class RealtimeSource(Protocol):
    """Latest value of each greenmine metric for one point (sync or async); None: nothing to send."""

    def latest(self) -> Mapping[str, RealtimeValue] | None | Awaitable[Mapping[str, RealtimeValue] | None]: ...


class HistoryProvider(Protocol):
    """Period records whose start lies in [begin, end] (sync or async).

    Used both for the scheduled minute/hour/day uploads and for the
    platform's history requests. Minute periods are `min_interval_min` long.
    Noise values are energy averages; daily noise is a `NoiseDayNight`.
    """

    def periods(
        self, kind: PeriodKind, begin: datetime, end: datetime, min_interval_min: int
    ) -> Iterable[PeriodRecord] | Awaitable[Iterable[PeriodRecord]]: ...


@dataclass
class UplinkMetrics:
    """Counters for one point; the server exports them.

    sent: frames written (every try); acked: frames acknowledged by 9014;
    retried: resends after a reply timeout; failed: packets given up after
    max_tries (they stay queued); dropped: messages pushed out of a full
    queue; expired: real-time messages too old to send; connects: links made.
    platform_dropped: frames from the platform dropped unanswered, by reason
    (`oversize` and `rate`, before parsing; `bad_frame`, failed to decode);
    refused: platform commands answered QnRtn=2 (a parameter out of bounds).
    """

    sent: int = 0
    acked: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0
    expired: int = 0
    connects: int = 0
    queued: int = 0
    platform_dropped: dict[str, int] = field(default_factory=lambda: {"oversize": 0, "rate": 0, "bad_frame": 0})
    refused: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _DeliveryFailed(Exception):
    """A packet got no 9014 after max_tries: end this link and reconnect later."""


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


async def _resolve(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


class Hj212Client:
    """Uplink of one monitoring point. `await run()` until cancelled.

    `clock` returns an aware "now"; `sleep` is used for the real-time and
    period schedules. Both are injectable so tests drive time instead of
    waiting. Reply timeouts use real time (`reply_timeout_s`).
    """

    def __init__(
        self,
        point: PointConfig,
        *,
        realtime: RealtimeSource | None = None,
        history: HistoryProvider | None = None,
        queue: PacketQueue | None = None,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        period_delay_s: float = 60.0,
        schedule_periods: bool = True,
        on_moved: Callable[[MovedAside], None] | None = None,
    ) -> None:
        self.point = point
        self.metrics = UplinkMetrics()
        self._realtime_source = realtime
        self._history = history
        self._queue = queue
        self._own_queue = queue is None
        self._clock = clock
        self._sleep = sleep
        self._period_delay_s = period_delay_s
        self._schedule_periods = schedule_periods
        self._on_moved = on_moved
        self._rtd_interval_s = point.rtd_interval_s
        self._min_interval_min = point.min_interval_min
        self._realtime_enabled = point.realtime_enabled
        self._clock_offset = timedelta(0)
        self._last_qn = ""
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._wakeup = asyncio.Event()
        self._settings_changed = asyncio.Event()
        self._connected = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._link = Latch(log)

    # ------------------------------------------------------------------ state

    @property
    def rtd_interval_s(self) -> int:
        """Current real-time interval (config, or as last set by the platform with 1062)."""
        return self._rtd_interval_s

    @property
    def min_interval_min(self) -> int:
        """Current minute-data period (config, or as last set by the platform with 1064)."""
        return self._min_interval_min

    @property
    def realtime_enabled(self) -> bool:
        return self._realtime_enabled

    @property
    def clock_offset(self) -> timedelta:
        """Platform time minus server time, as set by 1012 (applied to QN and SystemTime only)."""
        return self._clock_offset

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def now(self) -> datetime:
        """Local time of the point, with the platform's clock offset (for QN, SystemTime)."""
        return (self._clock() + self._clock_offset).astimezone(self.point.tz)

    def next_qn(self) -> str:
        """A QN unique for this point: local time in ms, 1 ms after the last one if the clock has not moved."""
        qn = format_qn(self.now())
        if qn <= self._last_qn:
            last = datetime.strptime(self._last_qn[:14], "%Y%m%d%H%M%S") + timedelta(milliseconds=int(self._last_qn[14:]))
            qn = format_qn(last + timedelta(milliseconds=1))
        self._last_qn = qn
        return qn

    def _reset_state(self) -> None:
        """What a platform set in memory (clock offset, real-time on/off) is forgotten at each run:
        a restarted client starts from its config and the bounded settings saved in its queue."""
        self._clock_offset = timedelta(0)
        self._last_qn = ""
        self._rtd_interval_s = self.point.rtd_interval_s
        self._min_interval_min = self.point.min_interval_min
        self._realtime_enabled = self.point.realtime_enabled

    def set_rtd_interval(self, seconds: int) -> None:
        if not 30 <= seconds <= 3600:
            raise ValueError(f"RtdInterval {seconds} is not 30..3600 s")
        self._rtd_interval_s = seconds
        self._save_setting("rtd_interval_s", seconds, self.point.rtd_interval_s)
        self._settings_changed.set()

    def set_min_interval(self, minutes: int) -> None:
        if minutes not in MIN_INTERVALS_MIN:
            raise ValueError(f"MinInterval {minutes} is not one of {MIN_INTERVALS_MIN}")
        self._min_interval_min = minutes
        self._save_setting("min_interval_min", minutes, self.point.min_interval_min)
        self._settings_changed.set()

    def set_realtime_enabled(self, enabled: bool) -> None:
        self._realtime_enabled = enabled
        self._settings_changed.set()

    def _save_setting(self, key: str, value: int, config_value: int) -> None:
        # Kept with the config value it overrode: if the operator later edits
        # the config, the new config wins over an old platform setting.
        if self._queue is not None:
            self._queue.set_state(key, {"value": value, "config": config_value})

    def _load_settings(self) -> None:
        assert self._queue is not None
        for key, config_value, setter in (
            ("rtd_interval_s", self.point.rtd_interval_s, "_rtd_interval_s"),
            ("min_interval_min", self.point.min_interval_min, "_min_interval_min"),
        ):
            saved = self._queue.get_state(key)
            if isinstance(saved, dict) and saved.get("config") == config_value:
                value = saved.get("value")
                ok = isinstance(value, int) and (
                    30 <= value <= 3600 if key == "rtd_interval_s" else value in MIN_INTERVALS_MIN)
                if ok:
                    setattr(self, setter, value)
                else:  # written by something else; the config value stands
                    log.warning("hj212 %s: ignoring saved %s %r (out of bounds)", self.point.name, key, value)

    # ------------------------------------------------------------------ queueing

    def submit(self, packet: Packet, *, dedup_key: str | None = None, expires_in_s: float | None = None) -> bool:
        """Queue an upload durably (split if needed) and wake the sender.

        Returns False if `dedup_key` was already queued. Requires `run()` to
        have opened the queue, or a queue passed in.
        """
        if self._queue is None:
            raise RuntimeError("the queue is not open: pass queue= or call run() first")
        if packet.qn is None:
            raise ValueError("an upload needs a QN to match its 9014")
        frames = [encode_packet(p) for p in split_packet(packet)]
        now = self._clock().timestamp()
        stored = self._queue.put(
            packet.qn, packet.cn, frames, now=now,
            expires_at=None if expires_in_s is None else now + expires_in_s,
            dedup_key=dedup_key,
        )
        self._sync_queue_metrics()
        self._wakeup.set()
        return stored

    def submit_period(self, kind: PeriodKind, record: PeriodRecord) -> bool:
        """Build and queue one 2051/2061/2031 upload; the same period is queued once."""
        packet = period_packet(self.point, kind, record, qn=self.next_qn())
        key = f"{kind.cn}:{format_data_time(record.start.astimezone(self.point.tz))}"
        return self.submit(packet, dedup_key=key)

    def _sync_queue_metrics(self) -> None:
        if self._queue is not None:
            self.metrics.dropped = self._queue.dropped
            self.metrics.expired = self._queue.expired
            self.metrics.queued = len(self._queue)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Connect, deliver, answer and schedule until cancelled."""
        if self._queue is None:
            self._queue = PacketQueue(self.point.queue_file, max_messages=self.point.queue_max_packets,
                                      on_moved=self._on_moved)
        self._reset_state()
        self._load_settings()
        self._sync_queue_metrics()
        tasks = [asyncio.create_task(self._link_loop(), name=f"hj212-{self.point.name}-link")]
        if self._realtime_source is not None:
            tasks.append(asyncio.create_task(self._realtime_loop(), name=f"hj212-{self.point.name}-rtd"))
        if self._history is not None and self._schedule_periods:
            tasks.append(asyncio.create_task(self._period_loop(), name=f"hj212-{self.point.name}-periods"))
        try:
            # The loops only end by cancellation or a bug; surface the bug.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._own_queue and self._queue is not None:
                self._queue.close()
                self._queue = None

    async def _link_loop(self) -> None:
        reconnect = Backoff(self.point.reconnect_initial_s, self.point.reconnect_max_s)
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that races with the inner result (CPython
                # gh-86296), which would make this loop unstoppable.
                async with asyncio.timeout(self.point.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(self.point.host, self.point.port)
            except (OSError, TimeoutError) as exc:
                self._link.fail("hj212 %s: cannot connect to %s:%s: %s", self.point.name, self.point.host,
                                self.point.port, exc or "timeout")
                await asyncio.sleep(reconnect.next())
                continue
            self.metrics.connects += 1
            if not self._link.ok("hj212 %s: connected to %s:%s again", self.point.name, self.point.host, self.point.port):
                log.debug("hj212 %s: connected to %s:%s", self.point.name, self.point.host, self.point.port)
            acked_before = self.metrics.acked
            try:
                reason = await self._session(reader, writer)
            finally:
                self._connected.clear()
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()
            self._link.fail("hj212 %s: %s", self.point.name, reason)
            # A link that delivered something was healthy: start backing off
            # afresh. One that delivered nothing counts as another failure.
            if self.metrics.acked > acked_before:
                reconnect.reset()
            await asyncio.sleep(reconnect.next())

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Run one connection; return why it ended."""
        self._connected.set()
        commands: set[asyncio.Task[None]] = set()
        read_task = asyncio.create_task(self._read_loop(reader, writer, commands))
        send_task = asyncio.create_task(self._send_loop(writer))
        try:
            done, _ = await asyncio.wait({read_task, send_task}, return_when=asyncio.FIRST_COMPLETED)
            task = done.pop()
            exc = task.exception()
            if isinstance(exc, _DeliveryFailed):
                return str(exc)
            if isinstance(exc, (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)):
                return f"link lost: {exc!r}"
            if exc is not None:
                raise exc
            return "platform closed the connection"
        finally:
            for t in (read_task, send_task, *commands):
                t.cancel()
            await asyncio.gather(read_task, send_task, *commands, return_exceptions=True)
            for fut in self._waiters.values():
                fut.cancel()

    async def _write(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        async with self._write_lock:
            writer.write(frame)
            await writer.drain()

    async def _send_packet(self, writer: asyncio.StreamWriter, packet: Packet) -> None:
        """Send a reply or answer (no 9014 expected), split if needed."""
        for part in split_packet(packet):
            await self._write(writer, encode_packet(part))

    # ------------------------------------------------------------------ delivery

    async def _send_loop(self, writer: asyncio.StreamWriter) -> None:
        assert self._queue is not None
        while True:
            self._wakeup.clear()
            message = self._queue.oldest(now=self._clock().timestamp())
            self._sync_queue_metrics()
            if message is None:
                await self._wakeup.wait()
                continue
            for index in range(message.acked, len(message.frames)):
                await self._deliver(writer, message.qn, message.frames[index])
                if index + 1 < len(message.frames):
                    self._queue.mark_acked(message.id, index + 1)
            self._queue.remove(message.id)
            self._sync_queue_metrics()

    async def _deliver(self, writer: asyncio.StreamWriter, qn: str, frame: bytes) -> None:
        # Split packets share one QN and 9014 carries no PNO, so acks are
        # matched in order: one packet is outstanding at a time.
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[None] = loop.create_future()
        self._waiters[qn] = ack
        try:
            for attempt in range(1, self.point.max_tries + 1):
                if attempt > 1:
                    self.metrics.retried += 1
                await self._write(writer, frame)
                self.metrics.sent += 1
                try:
                    async with asyncio.timeout(self.point.reply_timeout_s):
                        await asyncio.shield(ack)
                except TimeoutError:
                    continue
                self.metrics.acked += 1
                return
        finally:
            self._waiters.pop(qn, None)
        self.metrics.failed += 1
        raise _DeliveryFailed(
            f"no 9014 for QN {qn} after {self.point.max_tries} tries of {self.point.reply_timeout_s} s; "
            "kept in the queue"
        )

    # ------------------------------------------------------------------ receiving

    async def _read_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, commands: set[asyncio.Task[None]]
    ) -> None:
        point = self.point
        intake = FrameIntake(max_frame_bytes=point.max_frame_bytes, max_frames_per_s=point.max_frames_per_s,
                             frame_burst=point.frame_burst, now=time.monotonic)
        flooding = Latch(log)
        dropped = self.metrics.platform_dropped
        while True:
            chunk = await reader.read(_READ_CHUNK_BYTES)
            if not chunk:
                if intake.partial.strip():
                    log.warning("hj212 %s: connection closed mid-frame: %r", point.name, _no_pw(intake.partial[:64]))
                return
            before = dict(intake.dropped)
            lines = intake.feed(chunk)
            for reason, n in intake.dropped.items():
                dropped[reason] += n - before[reason]
            if intake.dropped != before:
                flooding.fail("hj212 %s: dropping frames from the platform (%d oversize, %d over %g/s so far on this "
                              "link); the link stays up", point.name, intake.dropped["oversize"], intake.dropped["rate"],
                              point.max_frames_per_s, level=logging.WARNING)
            elif lines:
                flooding.ok("hj212 %s: platform frames within bounds again", point.name)
            for line in lines:
                self._on_line(line, writer, commands)

    def _on_line(self, line: bytes, writer: asyncio.StreamWriter, commands: set[asyncio.Task[None]]) -> None:
        try:
            packet = decode_frame(line)
        except FrameError as exc:
            self.metrics.platform_dropped["bad_frame"] += 1
            log.warning("hj212 %s: ignoring bad frame from platform: %s", self.point.name, exc)
            return
        if packet.cn == "9014":
            ack = self._waiters.get(packet.qn or "")
            if ack is not None and not ack.done():
                ack.set_result(None)
            else:
                log.debug("hj212 %s: 9014 for QN %s matches no pending upload", self.point.name, packet.qn)
            return
        if packet.cn in ("9011", "9012", "9013"):
            log.debug("hj212 %s: platform reply %s ignored", self.point.name, packet.cn)
            return
        # Commands run as their own tasks: a slow history query must not
        # stop this loop from reading the 9014s uploads are waiting for.
        task = asyncio.create_task(self._handle_command(packet, writer))
        commands.add(task)
        task.add_done_callback(commands.discard)

    async def _handle_command(self, request: Packet, writer: asyncio.StreamWriter) -> None:
        point = self.point

        async def reply(qn_rtn: QnRtn) -> None:
            await self._send_packet(writer, request_reply(request, point, qn_rtn))

        async def done(exe_rtn: ExeRtn) -> None:
            await self._send_packet(writer, execution_result(request, point, exe_rtn))

        if request.mn is not None and request.mn != point.mn:
            await reply(QnRtn.MN_ERROR)
            return
        if request.pw is not None and request.pw != point.pw:
            await reply(QnRtn.PW_ERROR)
            return
        cp = request.cp_values()
        cn = request.cn
        log.info("hj212 %s: platform command %s (%s) QN %s", point.name, cn, request.command_name, request.qn)
        try:
            if cn == "1011":
                await reply(QnRtn.READY)
                items = [(("SystemTime", format_data_time(self.now())),)]
                if "PolId" in cp:
                    items.insert(0, (("PolId", cp["PolId"]),))
                await self._send_packet(writer, answer_packet(request, point, items))
                await done(ExeRtn.SUCCESS)
            elif cn == "1012":
                target = parse_data_time(cp.get("SystemTime", "")).replace(tzinfo=point.tz)
                offset = target - self._clock()
                if abs(offset) > timedelta(seconds=point.max_clock_offset_s):
                    raise ValueError(f"SystemTime {cp['SystemTime']} is {offset} from the server's clock, "
                                     f"beyond max_clock_offset_s={point.max_clock_offset_s}")
                await reply(QnRtn.READY)
                # greenmine never steps the server clock (it should be on NTP);
                # it remembers the platform's idea of time for QN and SystemTime (until the client restarts).
                self._clock_offset = offset
                self._last_qn = ""  # a new time base: QNs follow it
                log.warning("hj212 %s: platform set time, offset now %s", point.name, self._clock_offset)
                await done(ExeRtn.SUCCESS)
            elif cn == "1061":
                await reply(QnRtn.READY)
                await self._send_packet(writer, answer_packet(request, point, [(("RtdInterval", str(self.rtd_interval_s)),)]))
                await done(ExeRtn.SUCCESS)
            elif cn == "1062":
                self.set_rtd_interval(_int_param(cp, "RtdInterval"))
                await reply(QnRtn.READY)
                await done(ExeRtn.SUCCESS)
            elif cn == "1063":
                await reply(QnRtn.READY)
                await self._send_packet(writer, answer_packet(request, point, [(("MinInterval", str(self.min_interval_min)),)]))
                await done(ExeRtn.SUCCESS)
            elif cn == "1064":
                self.set_min_interval(_int_param(cp, "MinInterval"))
                await reply(QnRtn.READY)
                await done(ExeRtn.SUCCESS)
            elif cn == "2011":
                # A continuous stream follows, so there is no 9012.
                await reply(QnRtn.READY)
                self.set_realtime_enabled(True)
            elif cn == "2012":
                self.set_realtime_enabled(False)
                await self._send_packet(writer, notification_reply(request, point))
            elif cn in ("2051", "2061", "2031"):
                await self._answer_history(request, cp, writer, reply, done)
            else:
                log.warning("hj212 %s: unsupported platform command CN=%s", point.name, cn)
                await reply(QnRtn.CN_ERROR)
        except (FrameError, ValueError, OverflowError) as exc:
            self.metrics.refused += 1
            log.warning("hj212 %s: refused command CN=%s QN %s: %s", point.name, cn, request.qn, exc)
            await reply(QnRtn.REJECTED)

    async def _answer_history(
        self,
        request: Packet,
        cp: Mapping[str, str],
        writer: asyncio.StreamWriter,
        reply: Callable[[QnRtn], Awaitable[None]],
        done: Callable[[ExeRtn], Awaitable[None]],
    ) -> None:
        """9011, then one period upload per record (request QN, no 9014 wanted), then 9012."""
        kind = PeriodKind(request.cn)
        tz = self.point.tz
        begin = parse_data_time(cp.get("BeginTime", "")).replace(tzinfo=tz)
        end = parse_data_time(cp.get("EndTime", "")).replace(tzinfo=tz)
        if end < begin:
            raise ValueError(f"EndTime {cp['EndTime']} is before BeginTime {cp['BeginTime']}")
        if end - begin > timedelta(hours=self.point.history_max_span_h):
            raise ValueError(f"window longer than history_max_span_h={self.point.history_max_span_h}")
        now = self._clock()
        if begin < now - timedelta(days=self.point.history_max_age_d):
            raise ValueError(f"BeginTime {cp['BeginTime']} is older than history_max_age_d={self.point.history_max_age_d}")
        if begin > now + timedelta(seconds=self.point.max_clock_offset_s):
            raise ValueError(f"BeginTime {cp['BeginTime']} is in the future")
        if self._history is None:
            raise ValueError("no history provider configured")
        await reply(QnRtn.READY)
        try:
            records = list(await _resolve(self._history.periods(kind, begin, end, self.min_interval_min)))
        except Exception:
            log.exception("hj212 %s: history provider failed for %s..%s", self.point.name, begin, end)
            await done(ExeRtn.FAILED)
            return
        records.sort(key=lambda r: r.start)
        for record in records:
            # The request's QN ties the data to the request; no 9014 is
            # expected for it, the 9012 closes the exchange.
            packet = period_packet(self.point, kind, record, qn=request.qn or self.next_qn(), reply_wanted=False)
            await self._send_packet(writer, packet)
        await done(ExeRtn.SUCCESS if records else ExeRtn.NO_DATA)

    # ------------------------------------------------------------------ schedules

    async def _sleep_or_change(self, seconds: float) -> None:
        """Sleep, but wake early if the platform changes an interval or toggles real time."""
        self._settings_changed.clear()
        sleeper = asyncio.ensure_future(self._sleep(max(seconds, 0.0)))
        changed = asyncio.ensure_future(self._settings_changed.wait())
        try:
            await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            changed.cancel()
            await asyncio.gather(sleeper, changed, return_exceptions=True)

    async def _realtime_loop(self) -> None:
        assert self._realtime_source is not None
        last_sent: datetime | None = None
        while True:
            now = self._clock()
            due = last_sent is None or (now - last_sent).total_seconds() >= self.rtd_interval_s
            if self._realtime_enabled and due:
                await self.send_realtime_now(now)
                last_sent = now
            if not self._realtime_enabled:
                wait = 3600.0  # until 2011 re-enables it
            elif last_sent is None:
                wait = 0.0
            else:
                wait = self.rtd_interval_s - (self._clock() - last_sent).total_seconds()
            await self._sleep_or_change(wait)

    async def send_realtime_now(self, now: datetime | None = None) -> str | None:
        """Queue one 2011 real-time upload from the source now; returns its QN, or None if
        the source had nothing to report (or failed, which is logged). The real-time loop
        calls it every RtdInterval; the server and tests may call it to send at once."""
        if self._realtime_source is None:
            raise RuntimeError("no real-time source configured")
        now = self._clock() if now is None else now
        try:
            values = await _resolve(self._realtime_source.latest())
        except Exception:
            log.exception("hj212 %s: real-time source failed", self.point.name)
            return None
        if values is None:
            return None
        packet = realtime_packet(self.point, values, now=now, qn=self.next_qn())
        self.submit(packet, expires_in_s=self.point.realtime_max_age_s)
        return packet.qn

    async def _period_loop(self) -> None:
        """Queue each complete minute/hour/day period once, `period_delay_s` after it ends
        (late readings get that long to arrive), catching up after a restart."""
        assert self._history is not None and self._queue is not None
        tz = self.point.tz
        while True:
            now = self._clock()
            next_due: datetime | None = None
            for kind in PeriodKind:
                length = period_length(kind, self.min_interval_min)
                latest = period_start(kind, now - timedelta(seconds=self._period_delay_s), tz, self.min_interval_min) - length
                key = f"last_period:{kind.cn}"
                saved = self._queue.get_state(key)
                first = latest
                if saved is not None:
                    first = max(
                        datetime.fromisoformat(saved) + length,
                        latest - timedelta(hours=self.point.history_max_span_h),
                    )
                if first <= latest:
                    try:
                        records = await _resolve(self._history.periods(kind, first, latest, self.min_interval_min))
                    except Exception:
                        log.exception("hj212 %s: history provider failed for %s", self.point.name, kind.name)
                        records = None
                    if records is not None:
                        for record in sorted(records, key=lambda r: r.start):
                            self.submit_period(kind, record)
                        self._queue.set_state(key, latest.isoformat())
                due = latest + 2 * length + timedelta(seconds=self._period_delay_s)
                next_due = due if next_due is None else min(next_due, due)
            assert next_due is not None
            await self._sleep_or_change((next_due - self._clock()).total_seconds())


def _int_param(cp: Mapping[str, str], key: str) -> int:
    text = cp.get(key)
    if text is None or not text.isdigit():
        raise ValueError(f"{key} {text!r} is not an integer")
    return int(text)
