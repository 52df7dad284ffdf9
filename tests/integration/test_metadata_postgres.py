"""The metadata DB on PostgreSQL instead of SQLite: start, serve, and pick up a live change."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import PASSWORDS, PoolerFactory, default_tenants
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, both_modes, tenant_doc

pytestmark = pytest.mark.integration

META_DB = "greenvisor_meta"


@pytest.fixture(scope="module")
def pg_meta_pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    if not pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (META_DB,)):
        pg.create_database(META_DB)
    url = f"postgresql://postgres:{PASSWORDS['postgres']}@{pg.host}:{pg.port}/{META_DB}"
    return pooler_factory(default_tenants(pg), database_url=url)


def one(conn: Any, query: str) -> tuple[Any, ...]:
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone()
        conn.commit()
        return tuple(row)
    finally:
        conn.close()


def test_tenants_are_stored_in_postgres(pg_meta_pooler: PoolerProcess, pg: PgCluster) -> None:
    tables = pg.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_name LIKE 'tenants%%'",
        dbname=META_DB,
    )
    assert tables, "no tenants tables in the PostgreSQL metadata DB"
    assert pg_meta_pooler.database_url.startswith("postgresql://")


def test_query_end_to_end(pg_meta_pooler: PoolerProcess) -> None:
    conn = pg_meta_pooler.connect("app1user.t1", PASSWORDS["app1user"], "app1")
    assert one(conn, "SELECT 1, current_database(), current_user") == (1, "app1", "app1user")


def test_a_tenant_added_later_is_served(pg_meta_pooler: PoolerProcess, pg: PgCluster) -> None:
    doc = default_tenants(pg)
    doc["tenants"].append(
        tenant_doc("t3", "app2", pg.port, both_modes("app2user", PASSWORDS["app2user"]))
    )
    pg_meta_pooler.apply(doc, settle=False)
    conn, seconds = pg_meta_pooler.connect_eventually(
        "app2user.t3", PASSWORDS["app2user"], "app2", "session", timeout=5
    )
    assert one(conn, "SELECT current_database(), current_user") == ("app2", "app2user")
    assert seconds < 3, f"the new tenant took {seconds:.1f} s to arrive"
