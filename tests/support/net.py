"""Local TCP for integration tests: free ports, waiting for a port, and a minimal Postgres
wire client that reports the server's ErrorResponse fields (libpq hides SQLSTATE at login)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import socket
import struct
import time
from pathlib import Path

PROTOCOL_3_0 = 196608


def _ports_below_ephemeral() -> range:
    """Ports the kernel never hands to an outgoing connection: below its ephemeral range
    (``ip_local_port_range``, 32768-60999 by default), above the usual services."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(20000, low) if low - 20000 >= 2000 else range(0)


_PORTS = _ports_below_ephemeral()
_given: set[int] = set()
_cursor = random.randrange(len(_PORTS)) if _PORTS else 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing is bound to right now, for a process about to
    listen on it. Taken from below the kernel's ephemeral range and never twice in this test
    run: a port the kernel picked (bind to port 0) is an ephemeral one, and an outgoing
    connection made before the listener starts can be given it (seen in CI: the pooler's
    http listener found "address already in use")."""
    global _cursor
    for _ in range(len(_PORTS)):
        port = _PORTS[_cursor]
        _cursor = (_cursor + 1) % len(_PORTS)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no such range here
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_state(port: int, peer_port: int) -> str | None:
    """The /proc/net/tcp state of the listener-side socket of a connection from
    ``peer_port`` to ``port`` (hex: 01 ESTABLISHED, 03 SYN_RECV), None if there is none."""
    with open("/proc/net/tcp") as proc:
        for line in proc.readlines()[1:]:
            fields = line.split()
            local = int(fields[1].split(":")[1], 16)
            remote = int(fields[2].split(":")[1], 16)
            if local == port and remote == peer_port:
                return fields[3]
    return None


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once ``host:port`` accepts TCP connections; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last_error = exc
            time.sleep(0.05)
    raise TimeoutError(
        f"nothing accepted TCP connections on {host}:{port} within {timeout:.1f} s "
        f"(last error: {last_error})"
    )


# -- a minimal wire-protocol client -------------------------------------------------------


class WireError(Exception):
    """The peer broke the protocol or closed the connection early."""


class WireClient:
    """A blocking, unencrypted Postgres protocol 3.0 client, just enough to log in.

    ``login()`` returns the ErrorResponse fields (``{"S": "FATAL", "C": "28P01", "M": ...}``)
    when the server refuses, or ``{}`` once ReadyForQuery arrives; the socket then stays open.
    Supports trust, cleartext, MD5 and SCRAM-SHA-256.
    """

    def __init__(
        self, host: str, port: int, timeout: float = 10.0, source: str | None = None
    ) -> None:
        # ``source``: a local address to connect from (e.g. 127.0.0.2, another loopback IP).
        address = (source, 0) if source else None
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=address)
        self.params: dict[str, str] = {}
        self.backend_key = b""  # BackendKeyData's body: pid and secret key

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_startup(self, params: dict[str, str]) -> None:
        body = struct.pack("!i", PROTOCOL_3_0)
        for key, value in params.items():
            body += key.encode() + b"\0" + value.encode() + b"\0"
        body += b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)

    def send(self, msg_type: bytes, body: bytes) -> None:
        self.sock.sendall(msg_type + struct.pack("!i", len(body) + 4) + body)

    def read_message(self) -> tuple[bytes, bytes]:
        header = self._recv_exact(5)
        (length,) = struct.unpack("!i", header[1:])
        return header[:1], self._recv_exact(length - 4)

    def _recv_exact(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            data = self.sock.recv(n - len(chunks))
            if not data:
                raise WireError(f"connection closed after {len(chunks)} of {n} bytes")
            chunks += data
        return bytes(chunks)

    def login(self, user: str, password: str, database: str) -> dict[str, str]:
        self.send_startup({"user": user, "database": database})
        scram: _Scram | None = None
        while True:
            kind, body = self.read_message()
            if kind == b"E":
                return parse_error_fields(body)
            if kind == b"Z":
                return {}
            if kind == b"S":
                name, value, _ = body.split(b"\0", 2)
                self.params[name.decode()] = value.decode()
            elif kind == b"K":
                self.backend_key = body
            elif kind == b"R":
                scram = self._auth_step(body, user, password, scram)

    def scram_until_final(self, params: dict[str, str], password: str) -> tuple[bytes, _Scram]:
        """Send the startup packet and SCRAM's first message; return the client-final
        message (not sent, so a test can send it together with what must follow it) and
        the exchange (to verify the server's final message)."""
        self.send_startup(params)
        kind, body = self.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10, (kind, body)
        scram = _Scram(password)
        first = scram.client_first()
        self.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        kind, body = self.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 11, (kind, body)
        return scram.client_final(body[4:]), scram

    def _auth_step(
        self, body: bytes, user: str, password: str, scram: _Scram | None
    ) -> _Scram | None:
        (code,) = struct.unpack("!i", body[:4])
        if code == 3:  # cleartext
            self.send(b"p", password.encode() + b"\0")
        elif code == 5:  # md5
            inner = hashlib.md5((password + user).encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
            self.send(b"p", b"md5" + outer.encode() + b"\0")
        elif code == 10:  # SASL
            scram = _Scram(password)
            first = scram.client_first()
            self.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        elif code == 11:  # SASL continue
            assert scram is not None, "SASLContinue before SASL"
            self.send(b"p", scram.client_final(body[4:]))
        elif code == 12:  # SASL final
            assert scram is not None, "SASLFinal before SASL"
            scram.verify_server(body[4:])
        elif code != 0:
            raise WireError(f"unsupported authentication request {code}")
        return scram


def parse_error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse body -> {field code: value}."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def login_error(host: str, port: int, user: str, password: str, database: str) -> dict[str, str]:
    """Log in once and hang up; return the ErrorResponse fields, or {} if the login worked."""
    with WireClient(host, port) as client:
        return client.login(user, password, database)


class _Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802 / 7677), no channel binding."""

    def __init__(self, password: str) -> None:
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def client_first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise WireError("server nonce does not extend the client nonce")
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password, base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server(self, server_final: bytes) -> None:
        text = server_final.decode()
        if text != "v=" + base64.b64encode(self.server_signature).decode():
            raise WireError(f"bad SCRAM server signature: {text!r}")
