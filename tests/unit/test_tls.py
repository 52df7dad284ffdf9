"""pooler.tls without a pooler: channel-binding hashes, SNI helpers, and TLSStream's
partial-write and buffered-read bookkeeping over a real socket pair with small buffers."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import threading
from pathlib import Path

import pytest

from pooler import netio, tls
from pooler.config import ConfigSnapshot, TenantConfig
from pooler.protocol.errors import ProtocolError
from tests.support.certs import TestCA

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("unit-ca"))


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
def test_end_point_hash_follows_the_signature_hash(ca: TestCA, hash_name: str) -> None:
    files = ca.issue(f"cert-{hash_name}", hash_name=hash_name)
    assert tls.end_point_hash(files.der) == hashlib.new(hash_name, files.der).digest()
    loaded = tls.ServerTLS.load(str(files.cert), str(files.key))
    assert loaded.end_point == hashlib.new(hash_name, files.der).digest()


def test_load_refuses_a_missing_key(ca: TestCA, tmp_path: Path) -> None:
    files = ca.issue("nokey")
    with pytest.raises(tls.TLSError, match="cannot load the TLS certificate"):
        tls.ServerTLS.load(str(files.cert), str(tmp_path / "missing.key"))


def test_bad_upstream_ca_is_a_clear_error() -> None:
    with pytest.raises(tls.TLSError, match="upstream_tls_ca"):
        tls.client_context("peer", "not a certificate")


@pytest.mark.parametrize(
    ("login", "user"),
    [("app", "app"), ("app.t1", "app"), ("first.last", "first.last"), ("app.t2", "app.t2"),
     (".t1", ".t1")],
)  # fmt: skip
def test_sni_user(login: str, user: str) -> None:
    assert tls.sni_user(login, "t1") == user


def test_snapshot_finds_tenants_by_sni() -> None:
    snapshot = ConfigSnapshot(
        1,
        {
            "t1": TenantConfig("t1", "h", sni_hostname="DB.Example.com"),
            "t2": TenantConfig("t2", "h"),
        },
    )
    found = snapshot.tenant_by_sni("db.example.com")
    assert found is not None and found.external_id == "t1"
    assert snapshot.tenant_by_sni(None) is None
    assert snapshot.tenant_by_sni("other.example.com") is None


def test_bytes_after_the_request_are_refused() -> None:
    left, right = socket.socketpair()
    with left, right:
        tls.check_nothing_follows(left)  # nothing there
        right.sendall(b"\0\0\0\x08")
        with pytest.raises(ProtocolError, match="unencrypted data after SSL request"):
            tls.check_nothing_follows(left)


def test_bytes_after_the_request_are_seen_on_descriptors_above_1023() -> None:
    """A busy pooler hands out descriptors above select()'s limit; the check must work there
    (it once used select() and failed every SSLRequest past 1,023 open files)."""
    import gevent.socket

    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        left, right = socket.socketpair()
        green = gevent.socket.socket(fileno=os.dup(left.fileno()))
        with left, right, green:
            assert green.fileno() > 1023
            tls.check_nothing_follows(green)  # nothing there, and no waiting
            right.sendall(b"\0\0\0\x08")
            with pytest.raises(ProtocolError, match="unencrypted data after SSL request"):
                tls.check_nothing_follows(green)
    finally:
        for fd in fillers:
            os.close(fd)


def _client(sock: socket.socket, payload: bytes, echoed: list[bytes]) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(sock) as conn:
        conn.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        echoed.append(bytes(got))


def test_stream_echoes_megabytes_through_small_socket_buffers(ca: TestCA) -> None:
    """Drive TLSStream the way netio.Conn does: recv_into a big view, send with a kept
    outbuf on partial writes. Every byte must come back, in order, exactly once."""
    files = ca.issue("stream")
    server_tls = tls.ServerTLS.load(str(files.cert), str(files.key))
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    echoed: list[bytes] = []
    thread = threading.Thread(target=_client, args=(theirs, payload, echoed), daemon=True)
    thread.start()
    green = tls.accept(ours, server_tls)
    assert green.end_point == server_tls.end_point
    stream = green.detach()
    view = memoryview(bytearray(256 * 1024))
    outbuf = bytearray()
    received = 0
    rounds = 0
    while (received < len(payload) or outbuf) and rounds < 2_000_000:
        rounds += 1
        # poll(), not select(): the test process may hold descriptors above 1023.
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLIN | (select.POLLOUT if outbuf else 0))
        events = dict(poller.poll(30_000))
        assert events, "stalled: bytes stuck inside the TLS stream"
        mask = events.get(stream.fileno(), 0)
        readable = bool(mask & (select.POLLIN | select.POLLHUP | select.POLLERR))
        writable = bool(mask & select.POLLOUT)
        if readable and received < len(payload):
            try:
                n = stream.recv_into(view)
            except BlockingIOError:
                n = -1
            assert n != 0, "unexpected EOF"
            if n > 0:
                received += n
                if outbuf:
                    outbuf += view[:n]
                else:
                    sent = 0
                    try:
                        sent = stream.send(view[:n])
                    except BlockingIOError:
                        pass
                    outbuf += view[sent:n]
        if writable and outbuf:
            try:
                sent = stream.send(outbuf)
            except BlockingIOError:
                continue
            del outbuf[:sent]
    thread.join(30)
    stream.close()
    assert received == len(payload)
    assert echoed and echoed[0] == payload


def _send_over_tls(
    sock: socket.socket, payload: bytes, sent: threading.Event, release: threading.Event
) -> None:
    """A TLS client that sends ``payload``, says so, and waits to be released."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(sock) as conn:
        conn.sendall(payload)
        sent.set()
        release.wait(10)


@pytest.mark.parametrize("size", [256 * 1024 + 1, 16384 * 17, 300_000, 16384 * 33])
def test_no_plaintext_left_behind_when_the_view_fills(ca: TestCA, size: int) -> None:
    """Everything the client sent is in the kernel at once and it then waits: a read that
    fills the view must not leave decryptable bytes inside the TLS stream, where no
    readiness event would ever announce them (256 KB + 1 byte stalled before the fix)."""
    files = ca.issue("full-view")
    server_tls = tls.ServerTLS.load(str(files.cert), str(files.key))
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    payload = os.urandom(size)
    sent = threading.Event()
    release = threading.Event()

    thread = threading.Thread(
        target=_send_over_tls, args=(theirs, payload, sent, release), daemon=True
    )
    thread.start()
    stream = tls.accept(ours, server_tls).detach()
    try:
        assert sent.wait(10)
        view = memoryview(bytearray(netio.RECV_SIZE))
        got = bytearray()
        while len(got) < size:
            poller = select.poll()
            poller.register(stream.fileno(), select.POLLIN)
            assert poller.poll(5_000), f"stalled with {len(got)} of {size} bytes read"
            try:
                got += view[: stream.recv_into(view)]
            except BlockingIOError:
                pass
        assert bytes(got) == payload
    finally:
        release.set()
        thread.join(10)
        stream.close()


def test_a_tls_conn_reads_whole_records(ca: TestCA) -> None:
    """Plain connections read 479 bytes while their reads are small (netio.SMALL_READ); a
    TLS connection must not: the rest of a decrypted record would stay inside the stream,
    where no readiness event announces it (pgbench through TLS stalled that way)."""
    files = ca.issue("conn-reads")
    server_tls = tls.ServerTLS.load(str(files.cert), str(files.key))
    ours, theirs = socket.socketpair()
    payload = os.urandom(4 * netio.SMALL_READ)  # one TLS record
    sent = threading.Event()
    release = threading.Event()

    thread = threading.Thread(
        target=_send_over_tls, args=(theirs, payload, sent, release), daemon=True
    )
    thread.start()
    conn = netio.Conn(tls.accept(ours, server_tls).detach())
    try:
        assert not conn.plain
        assert sent.wait(10)
        got = b""
        while len(got) < len(payload):
            poller = select.poll()
            poller.register(conn.fd, select.POLLIN)
            assert poller.poll(5_000), f"stalled with {len(got)} of {len(payload)} bytes read"
            data = conn.recv()
            assert data != b"", "unexpected EOF"
            got += data or b""
        assert got == payload
    finally:
        release.set()
        thread.join(10)
        conn.close_socket()
