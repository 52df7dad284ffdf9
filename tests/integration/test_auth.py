"""Client auth (SCRAM, MD5), uniform refusals, and every upstream auth method Postgres offers."""

from __future__ import annotations

import re
import struct
import time
from typing import Any

import psycopg2
import pytest

from tests.conftest import PASSWORDS, PoolerFactory, default_tenants
from tests.support.net import WireClient, login_error
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, both_modes, tenant_doc

pytestmark = pytest.mark.integration

UPSTREAM_METHODS = {
    "trustuser": 0,  # AuthenticationOk at once
    "pwuser": 3,  # cleartext password
    "md5user": 5,  # MD5
    "app1user": 10,  # SASL (SCRAM-SHA-256)
}
WRONG = "wrongPw4tests"
ROTATED = ("rotOldPw4tests", "rotNewPw4tests")


def auth_tenants(pg: PgCluster, rot_password: str = ROTATED[0]) -> dict[str, Any]:
    """t1, t2, "up" (one user per upstream auth method, all on app1), "badup" (a user
    whose password Postgres does not accept) and "rot" (trust upstream, for rotation)."""
    doc = default_tenants(pg)
    doc["tenants"].append(tenant_doc("rot", "app1", pg.port, both_modes("trustuser", rot_password)))
    up_users = [u for name in UPSTREAM_METHODS for u in both_modes(name, PASSWORDS[name])]
    doc["tenants"].append(tenant_doc("up", "app1", pg.port, up_users))
    doc["tenants"].append(
        tenant_doc("badup", "app1", pg.port, both_modes("app1user", "notThePgPassword"))
    )
    return doc


@pytest.fixture(scope="module")
def scram_pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    return pooler_factory(auth_tenants(pg))


@pytest.fixture(scope="module")
def md5_pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    return pooler_factory(auth_tenants(pg), client_auth="md5")


def first_auth_request(host: str, port: int, user: str, database: str) -> bytes:
    """The body of the first Authentication message the server sends to ``user``."""
    with WireClient(host, port) as client:
        client.send_startup({"user": user, "database": database})
        kind, body = client.read_message()
    assert kind == b"R", (kind, body)
    return body


def auth_code(body: bytes) -> int:
    return int(struct.unpack("!i", body[:4])[0])


def select_user(conn: Any) -> tuple[str, str]:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, current_database()")
            row = cur.fetchone()
        conn.commit()
        return row[0], row[1]
    finally:
        conn.close()


# -- the harness itself ------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "code"), sorted(UPSTREAM_METHODS.items()))
def test_cluster_asks_each_role_for_its_auth_method(pg: PgCluster, role: str, code: int) -> None:
    assert auth_code(first_auth_request(pg.host, pg.port, role, "app1")) == code
    assert login_error(pg.host, pg.port, role, PASSWORDS[role], "app1") == {}


def test_cluster_stores_md5user_as_md5_and_others_as_scram(pg: PgCluster) -> None:
    rows = dict(pg.execute("SELECT rolname, left(rolpassword, 14) FROM pg_authid"))
    assert rows["md5user"].startswith("md5")
    assert rows["app1user"] == "SCRAM-SHA-256$"


# -- client side -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_scram_client_auth(scram_pooler: PoolerProcess, mode: str) -> None:
    body = first_auth_request(scram_pooler.host, scram_pooler.port(mode), "app1user.t1", "app1")
    assert auth_code(body) == 10
    mechanisms = [m for m in body[4:].split(b"\0") if m]
    assert mechanisms == [b"SCRAM-SHA-256"]  # never -PLUS without TLS
    conn = scram_pooler.connect("app1user.t1", PASSWORDS["app1user"], "app1", mode)
    assert select_user(conn) == ("app1user", "app1")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_md5_client_auth(md5_pooler: PoolerProcess, mode: str) -> None:
    body = first_auth_request(md5_pooler.host, md5_pooler.port(mode), "app1user.t1", "app1")
    assert auth_code(body) == 5
    conn = md5_pooler.connect("app1user.t1", PASSWORDS["app1user"], "app1", mode)
    assert select_user(conn) == ("app1user", "app1")
    fields = login_error(md5_pooler.host, md5_pooler.port(mode), "app1user.t1", WRONG, "app1")
    assert fields.get("C") == "28P01", fields


BAD_LOGINS = [
    ("unknown tenant", "app1user.nosuchtenant", PASSWORDS["app1user"]),
    ("unknown user", "nosuchuser.t1", PASSWORDS["app1user"]),
    ("wrong password", "app1user.t1", WRONG),
]


@pytest.mark.parametrize("client_auth", ["scram-sha-256", "md5"])
def test_bad_logins_get_one_and_the_same_refusal(
    scram_pooler: PoolerProcess, md5_pooler: PoolerProcess, client_auth: str
) -> None:
    """Unknown tenant, unknown user and wrong password are indistinguishable (apart from
    echoing the name the client sent)."""
    pooler = scram_pooler if client_auth == "scram-sha-256" else md5_pooler
    wire, libpq = {}, {}
    for label, login, password in BAD_LOGINS:
        fields = login_error(pooler.host, pooler.transaction_port, login, password, "app1")
        assert fields.get("C") == "28P01", (label, fields)
        assert fields.get("S") == "FATAL", (label, fields)
        wire[label] = fields["M"].replace(login, "<login>")
        with pytest.raises(psycopg2.OperationalError) as excinfo:
            pooler.connect(login, password, "app1")
        libpq[label] = str(excinfo.value).replace(login, "<login>")
    assert len(set(wire.values())) == 1, wire
    assert len(set(libpq.values())) == 1, libpq
    assert "password authentication failed" in wire["wrong password"]


def scram_server_first(pooler: PoolerProcess, login: str) -> dict[str, str]:
    """Start a SCRAM exchange as ``login`` and return the server-first attributes."""
    with WireClient(pooler.host, pooler.transaction_port) as client:
        client.send_startup({"user": login, "database": "app1"})
        kind, body = client.read_message()
        assert kind == b"R" and auth_code(body) == 10
        first = b"n,,n=,r=fixednonce4tests"
        client.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        kind, body = client.read_message()
    assert kind == b"R" and auth_code(body) == 11, (kind, body)
    return dict(item.split("=", 1) for item in body[4:].decode().split(","))


def test_unknown_users_get_a_stable_scram_salt(scram_pooler: PoolerProcess) -> None:
    """A changing salt for a name that does not exist would tell an attacker so."""
    ghost = [scram_server_first(scram_pooler, "ghost.t1") for _ in range(2)]
    real = scram_server_first(scram_pooler, "app1user.t1")
    assert ghost[0]["s"] == ghost[1]["s"]
    assert ghost[0]["i"] == ghost[1]["i"] == real["i"]
    assert len(ghost[0]["s"]) == len(real["s"])


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_missing_tenant_suffix_says_how_to_connect(scram_pooler: PoolerProcess, mode: str) -> None:
    port = scram_pooler.port(mode)
    fields = login_error(scram_pooler.host, port, "app1user", PASSWORDS["app1user"], "app1")
    assert fields.get("C") == "08P01", fields
    assert fields.get("S") == "FATAL", fields
    assert "<user>.<tenant>" in fields["M"]
    with pytest.raises(psycopg2.OperationalError, match=re.escape("<user>.<tenant>")):
        scram_pooler.connect("app1user", PASSWORDS["app1user"], "app1", mode)


# -- upstream side -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("db_user", sorted(UPSTREAM_METHODS))
def test_upstream_auth_method(scram_pooler: PoolerProcess, db_user: str, mode: str) -> None:
    conn = scram_pooler.connect(f"{db_user}.up", PASSWORDS[db_user], "app1", mode)
    assert select_user(conn) == (db_user, "app1")


def test_upstream_password_rejected_by_postgres(scram_pooler: PoolerProcess) -> None:
    """The tenant's stored password is wrong for Postgres: the client learns so, quickly."""
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError) as excinfo:
        scram_pooler.connect("app1user.badup", "notThePgPassword", "app1")
    assert time.monotonic() - started < 5
    assert "password authentication failed" in str(excinfo.value)
    assert "notThePgPassword" not in str(excinfo.value)
    assert "notThePgPassword" not in scram_pooler.log_text()
    assert scram_pooler.alive()


def test_password_change_reaches_the_running_pooler(
    scram_pooler: PoolerProcess, pg: PgCluster
) -> None:
    old, new = ROTATED
    select_user(scram_pooler.connect("trustuser.rot", old, "app1"))
    scram_pooler.apply(auth_tenants(pg, rot_password=new), settle=False)
    conn, seconds = scram_pooler.connect_eventually("trustuser.rot", new, "app1", timeout=5)
    assert select_user(conn) == ("trustuser", "app1")
    assert seconds < 3, f"the new password took {seconds:.1f} s to arrive"
    fields = login_error(
        scram_pooler.host, scram_pooler.transaction_port, "trustuser.rot", old, "app1"
    )
    assert fields.get("C") == "28P01", fields


def test_no_password_reaches_the_logs(
    scram_pooler: PoolerProcess, md5_pooler: PoolerProcess
) -> None:
    """Runs after the failures above: refusals are logged, the secrets never."""
    secrets = [*PASSWORDS.values(), WRONG, *ROTATED, "notThePgPassword"]
    for pooler in (scram_pooler, md5_pooler):
        log = pooler.log_text()
        assert str(pooler.transaction_port) in log, "an empty log would prove nothing"
        leaked = [secret for secret in secrets if secret in log]
        assert leaked == [], f"{pooler.log_path} contains passwords"
