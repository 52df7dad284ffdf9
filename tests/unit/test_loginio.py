"""pooler.loginio.LoginSocket: byte-exact buffered login reads (messages whole, split across
reads, several in one read, bytes pipelined past the login), the CVE-2021-3935 check on
bytes read ahead, and the hand-off of read-ahead bytes to a relay Conn."""

from __future__ import annotations

import _socket
import socket
import struct
from typing import Any

import pytest

from pooler import netio, tls
from pooler.loginio import READ_SIZE, LoginSocket
from pooler.protocol import builders
from pooler.protocol.errors import ProtocolError

pytestmark = pytest.mark.unit


class ChunkSocket:
    """recv() hands out the given chunks one per call (at most ``size`` bytes of one), then
    EOF; records the sizes asked for."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.asked: list[int] = []
        self.detached = False

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if len(chunk) > size:
            self.chunks.insert(0, chunk[size:])
            chunk = chunk[:size]
        return chunk

    def detach(self) -> int:
        self.detached = True
        return 42

    def setsockopt(self, *args: Any) -> str:
        return "passed through"


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, 80877103)


def startup(user: str = "app.t1") -> bytes:
    body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


SASL_INITIAL = message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 20) + b"n,,n=,r=abcdefghijkl")
SASL_RESPONSE = message(b"p", b"c=biws,r=abcdefghijklmnop,p=" + b"A" * 44)
QUERY = message(b"Q", b"SELECT 1\0")


def test_one_recv_per_message_and_bytes_exact() -> None:
    raw = ChunkSocket(startup(), SASL_INITIAL, SASL_RESPONSE)
    sock = LoginSocket(raw)
    header = netio.recv_exact(sock, 4)
    assert header + netio.recv_exact(sock, len(startup()) - 4) == startup()
    assert netio.read_message(sock, 8192) == (ord("p"), SASL_INITIAL[5:])
    assert netio.read_message(sock, 8192) == (ord("p"), SASL_RESPONSE[5:])
    assert raw.asked == [READ_SIZE] * 3  # one system call per message, not two
    assert sock.buffered == 0 and sock.take() == b""


def test_a_message_split_across_reads() -> None:
    whole = SASL_RESPONSE
    for cut in (1, 3, 5, 6, len(whole) - 1):
        raw = ChunkSocket(whole[:cut], whole[cut:])
        assert netio.read_message(LoginSocket(raw), 8192) == (ord("p"), whole[5:]), cut


def test_every_byte_split() -> None:
    data = startup() + SASL_INITIAL + SASL_RESPONSE
    raw = ChunkSocket(*[data[i : i + 1] for i in range(len(data))])
    sock = LoginSocket(raw)
    got = netio.recv_exact(sock, 4)
    got += netio.recv_exact(sock, len(startup()) - 4)
    for _ in range(2):
        kind, body = netio.read_message(sock, 8192)
        got += bytes([kind]) + struct.pack("!i", len(body) + 4) + body
    assert got == data


def test_several_messages_in_one_read_are_served_in_order() -> None:
    raw = ChunkSocket(ssl_request() + startup())
    sock = LoginSocket(raw)
    assert netio.recv_exact(sock, 8) == ssl_request()
    assert sock.buffered == len(startup())
    assert netio.recv_exact(sock, 4) + netio.recv_exact(sock, len(startup()) - 4) == startup()
    assert raw.asked == [READ_SIZE]


def test_bytes_pipelined_after_the_last_login_message_are_kept_for_the_relay() -> None:
    raw = ChunkSocket(SASL_RESPONSE + QUERY + b"X\0\0")  # a query and half a header
    sock = LoginSocket(raw)
    assert netio.read_message(sock, 8192) == (ord("p"), SASL_RESPONSE[5:])
    assert sock.take() == QUERY + b"X\0\0"
    assert sock.buffered == 0
    assert sock.detach() == 42 and raw.detached


def test_detach_with_bytes_held_refuses_instead_of_dropping_them() -> None:
    sock = LoginSocket(ChunkSocket(SASL_RESPONSE + QUERY))
    netio.read_message(sock, 8192)
    with pytest.raises(ProtocolError, match="before the login completed"):
        sock.detach()


def test_large_reads_ask_for_their_size_and_eof_is_empty() -> None:
    big = b"x" * (READ_SIZE * 2 + 5)
    raw = ChunkSocket(big)
    sock = LoginSocket(raw)
    assert netio.recv_exact(sock, len(big)) == big
    assert raw.asked[0] == len(big)
    assert sock.recv(10) == b""
    with pytest.raises(netio.ConnectionClosed):
        netio.recv_exact(sock, 1)


def test_other_attributes_reach_the_socket() -> None:
    assert LoginSocket(ChunkSocket()).setsockopt(1, 2, 3) == "passed through"


def test_bytes_read_ahead_after_an_ssl_request_are_refused() -> None:
    """CVE-2021-3935: a startup packet piggybacked on the SSLRequest sits in our buffer,
    not in the kernel, and must be refused all the same."""
    left, right = socket.socketpair()
    with left, right:
        sock = LoginSocket(left)
        right.sendall(ssl_request() + startup())
        assert netio.recv_exact(sock, 8) == ssl_request()
        with pytest.raises(ProtocolError, match="unencrypted data after SSL request"):
            tls.check_nothing_follows(sock)
        assert sock.buffered == 0


def test_nothing_read_ahead_after_an_ssl_request_passes() -> None:
    left, right = socket.socketpair()
    with left, right:
        sock = LoginSocket(left)
        right.sendall(ssl_request())
        assert netio.recv_exact(sock, 8) == ssl_request()
        tls.check_nothing_follows(sock)


def test_read_ahead_bytes_reach_the_relay_conn_even_when_nothing_more_comes() -> None:
    """The hand-off: what the login read ahead becomes the Conn's carry, and the next
    recv delivers it although the kernel has nothing (EAGAIN)."""
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        sock = LoginSocket(left)
        right.sendall(SASL_RESPONSE + QUERY)
        assert netio.read_message(sock, 8192)[0] == ord("p")
        carry = sock.take()
        conn = netio.Conn(left)
        conn.carry = carry
        assert conn.recv() == QUERY
        assert conn.carry == b""
        assert conn.recv() is None  # and only once
        right.sendall(b"more")
        conn.carry = b"ab"
        assert conn.recv() == b"abmore"  # with new bytes too: carry first, then them


def test_welcome_and_sasl_final_are_well_formed_together() -> None:
    """The SASLFinal is held and sent with the welcome: the bytes are the two messages
    back to back, as Postgres sends them."""
    final = builders.authentication_sasl_final(b"v=abc")
    welcome = builders.authentication_ok() + builders.ready_for_query(b"I")
    raw = ChunkSocket(final + welcome)
    sock = LoginSocket(raw)
    kind, body = netio.read_message(sock, 8192)
    assert kind == ord("R") and body[:4] == struct.pack("!i", 12) and body[4:] == b"v=abc"
    assert netio.read_message(sock, 8192) == (ord("R"), struct.pack("!i", 0))
    assert netio.read_message(sock, 8192) == (ord("Z"), b"I")


def test_sendall_fast_path_on_a_gevent_socket_and_the_wrapper() -> None:
    import gevent.socket

    left, right = socket.socketpair()
    green = gevent.socket.socket(fileno=left.detach())
    with green, right:
        netio.sendall(green, b"one")
        netio.sendall(LoginSocket(green), b"two")
        big = b"x" * (4 << 20)  # more than the kernel takes at once: the rest via gevent

        def reader() -> bytes:
            got = b""
            while len(got) < 6 + len(big):
                got += right.recv(1 << 20)
            return got

        import gevent

        receiving = gevent.get_hub().threadpool.spawn(reader)
        netio.sendall(green, big)
        assert receiving.get(timeout=30) == b"onetwo" + big


def test_sendall_leaves_other_streams_to_their_own_sendall() -> None:
    """A TLS stream (or anything not a bare gevent socket) encrypts in its own sendall: the
    fast path must never write around it, whatever attributes it has."""

    class Stream:
        _sock = "must not be used"

        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def sendall(self, data: bytes) -> None:
            self.sent.append(data)

    stream = Stream()
    netio.sendall(stream, b"secret")
    netio.sendall(LoginSocket(stream), b"more")
    assert stream.sent == [b"secret", b"more"]


def test_after_an_answer_the_next_read_waits_for_the_client_first(monkeypatch: Any) -> None:
    """Once we have answered, the client's reply cannot be there yet: LoginSocket waits
    for the socket to be readable and then reads, instead of a recv() that fails with
    EAGAIN first. The first read (nothing said yet) reads at once."""
    import gevent
    import gevent.socket

    seen: list[tuple[int, bool]] = []  # (size asked, bytes already waiting at the call)
    original = gevent.socket.socket.recv

    def recv(self: Any, size: int, *args: Any) -> bytes:
        seen.append((size, tls.bytes_waiting(self)))
        return original(self, size, *args)

    monkeypatch.setattr(gevent.socket.socket, "recv", recv)
    left, right = socket.socketpair()
    green = gevent.socket.socket(fileno=left.detach())
    with green, right:
        sock = LoginSocket(green)
        right.sendall(b"p\0\0\0\x08abcd")
        assert netio.read_message(sock, 8192) == (ord("p"), b"abcd")
        netio.sendall(sock, b"R\0\0\0\x08\0\0\0\0")  # our answer
        assert right.recv(100) == b"R\0\0\0\x08\0\0\0\0"
        later = gevent.spawn_later(0.05, right.sendall, b"p\0\0\0\x06xy")
        assert netio.read_message(sock, 8192) == (ord("p"), b"xy")
        later.get(timeout=5)
    assert seen == [(READ_SIZE, True), (READ_SIZE, True)]


def _plain_pair() -> tuple[_socket.socket, socket.socket]:
    """A plain non-blocking socket, as pooler.loginio.accept_logins hands to the login,
    and its peer."""
    ours, peer = socket.socketpair()
    plain = _socket.socket(ours.family, ours.type, ours.proto, ours.detach())
    plain.setblocking(False)
    return plain, peer


def test_a_plain_socket_waits_for_the_client_and_sends_everything() -> None:
    """Over the plain socket (no gevent socket), reads park the greenlet until the client
    has sent, the answered read waits first, a send larger than the kernel's buffer waits
    for room, and detach() hands the descriptor over with the watcher gone."""
    import gevent

    plain, peer = _plain_pair()
    with peer:
        sock = LoginSocket(plain)
        gevent.spawn_later(0.05, peer.sendall, b"p\0\0\0\x08abcd")
        assert netio.read_message(sock, 8192) == (ord("p"), b"abcd")  # waited
        assert sock.watcher is not None and not sock.watcher.active
        netio.sendall(sock, b"R\0\0\0\x08\0\0\0\0")
        assert sock.answered
        gevent.spawn_later(0.05, peer.sendall, b"p\0\0\0\x06xy")
        assert netio.read_message(sock, 8192) == (ord("p"), b"xy")
        assert peer.recv(100) == b"R\0\0\0\x08\0\0\0\0"

        big = b"z" * (4 << 20)
        got = bytearray()

        def drain() -> None:
            while len(got) < len(big):
                got.extend(peer.recv(1 << 20))

        reading = gevent.get_hub().threadpool.spawn(drain)
        netio.sendall(sock, big)
        reading.get(timeout=30)
        assert bytes(got) == big

        watcher = sock.watcher
        relay = netio.detach(sock)
        assert watcher is not None and not watcher.active and sock.watcher is None
        assert plain.fileno() == -1 and relay.getblocking() is False
        try:
            peer.sendall(b"after")
            gevent.sleep(0.01)
            assert relay.recv(10) == b"after"
        finally:
            relay.close()


def test_hand_over_gives_the_relay_the_plain_socket_itself() -> None:
    """hand_over: the same socket object, open and non-blocking, no watcher left, and the
    wrapper's close() no longer closes it; with bytes held it refuses, as detach() does."""
    import gevent

    plain, peer = _plain_pair()
    with peer:
        sock = LoginSocket(plain)
        gevent.spawn_later(0.01, peer.sendall, b"p\0\0\0\x08abcd")
        assert netio.read_message(sock, 8192) == (ord("p"), b"abcd")  # made a watcher
        watcher = sock.watcher
        relay = sock.hand_over()
        assert relay is plain and sock.watcher is None
        assert watcher is not None and not watcher.active
        sock.close()  # the login's cleanup: a no-op now
        try:
            assert relay.fileno() != -1 and relay.getblocking() is False
            peer.sendall(b"after")
            gevent.sleep(0.01)
            assert relay.recv(10) == b"after"
        finally:
            relay.close()

    plain, peer = _plain_pair()
    with peer:
        sock = LoginSocket(plain)
        peer.sendall(b"p\0\0\0\x08abcdQ")  # a byte past the message: held
        assert netio.read_message(sock, 8192) == (ord("p"), b"abcd")
        with pytest.raises(ProtocolError, match="before the login completed"):
            sock.hand_over()
        sock.close()
        assert plain.fileno() == -1  # still the wrapper's to close


def test_a_plain_socket_becomes_a_gevent_socket_for_tls_and_is_still_closed() -> None:
    """to_gevent() (a TLS handshake reads through gevent) keeps the new gevent socket in the
    wrapper, so closing a login that failed in the handshake closes its descriptor."""
    import gevent.socket

    plain, peer = _plain_pair()
    with peer:
        sock = LoginSocket(plain)
        green = sock.to_gevent()
        assert type(green) is gevent.socket.socket and sock.sock is green
        assert plain.fileno() == -1 and green.fileno() != -1
        sock.close()
        assert green.fileno() == -1
        peer.settimeout(5)
        assert peer.recv(1) == b""  # the client sees the connection end
