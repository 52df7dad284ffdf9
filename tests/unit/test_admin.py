"""The admin console: PgBouncer's column lists and types, golden bytes, permissions, bad input."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooler.admin import (
    AdminConsole,
    AdminError,
    ConfigItem,
    DatabaseRow,
    PoolRow,
    SocketRow,
    StatCounters,
    StatsRow,
    UserRow,
    admin_database_row,
)
from pooler.pgbouncer.ini import load

pytestmark = pytest.mark.unit

TEXT, INT4, INT8, NUMERIC = 25, 23, 20, 1700

# Column names from PgBouncer 1.18's doc/usage.md ("Admin console"), in its order; types from
# src/admin.c and src/stats.c (RowDescription letters s/T -> text, i -> int4, q -> int8,
# N -> numeric). usage.md only says STATS_TOTALS/STATS_AVERAGES are "subsets" of SHOW STATS:
# their names come from src/stats.c. tests/integration/test_pgbouncer_parity.py checks all of
# this against the real PgBouncer.
_SOCKET = [
    ("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT), ("addr", TEXT),
    ("port", INT4), ("local_addr", TEXT), ("local_port", INT4), ("connect_time", TEXT),
    ("request_time", TEXT), ("wait", INT4), ("wait_us", INT4), ("close_needed", INT4),
    ("ptr", TEXT), ("link", TEXT), ("remote_pid", INT4), ("tls", TEXT),
    ("application_name", TEXT),
]  # fmt: skip
_STAT7 = ["xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time"]
_STAT7 += ["query_time", "wait_time"]
PGBOUNCER_COLUMNS: dict[str, list[tuple[str, int]]] = {
    "pools": [
        ("database", TEXT), ("user", TEXT), ("cl_active", INT4), ("cl_waiting", INT4),
        ("cl_active_cancel_req", INT4), ("cl_waiting_cancel_req", INT4), ("sv_active", INT4),
        ("sv_active_cancel", INT4), ("sv_being_canceled", INT4), ("sv_idle", INT4),
        ("sv_used", INT4), ("sv_tested", INT4), ("sv_login", INT4), ("maxwait", INT4),
        ("maxwait_us", INT4), ("pool_mode", TEXT),
    ],
    "stats": [("database", TEXT)] + [
        (name, NUMERIC) for name in (
            "total_xact_count", "total_query_count", "total_received", "total_sent",
            "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_count",
            "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time",
            "avg_wait_time",
        )
    ],
    "stats_totals": [("database", TEXT)] + [(name, NUMERIC) for name in _STAT7],
    "stats_averages": [("database", TEXT)] + [(name, NUMERIC) for name in _STAT7],
    "totals": [("name", TEXT), ("value", NUMERIC)],
    "clients": _SOCKET,
    "servers": _SOCKET,
    "databases": [
        ("name", TEXT), ("host", TEXT), ("port", INT4), ("database", TEXT),
        ("force_user", TEXT), ("pool_size", INT4), ("min_pool_size", INT4),
        ("reserve_pool", INT4), ("pool_mode", TEXT), ("max_connections", INT4),
        ("current_connections", INT4), ("paused", INT4), ("disabled", INT4),
    ],
    "users": [("name", TEXT), ("pool_mode", TEXT)],
    "config": [("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)],
    "lists": [("list", TEXT), ("items", INT4)],
    "version": [("version", TEXT)],
    "mem": [("name", TEXT), ("size", INT4), ("used", INT4), ("free", INT4), ("memtotal", INT4)],
    "dns_hosts": [("hostname", TEXT), ("ttl", INT8), ("addrs", TEXT)],
    "dns_zones": [("zonename", TEXT), ("serial", INT8), ("count", INT4)],
}  # fmt: skip
PGBOUNCER_LISTS = [
    "databases", "users", "pools", "free_clients", "used_clients", "login_clients",
    "free_servers", "used_servers", "dns_names", "dns_zones", "dns_queries", "dns_pending",
]  # fmt: skip
CONTROL = [
    ("PAUSE", "pause", (None,)), ("PAUSE app1", "pause", ("app1",)),
    ("RESUME", "resume", (None,)), ("RESUME app1", "resume", ("app1",)),
    ("RECONNECT", "reconnect", (None,)), ("RECONNECT app1", "reconnect", ("app1",)),
    ("KILL app1", "kill", ("app1",)), ("SUSPEND", "suspend", ()), ("RELOAD", "reload", ()),
    ("SHUTDOWN", "shutdown", (False,)), ("SHUTDOWN WAIT_FOR_CLIENTS", "shutdown", (True,)),
    ("ENABLE app1", "enable", ("app1",)), ("DISABLE app1", "disable", ("app1",)),
    ("WAIT_CLOSE", "wait_close", (None,)), ("WAIT_CLOSE app1", "wait_close", ("app1",)),
    ("SET max_client_conn = 50", "set_config", ("max_client_conn", "50")),
]  # fmt: skip


# -- a fake node and a message reader ---------------------------------------------------------


@dataclass
class FakeNode:
    """A NodeView recording every call; ``refuse`` makes changing methods raise it."""

    pools: list[PoolRow] = field(default_factory=list)
    stats: list[StatsRow] = field(default_factory=list)
    clients: list[SocketRow] = field(default_factory=list)
    servers: list[SocketRow] = field(default_factory=list)
    databases: list[DatabaseRow] = field(default_factory=list)
    users: list[UserRow] = field(default_factory=list)
    config: list[ConfigItem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    refuse: Exception | None = None

    def list_pools(self) -> Iterable[PoolRow]:
        return self.pools

    def list_stats(self) -> Iterable[StatsRow]:
        return self.stats

    def list_clients(self) -> Iterable[SocketRow]:
        return self.clients

    def list_servers(self) -> Iterable[SocketRow]:
        return self.servers

    def list_databases(self) -> Iterable[DatabaseRow]:
        return self.databases

    def list_users(self) -> Iterable[UserRow]:
        return self.users

    def config_items(self) -> Iterable[ConfigItem]:
        return self.config

    def list_counts(self) -> Mapping[str, int]:
        return self.counts

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if self.refuse is not None:
            raise self.refuse

    def pause(self, database: str | None) -> None:
        self._call("pause", database)

    def resume(self, database: str | None) -> None:
        self._call("resume", database)

    def reconnect(self, database: str | None) -> None:
        self._call("reconnect", database)

    def kill(self, database: str) -> None:
        self._call("kill", database)

    def suspend(self) -> None:
        self._call("suspend")

    def shutdown(self, wait_for_clients: bool) -> None:
        self._call("shutdown", wait_for_clients)

    def reload(self) -> None:
        self._call("reload")

    def enable(self, database: str) -> None:
        self._call("enable", database)

    def disable(self, database: str) -> None:
        self._call("disable", database)

    def wait_close(self, database: str | None) -> None:
        self._call("wait_close", database)

    def set_config(self, key: str, value: str) -> None:
        self._call("set_config", key, value)


def messages(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Split backend bytes into (type, body); fails on a partial message."""
    pos = 0
    while pos < len(data):
        kind = data[pos : pos + 1]
        (length,) = struct.unpack("!I", data[pos + 1 : pos + 5])
        body = data[pos + 5 : pos + 1 + length]
        assert len(body) == length - 4, "truncated message"
        yield kind, body
        pos += 1 + length


def columns(body: bytes) -> list[tuple[str, int, int, int, int]]:
    """RowDescription -> (name, type oid, typlen, typmod, format) per column."""
    (count,), pos, out = struct.unpack("!h", body[:2]), 2, []
    for _ in range(count):
        end = body.index(b"\0", pos)
        _table, _col, oid, typlen, typmod, fmt = struct.unpack("!IhIhih", body[end + 1 : end + 19])
        out.append((body[pos:end].decode(), oid, typlen, typmod, fmt))
        pos = end + 19
    return out


def rows(body_list: list[tuple[bytes, bytes]]) -> list[list[str | None]]:
    out = []
    for kind, body in body_list:
        if kind != b"D":
            continue
        (count,), pos, row = struct.unpack("!h", body[:2]), 2, []
        for _ in range(count):
            (size,) = struct.unpack("!i", body[pos : pos + 4])
            pos += 4
            row.append(None if size < 0 else body[pos : pos + size].decode())
            pos += max(size, 0)
        out.append(row)
    return out


def words(text: str) -> list[str]:
    return text.split()


def fields(body: bytes) -> dict[str, str]:
    return {part[:1].decode(): part[1:].decode() for part in body.split(b"\0") if part}


def run(sql: str, role: str = "admin", node: FakeNode | None = None) -> list[tuple[bytes, bytes]]:
    console = AdminConsole(node or FakeNode(), version="PgBouncer 1.18.0 (greenvisor test)")
    return list(messages(console.execute(sql, role)))


def error_of(sql: str, role: str = "admin", node: FakeNode | None = None) -> dict[str, str]:
    out = run(sql, role, node)
    assert [kind for kind, _ in out] == [b"E"], out
    return fields(out[0][1])


# -- result sets ------------------------------------------------------------------------------


@pytest.mark.parametrize("word", sorted(PGBOUNCER_COLUMNS))
def test_every_show_has_pgbouncers_columns_and_types(word: str) -> None:
    out = run(f"SHOW {word.upper()};", role="stats")
    assert out[0][0] == b"T" and out[-1] == (b"C", b"SHOW\0")
    typlen = {TEXT: -1, INT4: 4, INT8: 8, NUMERIC: -1}
    assert columns(out[0][1]) == [
        (name, oid, typlen[oid], -1, 0) for name, oid in PGBOUNCER_COLUMNS[word]
    ]


def test_show_version_golden_bytes() -> None:
    console = AdminConsole(FakeNode(), version="PgBouncer 1.18.0")
    # Captured from PgBouncer 1.18.0 (Debian) answering SHOW VERSION, minus ReadyForQuery.
    assert console.execute("SHOW VERSION", "stats") == (
        b"T\x00\x00\x00\x20\x00\x01version\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19"
        b"\xff\xff\xff\xff\xff\xff\x00\x00"
        b"D\x00\x00\x00\x1a\x00\x01\x00\x00\x00\x10PgBouncer 1.18.0"
        b"C\x00\x00\x00\x09SHOW\x00"
    )


def test_show_lists_golden_row_description_and_rows() -> None:
    out = run("show lists", node=FakeNode(counts={"databases": 2, "pools": 1, "bogus": 9}))
    # Captured from PgBouncer 1.18.0 (Debian).
    assert b"T" + struct.pack("!I", len(out[0][1]) + 4) + out[0][1] == (
        b"T\x00\x00\x00\x35\x00\x02list\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff"
        b"\xff\xff\xff\xff\x00\x00items\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04"
        b"\xff\xff\xff\xff\x00\x00"
    )
    counts = {"databases": "2", "pools": "1"}
    assert rows(out) == [[name, counts.get(name, "0")] for name in PGBOUNCER_LISTS]


def test_show_pools_rows() -> None:
    pool = PoolRow("app1", "alice", 3, 2, 1, 4, maxwait=1.25, pool_mode="transaction")
    expected = words("app1 alice 3 2 0 0 1 0 0 4 0 0 0 1 250000 transaction")
    assert rows(run("SHOW POOLS", node=FakeNode(pools=[pool]))) == [expected]


def test_show_clients_and_servers_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        at = 1704164645.9  # 2024-01-02 03:04:05.9 UTC
        client = SocketRow(
            "C", "alice", "app1", "active", "10.0.0.1", 5555, "10.0.0.2", 6432, at, at + 60,
            wait=2.5, ptr="0x1", link="0x2", application_name="psql",
        )  # fmt: skip
        server = SocketRow(
            "S", "alice", "app1", "idle", "10.0.0.3", 5432, "10.0.0.2", 40000, at, at,
            close_needed=True, ptr="0x2", remote_pid=4242,
        )  # fmt: skip
        node = FakeNode(clients=[client], servers=[server])
        client_row = rows(run("SHOW CLIENTS", node=node))
        assert client_row == [
            words("C alice app1 active 10.0.0.1 5555 10.0.0.2 6432")
            + ["2024-01-02 03:04:05 UTC", "2024-01-02 03:05:05 UTC"]
            + words("2 500000 0 0x1 0x2 0")
            + ["", "psql"]
        ]
        server_row = rows(run("SHOW SERVERS", node=node))[0]
        assert server_row[10:16] == ["0", "0", "1", "0x2", "", "4242"]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_show_databases_prints_unset_values_as_null() -> None:
    app1 = DatabaseRow("app1", "db1", 5432, "app1", paused=True)
    node = FakeNode(databases=[app1, admin_database_row(6432)])
    # PgBouncer 1.18's rows for the same two databases (psql shows NULL as empty).
    assert rows(run("SHOW DATABASES", node=node)) == [
        ["app1", "db1", "5432", "app1", None, "20", "0", "0", None, "0", "0", "1", "0"],
        ["pgbouncer", None, *words("6432 pgbouncer pgbouncer 2 0 0 statement 0 0 0 0")],
    ]


def test_show_stats_and_totals() -> None:
    totals1, averages1 = (
        StatCounters(10, 20, 300, 400, 5000, 6000, 70),
        StatCounters(2, 4, 30, 40, 100, 50, 7),
    )
    totals2, averages2 = StatCounters(1, 2, 3, 4, 5, 6, 7), StatCounters(6, 4, 1, 1, 300, 250, 1)
    node = FakeNode(
        stats=[StatsRow("app1", totals1, averages1), StatsRow("app2", totals2, averages2)]
    )
    stats = rows(run("SHOW STATS", node=node))
    assert stats[0] == words("app1 10 20 300 400 5000 6000 70 2 4 30 40 100 50 7")
    assert rows(run("SHOW STATS_TOTALS", node=node))[1] == words("app2 1 2 3 4 5 6 7")
    assert rows(run("SHOW STATS_AVERAGES", node=node))[1] == words("app2 6 4 1 1 300 250 1")
    totals = {name: value for name, value in rows(run("SHOW TOTALS", node=node))}
    assert totals["total_xact_count"] == "11" and totals["total_server_bytes"] == "404"
    assert totals["avg_xact_count"] == "8" and totals["avg_wait_time"] == "8"
    # per-transaction times are weighted by each database's rate: (2*100 + 6*300) / 8
    assert totals["avg_xact_time"] == "250" and totals["avg_query_time"] == "150"
    names = "xact_count query_count client_bytes server_bytes xact_time query_time wait_time"
    assert list(totals) == [f"{p}_{n}" for p in ("total", "avg") for n in names.split()]


def test_show_users_config_and_empty_sets(tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text("[pgbouncer]\nlisten_port = 6499\n")
    node = FakeNode(users=[UserRow("alice"), UserRow("bob", "statement")],
                    config=[ConfigItem(*item) for item in load(ini).config_items()])  # fmt: skip
    assert rows(run("SHOW USERS", node=node)) == [["alice", None], ["bob", "statement"]]
    config = {row[0]: row for row in rows(run("SHOW CONFIG", node=node))}
    assert config["listen_port"] == ["listen_port", "6499", "6432", "no"]
    assert config["pool_mode"] == ["pool_mode", "session", "session", "yes"]
    for word in ("MEM", "DNS_HOSTS", "DNS_ZONES"):
        assert [kind for kind, _ in run(f"SHOW {word}")] == [b"T", b"C"]


def test_show_help_is_a_notice() -> None:
    out = run("SHOW HELP", role="stats")
    assert [kind for kind, _ in out] == [b"N", b"C"]
    notice = fields(out[0][1])
    assert (notice["S"], notice["C"], notice["M"]) == ("NOTICE", "00000", "Console usage")
    assert "SHUTDOWN [WAIT_FOR_CLIENTS]" in notice["D"] and "SHOW POOLS" not in notice["D"]
    assert "|POOLS|" in notice["D"]


def test_fake_parameters_for_clients_that_poke_at_them() -> None:
    out = run("SHOW client_encoding", role="stats")
    assert columns(out[0][1])[0][0] == "client_encoding" and rows(out) == [["UTF-8"]]
    out = run("SET DateStyle = 'ISO'", role="stats")
    assert [(k, fields(b) if k == b"N" else b) for k, b in out] == [
        (b"N", {"S": "NOTICE", "C": "00000", "M": "SET ignored"}),
        (b"C", b"SET\0"),
    ]


# -- commands and permissions -----------------------------------------------------------------


@pytest.mark.parametrize(("sql", "method", "args"), CONTROL)
def test_admin_commands_call_the_node(sql: str, method: str, args: tuple[Any, ...]) -> None:
    node = FakeNode()
    out = run(sql, node=node)
    tag = "SET max_client_conn=50" if method == "set_config" else sql.split()[0]
    assert out == [(b"C", tag.encode() + b"\0")]
    assert node.calls == [(method, *args)]


@pytest.mark.parametrize(("sql", "method", "args"), CONTROL)
def test_stats_users_get_admin_access_needed(sql: str, method: str, args: tuple[Any, ...]) -> None:
    node = FakeNode()
    error = error_of(sql, role="stats", node=node)
    assert (error["S"], error["C"], error["M"]) == ("ERROR", "42501", "admin access needed")
    assert node.calls == []


def test_other_roles_are_refused_everything() -> None:
    node = FakeNode()
    assert error_of("SHOW POOLS", role="", node=node)["C"] == "42501"
    assert error_of("PAUSE", role="Admin", node=node)["C"] == "42501"
    assert node.calls == []


def test_words_may_be_quoted_and_commands_any_case() -> None:
    node = FakeNode()
    assert run('  pause   "my-db""x" ;  ', node=node) == [(b"C", b"PAUSE\0")]
    assert run('Show "POOLS"', node=node)[0][0] == b"T"
    assert node.calls == [("pause", 'my-db"x')]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("KILL", "a database is required"),
        ("DISABLE", "a database is required"),
        ("PAUSE pgbouncer", "cannot pause admin db: pgbouncer"),
        ("KILL pgbouncer", "cannot kill admin db: pgbouncer"),
        ("RECONNECT pgbouncer", "cannot reconnect admin db: pgbouncer"),
        ("WAIT_CLOSE pgbouncer", "cannot wait in admin db: pgbouncer"),
    ],
)
def test_refusals_by_the_console(sql: str, message: str) -> None:
    node = FakeNode()
    assert error_of(sql, node=node) == {"S": "ERROR", "C": "08P01", "M": message}
    assert node.calls == []


def test_node_refusals_and_failures_become_errors() -> None:
    node = FakeNode(refuse=AdminError("no such database: nope"))
    assert error_of("PAUSE nope", node=node)["M"] == "no such database: nope"
    node = FakeNode(refuse=AdminError("SET failed"))
    assert error_of("SET bogus = 1", node=node) == {"S": "ERROR", "C": "08P01", "M": "SET failed"}
    node = FakeNode(refuse=RuntimeError("bug with a secret"))
    error = error_of("RELOAD", node=node)
    assert error["C"] == "XX000" and "secret" not in error["M"]


def test_unsupported_show_commands_say_so() -> None:
    assert error_of("SHOW FDS", role="stats")["M"] == "admin access needed"
    for word in ("FDS", "SOCKETS", "ACTIVE_SOCKETS"):
        error = error_of(f"SHOW {word}")
        assert error["C"] == "0A000" and "not supported by Greenvisor" in error["M"]


# -- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "", ";", ";;;;", "show", "SHOW POOLS; SHOW STATS", "show pools extra", "show pools;;",
        "foo", "show foo", "SELECT 1", "\x00", "\udcff\udcfe", "été", "\u017fhow pools",
        "shutdown now", "reload now", "suspend now", "SET = 1", "show 'pools'", "\ud800",
        "show\x00pools",
    ],
)  # fmt: skip
def test_malformed_commands_get_pgbouncers_syntax_error(sql: str) -> None:
    error = error_of(sql)
    assert (error["S"], error["C"]) == ("ERROR", "08P01")
    assert error["M"].startswith("invalid command '") and error["M"].endswith("', use SHOW HELP;")


def test_words_too_long_for_pgbouncers_buffers_are_bad_arguments() -> None:
    assert error_of("abcdefghijklmnop")["M"] == "bad arguments"  # 16 characters
    assert error_of("PAUSE " + "d" * 64)["M"] == "bad arguments"
    assert error_of("SET key = '" + "v" * 254 + "'")["M"] == "bad arguments"
    node = FakeNode()
    assert run("PAUSE " + "d" * 63, node=node) == [(b"C", b"PAUSE\0")]


def test_very_long_queries_are_refused_quickly_and_not_echoed_whole() -> None:
    started = time.monotonic()
    for sql in ('show "' + "a" * 2_000_000, "show " + " " * 60_000 + "x!", "x" * 100_000):
        error = error_of(sql)
        assert error["C"] == "08P01" and len(error["M"]) < 300
    assert time.monotonic() - started < 2.0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gets_whole_messages_never_an_exception(sql: str) -> None:
    out = run(sql, node=FakeNode(refuse=AdminError("refused")))
    assert out and out[-1][0] in (b"C", b"E")
