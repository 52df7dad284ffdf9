"""TLS with real clients: psql/psycopg2 sslmode=require and verify-full, SNI tenants,
channel binding, direct TLS, CVE-2021-3935, enforce_ssl, and TLS to a Postgres with ssl=on."""

from __future__ import annotations

import io
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import PASSWORDS, PoolerFactory
from tests.support.certs import CertFiles, TestCA
from tests.support.net import WireClient, parse_error_fields
from tests.support.pg import PgCluster, find_bindir
from tests.support.pooler import REPO_ROOT, PoolerProcess, both_modes, manage_env, tenant_doc

pytestmark = pytest.mark.integration

SNI_NAME = "sni1.greenvisor.test"
PW = PASSWORDS["app1user"]
UP_PW = "tlsUpPw4tests"
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture(scope="module")
def pooler_cert(ca: TestCA) -> CertFiles:
    return ca.issue("greenvisor", ("localhost", SNI_NAME))


@pytest.fixture(scope="module")
def tls_pg(ca: TestCA) -> Iterator[PgCluster]:
    """A small cluster of this module's own with ssl=on (its certificate names 127.0.0.1)."""
    bindir = find_bindir()
    assert bindir is not None, "PostgreSQL server binaries are needed"
    cluster = PgCluster("tlsSuperPw4tests", bindir)
    try:
        cluster.init()
        files = ca.issue("upstream", ("localhost",))
        for source, name in ((files.cert, "server.crt"), (files.key, "server.key")):
            target = cluster.datadir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            cluster._give_to_os_user(target)
        with (cluster.datadir / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        cluster.start()
        cluster.create_role("tlsuser", UP_PW)
        cluster.create_database("tlsdb", owner="tlsuser")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("tls-other-ca"), name="Some other CA")


@pytest.fixture(scope="module")
def tls_pooler(
    pooler_factory: PoolerFactory,
    pg: PgCluster,
    tls_pg: PgCluster,
    ca: TestCA,
    other_ca: TestCA,
    pooler_cert: CertFiles,
) -> PoolerProcess:
    users = both_modes("app1user", PW)
    up_users = both_modes("tlsuser", UP_PW)
    doc = {
        "tenants": [
            tenant_doc("t1", "app1", pg.port, users, sni_hostname=SNI_NAME),
            tenant_doc("sec", "app1", pg.port, users, enforce_ssl=True),
            tenant_doc(
                "up",
                "tlsdb",
                tls_pg.port,
                up_users,
                upstream_ssl=True,
                upstream_verify="peer",
                upstream_tls_ca=ca.pem,
            ),
            tenant_doc("upnone", "tlsdb", tls_pg.port, up_users, upstream_ssl=True),
            tenant_doc(
                "upbadca",
                "tlsdb",
                tls_pg.port,
                up_users,
                upstream_ssl=True,
                upstream_verify="peer",
                upstream_tls_ca=other_ca.pem,
            ),
            tenant_doc("upnossl", "app1", pg.port, users, upstream_ssl=True),
        ]
    }
    args = ["--tls-cert", str(pooler_cert.cert), "--tls-key", str(pooler_cert.key)]
    return pooler_factory(doc, extra_args=args)


def psql(pooler: PoolerProcess, conninfo: str, sql: str, password: str = PW) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    env["PGCONNECT_TIMEOUT"] = "30"
    return subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", conninfo, "-c", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def conninfo(pooler: PoolerProcess, user: str = "app1user.t1", **extra: str) -> str:
    parts = {"host": pooler.host, "port": str(pooler.transaction_port), "user": user}
    parts["dbname"] = "app1"
    parts.update(extra)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def tls_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def read_fatal(sock: Any) -> dict[str, str]:
    client = WireClient.__new__(WireClient)
    client.sock = sock
    kind, body = client.read_message()
    assert kind == b"E", (kind, body)
    return parse_error_fields(body)


# -- TLS to clients ----------------------------------------------------------------------------


def test_psql_sslmode_require(tls_pooler: PoolerProcess) -> None:
    out = psql(tls_pooler, conninfo(tls_pooler, sslmode="require"), r"\conninfo")
    assert out.returncode == 0, out.stderr
    assert "SSL connection (protocol: TLSv1." in out.stdout


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_psql_verify_full_against_our_ca(tls_pooler: PoolerProcess, ca: TestCA, mode: str) -> None:
    info = conninfo(tls_pooler, sslmode="verify-full", sslrootcert=str(ca.path))
    info = info.replace(str(tls_pooler.transaction_port), str(tls_pooler.port(mode)))
    out = psql(tls_pooler, info, "SELECT current_user || ' ' || current_database()")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app1user app1"


def test_verify_full_refuses_a_certificate_from_another_ca(
    tls_pooler: PoolerProcess, other_ca: TestCA
) -> None:
    out = psql(
        tls_pooler,
        conninfo(tls_pooler, sslmode="verify-full", sslrootcert=str(other_ca.path)),
        "SELECT 1",
    )
    assert out.returncode != 0
    assert "certificate verify failed" in out.stderr


def test_big_rows_and_copy_through_tls(tls_pooler: PoolerProcess) -> None:
    """Megabytes both ways: partial TLS writes and reads that leave records buffered."""
    conn = psycopg2.connect(conninfo(tls_pooler, password=PW, sslmode="require"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT repeat(md5(g::text), 50000) FROM generate_series(1, 8) g")
            rows = cur.fetchall()
            assert [len(r[0]) for r in rows] == [32 * 50000] * 8
            cur.execute("CREATE TEMP TABLE blob (n int, t text)")
            payload = "".join(f"{i}\t{'y' * 5000}{i}\n" for i in range(2000))
            cur.copy_from(io.StringIO(payload), "blob", columns=("n", "t"))
            cur.execute("SELECT count(*), sum(length(t)) FROM blob")
            count, total = cur.fetchone()
        conn.rollback()
    finally:
        conn.close()
    assert count == 2000
    assert total == sum(5000 + len(str(i)) for i in range(2000))


def test_tls_offers_scram_plus_first(tls_pooler: PoolerProcess) -> None:
    with socket.create_connection((tls_pooler.host, tls_pooler.transaction_port), 10) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        sock = tls_context().wrap_socket(raw)
        client = WireClient.__new__(WireClient)
        client.sock = sock
        client.send_startup({"user": "app1user.t1", "database": "app1"})
        kind, body = client.read_message()
    assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10
    assert [m for m in body[4:].split(b"\0") if m] == [b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]


def test_channel_binding_require_over_tls(tls_pooler: PoolerProcess) -> None:
    info = conninfo(tls_pooler, sslmode="require", channel_binding="require")
    out = psql(tls_pooler, info, "SELECT 1")
    assert out.returncode == 0, out.stderr
    # libpq 15 verifies our server signature, which covers the certificate hash.
    conn = psycopg2.connect(info, password=PW)
    conn.close()


def test_channel_binding_require_over_plaintext_is_refused(tls_pooler: PoolerProcess) -> None:
    out = psql(
        tls_pooler, conninfo(tls_pooler, sslmode="disable", channel_binding="require"), "SELECT 1"
    )
    assert out.returncode != 0
    assert "channel binding required, but SSL not in use" in out.stderr, out.stderr


def test_wrong_password_over_tls_is_the_usual_refusal(tls_pooler: PoolerProcess) -> None:
    out = psql(tls_pooler, conninfo(tls_pooler, sslmode="require"), "SELECT 1", password="nope")
    assert out.returncode != 0
    assert 'password authentication failed for user "app1user.t1"' in out.stderr


# -- SNI ----------------------------------------------------------------------------------------


def test_sni_names_the_tenant(tls_pooler: PoolerProcess, ca: TestCA) -> None:
    info = conninfo(
        tls_pooler,
        user="app1user",
        host=SNI_NAME,
        hostaddr="127.0.0.1",
        sslmode="verify-full",
        sslrootcert=str(ca.path),
    )
    out = psql(tls_pooler, info, "SELECT current_user || ' ' || current_database()")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app1user app1"
    # The suffix naming the same tenant is accepted too.
    out = psql(tls_pooler, info.replace("user=app1user", "user=app1user.t1"), "SELECT 1")
    assert out.returncode == 0, out.stderr


def test_without_sni_the_user_name_needs_the_tenant(tls_pooler: PoolerProcess) -> None:
    out = psql(
        tls_pooler, conninfo(tls_pooler, user="app1user", sslmode="require", sslsni="0"), "SELECT 1"
    )
    assert out.returncode != 0
    assert "tenant id missing" in out.stderr


# -- enforce_ssl ------------------------------------------------------------------------------


def test_enforce_ssl_refuses_plaintext(tls_pooler: PoolerProcess) -> None:
    out = psql(tls_pooler, conninfo(tls_pooler, user="app1user.sec", sslmode="disable"), "SELECT 1")
    assert out.returncode != 0
    assert 'tenant "sec" accepts only encrypted connections' in out.stderr
    assert "sslmode=require" in out.stderr
    with WireClient(tls_pooler.host, tls_pooler.transaction_port) as client:
        fields = client.login("app1user.sec", PW, "app1")
    assert fields["C"] == "28000" and fields["S"] == "FATAL"


def test_enforce_ssl_accepts_tls(tls_pooler: PoolerProcess) -> None:
    out = psql(tls_pooler, conninfo(tls_pooler, user="app1user.sec", sslmode="require"), "SELECT 1")
    assert out.returncode == 0, out.stderr


# -- hostile negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [SSL_REQUEST, GSSENC_REQUEST], ids=["ssl", "gssenc"])
def test_bytes_after_encryption_request_end_the_connection(
    tls_pooler: PoolerProcess, request_bytes: bytes
) -> None:
    """CVE-2021-3935: a startup packet piggybacked on the request is never processed."""
    startup = struct.pack("!i", 196608) + b"user\0app1user.t1\0database\0app1\0\0"
    with socket.create_connection((tls_pooler.host, tls_pooler.transaction_port), 10) as sock:
        sock.sendall(request_bytes + struct.pack("!i", len(startup) + 4) + startup)
        fields = read_fatal(sock)
        assert sock.recv(1) == b""
    assert fields["C"] == "08P01"
    assert "received unencrypted data after SSL request" in fields["M"]


def test_direct_tls_with_alpn(tls_pooler: PoolerProcess) -> None:
    with socket.create_connection((tls_pooler.host, tls_pooler.transaction_port), 10) as raw:
        sock = tls_context(["postgresql"]).wrap_socket(raw)
        assert sock.selected_alpn_protocol() == "postgresql"
        client = WireClient.__new__(WireClient)
        client.sock = sock
        client.params = {}
        assert client.login("app1user.t1", PW, "app1") == {}
        client.send(b"Q", b"SELECT 42\0")
        kinds = []
        while True:
            kind, body = client.read_message()
            kinds.append(kind)
            if kind == b"D":
                assert body.endswith(b"42")
            if kind == b"Z":
                break
    assert b"D" in kinds


def test_query_pipelined_with_the_last_auth_message(tls_pooler: PoolerProcess) -> None:
    """A query in the same TLS record as the SCRAM proof is already decrypted when the login
    ends; the relay must still answer it (no watcher fires for it)."""
    with socket.create_connection((tls_pooler.host, tls_pooler.transaction_port), 10) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        client = WireClient.__new__(WireClient)
        client.sock = tls_context().wrap_socket(raw)
        client.params = {}
        final, _ = client.scram_until_final({"user": "app1user.t1", "database": "app1"}, PW)
        query = b"SELECT 'pipelined'\0"
        message = b"p" + struct.pack("!i", len(final) + 4) + final
        message += b"Q" + struct.pack("!i", len(query) + 4) + query
        client.sock.sendall(message)  # one TLS record
        kinds = []
        while True:
            kind, body = client.read_message()
            kinds.append(kind)
            if kind == b"D":
                assert body.endswith(b"pipelined")
            if kind == b"Z" and b"D" in kinds:
                break
            assert kind != b"E", parse_error_fields(body)


def test_direct_tls_without_alpn_is_refused(tls_pooler: PoolerProcess) -> None:
    with socket.create_connection((tls_pooler.host, tls_pooler.transaction_port), 10) as raw:
        sock = tls_context().wrap_socket(raw)
        fields = read_fatal(sock)
    assert fields["C"] == "08P01"
    assert 'ALPN "postgresql"' in fields["M"]


def test_no_certificate_means_n_and_direct_tls_refused(pooler: PoolerProcess) -> None:
    with socket.create_connection((pooler.host, pooler.transaction_port), 10) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"N"
    out = psql(pooler, conninfo(pooler, sslmode="require"), "SELECT 1")
    assert out.returncode != 0
    assert "server does not support SSL" in out.stderr
    with (
        socket.create_connection((pooler.host, pooler.transaction_port), 10) as raw,
        pytest.raises((ssl.SSLError, OSError)),
    ):
        tls_context(["postgresql"]).wrap_socket(raw)
    # ...and the pooler still serves everyone.
    assert psql(pooler, conninfo(pooler), "SELECT 1").returncode == 0


@pytest.mark.parametrize("which", ["key-missing", "key-unreadable"])
def test_a_bad_certificate_pair_stops_start_up(
    tmp_path: Path, sqlite_template: Path, pooler_cert: CertFiles, which: str
) -> None:
    shutil.copyfile(sqlite_template, tmp_path / "meta.sqlite3")
    pooler = PoolerProcess(tmp_path, {"tenants": []})
    args = ["--tls-cert", str(pooler_cert.cert)]
    if which == "key-unreadable":
        args += ["--tls-key", str(tmp_path / "nope.key")]
    out = subprocess.run(
        [*pooler.command(), "--no-migrate", *args],
        cwd=REPO_ROOT,
        env=manage_env(pooler.database_url),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    expected = "give both --tls-cert and --tls-key" if which == "key-missing" else "nope.key"
    assert expected in out.stderr, out.stderr


# -- TLS upstream -------------------------------------------------------------------------------


def _upstream_ssl(pooler: PoolerProcess, tenant: str) -> Any:
    return psql(
        pooler,
        conninfo(pooler, user=f"tlsuser.{tenant}", dbname="tlsdb"),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        password=UP_PW,
    )


@pytest.mark.parametrize("tenant", ["up", "upnone"])
def test_upstream_over_tls(tls_pooler: PoolerProcess, tenant: str) -> None:
    out = _upstream_ssl(tls_pooler, tenant)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "t"


def test_upstream_verify_peer_with_the_wrong_ca(tls_pooler: PoolerProcess) -> None:
    out = _upstream_ssl(tls_pooler, "upbadca")
    assert out.returncode != 0
    assert "TLS certificate failed verification" in out.stderr, out.stderr
    assert "upstream_tls_ca" in out.stderr


def test_upstream_ssl_to_a_server_without_ssl(tls_pooler: PoolerProcess) -> None:
    out = psql(tls_pooler, conninfo(tls_pooler, user="app1user.upnossl"), "SELECT 1")
    assert out.returncode != 0
    assert "does not accept TLS" in out.stderr, out.stderr


def test_plaintext_still_works_next_to_tls(tls_pooler: PoolerProcess) -> None:
    out = psql(tls_pooler, conninfo(tls_pooler, sslmode="disable"), "SELECT 1")
    assert out.returncode == 0, out.stderr
