"""The login's buffered reads (pooler.loginio) against a running pooler, with raw sockets:
bytes a client pipelines past its last login message reach Postgres, a startup packet
split across TCP segments logs in, and bytes piggybacked on an SSLRequest are refused
(CVE-2021-3935) also when no TLS certificate is configured."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.conftest import PASSWORDS, PoolerFactory
from tests.support.net import WireClient, parse_error_fields
from tests.support.pg import PgCluster
from tests.support.pooler import HOST, PoolerProcess, both_modes, tenant_doc

pytestmark = pytest.mark.integration

USER, PASSWORD = "app1user", PASSWORDS["app1user"]


@pytest.fixture(scope="module")
def pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    doc = {"tenants": [tenant_doc("t1", "app1", pg.port, both_modes(USER, PASSWORD))]}
    return pooler_factory(doc)


def _query(text: str) -> bytes:
    body = text.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def _rows_until_ready(client: WireClient) -> list[bytes]:
    values = []
    while True:
        kind, body = client.read_message()
        if kind == b"E":
            raise AssertionError(parse_error_fields(body))
        if kind == b"D":
            (size,) = struct.unpack("!i", body[2:6])
            values.append(body[6 : 6 + size])
        if kind == b"Z":
            return values


@pytest.mark.parametrize("mode_port", ["transaction_port", "session_port"])
def test_query_pipelined_with_the_last_scram_message_is_answered(
    pooler: PoolerProcess, mode_port: str
) -> None:
    with WireClient(HOST, getattr(pooler, mode_port)) as client:
        startup = {"user": f"{USER}.t1", "database": "app1"}
        final, scram = client.scram_until_final(startup, PASSWORD)
        # SASLResponse and a query in one segment, before the server said anything.
        client.sock.sendall(b"p" + struct.pack("!i", len(final) + 4) + final + _query("SELECT 42"))
        kind, body = client.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 12
        scram.verify_server(body[4:])
        kind, body = client.read_message()
        assert (kind, body) == (b"R", struct.pack("!i", 0))
        while client.read_message()[0] != b"Z":  # ParameterStatus..., BackendKeyData
            pass
        assert _rows_until_ready(client) == [b"42"]
        client.sock.sendall(_query("SELECT 43"))  # and the session goes on as usual
        assert _rows_until_ready(client) == [b"43"]


def test_startup_packet_split_across_segments_logs_in(pooler: PoolerProcess) -> None:
    body = struct.pack("!i", 3 << 16) + f"user\0{USER}.t1\0database\0app1\0\0".encode()
    packet = struct.pack("!i", len(body) + 4) + body
    with WireClient(HOST, pooler.transaction_port) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for cut in (2, 7):
            client.sock.sendall(packet[:cut])
            packet = packet[cut:]
            time.sleep(0.05)
        client.sock.sendall(packet)
        kind, body = client.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10


def test_startup_piggybacked_on_ssl_request_is_refused_without_tls(
    pooler: PoolerProcess,
) -> None:
    body = struct.pack("!i", 3 << 16) + f"user\0{USER}.t1\0database\0app1\0\0".encode()
    startup = struct.pack("!i", len(body) + 4) + body
    ssl_request = struct.pack("!ii", 8, 80877103)
    with socket.create_connection((HOST, pooler.transaction_port), 10) as sock:
        sock.sendall(ssl_request + startup)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data[:1] == b"E", data[:40]
    fields = parse_error_fields(data[5:])
    assert fields["C"] == "08P01"
    assert "received unencrypted data after SSL request" in fields["M"]
    with WireClient(HOST, pooler.transaction_port) as client:  # still serving
        assert client.login(f"{USER}.t1", PASSWORD, "app1") == {}
