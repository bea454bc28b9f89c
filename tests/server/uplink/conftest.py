"""Fixtures for the HJ 212 uplink tests: a platform simulator, driven time, leak checks.

`PlatformSim` is a real asyncio TCP server on 127.0.0.1 (port 0) that speaks
the standard's reply rules with the same codec the client uses: it answers
every upload that asks for a reply (Flag A bit) with 9014 and the same QN,
unless told to stay silent. `send_raw` makes it a hostile or a field platform:
it writes whatever bytes the test hands it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from greenmine.server.uplink.hj212.codec import Packet, decode_frame, encode_packet
from greenmine.server.uplink.hj212.config import PointConfig
from greenmine.server.uplink.hj212.messages import data_reply

UPLOAD_CNS = {"2011", "2051", "2061", "2031"}


def _socket_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves threads or sockets behind."""
    threads = set(threading.enumerate())
    sockets = _socket_fds()
    yield
    leaked_threads = set(threading.enumerate()) - threads
    assert not leaked_threads, f"leaked threads: {leaked_threads}"
    # Some libraries (paho's wake-up socketpair) release sockets only when collected.
    gc.collect()
    leaked_sockets = _socket_fds() - sockets
    assert not leaked_sockets, f"leaked sockets: {leaked_sockets}"


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, but fail if the test left tasks running (asyncio.run would hide them)."""

    async def checked() -> Any:
        result = await coro
        current = asyncio.current_task()
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        assert not leftover, f"leaked tasks: {leftover}"
        return result

    return asyncio.run(checked())


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` until true or fail after `timeout` (a deadline, not a settle-sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


class PlatformSim:
    """A platform: records every frame, acknowledges uploads, can send commands."""

    def __init__(self, *, ack: Callable[[Packet], bool] = lambda p: True) -> None:
        self.ack = ack
        self.received: list[Packet] = []
        self.raw: list[bytes] = []
        self.connections = 0
        self.closed_connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, port: int = 0) -> PlatformSim:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in self._writers:
                w.close()
            for t in list(self._handlers):
                t.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                packet = decode_frame(line)  # a bad frame from the client fails the test loudly
                self.raw.append(line)
                self.received.append(packet)
                if packet.cn in UPLOAD_CNS and packet.reply_wanted and self.ack(packet):
                    writer.write(encode_packet(data_reply(packet)))
                    await writer.drain()
        finally:
            self.closed_connections += 1
            writer.close()
            self._handlers.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def send(self, packet: Packet) -> None:
        """Send a command on the newest connection."""
        writer = self._writers[-1]
        writer.write(encode_packet(packet))
        await writer.drain()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are on the newest connection (a hostile or a field platform's frames)."""
        writer = self._writers[-1]
        writer.write(data)
        await writer.drain()

    def of_cn(self, cn: str) -> list[Packet]:
        return [p for p in self.received if p.cn == cn]


class FakeTime:
    """A clock the test moves. `sleep` records the delay asked for and blocks until `advance`."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self.sleeps: list[float] = []
        self._pending: list[asyncio.Future[None]] = []

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        try:
            await fut
        finally:
            if fut in self._pending:
                self._pending.remove(fut)

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        for fut in self._pending:
            if not fut.done():
                fut.set_result(None)


def point_config(tmp_path: Path, port: int, **overrides: Any) -> PointConfig:
    values: dict[str, Any] = dict(
        name="boundary-east",
        mn="010000A8900016F000169DC0",
        pw="100000",
        st="39",
        site="gs-demo",
        devices=["dust-1", "noise-1"],
        host="127.0.0.1",
        port=port,
        reply_timeout_s=0.2,
        max_tries=3,
        reconnect_initial_s=0.02,
        reconnect_max_s=0.1,
        connect_timeout_s=1.0,
        queue_path=tmp_path / "queue.sqlite",
    )
    values.update(overrides)
    return PointConfig(**values)


class ThreadedPlatform:
    """A `PlatformSim` on its own asyncio loop in a thread, for tests whose code under test is threaded
    (the server app). `received` can be read from the test thread (list appends are atomic)."""

    def __init__(self, **kw: Any) -> None:
        self.sim = PlatformSim(**kw)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="platform-sim", daemon=True)

    def __enter__(self) -> PlatformSim:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self._loop).result(5)
        return self.sim

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
