"""Switching the statement rewriter on mid-conversation (framing's "watching").

A transaction-mode client runs without the rewriter until it first names a statement. The
rewriter then rebuilds its request queue from the message kinds the watching scanner kept.
Each test plays one conversation twice, once with the rewriter on from the first byte and
once switched on lazily, and requires the very same bytes to reach the server and the client.
"""

from __future__ import annotations

import pytest

from pooler.protocol.framing import Exchange, names_statement
from pooler.protocol.prepared import PreparedSession, ServerStatements, StatementNames
from tests.unit.test_prepared import (
    BIND_COMPLETE,
    COMMAND_COMPLETE,
    EXECUTE,
    READY,
    SYNC,
    bind,
    close,
    describe,
    error,
    msg,
    parse,
)

pytestmark = pytest.mark.unit

PARSE_COMPLETE = msg(b"1")
ROW_DESCRIPTION = msg(b"T", b"\0\1a\0" + b"\0" * 18)
DATA_ROW = msg(b"D", b"\0\1\0\0\0\x011")
NO_DATA = msg(b"n")
PARAMS = msg(b"t", b"\0\0")
QUERY = msg(b"Q", b"select 1\0")
READY_IN_TX = msg(b"Z", b"T")
READY_FAILED = msg(b"Z", b"E")


def eager(steps: list[tuple[str, bytes]]) -> tuple[bytes, bytes, Exchange]:
    ps = PreparedSession(StatementNames())
    ps.link(ServerStatements(10))
    ex = Exchange()
    to_server: list = []
    to_client: list = []
    for side, data in steps:
        view = data
        if side == "fe":
            assert ps.frontend(view, len(data), ex, to_server, to_client) == len(data)
        else:
            assert ps.backend(view, len(data), ex, to_client) == len(data)
    return b"".join(bytes(p) for p in to_server), b"".join(bytes(p) for p in to_client), ex


def lazy(steps: list[tuple[str, bytes]]) -> tuple[bytes, bytes, Exchange, bool]:
    names = StatementNames()
    server = ServerStatements(10)
    ps: PreparedSession | None = None
    ex = Exchange()
    ex.start_watching()
    to_server: list = []
    to_client: list = []
    for side, data in steps:
        view = data
        n = len(data)
        if side == "fe":
            if ps is None:
                end = ex.frontend(data, n)
                to_server.append(view[:end])
                if ex.named_at < 0:
                    assert end == n
                    continue
                ps = PreparedSession(names)
                ps.link(server)
                ps.take_over(*ex.kinds())
                ex.stop_watching()
                ex.expected = len(ps.queue)
                view, n = view[end:], n - end
            assert ps.frontend(view, n, ex, to_server, to_client) == n
        elif ps is None:
            assert ex.backend(data, n) == n
            to_client.append(view)
        else:
            assert ps.backend(view, n, ex, to_client) == n
    joined = (b"".join(bytes(p) for p in to_server), b"".join(bytes(p) for p in to_client))
    return joined[0], joined[1], ex, ps is not None


def same_both_ways(steps: list[tuple[str, bytes]]) -> bool:
    """Asserts both runs send the same bytes both ways and end in the same state; returns
    whether the lazy run switched the rewriter on."""
    server_a, client_a, ex_a = eager(steps)
    server_b, client_b, ex_b, switched = lazy(steps)
    assert server_b == server_a
    assert client_b == client_a
    assert ex_b.at_rest() == ex_a.at_rest()
    assert ex_b.tx_status == ex_a.tx_status
    return switched


def test_unnamed_only_never_switches_and_matches():
    steps = [
        ("fe", parse(b"", b"select 1") + bind(b"") + describe(b"P", b"") + EXECUTE + SYNC),
        ("be", PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + DATA_ROW),
        ("be", COMMAND_COMPLETE + READY),
        ("fe", QUERY),
        ("be", ROW_DESCRIPTION + DATA_ROW + COMMAND_COMPLETE + READY),
    ]
    assert same_both_ways(steps) is False


def test_named_statement_mid_pipeline_after_partial_replies():
    """A batch split by the network: unnamed messages, some of their replies already
    relayed, then the first named statement before the batch's Sync (JDBC after
    prepareThreshold)."""
    steps = [
        ("fe", parse(b"", b"insert 1") + bind(b"") + EXECUTE),
        ("be", PARSE_COMPLETE + BIND_COMPLETE),
        (
            "fe",
            parse(b"S_1", b"insert $1")
            + bind(b"S_1")
            + EXECUTE
            + bind(b"S_1")
            + EXECUTE
            + close(b"S", b"S_1")
            + SYNC,
        ),
        ("be", COMMAND_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + COMMAND_COMPLETE),
        ("be", BIND_COMPLETE + COMMAND_COMPLETE + READY),
        ("fe", parse(b"S_1", b"insert $1") + bind(b"S_1") + EXECUTE + SYNC),
        ("be", BIND_COMPLETE + COMMAND_COMPLETE + READY),
    ]
    assert same_both_ways(steps) is True


def test_named_statement_while_earlier_query_is_unanswered():
    steps = [
        ("fe", QUERY),
        ("fe", parse(b"s1", b"select $1", (23,)) + describe(b"S", b"s1") + SYNC),
        ("be", ROW_DESCRIPTION + DATA_ROW + COMMAND_COMPLETE + READY),
        ("be", PARSE_COMPLETE + PARAMS + ROW_DESCRIPTION + READY),
        ("fe", bind(b"s1") + EXECUTE + SYNC),
        ("be", BIND_COMPLETE + COMMAND_COMPLETE + READY),
    ]
    assert same_both_ways(steps) is True


def test_error_before_the_named_statement_skips_to_sync_both_ways():
    steps = [
        ("fe", parse(b"", b"selec 1") + bind(b"") + EXECUTE),
        ("fe", parse(b"s1", b"select 1") + bind(b"s1") + EXECUTE + SYNC),
        ("be", error(b"42601", b"syntax error") + READY),
        ("fe", parse(b"s1", b"select 1") + SYNC),
        ("be", PARSE_COMPLETE + READY),
    ]
    assert same_both_ways(steps) is True


def test_inside_a_transaction_block_with_describe_statement():
    steps = [
        ("fe", msg(b"Q", b"begin\0")),
        ("be", msg(b"C", b"BEGIN\0") + READY_IN_TX),
        ("fe", parse(b"", b"select 2") + bind(b"") + EXECUTE + SYNC),
        ("be", PARSE_COMPLETE + BIND_COMPLETE + DATA_ROW + COMMAND_COMPLETE + READY_IN_TX),
        ("fe", describe(b"S", b"") + parse(b"q", b"select $1") + describe(b"S", b"q") + SYNC),
        ("be", PARAMS + NO_DATA + PARSE_COMPLETE + PARAMS + ROW_DESCRIPTION + READY_IN_TX),
        ("fe", msg(b"Q", b"commit\0")),
        ("be", msg(b"C", b"COMMIT\0") + READY),
    ]
    assert same_both_ways(steps) is True


def test_names_statement_reads_only_the_first_body_bytes():
    assert names_statement(parse(b"a", b"x"), 0, 12) is True
    assert names_statement(parse(b"", b"x"), 0, 12) is False
    assert names_statement(bind(b"s"), 0, 7) is True
    assert names_statement(bind(b""), 0, 7) is False
    assert names_statement(bind(b"", b"portal"), 0, 7) is True  # let it look
    assert names_statement(describe(b"P", b"p"), 0, 7) is False
    assert names_statement(describe(b"S", b"s"), 0, 7) is True
    assert names_statement(close(b"S", b""), 0, 7) is False
    assert names_statement(EXECUTE, 0, 10) is False
    # The body is not here yet: a nameable message counts as naming one (safe side).
    assert names_statement(parse(b"", b"x"), 0, 5) is True


def test_faked_reply_waits_for_the_replies_owed_before_it():
    """A Close of a statement is answered by the pooler itself; when the rewriter starts
    while a query is still unanswered, the fake must follow that query's replies."""
    steps = [
        ("fe", QUERY),
        ("fe", close(b"S", b"never_prepared") + SYNC),
        ("be", ROW_DESCRIPTION + DATA_ROW + COMMAND_COMPLETE + READY),
        ("be", READY),
    ]
    assert same_both_ways(steps) is True
    _, to_client, _ = eager(steps)
    assert to_client.index(msg(b"3")) > to_client.index(COMMAND_COMPLETE)


def test_cached_statement_fake_follows_unanswered_unnamed_execute():
    steps = [
        ("fe", parse(b"a", b"select 1") + SYNC),
        ("be", PARSE_COMPLETE + READY),
        ("fe", parse(b"", b"select 2") + bind(b"") + EXECUTE),
        ("fe", parse(b"b", b"select 1") + bind(b"b") + EXECUTE + SYNC),
        ("be", PARSE_COMPLETE + BIND_COMPLETE + DATA_ROW + COMMAND_COMPLETE),
        ("be", BIND_COMPLETE + DATA_ROW + COMMAND_COMPLETE + READY),
    ]
    # Here the first Parse already switches the lazy run on; the conversation still has to
    # come out the same.
    assert same_both_ways(steps) is True
