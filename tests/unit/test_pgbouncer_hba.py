"""pooler.pgbouncer.hba: PgBouncer's pg_hba.conf subset, parsed and matched without I/O
(except @file includes, read from tmp_path)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pooler.pgbouncer.hba import HbaError, load_hba, parse, refusal, tokenize

pytestmark = pytest.mark.unit

SAMPLE = """
# TYPE   DATABASE     USER          ADDRESS           METHOD
local    all          all                             peer
host     db1,db2      alice,"all"   127.0.0.1/32      trust   # a comment
hostssl  all          bob           127.0.0.0 255.0.0.0  scram-sha-256
hostnossl sameuser    all           ::1/128           md5
host     all          carol         all               password
host     all          all           10.0.0.0/8        reject
host     all          all           0.0.0.0/0         md5
"""


def test_parse_sample_columns() -> None:
    hba = parse(SAMPLE, "hba.conf")
    assert [r.line for r in hba.rules] == [3, 4, 5, 6, 7, 8, 9]
    local, first, ssl, nossl, carol, reject, rest = hba.rules
    assert (local.conn_type, local.network, local.method) == ("local", None, "peer")
    assert first.databases.names == {"db1", "db2"} and not first.databases.all
    assert first.users.names == {"alice", "all"} and not first.users.all  # quoted: a name
    assert first.network == ipaddress.ip_network("127.0.0.1/32")
    assert ssl.network == ipaddress.ip_network("127.0.0.0/8")
    assert nossl.databases.sameuser and nossl.network == ipaddress.ip_network("::1/128")
    assert (carol.network, carol.method) == (None, "password")
    assert (reject.method, rest.method) == ("reject", "md5")


@pytest.mark.parametrize(
    ("database", "user", "address", "tls", "line"),
    [
        ("db1", "alice", "127.0.0.1", False, 4),
        ("db2", "all", "127.0.0.1", True, 4),
        ("db3", "alice", "127.0.0.1", False, 9),  # db3 not listed: falls to the last line
        ("db1", "alice", "127.0.0.2", False, 9),  # /32: another address
        ("x", "bob", "127.0.0.2", True, 5),  # hostssl with TLS
        ("x", "bob", "127.0.0.2", False, 9),  # hostssl without TLS: no
        ("dave", "dave", "::1", False, 6),  # sameuser, hostnossl without TLS
        ("dave", "dave", "::1", True, None),  # hostnossl with TLS, ::1 not in 0.0.0.0/0
        ("other", "dave", "::1", False, None),
        ("x", "carol", "::1", True, 7),  # all addresses, v6 too
        ("x", "eve", "10.1.2.3", False, 8),  # first match wins: reject before md5
        ("x", "eve", "::ffff:10.1.2.3", False, 8),  # v4-mapped v6 matches the v4 network
        ("x", "eve", None, False, 3),  # a local connection (never from TCP)
    ],
)
def test_first_matching_line_wins(
    database: str, user: str, address: str | None, tls: bool, line: int | None
) -> None:
    rule = parse(SAMPLE).find(database, user, address, tls)
    assert (rule.line if rule is not None else None) == line


def test_refusal_uses_postgres_words() -> None:
    hba = parse(SAMPLE)
    assert refusal(None, "d", "u", "127.0.0.2", False) == (
        'no pg_hba.conf entry for host "127.0.0.2", user "u", database "d", no encryption'
    )
    reject = hba.find("d", "u", "10.0.0.1", True)
    assert refusal(reject, "d", "u", "10.0.0.1", True) == (
        'pg_hba.conf rejects connection for host "10.0.0.1", user "u", database "d", SSL encryption'
    )


def test_tokenize_commas_quotes_and_comments() -> None:
    assert tokenize('host a, b ,"c d",e  all # x, y', "f", 1) == [
        [("host", False)],
        [("a", False), ("b", False), ("c d", True), ("e", False)],
        [("all", False)],
    ]
    assert tokenize("   # only a comment", "f", 1) == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("hosts all all 127.0.0.1/32 md5", "invalid connection type 'hosts'"),
        ("host all all 127.0.0.1/32", "end of line before the method column"),
        ("host all all", "end of line before the address column"),
        ("local all", "end of line before the user column"),
        ("host all all 127.0.0.1/32 cert", "method cert is not supported by Greenvisor"),
        ("host all all 127.0.0.1/32 ident", "invalid or unsupported method 'ident'"),
        ("host all all 127.0.0.1/32 peer", "method peer is only for local lines"),
        ("host all all 127.0.0.1/33 md5", "invalid CIDR address '127.0.0.1/33'"),
        ("host all all db.example md5", "invalid IP address 'db.example' (host names"),
        ("host all all 127.0.0.1 md5", "invalid IP mask 'md5'"),
        ("host all all 127.0.0.1 ::1 md5", "invalid IP mask '::1'"),
        ("host all all samenet md5", "address samenet is not supported"),
        ("host all +admins all md5", "group membership (+admins) is not supported"),
        ("host all all all md5 clientcert=verify-full", "options after the method"),
        ('host "all all all md5', "unterminated quoted string"),
        ("host all all 10.0.0.0/8,::1/128 md5", "the address column takes one value"),
        ("host all all all md5,trust", "the method column takes one value"),
        (", host all all all md5", "a comma at the start of a column"),
        ("host all all all md5 ,", "a comma at the end of a line"),
        ("host @ all all md5", "@ without a file name"),
    ],
)
def test_invalid_lines_name_file_and_line(line: str, problem: str) -> None:
    with pytest.raises(HbaError) as info:
        parse(f"# header\n\n{line}\n", "/etc/pgb/hba.conf")
    assert str(info.value).startswith(f"/etc/pgb/hba.conf:3: {problem}")


def test_at_file_lists_names_relative_to_the_hba_file(tmp_path: Path) -> None:
    (tmp_path / "admins").write_text("alice, bob\n# comment\ncarol\n")
    (tmp_path / "hba.conf").write_text("host @admins all all trust\nhost all @admins all md5\n")
    hba = load_hba(tmp_path / "hba.conf")
    assert hba.rules[0].databases.names == {"alice", "bob", "carol"}
    assert hba.rules[1].users.names == {"alice", "bob", "carol"}
    (tmp_path / "hba.conf").write_text("host all @missing all md5\n")
    with pytest.raises(HbaError, match=r"hba.conf:1: cannot read @missing"):
        load_hba(tmp_path / "hba.conf")


def test_unreadable_file() -> None:
    with pytest.raises(HbaError, match="nope.conf: cannot read"):
        load_hba("/nonexistent/nope.conf")
