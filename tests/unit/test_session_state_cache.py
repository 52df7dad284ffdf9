"""The session-state check remembers a client's recent statements (Client._recent_index):
a client taking turns between more statements than it keeps still gets every stateful one
caught, every time, and never a stateless one flagged.

A real Client and ServerConn over socket pairs (bench.relay); _note_session_state called
as the relay calls it after forwarding a read."""

from __future__ import annotations

import struct

import pytest

from bench.relay import relay_objects
from pooler.client import RECENT_PARSES
from pooler.protocol.framing import F_PARSE

pytestmark = pytest.mark.unit


def parse(sql: bytes) -> bytes:
    body = b"\0" + sql + b"\0" + struct.pack("!H", 0)  # unnamed statement, no parameter types
    return b"P" + struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize("kinds", [3, RECENT_PARSES, RECENT_PARSES + 3])
def test_statements_in_turn_are_judged_right_every_time(kinds: int) -> None:
    pool, (client,), _peers, server, _server_peer = relay_objects(1)
    statements = [b"SELECT %d FROM pgbench_accounts" % i for i in range(kinds - 1)]
    # Leaves session state, and has the SELECTs' length: only the bytes tell them apart.
    statements.append(b"SET search_path TO " + b"a" * (len(statements[0]) - 19))
    assert len(set(map(len, statements))) == 1
    for round_ in range(4):
        for sql in statements:
            data = b"xx" + parse(sql)  # not at offset 0: positions are honoured
            client.ex.record_sql(F_PARSE, 2, len(data) - 3)  # the body: data[7:]
            server.dirty = False
            client._note_session_state(data, server)
            assert server.dirty == sql.startswith(b"SET"), (round_, sql)
    kept = client.recent_sql
    assert kept is not None and len(kept) == min(kinds, RECENT_PARSES)


def test_an_idle_client_keeps_no_statements() -> None:
    _pool, (client,), _peers, _server, _server_peer = relay_objects(1)
    assert client.recent_sql is None


@pytest.mark.parametrize(
    "sqls, stateful",
    [
        ([b"SELECT 1", b"SELECT 2"], False),
        ([b"SELECT 1", b"SET search_path TO a"], True),  # the second of a chunk
        ([b"SELECT 1", b"SELECT 2", b"LISTEN x"], True),  # and any after it
        ([b"SET search_path TO a", b"SELECT 1", b"SELECT 2"], True),
    ],
)
def test_every_statement_of_a_chunk_is_judged(sqls: list[bytes], stateful: bool) -> None:
    """Pipelined statements in one read: the scanner keeps the first in fields of its own
    and the rest in a list; the relay judges them all, as it forwards them."""
    _pool, (client,), _peers, server, _server_peer = relay_objects(1)
    assert client.ex.inspect
    sync = b"S\0\0\0\4"
    data = b"".join(parse(sql) + sync for sql in sqls)
    assert client.ex.frontend(data, len(data)) == len(data)
    assert client.ex.sql_type == F_PARSE
    assert len(client.ex.sql_at or ()) == len(sqls) - 1
    server.dirty = False
    client._note_session_state(data, server)
    assert server.dirty == stateful
    assert client.ex.sql_type == 0 and client.ex.sql_at is None  # each judged once


def test_statements_out_of_turn_are_judged_right() -> None:
    """The entry after the last match is only a guess (Client._recent_index): a client that
    changes its order, repeats a statement or skips one still gets each judged by its own
    bytes, stateful ones of the same length among them."""
    _pool, (client,), _peers, server, _server_peer = relay_objects(1)
    statements = [b"SELECT %d FROM pgbench_accounts" % i for i in range(5)]
    statements.append(b"SET search_path TO " + b"a" * (len(statements[0]) - 19))
    assert len(set(map(len, statements))) == 1
    # In turn first (every guess right), then orders where the guess is wrong.
    order = [0, 1, 2, 3, 4, 5] * 2 + [5, 5, 0, 0, 3, 1, 4, 2, 5, 4, 3, 2, 1, 0, 5, 0, 5]
    for step, index in enumerate(order):
        sql = statements[index]
        data = parse(sql)
        client.ex.record_sql(F_PARSE, 0, len(data) - 1)  # the body: data[5:]
        server.dirty = False
        client._note_session_state(data, server)
        assert server.dirty == (index == 5), (step, sql)
