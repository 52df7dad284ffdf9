"""Hostile clients and a hostile upstream, over raw sockets against a running pooler.

Each case must end in a clear FATAL (08P01 for protocol violations) or a clean close, and
the pooler must keep serving everybody else: every test ends by logging in normally.
"""

from __future__ import annotations

import base64
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import PASSWORDS, PoolerFactory
from tests.support.net import WireClient, free_port, parse_error_fields, tcp_state
from tests.support.pg import PgCluster
from tests.support.pooler import HOST, PoolerProcess, both_modes, tenant_doc

pytestmark = pytest.mark.integration

LOGIN_TIMEOUT = 8.0
GOOD = ("app1user", PASSWORDS["app1user"])
V3 = 3 << 16


# -- a malicious upstream ------------------------------------------------------------------


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _read_startup(conn: socket.socket) -> None:
    (length,) = struct.unpack("!I", _recv(conn, 4))
    _recv(conn, length - 4)


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_message(conn: socket.socket) -> bytes:
    header = _recv(conn, 5)
    (length,) = struct.unpack("!I", header[1:])
    return _recv(conn, length - 4)


def _sasl_then(nonce_extra: int) -> Callable[[socket.socket], None]:
    def behave(conn: socket.socket) -> None:
        conn.sendall(_msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"))
        body = _read_message(conn)
        first = body[body.index(b"\0") + 5 :].decode()
        client_nonce = first.split("r=", 1)[1]
        salt = base64.b64encode(b"0123456789abcdef").decode()
        reply = f"r={client_nonce}{'A' * nonce_extra},s={salt},i=4096".encode()
        conn.sendall(_msg(b"R", struct.pack("!I", 11) + reply))
        time.sleep(1)

    return behave


BEHAVIOURS: dict[str, Callable[[socket.socket], None]] = {
    # CVE-2026-6665: a server nonce far beyond any sane length (over the login limit, and
    # under it but over the SCRAM nonce limit).
    "hugenonce": _sasl_then(200_000),
    "longnonce": _sasl_then(5_000),
    # CVE-2026-6666: an ErrorResponse without SQLSTATE (and without anything at all).
    "nosqlstate": lambda c: c.sendall(_msg(b"E", b"SFATAL\0Mgo away\0\0")),
    "emptyerror": lambda c: c.sendall(_msg(b"E", b"\0")),
    "garbage": lambda c: c.sendall(bytes(range(256)) * 4),
    "toolong": lambda c: c.sendall(b"R" + struct.pack("!I", 0x7FFFFFF0) + b"\0" * 64),
    "badauth": lambda c: c.sendall(_msg(b"R", b"\0\0")),
}


class FakeUpstream:
    """A listening socket that answers every login with one hostile behaviour."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.port = free_port()
        self.sock = socket.create_server((HOST, self.port))
        self.sock.settimeout(0.5)
        self.behave = behave
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    _read_startup(conn)
                    self.behave(conn)
                except (OSError, ConnectionError, ValueError, IndexError):
                    pass

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    servers = {name: FakeUpstream(behave) for name, behave in BEHAVIOURS.items()}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def hostile_pooler(
    pooler_factory: PoolerFactory, pg: PgCluster, fakes: dict[str, FakeUpstream]
) -> PoolerProcess:
    users = both_modes(*GOOD)
    evil_users = both_modes(*GOOD, pool_checkout_timeout=2000)
    doc = {
        "tenants": [tenant_doc("t1", "app1", pg.port, users)]
        + [tenant_doc(f"evil_{name}", "app1", fake.port, evil_users)
           for name, fake in fakes.items()]
    }  # fmt: skip
    args = ["--client-login-timeout", str(LOGIN_TIMEOUT), "--ban-failures", "0"]
    return pooler_factory(doc, extra_args=args)


def still_serving(pooler: PoolerProcess) -> None:
    assert pooler.alive()
    conn = pooler.connect("app1user.t1", GOOD[1], "app1")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def raw(pooler: PoolerProcess, data: bytes, wait: float = 10.0) -> list[tuple[bytes, bytes]]:
    """Send ``data`` on a fresh connection; return every message until the pooler closes."""
    with socket.create_connection((pooler.host, pooler.transaction_port), timeout=wait) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    messages, pos = [], 0
    while pos + 5 <= len(data):
        (length,) = struct.unpack_from("!I", data, pos + 1)
        messages.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return messages


def fatal_of(messages: list[tuple[bytes, bytes]]) -> dict[str, str]:
    assert messages and messages[-1][0] == b"E", messages
    fields = parse_error_fields(messages[-1][1])
    assert fields["S"] == "FATAL", fields
    return fields


def startup(
    params: dict[str, str] | None = None, version: int = V3, raw_body: bytes = b""
) -> bytes:
    body = struct.pack("!I", version)
    for key, value in (params or {}).items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += raw_body + b"\0"
    return struct.pack("!I", len(body) + 4) + body


LOGIN = {"user": "app1user.t1", "database": "app1"}

# -- the startup packet ----------------------------------------------------------------------

BAD_STARTUPS = {
    "length 0": struct.pack("!I", 0),
    "length 3": struct.pack("!I", 3),
    "length 7": struct.pack("!I", 7) + b"\0\0\0",
    "negative length": struct.pack("!i", -1) + b"\0" * 8,
    "huge length": struct.pack("!I", 0x7FFFFFFF) + b"\0" * 8,
    "password message before startup": _msg(b"p", b"secret\0"),
    "protocol 2.0": startup(LOGIN, version=2 << 16),
    "protocol 4.0": startup(LOGIN, version=4 << 16),
    "NUL inside a value": startup(raw_body=b"user\0app1\0user.t1\0"),
    "invalid UTF-8 name": startup(raw_body=b"us\xffer\0app1user.t1\0"),
    "invalid UTF-8 value": startup(raw_body=b"user\0app1user\xc3.t1\0"),
    "no terminator": struct.pack("!II", 12, V3) + b"user",
}


@pytest.mark.parametrize("case", list(BAD_STARTUPS))
def test_bad_startup_packet_gets_fatal_08p01(hostile_pooler: PoolerProcess, case: str) -> None:
    fields = fatal_of(raw(hostile_pooler, BAD_STARTUPS[case]))
    assert fields["C"] == "08P01", fields
    still_serving(hostile_pooler)


def test_truncated_startup_then_idle_is_cut_by_client_login_timeout(
    hostile_pooler: PoolerProcess,
) -> None:
    packet = startup(LOGIN)
    started = time.monotonic()
    fields = fatal_of(raw(hostile_pooler, packet[:20], wait=LOGIN_TIMEOUT + 10))
    assert fields["C"] == "08P01" and "client_login_timeout" in fields["M"]
    assert time.monotonic() - started >= LOGIN_TIMEOUT - 0.5
    still_serving(hostile_pooler)


def test_second_startup_message_during_auth(hostile_pooler: PoolerProcess) -> None:
    messages = raw(hostile_pooler, startup(LOGIN) + startup(LOGIN))
    assert messages[0][0] == b"R"  # the SASL request for the first one
    assert fatal_of(messages)["C"] == "08P01"
    still_serving(hostile_pooler)


@pytest.mark.parametrize("kind", [b"Q", b"\0", b"y"])
def test_other_message_instead_of_password(hostile_pooler: PoolerProcess, kind: bytes) -> None:
    messages = raw(hostile_pooler, startup(LOGIN) + _msg(kind, b"SELECT 1\0"))
    assert fatal_of(messages)["C"] == "08P01"


def test_oversized_password_message(hostile_pooler: PoolerProcess) -> None:
    data = startup(LOGIN) + b"p" + struct.pack("!I", 0x3FFFFFFF) + b"x" * 100
    assert fatal_of(raw(hostile_pooler, data))["C"] == "08P01"
    still_serving(hostile_pooler)


def test_protocol_3_2_is_negotiated_down(hostile_pooler: PoolerProcess) -> None:
    """3.2 with a _pq_ option: NegotiateProtocolVersion (3.0, the option refused) and the
    login goes on."""
    with socket.create_connection((hostile_pooler.host, hostile_pooler.transaction_port)) as s:
        s.settimeout(10)
        s.sendall(startup({**LOGIN, "_pq_.magic": "on"}, version=V3 | 2))
        kind, body = _read_typed(s)
        assert kind == b"v"
        minor, count = struct.unpack_from("!II", body)
        assert (minor, count) == (V3, 1) and b"_pq_.magic" in body
        kind, body = _read_typed(s)
        assert kind == b"R" and struct.unpack_from("!I", body)[0] == 10
    still_serving(hostile_pooler)


def _read_typed(sock: socket.socket) -> tuple[bytes, bytes]:
    header = _recv(sock, 5)
    (length,) = struct.unpack("!I", header[1:])
    return header[:1], _recv(sock, length - 4)


# -- after login -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("kind", [b"y", b"\0", b"p"])
def test_unknown_message_after_login(hostile_pooler: PoolerProcess, mode: str, kind: bytes) -> None:
    with WireClient(hostile_pooler.host, hostile_pooler.port(mode)) as client:
        assert client.login("app1user.t1", GOOD[1], "app1") == {}
        client.send(kind, b"junk")
        fields = fatal_of(read_until_closed(client.sock))
        assert fields["C"] == "08P01", fields
    still_serving(hostile_pooler)


def test_bad_length_after_login(hostile_pooler: PoolerProcess) -> None:
    with WireClient(hostile_pooler.host, hostile_pooler.transaction_port) as client:
        assert client.login("app1user.t1", GOOD[1], "app1") == {}
        client.sock.sendall(b"Q" + struct.pack("!I", 2))
        assert fatal_of(read_until_closed(client.sock))["C"] == "08P01"
    still_serving(hostile_pooler)


# -- many half-open sockets ------------------------------------------------------------------


def test_ten_thousand_half_open_sockets_do_not_block_logins(
    hostile_pooler: PoolerProcess,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = 10_000
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > count + 500, "fd limit too low"
    sockets: list[socket.socket] = []
    try:
        for i in range(count):
            sock = socket.create_connection((hostile_pooler.host, hostile_pooler.transaction_port))
            # One byte of a startup packet: a connection that sends nothing at all is not
            # even accepted (TCP_DEFER_ACCEPT, below); this one is, and its login waits.
            sock.sendall(b"\0")
            sockets.append(sock)
            if i % 500 == 499:  # never overflow the accept queue (the kernel would drop SYNs)
                wait_accepted(hostile_pooler.transaction_port)
        wait_accepted(hostile_pooler.transaction_port)
        with WireClient(hostile_pooler.host, hostile_pooler.transaction_port, 30) as client:
            assert client.login("app1user.t1", GOOD[1], "app1") == {}
        # ... while the half-open ones are still waiting (not cut yet by the login timeout).
        probe = sockets[-1]
        probe.setblocking(False)
        with pytest.raises(BlockingIOError):
            probe.recv(1)
    finally:
        for sock in sockets:
            sock.close()
    still_serving(hostile_pooler)


def test_silent_connection_waits_in_the_kernel_until_it_speaks(
    hostile_pooler: PoolerProcess,
) -> None:
    """runpooler sets TCP_DEFER_ACCEPT by default (``--tcp-defer-accept``, as PgBouncer's
    tcp_defer_accept): a connection that has sent nothing stays in the kernel (SYN_RECV on
    the listener's side), not in the pooler; its first bytes start the login."""
    port = hostile_pooler.transaction_port
    with socket.create_connection((hostile_pooler.host, port), 10) as sock:
        mine = sock.getsockname()[1]
        time.sleep(0.3)
        assert tcp_state(port, mine) == "03", "a silent connection was accepted (no defer)"
        sock.sendall(startup(LOGIN))
        kind, body = _read_typed(sock)
        assert kind == b"R" and struct.unpack_from("!I", body)[0] == 10  # SASL: served
        assert tcp_state(port, mine) == "01"
    still_serving(hostile_pooler)


def wait_accepted(port: int, timeout: float = 20.0) -> None:
    """Wait until the listening socket on ``port`` has (almost) nothing left to accept."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and accept_queue(port) > 50:
        time.sleep(0.02)


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the IPv4 listener on ``port``."""
    with open("/proc/net/tcp") as proc:
        for line in proc.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    return 0


# -- a malicious upstream --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_malicious_upstream_gives_clear_error(hostile_pooler: PoolerProcess, name: str) -> None:
    with WireClient(hostile_pooler.host, hostile_pooler.transaction_port) as client:
        fields = client.login(f"app1user.evil_{name}", GOOD[1], "app1")
    assert fields.get("S") == "FATAL", fields
    assert fields["C"][:2] in ("08", "28", "57"), fields
    assert fields["M"], fields
    still_serving(hostile_pooler)
