"""The lower-cased first look of pooler.protocol.sessionstate decides exactly as the
case-insensitive regexes it replaced (the verdicts must not change, only their cost)."""

from __future__ import annotations

import re

import pytest

from pooler.protocol import sessionstate

pytestmark = pytest.mark.unit

_OLD_HINT = re.compile(rb"set|listen|prepare|advisory|temp|hold|session", re.IGNORECASE)

STATEMENTS = [
    b"SELECT abalance FROM pgbench_accounts WHERE aid = 1234;",
    b"SET search_path TO app",
    b"sEt ROLE admin",
    b"Set Session Authorization bob",
    b"SET LOCAL work_mem = '4MB'",
    b"SET TIME ZONE 'UTC'",
    b"select set_config('a.b', 'c', false)",
    b"LISTEN ch",
    b"PrEpArE q AS SELECT 1",
    b"SELECT pg_ADVISORY_lock(1)",
    b"CREATE TEMP TABLE t (a int)",
    b"CREATE TEMPORARY TABLE t (a int) ON COMMIT DROP",
    b"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    b"DISCARD ALL",
    b"DeAllocate q",
    b"SELECT 'set role x' AS text",
    b"-- SET ROLE x\nSELECT 1",
    b"UPDATE t SET a = 1",
    b"SELECT \xff\xfe SESSION",
    b"",
]


@pytest.mark.parametrize("sql", STATEMENTS)
def test_verdicts_match_the_case_insensitive_rules(sql: bytes) -> None:
    for text in (sql, sql.lower(), sql.upper()):
        if _OLD_HINT.search(text) is None:
            expected_kind = None
        else:
            blanked = sessionstate._BLANK.sub(b"''", text)
            expected_kind = next(
                (kind for kind, rule in sessionstate._RULES if rule.search(blanked)), None
            )
        expected = (expected_kind, sessionstate._DROPS_STATEMENTS.search(text) is not None)
        assert sessionstate.stateful_kind(text) == expected_kind
        sessionstate._SEEN.clear()
        assert sessionstate.classify(text) == expected
        assert sessionstate.classify(text) == expected  # and from the cache
