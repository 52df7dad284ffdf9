"""Recognising statements that leave session state behind (transaction-mode policy)."""

from __future__ import annotations

import struct

import pytest

from pooler.protocol.sessionstate import refusal_sql, sql_messages, stateful_kind

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        (b"SET search_path = x", "SET"),
        (b"set statement_timeout=5", "SET"),
        (b"begin; set x.y = 1; commit", "SET"),
        (b"RESET ALL", "SET"),
        (b"select set_config('a', 'b', false)", "SET"),
        (b"SET ROLE bob", "SET ROLE"),
        (b"set session authorization bob", "SET ROLE"),
        (b"LISTEN jobs", "LISTEN"),
        (b"SELECT pg_advisory_lock(1)", "advisory lock"),
        (b"select pg_try_advisory_lock_shared(1, 2)", "advisory lock"),
        (b"PREPARE p AS select 1", "PREPARE"),
        (b"create temporary table t (a int)", "temporary table"),
        (b"DECLARE c CURSOR WITH HOLD FOR select 1", "WITH HOLD cursor"),
    ],
)
def test_stateful_statements(sql: bytes, kind: str) -> None:
    assert stateful_kind(sql) == kind


@pytest.mark.parametrize(
    "sql",
    [
        b"select 1",
        b"update t set a = 1",
        b"SET LOCAL statement_timeout = 5",
        b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        b"set timezone = 'UTC'",  # followed per client by the pooler
        b"SET TIME ZONE 'UTC'",
        b"set application_name = 'x'",
        b"select pg_advisory_xact_lock(1)",
        b"select set_config('a', 'b', true)",
        b"create temp table t (a int) on commit drop",
        b"select 'set search_path = x'",
        b"select 1 -- set search_path = x",
        b'select "set x" from t',
        b"select $$ listen x $$",
    ],
)
def test_harmless_statements(sql: bytes) -> None:
    assert stateful_kind(sql) is None


def test_sql_messages_finds_query_and_parse_text() -> None:
    query = b"Q" + struct.pack("!I", 4 + 9) + b"select 1\0"
    parse_body = b"s1\0set x = 1\0\0\0"
    parse = b"P" + struct.pack("!I", 4 + len(parse_body)) + parse_body
    sync = b"S\0\0\0\4"
    data = memoryview(bytearray(query + parse + sync))
    found = sql_messages(data, len(data), 0)
    assert [(t, bytes(data[a:b])) for t, a, b in found] == [
        (ord("Q"), b"select 1"),
        (ord("P"), b"set x = 1"),
    ]
    # An incomplete message ends the walk.
    assert sql_messages(data, len(query) + 3, 0) == found[:1]


def test_refusal_is_a_single_server_side_error() -> None:
    sql = refusal_sql("LISTEN")
    assert sql.startswith(b"DO $greenvisor$") and b"ERRCODE = '0A000'" in sql
    assert b"LISTEN is not allowed in transaction pooling mode" in sql


def test_sql_text_of_query_and_parse() -> None:
    from pooler.protocol.sessionstate import sql_text

    query = memoryview(bytearray(b"SET x = 1\0"))
    assert sql_text(query, ord("Q"), 0, len(query)) == b"SET x = 1"
    parse = memoryview(bytearray(b"stmt\0LISTEN jobs\0\0\0"))
    assert sql_text(parse, ord("P"), 0, len(parse)) == b"LISTEN jobs"
