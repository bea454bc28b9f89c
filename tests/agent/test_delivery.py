"""Store-and-forward with the agent as a real subprocess (`python -m greenmine agent run`),
real Mosquitto and a real Modbus server: broker outage, power cut (SIGKILL), outbox bound."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from greenmine.agent.config import load_agent_config
from greenmine.agent.runtime import Agent
from tests.agent.helpers import Collector, write_config
from tests.agent.mbserver import ModbusTestServer, ServerThread, Unit
from tests.support.processes import spawn_greenmine, stop_process
from tests.support.services import wait_for



@pytest.fixture
def broker(mosquitto):
    """The shared Mosquitto (it runs as the current user, so its store persists across restarts)."""
    return mosquitto


def meter_devices(port_bus: str, interval: float, n_regs: int = 2) -> list[dict]:
    regs = [{"name": f"r{i}", "address": i, "data_type": "uint16", "poll_group": "fast"} for i in range(n_regs)]
    return [{"name": f"m{u}", "bus": port_bus, "unit_id": u, "registers": regs, "poll_groups": {"fast": interval}}
            for u in (1, 2)]


def start_agent(cfg: Path, log: Path) -> subprocess.Popen:
    return spawn_greenmine(["agent", "run", "--config", str(cfg)], log)


def outbox_rows(path: Path) -> list[int]:
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return [r[0] for r in db.execute("SELECT seq FROM batch ORDER BY seq")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


OUTAGE_S = 30  # the figure: long enough for a keepalive expiry and several reconnect back-offs


def test_broker_outage_every_reading_arrives_once_in_order(tmp_path, broker):
    """Polling at 1 s, the broker is stopped for 30 s, then restarted: every reading taken
    during the outage arrives, once, in order per device (the backlog drains oldest first)."""
    units = {1: Unit(holding={0: 1, 1: 2}), 2: Unit(holding={0: 3, 1: 4})}
    with ServerThread(ModbusTestServer(units)) as server:
        cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port,
                           buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": server.port}],
                           devices=meter_devices("gw", 1.0), outbox={"linger_ms": 20})
        collector = Collector(broker.port, client_id="outage-test")
        agent = start_agent(cfg, tmp_path / "agent.log")
        try:
            wait_for(lambda: len(collector.ts_of("m1")) >= 4, 10, what="readings before the outage")
            broker.stop()
            outage_start = time.time()
            wait_for(lambda: time.time() - outage_start >= OUTAGE_S and len(outbox_rows(tmp_path / "outbox.sqlite")) >= 4,
                     OUTAGE_S + 15, interval_s=0.2, what=f"a {OUTAGE_S} s outage with batches in the outbox")
            outage_end = time.time()
            broker.start()
            wait_for(lambda: any(t > outage_end + 1 for t in collector.ts_of("m1"))
                     and not outbox_rows(tmp_path / "outbox.sqlite"), 60, interval_s=0.1,
                     what="the backlog to drain and live data to flow")
        finally:
            code = stop_process(agent)
            collector.close()
        assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]
    for dev in ("m1", "m2"):
        rows = [(r, at) for r, at in collector.readings(dev) if r["metric"] == "r0"]
        ts = [r["ts"] for r, _ in rows]
        assert len(ts) == len(set(ts)), f"{dev}: a reading arrived twice"
        stamps = sorted(collector.ts_of(dev, "r0"))
        steps = {round(b - a) for a, b in zip(stamps, stamps[1:])}
        assert steps == {1}, f"{dev}: missing seconds {steps} {[s - outage_start for s in stamps]}"
        during = [t for t in collector.ts_of(dev, "r0") if outage_start < t < outage_end]
        assert len(during) >= OUTAGE_S - 2, f"{dev}: readings taken during the outage: {len(during)}"
        assert during == sorted(during), f"{dev}: outage readings out of order"
    seqs = collector.seqs()
    assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)) and len(seqs) == len(set(seqs))


def test_power_cut_no_committed_batch_is_lost_and_seq_keeps_increasing(tmp_path, broker):
    units = {1: Unit(holding={0: 1}), 2: Unit(holding={0: 2})}
    with ServerThread(ModbusTestServer(units)) as server:
        cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port,
                           buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": server.port}],
                           devices=meter_devices("gw", 0.1, n_regs=1), outbox={"linger_ms": 0})
        collector = Collector(broker.port, client_id="powercut-test")
        agent = start_agent(cfg, tmp_path / "agent.log")
        try:
            wait_for(lambda: len(collector.seqs()) >= 10, 10, what="a stream of batches")
            agent.send_signal(signal.SIGKILL)  # mid-stream: batches committed, some in flight
            agent.wait(5)
            committed = outbox_rows(tmp_path / "outbox.sqlite")
            before = max(collector.seqs() + committed)
            agent = start_agent(cfg, tmp_path / "agent.log")
            wait_for(lambda: max(collector.seqs()) > before + 10, 10, what="batches after the restart")
            wait_for(lambda: set(range(0, before + 1)) <= set(collector.seqs()), 10,
                     what="every batch committed before the kill")
        finally:
            stop_process(agent)
            collector.close()
    seqs = collector.seqs()
    assert set(range(0, max(seqs) + 1)) == set(seqs), "a committed batch was lost"
    assert set(committed) <= set(seqs)
    # seq kept increasing across the restart: nothing after the kill reused a number
    assert len(seqs) - len(set(seqs)) <= len(committed), "only batches unacked at the kill may arrive twice"


def test_outbox_bound_drops_oldest_counts_and_reports(tmp_path, broker):
    broker.stop()  # the broker is down from the start: the outbox fills up
    server = ModbusTestServer({1: Unit(holding={i: i for i in range(60)}), 2: Unit()})

    async def main():
        port = await server.start()
        cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port,
                           buses=[{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": port}],
                           devices=meter_devices("gw", 0.05, n_regs=60)[:1],
                           outbox={"max_bytes": 65536, "linger_ms": 0}, top={"metrics_port": 0})
        agent = Agent(load_agent_config(cfg))
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 10
        while agent.outbox.stats().dropped_batches < 5:
            assert time.monotonic() < deadline, "no drops"
            await asyncio.sleep(0.05)
        assert agent.outbox.stats().bytes <= 65536
        await asyncio.to_thread(broker.start)
        collector = await asyncio.to_thread(Collector, broker.port)
        deadline = time.monotonic() + 10
        while not (collector.last_status() and collector.last_status().get("dropped_batches", 0) >= 5
                   and collector.seqs()):
            assert time.monotonic() < deadline, "no status with drops"
            await asyncio.sleep(0.05)
        import urllib.request

        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics").read().decode())
        stop.set()
        await run
        await server.stop()
        await asyncio.to_thread(collector.close)
        return agent, collector, metrics

    agent, collector, metrics = asyncio.run(main())
    status = [s for s in collector.statuses if s["state"] == "online"][-1]
    # A batch holds one or more whole polls of 60 readings (group commit may merge polls).
    assert status["dropped_batches"] >= 5
    assert status["dropped_readings"] % 60 == 0 and status["dropped_readings"] >= 60 * status["dropped_batches"]
    # the oldest were dropped: the first batch the broker saw is not seq 0
    assert min(collector.seqs()) >= 5
    line = next(l for l in metrics.splitlines() if l.startswith("greenmine_agent_outbox_dropped_batches "))
    assert float(line.split()[1]) >= 5
