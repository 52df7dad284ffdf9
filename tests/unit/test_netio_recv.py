"""netio.Conn: recv (carried bytes, nothing to read, end of file) and a write kept for later.

A parked cluster client's first bytes are read before it is handed to a Client (see
pooler.cluster.parked) and given to it as ``carry``; the Client's first read must return
them even when the kernel has nothing more, instead of reporting "nothing to read yet".
"""

from __future__ import annotations

import socket
import threading
import time

import gevent
import pytest

from pooler import netio

pytestmark = pytest.mark.unit


@pytest.fixture
def pair() -> tuple[netio.Conn, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = netio.Conn(ours)
    yield conn, theirs
    conn.close_socket()
    theirs.close()


def test_nothing_to_read_is_none(pair: tuple[netio.Conn, socket.socket]) -> None:
    conn, _ = pair
    assert conn.recv() is None


def test_carried_bytes_come_back_when_the_kernel_has_none(
    pair: tuple[netio.Conn, socket.socket],
) -> None:
    conn, _ = pair
    conn.carry = b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert conn.recv() == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert conn.carry == b""
    assert conn.recv() is None  # handed back once, not again


def test_carried_bytes_come_first(pair: tuple[netio.Conn, socket.socket]) -> None:
    conn, theirs = pair
    conn.carry = b"Q\x00\x00"
    theirs.sendall(b"\x00\x0dSELECT 1\x00")
    data = conn.recv()
    assert type(data) is bytes  # the compiled scanners take bytes, not views
    assert data == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert conn.carry == b""


def test_end_of_file_is_zero(pair: tuple[netio.Conn, socket.socket]) -> None:
    conn, theirs = pair
    theirs.close()
    assert conn.recv() == b""


def test_a_read_is_at_most_recv_size(pair: tuple[netio.Conn, socket.socket]) -> None:
    conn, theirs = pair
    theirs.setblocking(False)
    sent = 0
    try:
        while sent < 4 * netio.RECV_SIZE:
            sent += theirs.send(b"x" * 65536)
    except BlockingIOError:
        pass
    got = 0
    while got < sent:
        data = conn.recv()
        assert data and len(data) <= netio.RECV_SIZE
        got += len(data)
    assert got == sent


def test_reads_are_small_until_one_fills(pair: tuple[netio.Conn, socket.socket]) -> None:
    """With os.read (plain Python), small replies are read with a small size (CPython's
    small-object allocator, not a 64 KB malloc and realloc); a read that fills it switches
    to RECV_SIZE for the rest of a big reply, and a short read switches back. The native
    read (compiled) returns a bytes of exactly what arrived, so it always asks RECV_SIZE
    and a big reply comes in whole reads. Either way no byte is lost or reordered."""
    conn, theirs = pair
    small = netio.RECV_SIZE if netio.NATIVE_IO else netio.SMALL_READ
    theirs.sendall(b"a" * 100)
    assert conn.recv() == b"a" * 100
    assert conn.rsize == small
    big = bytes(range(256)) * 1024  # 256 KB
    theirs.setblocking(False)
    sent = theirs.send(big)
    first = conn.recv()
    assert first is not None
    assert first == big[: len(first)]
    assert len(first) == min(sent, small)  # the first read, filled
    assert conn.rsize == netio.RECV_SIZE
    second = conn.recv()
    assert second is not None and len(second) > netio.SMALL_READ  # the rest, read big
    got = first + second
    while len(got) < sent:
        data = conn.recv()
        assert data
        got += data
    assert got == big[:sent]
    theirs.sendall(b"b" * 10)
    assert conn.recv() == b"b" * 10
    assert conn.rsize == small  # short again: back to small reads


def test_a_closed_conn_never_reads_its_old_descriptor(
    pair: tuple[netio.Conn, socket.socket],
) -> None:
    """Plain sockets are read with os.read on the descriptor; once closed, that number may
    belong to another connection, so the Conn must fail instead of reading it."""
    conn, _ = pair
    assert conn.plain  # a plain socket: the fd path
    conn.close_socket()
    other_a, other_b = socket.socketpair()  # likely given the closed descriptor's number
    try:
        other_b.sendall(b"another tenant's bytes")
        with pytest.raises(OSError):
            conn.recv()
        with pytest.raises(OSError):
            conn.write(b"x")
        assert other_a.recv(100) == b"another tenant's bytes"  # untouched
    finally:
        other_a.close()
        other_b.close()


def test_a_big_carry_is_joined_with_a_bigger_read(
    pair: tuple[netio.Conn, socket.socket],
) -> None:
    """A message that must be handled whole is carried and joined again on every read; with
    64 KB reads a 64 MB Parse would be copied ~1000 times (seconds of a stalled hub). Reads
    after a big carry ask for as much as is carried."""
    conn, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    conn.carry = b"P" + b"\x00" * (2 * netio.RECV_SIZE - 1)
    more = b"y" * (3 * netio.RECV_SIZE)
    theirs.setblocking(False)
    sent = theirs.send(more)
    assert sent > 2 * netio.RECV_SIZE  # the kernel holds it all (else the test proves nothing)
    data = conn.recv()
    assert data is not None
    assert len(data) - 2 * netio.RECV_SIZE > netio.RECV_SIZE  # more than one plain read
    assert data.startswith(b"P\x00") and data.endswith(b"y")


def reader_of(sock: socket.socket, received: bytearray, size: int) -> threading.Thread:
    """A started thread that reads ``sock`` into ``received`` until ``size`` bytes or EOF
    (the far side of a socket pair this test writes more to than the kernel holds)."""

    def drain() -> None:
        while len(received) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return reader


def test_a_write_the_kernel_does_not_take_is_sent_when_writable() -> None:
    """Conn.write keeps what the kernel refuses and sends it from a write watcher, made
    only then (an idle connection has none)."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    conn = netio.Conn(ours)
    assert conn.ww is None
    payload = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    received = bytearray()

    try:
        assert conn.write(payload) is False  # the rest is kept
        assert conn.outbuf and conn.ww is not None and conn.ww.active
        reader = reader_of(theirs, received, len(payload))
        deadline = time.monotonic() + 20
        while conn.outbuf is not None and time.monotonic() < deadline:
            gevent.sleep(0.001)
        reader.join(20)
        assert conn.outbuf is None and not conn.ww.active
        assert bytes(received) == payload
    finally:
        conn.close_socket()
        theirs.close()


def test_a_write_to_a_full_socket_keeps_all_of_it() -> None:
    """The kernel takes nothing (EAGAIN, which the native send answers as 0): the whole
    write is kept, in order after nothing, and sent once the peer reads."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    conn = netio.Conn(ours)
    filler = bytearray()
    try:
        full = False
        for _ in range(10_000):  # a 4 KB buffer fills within a few sends
            try:
                filler += b"f" * ours.send(b"f" * 65536)
            except BlockingIOError:
                full = True
                break
        assert full
        assert conn.write(b"kept") is False
        assert conn.outbuf == b"kept" and conn.ww is not None and conn.ww.active
        received = bytearray()
        reader = reader_of(theirs, received, len(filler) + 4)
        deadline = time.monotonic() + 20
        while conn.outbuf is not None and time.monotonic() < deadline:
            gevent.sleep(0.001)
        reader.join(20)
        assert bytes(received) == bytes(filler) + b"kept"
    finally:
        conn.close_socket()
        theirs.close()


@pytest.mark.parametrize(
    "sizes",
    [
        (5, 120, 7),  # joined into one write
        (netio.JOIN_LIMIT // 2, netio.JOIN_LIMIT // 2 + 1),  # just over: one sendmsg
        (300, 512 * 1024, 17, 512 * 1024),  # sendmsg, more than the kernel takes at once
    ],
)
def test_write_many_sends_every_piece_in_order(sizes: tuple[int, ...]) -> None:
    """Conn.write_many: small pieces are joined into one write, larger ones go out in one
    sendmsg; either way, and when the kernel takes only part, the peer gets every byte of
    every piece in order (views included)."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    conn = netio.Conn(ours)
    parts: list = [bytes([65 + i]) * size for i, size in enumerate(sizes)]
    parts[-1] = memoryview(b"x" + parts[-1])[1:]  # a view, as the relay passes
    payload = b"".join(parts)
    received = bytearray()

    try:
        reader = reader_of(theirs, received, len(payload))
        complete = conn.write_many(parts)
        deadline = time.monotonic() + 20
        while conn.outbuf is not None and time.monotonic() < deadline:
            gevent.sleep(0.001)
        reader.join(20)
        assert bytes(received) == payload
        if sum(sizes) <= netio.JOIN_LIMIT:
            assert complete
    finally:
        conn.close_socket()
        theirs.close()
