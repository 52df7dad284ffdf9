"""Queries through the pooler with psycopg2, in transaction and session mode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2 import errorcodes

from tests.conftest import PASSWORDS
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess

pytestmark = pytest.mark.integration

MODES = ["transaction", "session"]
LOGIN = "app1user.t1"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def conn(pooler: PoolerProcess, mode: str) -> Iterator[Any]:
    connection = pooler.connect(LOGIN, PASSWORDS["app1user"], "app1", mode)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def table(pg: PgCluster, mode: str) -> Iterator[str]:
    """A fresh table in app1, owned by app1user, dropped afterwards."""
    name = f"basic_{mode}"
    pg.execute(f"DROP TABLE IF EXISTS {name}", dbname="app1")
    pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, note text)", dbname="app1")
    pg.execute(f"ALTER TABLE {name} OWNER TO app1user", dbname="app1")
    yield name
    pg.execute(f"DROP TABLE IF EXISTS {name}", dbname="app1")


def scalar(conn: Any, query: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


def test_select_reaches_the_tenant_database(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1, current_database(), current_user")
        assert cur.fetchone() == (1, "app1", "app1user")
    conn.commit()


def test_commit_and_rollback(conn: Any, table: str, pg: PgCluster) -> None:
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1, 'kept'), (2, 'kept')")
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone() == (2,)
    conn.commit()
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (3, 'rolled back')")
        cur.execute(f"UPDATE {table} SET note = 'changed' WHERE id = 1")
    conn.rollback()
    assert pg.execute(f"SELECT id, note FROM {table} ORDER BY id", dbname="app1") == [
        (1, "kept"),
        (2, "kept"),
    ]
    assert scalar(conn, f"SELECT count(*) FROM {table}") == 2
    conn.commit()


def test_error_inside_a_transaction_then_rollback(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        with pytest.raises(psycopg2.errors.DivisionByZero) as excinfo:
            cur.execute("SELECT 1 / 0")
        assert excinfo.value.pgcode == errorcodes.DIVISION_BY_ZERO
        with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
            cur.execute("SELECT 2")
    conn.rollback()
    assert scalar(conn, "SELECT 3") == 3
    conn.commit()


def test_error_outside_a_transaction_leaves_the_connection_usable(conn: Any) -> None:
    conn.autocommit = True
    with pytest.raises(psycopg2.errors.UndefinedTable):
        scalar(conn, "SELECT * FROM no_such_table_here")
    assert scalar(conn, "SELECT 4") == 4


def test_large_result_set(conn: Any) -> None:
    """About 5 MB from the server in one result."""
    with conn.cursor() as cur:
        cur.execute("SELECT g, repeat(chr(65 + g % 26), 1000) FROM generate_series(1, 5000) g")
        rows = cur.fetchall()
    conn.commit()
    assert len(rows) == 5000
    assert sum(len(text) for _, text in rows) == 5_000_000
    assert rows[-1] == (5000, chr(65 + 5000 % 26) * 1000)


def test_large_query_parameter(conn: Any) -> None:
    """About 5 MB from the client in one message."""
    blob = "gv" * 2_500_000
    with conn.cursor() as cur:
        cur.execute("SELECT md5(%s) = md5(repeat('gv', 2500000)), length(%s)", (blob, blob))
        assert cur.fetchone() == (True, 5_000_000)
    conn.commit()


def test_server_version_backend_pid_and_parameter_status(conn: Any) -> None:
    assert conn.server_version >= 150000
    assert conn.get_backend_pid() > 0
    assert conn.get_parameter_status("server_version").startswith("15")
    assert conn.get_parameter_status("client_encoding") == "UTF8"
    assert conn.get_parameter_status("standard_conforming_strings") == "on"
    assert conn.get_parameter_status("integer_datetimes") == "on"
    assert scalar(conn, "SELECT pg_backend_pid()") > 0
    conn.commit()


def test_client_encoding_follows_each_client(pooler: PoolerProcess, mode: str) -> None:
    """A client's SET client_encoding stays its own, whichever server runs its next query."""
    latin = pooler.connect(LOGIN, PASSWORDS["app1user"], "app1", mode)
    utf8 = pooler.connect(LOGIN, PASSWORDS["app1user"], "app1", mode)
    try:
        latin.autocommit = utf8.autocommit = True
        latin.set_client_encoding("LATIN1")
        assert latin.get_parameter_status("client_encoding") == "LATIN1"
        for _ in range(10):
            assert scalar(latin, "SHOW client_encoding") == "LATIN1"
            assert scalar(utf8, "SHOW client_encoding") == "UTF8"
        assert scalar(latin, "SELECT %s::text", ("h\u00e9",)) == "h\u00e9"
    finally:
        latin.close()
        utf8.close()


def test_application_name_from_the_startup_packet(pooler: PoolerProcess, mode: str) -> None:
    conn = pooler.connect(
        LOGIN, PASSWORDS["app1user"], "app1", mode, application_name="gv-basic-test"
    )
    try:
        conn.autocommit = True
        assert scalar(conn, "SHOW application_name") == "gv-basic-test"
    finally:
        conn.close()


def test_the_pooler_runs_the_hot_path_this_checkout_built(pooler: PoolerProcess) -> None:
    """The subprocess decides for itself (pooler/hotpath.py) and logs what it runs. In the
    compiled run of `make test` it must be the compiled one: a pooler that fell back to
    Python would pass every other test while the build went unused."""
    from pooler import hotpath

    pooler.wait_for_log("greenvisor: hot path ")
    expected = "compiled with mypyc" if hotpath.compiled else "pure Python"
    assert f"greenvisor: hot path {expected}" in pooler.log_text()
    loop = "gevent's libev loop with the GIL held" if hotpath.compiled else "gevent's hub ("
    assert f"; event loop: {loop}" in pooler.log_text()
    # pooler/_sysio.c relays the common case itself (pooler/client.py's _relay_in_c).
    relay = "in C for the common case" if hotpath.compiled else "in Python"
    assert f"; relay: {relay}" in pooler.log_text()
    if os.environ.get("GREENVISOR_EXPECT_COMPILED") == "1":
        assert "greenvisor: hot path compiled with mypyc" in pooler.log_text()
