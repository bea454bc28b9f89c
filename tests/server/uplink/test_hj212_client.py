"""HJ 212 transmission client against a platform simulator on loopback."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.server.uplink.conftest import FakeTime, PlatformSim, point_config, run_async, wait_until

from greenmine.server.uplink.hj212.client import Hj212Client
from greenmine.server.uplink.hj212.codec import Packet
from greenmine.server.uplink.hj212.messages import (
    DataFlag,
    NoiseDayNight,
    PeriodKind,
    PeriodRecord,
    PeriodValue,
    RealtimeValue,
)
from greenmine.server.uplink.hj212.queue import PacketQueue

MN = "010000A8900016F000169DC0"
T0 = datetime(2026, 5, 1, 2, 0, 30, tzinfo=timezone.utc)  # 10:00:30 in Asia/Shanghai


class Latest:
    """A RealtimeSource: fixed latest values."""

    def __init__(self, values: dict[str, RealtimeValue]) -> None:
        self.values = values

    def latest(self) -> dict[str, RealtimeValue]:
        return self.values


class Store:
    """A HistoryProvider: one record per period in the window, values by kind."""

    def __init__(self) -> None:
        self.calls: list[tuple[PeriodKind, datetime, datetime, int]] = []

    async def periods(self, kind: PeriodKind, begin: datetime, end: datetime, min_interval_min: int):
        self.calls.append((kind, begin, end, min_interval_min))
        step = {PeriodKind.MINUTE: timedelta(minutes=min_interval_min), PeriodKind.HOUR: timedelta(hours=1),
                PeriodKind.DAY: timedelta(days=1)}[kind]
        out = []
        t = begin
        while t <= end:
            noise = (NoiseDayNight(PeriodValue(DataFlag.N, avg=58.24), PeriodValue(DataFlag.M, avg=47.91))
                     if kind is PeriodKind.DAY else PeriodValue(DataFlag.N, avg=56.04, min=50.0, max=61.0))
            out.append(PeriodRecord(start=t, values={
                "dust_tsp_mgm3": PeriodValue(DataFlag.N, avg=0.1234, min=0.05, max=0.31),
                "noise_laeq_db": noise,
            }))
            t += step
        return out


def _request(cn: str, cp: tuple = (), qn: str = "20260501100100001") -> Packet:
    return Packet(qn=qn, st="39", cn=cn, pw="100000", mn=MN, flag=5, cp=cp)


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_realtime_upload_is_acknowledged(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        time = FakeTime(T0)
        source = Latest({
            "dust_tsp_mgm3": RealtimeValue(0.12345, "good", "dust-1", T0),
            "dust_pm10_mgm3": RealtimeValue(0.2, "out_of_range", "dust-1", T0),
            "noise_laeq_db": RealtimeValue(55.25, "good", "noise-1", T0),
            "air_temp_c": RealtimeValue(None, "bad", "weather-1", T0),
        })
        client = Hj212Client(point_config(tmp_path, sim.port), realtime=source, clock=time.now, sleep=time.sleep)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.metrics.acked == 1 and client.metrics.queued == 0, what="2011 acked")
            (rt,) = sim.of_cn("2011")
            assert rt.flag == 5 and rt.st == "39" and rt.mn == MN
            assert rt.cp[0] == (("DataTime", "20260501100030"),)
            cp = rt.cp_values()
            assert cp["a34001-Rtd"] == "0.123" and cp["a34001-Flag"] == "N"
            assert cp["a34002-Flag"] == "T"
            assert cp["LA-Rtd"] == "55.3" and cp["LA-Flag"] == "N"
            assert "a01001-Rtd" not in cp and cp["a01001-Flag"] == "B"
            assert client.metrics.sent == 1 and client.metrics.retried == 0
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_minute_hourly_daily_uploads_are_acknowledged(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        time = FakeTime(T0)
        store = Store()
        client = Hj212Client(point_config(tmp_path, sim.port), history=store, clock=time.now,
                             sleep=time.sleep, period_delay_s=0)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.metrics.acked == 3, what="3 period uploads acked")
            assert [p.cn for p in sim.received] == ["2051", "2061", "2031"]
            minute, hour, day = sim.received
            assert minute.cp_values()["DataTime"] == "20260501095000"  # period start, local
            assert hour.cp_values()["DataTime"] == "20260501090000"
            assert day.cp_values()["DataTime"] == "20260430000000"
            m = minute.cp_values()
            assert (m["a34001-Avg"], m["a34001-Min"], m["a34001-Max"], m["a34001-Flag"]) == ("0.123", "0.050", "0.310", "N")
            assert (m["Leq-Data"], m["Leq-Flag"]) == ("56.0", "N")
            d = day.cp_values()
            assert (d["Ld-DayData"], d["Ld-Flag"], d["Ln-NightData"], d["Ln-Flag"]) == ("58.2", "N", "47.9", "M")
            assert all(p.flag == 5 for p in sim.received)
            assert client.metrics.queued == 0
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_silent_platform_gets_exactly_max_tries_then_packet_stays_queued(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim(ack=lambda p: False).start()
        # A long reconnect delay keeps the client off the platform after the failure.
        point = point_config(tmp_path, sim.port, reconnect_initial_s=30, reconnect_max_s=30)
        client = Hj212Client(point, schedule_periods=False)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.connected, what="connected")
            qn = client.next_qn()
            client.submit(_upload_packet(qn))
            await wait_until(lambda: client.metrics.failed == 1, what="delivery failure")
            await wait_until(lambda: sim.closed_connections == 1, what="link dropped")
            assert [p.qn for p in sim.received] == [qn, qn, qn]
            assert (client.metrics.sent, client.metrics.retried, client.metrics.acked) == (3, 2, 0)
        finally:
            await _stop(task)
            await sim.stop()
        with PacketQueue(point.queue_file) as queue:
            assert [m.qn for m in queue.all()] == [qn]

    run_async(main())


def _upload_packet(qn: str, value: str = "0.100") -> Packet:
    return Packet(qn=qn, st="39", cn="2061", pw="100000", mn=MN, flag=5,
                  cp=((("DataTime", "20260501090000"),), (("a34001-Avg", value), ("a34001-Flag", "N"))))


def test_platform_down_then_up_receives_everything_in_order_once(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        port = sim.port
        await sim.stop()  # the platform is down
        point = point_config(tmp_path, port)
        sent: list[str] = []

        # First run of the server: platform unreachable, uploads pile up.
        client = Hj212Client(point, schedule_periods=False)
        task = asyncio.create_task(client.run())
        await wait_until(lambda: client.metrics.queued == 0 and client._queue is not None, what="queue open")
        for i in range(4):
            qn = client.next_qn()
            client.submit(_upload_packet(qn, f"0.{i}00"))
            sent.append(qn)
        await wait_until(lambda: client.metrics.queued == 4, what="4 queued")
        await _stop(task)

        # Restart while still down, queue one more, then the platform comes back.
        client = Hj212Client(point, schedule_periods=False)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.metrics.queued == 4, what="queue reloaded")
            qn = client.next_qn()
            client.submit(_upload_packet(qn, "0.400"))
            sent.append(qn)
            sim = await PlatformSim().start(port)
            await wait_until(lambda: client.metrics.queued == 0, what="backlog delivered")
            assert [p.qn for p in sim.received] == sent
            assert [p.cp_values()["a34001-Avg"] for p in sim.received] == ["0.000", "0.100", "0.200", "0.300", "0.400"]
            assert client.metrics.acked == 5 and client.metrics.retried == 0
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_split_message_is_delivered_packet_by_packet(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        client = Hj212Client(point_config(tmp_path, sim.port), schedule_periods=False)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.connected, what="connected")
            qn = client.next_qn()
            items = tuple(((f"a{30000 + i}-Avg", "1.000"), (f"a{30000 + i}-Flag", "N")) for i in range(80))
            big = Packet(qn=qn, st="39", cn="2061", pw="100000", mn=MN, flag=5,
                         cp=((("DataTime", "20260501090000"),), *items))
            client.submit(big)
            await wait_until(lambda: client.metrics.queued == 0, what="split message delivered")
            assert len(sim.received) > 1
            assert [p.pno for p in sim.received] == list(range(1, len(sim.received) + 1))
            assert {p.pnum for p in sim.received} == {len(sim.received)}
            assert client.metrics.acked == len(sim.received)
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_history_request_gets_9011_data_9012(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        store = Store()
        client = Hj212Client(point_config(tmp_path, sim.port), history=store, schedule_periods=False)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: sim.connections == 1 and client.connected, what="connected")
            req = _request("2061", ((("BeginTime", "20260501080000"), ("EndTime", "20260501100000")),))
            await sim.send(req)
            await wait_until(lambda: sim.of_cn("9012"), what="9012")
            assert [p.cn for p in sim.received] == ["9011", "2061", "2061", "2061", "9012"]
            assert all(p.qn == req.qn for p in sim.received)
            assert sim.received[0].cp_values() == {"QnRtn": "1"}
            assert sim.received[-1].cp_values() == {"ExeRtn": "1"}
            assert [p.cp_values()["DataTime"] for p in sim.received[1:4]] == [
                "20260501080000", "20260501090000", "20260501100000"]
            assert all(p.flag == 4 for p in sim.received)
            (kind, begin, end, _), = store.calls
            assert kind is PeriodKind.HOUR and begin.hour == 8 and end.hour == 10

            # a reversed window is rejected up front
            await sim.send(_request("2051", ((("BeginTime", "20260501100000"), ("EndTime", "20260501080000")),),
                                    qn="20260501100100002"))
            await wait_until(lambda: len(sim.received) == 6, what="rejection")
            assert sim.received[-1].cn == "9011" and sim.received[-1].cp_values() == {"QnRtn": "2"}
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_set_interval_commands_change_the_sending_interval(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        time = FakeTime(T0)
        source = Latest({"dust_tsp_mgm3": RealtimeValue(0.1, "good", "dust-1", None)})
        point = point_config(tmp_path, sim.port, rtd_interval_s=30)
        client = Hj212Client(point, realtime=source, clock=time.now, sleep=time.sleep)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: time.sleeps == [30] and client.metrics.acked == 1, what="first 2011")
            await sim.send(_request("1062", ((("RtdInterval", "120"),),)))
            await wait_until(lambda: len(sim.of_cn("9012")) == 1, what="1062 done")
            assert client.rtd_interval_s == 120
            await wait_until(lambda: time.sleeps[-1] == 120, what="loop re-armed with 120 s")
            time.advance(60)  # at the old interval this would send; it must not
            await wait_until(lambda: time.sleeps[-1] == 60, what="remaining 60 s")
            assert len(sim.of_cn("2011")) == 1
            time.advance(60)
            await wait_until(lambda: len(sim.of_cn("2011")) == 2, what="second 2011")
            assert sim.of_cn("2011")[1].cp_values()["DataTime"] == "20260501100230"

            await sim.send(_request("1061", qn="20260501100100002"))
            await wait_until(lambda: len(sim.of_cn("9012")) == 2, what="1061 done")
            assert sim.of_cn("1061")[0].cp_values() == {"RtdInterval": "120"}

            await sim.send(_request("1064", ((("MinInterval", "5"),),), qn="20260501100100003"))
            await wait_until(lambda: len(sim.of_cn("9012")) == 3, what="1064 done")
            assert client.min_interval_min == 5
            await sim.send(_request("1063", qn="20260501100100004"))
            await wait_until(lambda: len(sim.of_cn("9012")) == 4, what="1063 done")
            assert sim.of_cn("1063")[0].cp_values() == {"MinInterval": "5"}

            # out-of-range settings are rejected and change nothing
            await sim.send(_request("1062", ((("RtdInterval", "10"),),), qn="20260501100100005"))
            await sim.send(_request("1064", ((("MinInterval", "7"),),), qn="20260501100100006"))
            await wait_until(lambda: len([p for p in sim.of_cn("9011") if p.cp_values()["QnRtn"] == "2"]) == 2,
                             what="rejections")
            assert (client.rtd_interval_s, client.min_interval_min) == (120, 5)
        finally:
            await _stop(task)
            await sim.stop()

        # The platform's settings survive a restart (same config).
        restarted = Hj212Client(point)
        restarted._queue = PacketQueue(point.queue_file)
        restarted._load_settings()
        assert (restarted.rtd_interval_s, restarted.min_interval_min) == (120, 5)
        restarted._queue.close()

    run_async(main())


def test_time_and_realtime_commands(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        time = FakeTime(T0)
        source = Latest({"dust_tsp_mgm3": RealtimeValue(0.1, "good", "dust-1", None)})
        client = Hj212Client(point_config(tmp_path, sim.port), realtime=source, clock=time.now, sleep=time.sleep)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: len(sim.of_cn("2011")) == 1 and client.metrics.acked == 1, what="first 2011")
            await sim.send(_request("1011"))
            await wait_until(lambda: sim.of_cn("9012"), what="1011 done")
            assert sim.of_cn("1011")[0].cp_values() == {"SystemTime": "20260501100030"}

            await sim.send(_request("1012", ((("SystemTime", "20260501100130"),),), qn="20260501100100002"))
            await wait_until(lambda: len(sim.of_cn("9012")) == 2, what="1012 done")
            assert client.clock_offset == timedelta(seconds=60)
            await sim.send(_request("1011", qn="20260501100100003"))
            await wait_until(lambda: len(sim.of_cn("9012")) == 3, what="1011 again")
            assert sim.of_cn("1011")[1].cp_values() == {"SystemTime": "20260501100130"}

            await sim.send(_request("2012", qn="20260501100100004"))
            await wait_until(lambda: sim.of_cn("9013"), what="2012 notification reply")
            assert sim.of_cn("9013")[0].qn == "20260501100100004"
            assert not client.realtime_enabled
            time.advance(30)
            await wait_until(lambda: time.sleeps[-1] == 3600, what="real time paused")
            assert len(sim.of_cn("2011")) == 1

            await sim.send(_request("2011", qn="20260501100100005"))
            await wait_until(lambda: len(sim.of_cn("2011")) == 2, what="real time resumed")
            assert [p.cp_values()["QnRtn"] for p in sim.of_cn("9011")][-1] == "1"

            # wrong password, unknown command
            bad = Packet(qn="20260501100100006", st="39", cn="1061", pw="999999", mn=MN, flag=5)
            await sim.send(bad)
            await sim.send(_request("8013", qn="20260501100100007"))
            await wait_until(lambda: {p.qn for p in sim.of_cn("9011")} >= {bad.qn, "20260501100100007"}, what="errors")
            rtn = {p.qn: p.cp_values()["QnRtn"] for p in sim.of_cn("9011")}
            assert rtn[bad.qn] == "3" and rtn["20260501100100007"] == "8"
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())
