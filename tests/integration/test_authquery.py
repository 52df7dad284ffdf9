"""auth_query end to end: pass-through SCRAM, VALID UNTIL, rotation, unknown users, and the
client's search_path never reaching the query (CVE-2025-12819, CVE-2025-2291,
CVE-2015-6817)."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from tests.conftest import PoolerFactory
from tests.support.net import login_error
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, both_modes, tenant_doc

pytestmark = pytest.mark.integration

DB = "aqdb"
MANAGER = ("aq_mgr", "aqMgrPw4tests")
ALICE = ("aq_alice", "aqAlicePw4tests")
EXPIRED = ("aq_bob", "aqBobPw4tests")
ROTATING = ("aq_rot", "aqRotOldPw4tests", "aqRotNewPw4tests")
ATTACKER_PASSWORD = "hackedPw4tests"
AUTH_QUERY = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname=$1"


def _scram_verifier(pg: PgCluster, password: str) -> str:
    """A SCRAM verifier for ``password`` made by Postgres (via a throwaway role)."""
    pg.execute("DROP ROLE IF EXISTS aq_scratch")
    pg.create_role("aq_scratch", password)
    rows = pg.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'aq_scratch'")
    pg.execute("DROP ROLE aq_scratch")
    return str(rows[0][0])


@pytest.fixture(scope="module")
def roles(pg: PgCluster) -> None:
    for name in (MANAGER[0], ALICE[0], EXPIRED[0], ROTATING[0]):
        pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    pg.create_role(MANAGER[0], MANAGER[1])
    pg.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(MANAGER[0])))
    for name, password in (ALICE, EXPIRED, ROTATING[:2]):
        pg.create_role(name, password)
    pg.execute(sql.SQL("ALTER ROLE {} VALID UNTIL '2000-01-01'").format(sql.Identifier(EXPIRED[0])))
    if not pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)):
        pg.create_database(DB)
    # A shadow pg_authid an attacker would like the auth query to read (CVE-2025-12819).
    pg.execute("DROP SCHEMA IF EXISTS evil CASCADE", dbname=DB)
    pg.execute("CREATE SCHEMA evil", dbname=DB)
    pg.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC", dbname=DB)
    pg.execute("CREATE TABLE evil.pg_authid (rolname name, rolpassword text)", dbname=DB)
    pg.execute(
        "INSERT INTO evil.pg_authid VALUES (%s, %s)",
        (ALICE[0], _scram_verifier(pg, ATTACKER_PASSWORD)),
        dbname=DB,
    )
    pg.execute("GRANT SELECT ON evil.pg_authid TO PUBLIC", dbname=DB)


def aq_tenants(pg: PgCluster) -> dict[str, Any]:
    manager = both_modes(MANAGER[0], MANAGER[1], is_manager=True)
    return {
        "tenants": [
            tenant_doc(
                "aq", DB, pg.port, manager, require_user=False, auth_query=AUTH_QUERY,
                default_pool_size=3,
            ),
            # The same query, but require_user: unknown users are never looked up.
            tenant_doc("aqoff", DB, pg.port, manager, require_user=True, auth_query=AUTH_QUERY),
            tenant_doc("aqbad", DB, pg.port, manager, require_user=False,
                       auth_query="SELECT rolname, rolpassword FROM no_such_table WHERE x=$1"),
        ]
    }  # fmt: skip


@pytest.fixture(scope="module")
def aq_pooler(roles: None, pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    return pooler_factory(aq_tenants(pg), extra_args=["--ban-failures", "0"])  # see test_bans


def whoami(pooler: PoolerProcess, user: str, password: str, mode: str = "transaction") -> str:
    conn = pooler.connect(f"{user}.aq", password, DB, mode)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, session_user")
            current, session = cur.fetchone()
        assert current == session
        return str(current)
    finally:
        conn.close()


def refusal(pooler: PoolerProcess, login: str, password: str) -> dict[str, str]:
    fields = login_error(pooler.host, pooler.transaction_port, login, password, DB)
    assert fields, f"{login} logged in but should not have"
    return fields


def generic(fields: dict[str, str], login: str) -> tuple[str, str, str]:
    """The refusal with the client's own login name taken out (it is echoed back)."""
    return fields["S"], fields["C"], fields["M"].replace(login, "<user>")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_auth_query_user_logs_in_upstream_as_itself(aq_pooler: PoolerProcess, mode: str) -> None:
    """SCRAM verifier from pg_authid checks the client; the pooler then logs in upstream as
    that role with the ClientKey recovered from the proof (it never knew the password)."""
    assert whoami(aq_pooler, ALICE[0], ALICE[1], mode) == ALICE[0]
    assert whoami(aq_pooler, ALICE[0], ALICE[1], mode) == ALICE[0]  # pooled server reused


def test_wrong_password_and_unknown_user_get_the_same_refusal(aq_pooler: PoolerProcess) -> None:
    wrong = refusal(aq_pooler, f"{ALICE[0]}.aq", "notIt4tests")
    unknown = refusal(aq_pooler, "aq_nobody.aq", ALICE[1])
    assert generic(wrong, f"{ALICE[0]}.aq") == generic(unknown, "aq_nobody.aq")
    assert wrong["C"] == "28P01"


def test_unknown_user_never_becomes_the_manager(aq_pooler: PoolerProcess) -> None:
    """CVE-2015-6817: the manager's password does not open a session for an unknown name."""
    fields = refusal(aq_pooler, "aq_nobody.aq", MANAGER[1])
    assert fields["C"] == "28P01"
    assert whoami(aq_pooler, MANAGER[0], MANAGER[1]) == MANAGER[0]  # the manager itself works


def test_user_name_is_a_bound_parameter(aq_pooler: PoolerProcess) -> None:
    """A name full of SQL is just a name that matches no row (no syntax error, no match)."""
    for name in ("x' OR 'a'='a", "aq_alice' --", "$1"):
        fields = refusal(aq_pooler, f"{name}.aq", ALICE[1])
        assert fields["C"] == "28P01", fields


def test_valid_until_is_honoured(aq_pooler: PoolerProcess, pg: PgCluster) -> None:
    """CVE-2025-2291: an expired role is refused like a wrong password, until extended."""
    fields = refusal(aq_pooler, f"{EXPIRED[0]}.aq", EXPIRED[1])
    assert fields["C"] == "28P01"
    pg.execute(sql.SQL("ALTER ROLE {} VALID UNTIL 'infinity'").format(sql.Identifier(EXPIRED[0])))
    try:
        assert whoami(aq_pooler, EXPIRED[0], EXPIRED[1]) == EXPIRED[0]
        pg.execute(
            sql.SQL("ALTER ROLE {} VALID UNTIL '2000-01-01'").format(sql.Identifier(EXPIRED[0]))
        )
        # The pool of that role has a logged-in server now: it must not let the client in.
        fields = refusal(aq_pooler, f"{EXPIRED[0]}.aq", EXPIRED[1])
        assert fields["C"] == "28P01"
    finally:
        pg.execute(
            sql.SQL("ALTER ROLE {} VALID UNTIL '2000-01-01'").format(sql.Identifier(EXPIRED[0]))
        )


def test_client_search_path_never_reaches_the_auth_query(aq_pooler: PoolerProcess) -> None:
    """CVE-2025-12819: with search_path=evil first, evil.pg_authid would hold a verifier for
    the attacker's password; the lookup runs with its own pinned search_path instead."""
    dsn = aq_pooler.dsn(f"{ALICE[0]}.aq", ATTACKER_PASSWORD, DB)
    for options in ("-c search_path=evil,pg_catalog", "-c search_path=evil"):
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(dsn, options=options)
    conn = psycopg2.connect(
        aq_pooler.dsn(f"{ALICE[0]}.aq", ALICE[1], DB), options="-c search_path=evil,pg_catalog"
    )
    conn.close()


def test_rotated_password_is_picked_up(aq_pooler: PoolerProcess, pg: PgCluster) -> None:
    name, old, new = ROTATING
    assert whoami(aq_pooler, name, old) == name
    keep = aq_pooler.connect(f"{name}.aq", old, DB, "session")  # holds a server of the old keys
    try:
        pg.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(name)), (new,))
        assert refusal(aq_pooler, f"{name}.aq", old)["C"] == "28P01"
        for mode in ("transaction", "session"):
            assert whoami(aq_pooler, name, new, mode) == name
        with keep.cursor() as cur:  # the session logged in before keeps working
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        keep.close()


def test_require_user_tenant_does_not_look_users_up(aq_pooler: PoolerProcess) -> None:
    fields = login_error(aq_pooler.host, aq_pooler.transaction_port, f"{ALICE[0]}.aqoff",
                         ALICE[1], DB)  # fmt: skip
    assert fields["C"] == "28P01"


def test_auth_query_failure_is_a_clear_error(aq_pooler: PoolerProcess) -> None:
    """A broken auth_query gives a clear FATAL (details in the log), never a login."""
    fields = refusal(aq_pooler, f"{ALICE[0]}.aqbad", ALICE[1])
    assert fields["C"] == "08006"
    assert "auth_query failed" in fields["M"]
    aq_pooler.wait_for_log("no_such_table")
