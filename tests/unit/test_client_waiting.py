"""A client waiting for a server keeps being read (no watcher stop per wait): what it sends
meanwhile is kept in order, its leaving is noticed at once, and reading stops at the limit.

Real Client/ServerConn/Pool objects over socket pairs (bench.relay), callbacks called by
hand as the hub would."""

from __future__ import annotations

import struct

import pytest

from bench.relay import relay_objects

pytestmark = pytest.mark.unit


def query(sql: bytes) -> bytes:
    return b"Q" + struct.pack("!I", len(sql) + 5) + sql + b"\0"


READY = b"Z\x00\x00\x00\x05I"
DONE = b"C\x00\x00\x00\x0dSELECT 1\x00" + READY


def recv_all(sock) -> bytes:  # type: ignore[no-untyped-def]
    sock.setblocking(False)
    out = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    except BlockingIOError:
        pass
    return out


def b_waits_for_a():  # type: ignore[no-untyped-def]
    """Client a holds the only server with a query running; client b sent a query and
    waits for a server (its read watcher still on)."""
    pool, (a, b), (peer_a, peer_b), server, server_peer = relay_objects(2)
    peer_a.sendall(query(b"select 'a'"))
    a._on_client_readable()
    assert recv_all(server_peer) == query(b"select 'a'")
    peer_b.sendall(query(b"select 1"))
    b._on_client_readable()
    assert b.state == "waiting" and b.rw.active and list(pool.waiters) == [b]
    return pool, (a, b), (peer_a, peer_b), server, server_peer


def test_bytes_sent_while_waiting_are_forwarded_in_order() -> None:
    pool, (a, b), (peer_a, peer_b), server, server_peer = b_waits_for_a()
    # b sends again while waiting (a pipelining driver), and keeps being read.
    peer_b.sendall(query(b"select 2"))
    b._on_client_readable()
    assert b.pending == query(b"select 1") + query(b"select 2")
    server_peer.sendall(DONE)
    a._on_server_readable()  # a is done: the server goes to b with both queries
    assert b.server is server and b.pending is None
    assert recv_all(server_peer) == query(b"select 1") + query(b"select 2")


def test_a_waiting_client_that_leaves_is_dropped_at_once() -> None:
    pool, (a, b), (peer_a, peer_b), server, server_peer = b_waits_for_a()
    peer_b.close()
    b._on_client_readable()  # EOF while waiting
    assert b.closed and not pool.waiters
    server_peer.sendall(DONE)
    a._on_server_readable()
    assert a.server is None and list(pool.idle) == [server]  # nobody to hand it to


def test_reading_stops_at_the_pending_limit() -> None:
    pool, (a, b), (peer_a, peer_b), server, server_peer = b_waits_for_a()
    pool.limits.pending_limit = 64
    peer_b.sendall(query(b"x" * 80))
    b._on_client_readable()
    assert not b.rw.active  # backpressure: the rest stays in the kernel
    server_peer.sendall(DONE)
    a._on_server_readable()
    assert b.server is server and b.rw.active  # reading again once linked
    assert recv_all(server_peer) == query(b"select 1") + query(b"x" * 80)


def test_the_server_watcher_keeps_one_callback_and_follows_its_owner() -> None:
    # A server's watcher runs ServerConn._on_readable for its whole life: linked, the bytes
    # go to the client; parked, a stray byte means the server is unusable and it is closed.
    pool, (a, b), (peer_a, peer_b), server, server_peer = relay_objects(2)
    callback = server.read_cb
    peer_a.sendall(query(b"select 'a'"))
    a._on_client_readable()  # a takes the idle server
    assert server.client is a and server.reading is callback and server.rw.active
    recv_all(server_peer)
    server_peer.sendall(DONE)
    server._on_readable()  # what the hub calls: the reply reaches a, the server is parked
    assert recv_all(peer_a) == DONE
    assert a.server is None and server.client is None and list(pool.idle) == [server]
    assert server.reading is callback and server.rw.active  # no restart in between
    server_peer.sendall(b"N")  # a stray byte from an idle server
    server._on_readable()
    assert server.closed and not pool.idle and server.read_cb is None
    assert not server.rw.active and server.reading is None


def test_start_and_stop_reading_track_the_watcher() -> None:
    pool, (a,), (peer_a,), server, server_peer = relay_objects(1)
    callback = a.client_cb
    assert callback is not None and a.reading is callback and a.rw.active
    a.resume_reading()  # the same callback again: nothing to do, still running
    assert a.reading is callback and a.rw.active
    a.stop_reading()
    assert a.reading is None and not a.rw.active
    a.stop_reading()  # stopping a stopped watcher is harmless
    a.resume_reading()
    assert a.reading is callback and a.rw.active
    a.disconnect()
    assert a.reading is None and not a.rw.active and a.client_cb is None
