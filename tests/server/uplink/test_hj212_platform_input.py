"""What a platform sends: field-style frames (13-digit QN), out-of-bounds commands, floods and oversize frames.

The field frames are written by hand here, with a CRC computed by `_crc` below, which is written from
the standard's description (HJ 212-2017 appendix: register FFFF; per byte: shift right 8, XOR the
byte; 8 times: shift right 1 and XOR A001 if the bit shifted out was 1), not taken from the codec.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.server.uplink.conftest import FakeTime, PlatformSim, point_config, run_async, wait_until

from greenmine.server.uplink.hj212.client import Hj212Client
from greenmine.server.uplink.hj212.codec import FrameError, decode_frame
from greenmine.server.uplink.hj212.intake import FrameIntake
from greenmine.server.uplink.hj212.messages import RealtimeValue

MN = "010000A8900016F000169DC0"
T0 = datetime(2026, 5, 1, 2, 0, 30, tzinfo=timezone.utc)  # 10:00:30 in Asia/Shanghai
QN13 = "1777600830123"  # epoch milliseconds, as field platforms send it


def _crc(data: bytes) -> int:
    reg = 0xFFFF
    for b in data:
        reg = (reg >> 8) ^ b
        for _ in range(8):
            out = reg & 0x0001
            reg = reg >> 1
            if out == 1:
                reg = reg ^ 0xA001
    return reg


def frame(segment: str) -> bytes:
    data = segment.encode("ascii")
    return b"##" + f"{len(data):04d}".encode() + data + f"{_crc(data):04X}".encode() + b"\r\n"


def test_crc_routine_matches_the_standard_example() -> None:
    seg = "QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
    assert _crc(seg.encode()) == 0x1C80


@pytest.mark.parametrize("cn", ["1011", "1012", "9011", "9012"])
def test_13_digit_qn_decodes_as_sent(cn: str) -> None:
    cp = {"1012": "SystemTime=20260501100130", "9011": "QnRtn=1", "9012": "ExeRtn=1"}.get(cn, "")
    packet = decode_frame(frame(f"QN={QN13};ST=91;CN={cn};PW=100000;MN={MN};Flag=4;CP=&&{cp}&&"))
    assert packet.qn == QN13 and packet.cn == cn


def test_length_mismatch_names_both_numbers() -> None:
    good = frame(f"QN={QN13};ST=91;CN=1011;PW=100000;MN={MN};Flag=5;CP=&&&&")
    wrong = good[:2] + b"0099" + good[6:]
    with pytest.raises(FrameError, match=r"^length mismatch: header says 0099, got 83$"):
        decode_frame(wrong)
    with pytest.raises(FrameError, match=r"^length mismatch: header says 0083, got 40$"):
        decode_frame(good[:50])


class Latest:
    def latest(self) -> dict[str, RealtimeValue]:
        return {"dust_tsp_mgm3": RealtimeValue(0.1, "good", "dust-1", None)}


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _rtn(sim: PlatformSim, qn: str, cn: str = "9011") -> list[str]:
    return [next(iter(p.cp_values().values()), "") for p in sim.of_cn(cn) if p.qn == qn]


def test_field_platform_commands_with_13_digit_qn_are_answered_with_that_qn(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        time = FakeTime(T0)
        client = Hj212Client(point_config(tmp_path, sim.port), realtime=Latest(), clock=time.now, sleep=time.sleep)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.metrics.acked == 1, what="first 2011 acked")
            await sim.send_raw(frame(f"QN={QN13};ST=91;CN=9011;PW=100000;MN={MN};Flag=4;CP=&&QnRtn=1&&"))
            await sim.send_raw(frame(f"QN={QN13};ST=91;CN=9012;PW=100000;MN={MN};Flag=4;CP=&&ExeRtn=1&&"))
            await sim.send_raw(frame(f"QN={QN13};ST=39;CN=1011;PW=100000;MN={MN};Flag=5;CP=&&&&"))
            await wait_until(lambda: _rtn(sim, QN13, "9012"), what="1011 answered")
            assert _rtn(sim, QN13) == ["1"]
            (answer,) = [p for p in sim.of_cn("1011") if p.qn == QN13]
            assert answer.cp_values() == {"SystemTime": "20260501100030"}
            assert any(f"QN={QN13};".encode() in raw for raw in sim.raw)  # echoed byte for byte

            qn = "1777600830124"
            await sim.send_raw(frame(f"QN={qn};ST=39;CN=1012;PW=100000;MN={MN};Flag=5;CP=&&SystemTime=20260501100130&&"))
            await wait_until(lambda: _rtn(sim, qn, "9012"), what="1012 done")
            assert _rtn(sim, qn) == ["1"] and client.clock_offset == timedelta(seconds=60)
            assert client.metrics.platform_dropped["bad_frame"] == 0
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_out_of_bounds_set_time_is_refused_and_uploads_keep_flowing(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        time = FakeTime(T0)
        client = Hj212Client(point_config(tmp_path, sim.port), realtime=Latest(), clock=time.now, sleep=time.sleep)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.metrics.acked == 1, what="first 2011 acked")
            for qn, when in ((QN13, "00010101000000"), ("1777600830200", "20260503100030")):  # year 1; 2 days ahead
                await sim.send_raw(frame(f"QN={qn};ST=39;CN=1012;PW=100000;MN={MN};Flag=5;CP=&&SystemTime={when}&&"))
                await wait_until(lambda: _rtn(sim, qn), what=f"reply to 1012 {when}")
                assert _rtn(sim, qn) == ["2"]  # QnRtn 2: request refused
                assert _rtn(sim, qn, "9012") == []
            assert client.clock_offset == timedelta(0) and client.metrics.refused == 2
            # history far in the past is refused too
            await sim.send_raw(frame(f"QN=1777600830300;ST=39;CN=2061;PW=100000;MN={MN};Flag=5;"
                                     "CP=&&BeginTime=00010101000000;EndTime=00010101010000&&"))
            await wait_until(lambda: _rtn(sim, "1777600830300"), what="history refused")
            assert _rtn(sim, "1777600830300") == ["2"]
            time.advance(30)
            await wait_until(lambda: client.metrics.acked == 2, what="next 2011 acked")
            assert sim.of_cn("2011")[1].cp_values()["DataTime"] == "20260501100100"
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_restarted_client_forgets_what_the_platform_set_in_memory(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        time = FakeTime(T0)
        client = Hj212Client(point_config(tmp_path, sim.port), realtime=Latest(), clock=time.now, sleep=time.sleep)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.metrics.acked == 1, what="first 2011 acked")
            await sim.send_raw(frame(f"QN={QN13};ST=39;CN=1012;PW=100000;MN={MN};Flag=5;CP=&&SystemTime=20260501110030&&"))
            await wait_until(lambda: _rtn(sim, QN13, "9012"), what="1012 done")
            assert client.clock_offset == timedelta(hours=1)
            await sim.send_raw(frame(f"QN=1777600830124;ST=39;CN=2012;PW=100000;MN={MN};Flag=5;CP=&&&&"))
            await wait_until(lambda: not client.realtime_enabled, what="real time off")
        finally:
            await _stop(task)
        task = asyncio.create_task(client.run())  # what the service's supervisor does after a failure
        try:
            await wait_until(lambda: client.metrics.acked == 2, what="2011 after the restart")
            assert client.clock_offset == timedelta(0) and client.realtime_enabled
            assert sim.of_cn("2011")[-1].qn.startswith("20260501100030")  # QN on the server's clock again
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_flood_and_oversize_frames_are_dropped_and_the_link_stays_up(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await PlatformSim().start()
        time = FakeTime(T0)
        point = point_config(tmp_path, sim.port, max_frames_per_s=50, frame_burst=20, max_frame_bytes=2048)
        client = Hj212Client(point, realtime=Latest(), clock=time.now, sleep=time.sleep)
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.metrics.acked == 1, what="first 2011 acked")
            flood = b"".join(frame(f"QN={1777600840000 + i};ST=39;CN=1061;PW=100000;MN={MN};Flag=5;CP=&&&&")
                             for i in range(500))
            await sim.send_raw(flood)
            await sim.send_raw(b"##9999" + b"A" * 10_000 + b"\r\n")  # oversize, one write
            for _ in range(20):  # oversize, dribbled in: never buffered whole
                await sim.send_raw(b"B" * 5000)
            await sim.send_raw(b"\r\n")
            dropped = client.metrics.platform_dropped
            await wait_until(lambda: dropped["oversize"] == 2, what="2 oversize frames dropped")
            assert dropped["rate"] >= 400
            # every frame the bound let through is answered
            await wait_until(lambda: len({p.qn for p in sim.of_cn("9012")}) == 500 - dropped["rate"], what="answers")
            assert dropped["bad_frame"] == 0
            time.advance(30)
            await wait_until(lambda: client.metrics.acked == 2, timeout=10, what="next 2011 acked after the flood")
            assert sim.connections == 1 and client.connected  # the link stayed up
        finally:
            await _stop(task)
            await sim.stop()

    run_async(main())


def test_intake_bounds_size_and_rate_before_parsing() -> None:
    now = [0.0]
    intake = FrameIntake(max_frame_bytes=100, max_frames_per_s=2, frame_burst=3, now=lambda: now[0])
    lines = intake.feed(b"a\r\n" * 5)
    assert lines == [b"a\r\n"] * 3 and intake.dropped == {"oversize": 0, "rate": 2}
    now[0] = 1.0  # two tokens back
    assert intake.feed(b"b\r\nc\r\nd\r\n") == [b"b\r\n", b"c\r\n"]
    now[0] = 10.0
    assert intake.feed(b"x" * 99) == [] and intake.feed(b"x" * 10) == []  # over 100 bytes: dropped as it comes
    assert len(intake.partial) <= 1
    assert intake.feed(b"yy\r\r\nok\r") == [] and intake.feed(b"\n") == [b"ok\r\n"]
    assert intake.dropped["oversize"] == 1


def test_refusals_and_dropped_frames_are_exported(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from greenmine.server.metrics import Metrics
    from greenmine.server.uplink.hj212.service import Hj212Service

    client = Hj212Client(point_config(tmp_path, 1))
    client.metrics.refused = 2
    client.metrics.platform_dropped.update(oversize=1, rate=40)
    svc = Hj212Service(SimpleNamespace(hj212=[]), agents=None, reader=None)
    svc.clients["p1"] = client  # what start() builds, without starting anything
    m = Metrics("none")
    m.bind_hj212(svc.snapshot)
    assert m.value("greenmine_hj212_commands_refused_total", point="p1") == 2
    assert m.value("greenmine_hj212_platform_frames_dropped_total", point="p1", reason="rate") == 40
    assert m.value("greenmine_hj212_platform_frames_dropped_total", point="p1", reason="oversize") == 1
    assert m.value("greenmine_hj212_platform_frames_dropped_total", point="p1", reason="bad_frame") == 0
