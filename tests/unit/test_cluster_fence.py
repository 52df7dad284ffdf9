"""The fencing query: what a new owner terminates."""

from __future__ import annotations

import pytest

from pooler.cluster.cluster import fence_sql, pool_tag
from pooler.pool import PoolKey

pytestmark = pytest.mark.unit


def test_fence_names_registered_pids_and_older_epochs_of_this_pool_only() -> None:
    sql = fence_sql("greenvisor", "0a1b2c3d", 7, [101, 202], 2000)
    assert "pid IN (101,202)" in sql
    assert "application_name ~ '^greenvisor 0a1b2c3d e[0-9]+$'" in sql
    assert "::bigint < 7" in sql
    assert "pg_terminate_backend(pid, 2000)" in sql
    assert "usename = current_user" in sql and "datname = current_database()" in sql
    assert "pid <> pg_backend_pid()" in sql


def test_fence_without_pids_and_with_odd_names_stays_one_safe_statement() -> None:
    sql = fence_sql("it's.me", "ffffffff", 1, [], 0)
    assert "pid IN (0)" in sql
    assert "it''s" not in sql or "'^it" in sql
    assert sql.count(";") == 0
    assert "pg_terminate_backend(pid)" in sql


def test_pool_tags_differ_per_pool_key() -> None:
    a = pool_tag(PoolKey("t", "u", "db", "transaction"))
    b = pool_tag(PoolKey("t", "u", "db", "session"))
    assert a != b and len(a) == 8
