"""Tenants stay apart: credentials, databases and upstream logins never cross between them."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from tests.conftest import PASSWORDS
from tests.support.net import login_error
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess

pytestmark = pytest.mark.integration

MODES = ["transaction", "session"]
TENANT_DB = {"t1": ("app1user", "app1"), "t2": ("app2user", "app2")}


def one(conn: Any, query: str) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    conn.commit()
    return tuple(row)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("login", "password"),
    [
        ("app1user.t2", PASSWORDS["app1user"]),  # t1's user and password, t2's name
        ("app2user.t1", PASSWORDS["app2user"]),  # t2's user and password, t1's name
        ("app2user.t2", PASSWORDS["app1user"]),  # t2's user with t1's password
        ("app1user.t1", PASSWORDS["app2user"]),  # t1's user with t2's password
    ],
)
def test_other_tenants_credentials_are_refused(
    pooler: PoolerProcess, mode: str, login: str, password: str
) -> None:
    fields = login_error(pooler.host, pooler.port(mode), login, password, "app1")
    assert fields.get("C") == "28P01", fields
    assert fields.get("S") == "FATAL", fields
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        pooler.connect(login, password, "app1", mode)


@pytest.mark.parametrize("mode", MODES)
def test_each_tenant_reaches_only_its_own_database(pooler: PoolerProcess, mode: str) -> None:
    for tenant, (db_user, database) in TENANT_DB.items():
        conn = pooler.connect(f"{db_user}.{tenant}", PASSWORDS[db_user], database, mode)
        try:
            assert one(conn, "SELECT current_database(), current_user") == (database, db_user)
        finally:
            conn.close()


def test_a_tenants_table_is_invisible_to_the_other(pooler: PoolerProcess, pg: PgCluster) -> None:
    t1 = pooler.connect("app1user.t1", PASSWORDS["app1user"], "app1")
    t2 = pooler.connect("app2user.t2", PASSWORDS["app2user"], "app2")
    try:
        with t1.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS iso_secret")
            cur.execute("CREATE TABLE iso_secret AS SELECT 'only t1' AS note")
        t1.commit()
        assert one(t1, "SELECT to_regclass('iso_secret') IS NOT NULL") == (True,)
        assert one(t2, "SELECT to_regclass('iso_secret') IS NULL") == (True,)
    finally:
        t1.close()
        t2.close()
        pg.execute("DROP TABLE IF EXISTS iso_secret", dbname="app1")


def test_upstream_logins_stay_with_their_tenant(pooler: PoolerProcess, pg: PgCluster) -> None:
    """While both tenants hold server connections, each database only sees its own user."""
    held = []
    try:
        for tenant, (db_user, database) in TENANT_DB.items():
            for mode in MODES:
                conn = pooler.connect(f"{db_user}.{tenant}", PASSWORDS[db_user], database, mode)
                held.append(conn)
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")  # opens a transaction: server held
        rows = pg.execute(
            "SELECT DISTINCT datname, usename FROM pg_stat_activity "
            "WHERE usename IN ('app1user', 'app2user') AND datname IN ('app1', 'app2') "
            "AND backend_type = 'client backend'"
        )
        assert ("app1", "app1user") in rows and ("app2", "app2user") in rows, rows
        assert ("app2", "app1user") not in rows, rows
        assert ("app1", "app2user") not in rows, rows
    finally:
        for conn in held:
            conn.close()
