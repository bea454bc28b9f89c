"""The server's MQTT socket buffer (`server.ingest.mqtt.BufferedSocket`), on a real socket pair, and on a real
Mosquitto connection: paho reads every packet through it, and what it has read but paho has not taken is
`pending()`, so paho's loop never waits in select for bytes already read."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

import pytest

from greenmine.server.config import load_server_config
from greenmine.server.ingest.mqtt import READ_CHUNK, BufferedSocket
from greenmine.server.store.sqlite import SqliteReader
from tests.server.conftest import batch, dumps, running, server_doc, topic
from tests.support.services import wait_for


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    b.setblocking(False)
    yield a, BufferedSocket(b)
    a.close()
    b.close()


def test_small_reads_come_from_one_chunk_and_pending_counts_what_is_left(pair):
    peer, sock = pair
    peer.sendall(b"\x30\x05hello\x40\x02\x00\x01")  # a PUBLISH-like and a PUBACK-like packet in one segment
    assert sock.recv(1) == b"\x30"  # the first read takes every byte the kernel has
    assert sock.pending() == 10
    assert sock.recv(1) == b"\x05"
    assert sock.recv(5) == b"hello"
    assert sock.recv(100) == b"\x40\x02\x00\x01"  # no more than what is buffered, even if more is asked
    assert sock.pending() == 0
    with pytest.raises(BlockingIOError):  # empty buffer, nothing arrived: the socket's own error, for paho
        sock.recv(1)


def test_a_body_longer_than_the_buffer_comes_whole_over_reads(pair):
    peer, sock = pair
    body = bytes(range(256)) * (3 * READ_CHUNK // 256)
    peer.sendall(body)
    got = bytearray()
    while len(got) < len(body):
        try:
            got += sock.recv(len(body) - len(got))
        except BlockingIOError:
            continue  # the rest is still in flight on the pair
    assert bytes(got) == body and sock.pending() == 0


def test_end_of_stream_is_an_empty_read_after_what_was_buffered(pair):
    peer, sock = pair
    peer.sendall(b"ab")
    peer.shutdown(socket.SHUT_WR)
    assert sock.recv(1) == b"a"
    assert sock.recv(1) == b"b"
    assert sock.recv(1) == b""  # paho's "connection lost"


def test_everything_else_is_the_sockets_own(pair):
    peer, sock = pair
    assert sock.fileno() == sock._sock.fileno()
    assert sock.send(b"x") == 1 and peer.recv(1) == b"x"


def test_paho_reads_a_real_broker_connection_through_the_buffer(tmp_path, mosquitto, publisher):
    """A backlog of 500 messages queued in the session while the server was away arrives in bursts of many
    packets per read (receive maximum 50); every one is stored. Without `pending()` paho would wait in select
    with whole packets in the buffer until the next keepalive (600 s here)."""
    doc = server_doc(tmp_path, mosquitto.port)
    doc["mqtt"].update(receive_maximum=50, keepalive_s=600)
    cfg = load_server_config(tmp_path / "server.toml", doc=doc)
    with running(cfg, roles=("ingest",)) as app:  # registers the session and its subscriptions
        assert isinstance(app.mqtt._client._sock, BufferedSocket)  # paho 2.x: the socket was swapped in
    t0 = datetime.now(timezone.utc) - timedelta(seconds=600)  # seq seconds later: all in the past
    publisher.publish_many([(topic(), dumps(batch(seq, n=1, t0=t0))) for seq in range(500)])
    with running(cfg, roles=("ingest",)):
        reader = SqliteReader(cfg.resolve(cfg.store.path))
        try:
            wait_for(lambda: reader.count() == 500, 20, what="all 500 messages stored")
        finally:
            reader.close()
