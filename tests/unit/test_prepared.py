"""Prepared-statement rewriting in transaction mode: golden bytes for every rewrite."""

from __future__ import annotations

import struct

import pytest

from pooler.protocol.errors import ProtocolError
from pooler.protocol.framing import Exchange
from pooler.protocol.prepared import (
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    POISON_PARSE,
    SHORT_NAME,
    PreparedSession,
    ServerStatements,
    StatementNames,
)

pytestmark = pytest.mark.unit


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def parse(name: bytes, query: bytes, types: tuple[int, ...] = ()) -> bytes:
    return msg(
        b"P",
        name
        + b"\0"
        + query
        + b"\0"
        + struct.pack("!h", len(types))
        + b"".join(struct.pack("!I", t) for t in types),
    )


def bind(stmt: bytes, portal: bytes = b"", params: bytes = b"\0\0\0\0\0\0") -> bytes:
    return msg(b"B", portal + b"\0" + stmt + b"\0" + params)


def describe(kind: bytes, name: bytes) -> bytes:
    return msg(b"D", kind + name + b"\0")


def close(kind: bytes, name: bytes) -> bytes:
    return msg(b"C", kind + name + b"\0")


EXECUTE = msg(b"E", b"\0\0\0\0\0")
SYNC = msg(b"S")
BIND_COMPLETE = msg(b"2")
COMMAND_COMPLETE = msg(b"C", b"SELECT 1\0")
READY = msg(b"Z", b"I")


def error(code: bytes, text: bytes) -> bytes:
    return msg(b"E", b"SERROR\0VERROR\0C" + code + b"\0M" + text + b"\0\0")


class Link:
    """A client session and a server cache, driven by hand."""

    def __init__(self, names: StatementNames, server: ServerStatements) -> None:
        self.session = PreparedSession(names)
        self.session.link(server)
        self.ex = Exchange()

    def send(self, data: bytes) -> tuple[bytes, bytes]:
        to_server: list = []
        to_client: list = []
        view = data
        consumed = self.session.frontend(view, len(data), self.ex, to_server, to_client)
        assert consumed == len(data)
        return b"".join(bytes(p) for p in to_server), b"".join(bytes(p) for p in to_client)

    def reply(self, data: bytes) -> bytes:
        to_client: list = []
        view = data
        consumed = self.session.backend(view, len(data), self.ex, to_client)
        assert consumed == len(data)
        return b"".join(bytes(p) for p in to_client)


@pytest.fixture
def names() -> StatementNames:
    return StatementNames()


def test_named_parse_is_renamed_and_its_reply_forwarded(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    sent, early = link.send(parse(b"s1", b"select 1") + bind(b"s1") + EXECUTE + SYNC)
    assert early == b""
    assert sent == (parse(b"gv_1", b"select 1") + bind(b"gv_1") + EXECUTE + SYNC)
    replies = PARSE_COMPLETE + BIND_COMPLETE + COMMAND_COMPLETE + READY
    assert link.reply(replies) == replies
    assert link.ex.releasable()


def test_statement_already_on_server_is_not_parsed_again(names: StatementNames) -> None:
    server = ServerStatements(10)
    first = Link(names, server)
    first.send(parse(b"a", b"select 1") + SYNC)
    first.reply(PARSE_COMPLETE + READY)
    second = Link(names, server)  # another client, same server, same query, other name
    sent, early = second.send(parse(b"b", b"select 1") + bind(b"b") + EXECUTE + SYNC)
    assert early == PARSE_COMPLETE  # nothing outstanding: faked at once
    assert sent == bind(b"gv_1") + EXECUTE + SYNC
    replies = BIND_COMPLETE + COMMAND_COMPLETE + READY
    assert second.reply(replies) == replies


def test_fake_parse_complete_waits_for_earlier_replies(names: StatementNames) -> None:
    server = ServerStatements(10)
    server.add(names.name_for(b"select 1\0\0\0"))
    link = Link(names, server)
    sent, early = link.send(msg(b"Q", b"select 2\0") + parse(b"p", b"select 1") + SYNC)
    assert early == b""
    assert sent == msg(b"Q", b"select 2\0") + SYNC
    out = link.reply(COMMAND_COMPLETE + READY + READY)
    assert out == COMMAND_COMPLETE + READY + PARSE_COMPLETE + READY


def test_bind_on_a_server_without_the_statement_injects_a_parse(names: StatementNames) -> None:
    first = Link(names, ServerStatements(10))
    first.send(parse(b"s1", b"select $1", (23,)) + SYNC)
    first.reply(PARSE_COMPLETE + READY)
    # The same client on another server: the statement is prepared there first.
    other = ServerStatements(10)
    first.session.link(other)
    sent, _ = first.send(bind(b"s1", params=b"\0\0\0\1\0\0\0\x011\0\0") + EXECUTE + SYNC)
    assert sent == (
        parse(b"gv_1", b"select $1", (23,))
        + bind(b"gv_1", params=b"\0\0\0\1\0\0\0\x011\0\0")
        + EXECUTE
        + SYNC
    )
    out = first.reply(PARSE_COMPLETE + BIND_COMPLETE + COMMAND_COMPLETE + READY)
    assert out == BIND_COMPLETE + COMMAND_COMPLETE + READY  # injected ParseComplete swallowed
    assert other.has(b"gv_1")


def test_bind_rewrite_adjusts_the_length_byte_for_byte(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    link.send(parse(b"a_much_longer_client_name", b"select 1") + SYNC)
    link.reply(PARSE_COMPLETE + READY)
    sent, _ = link.send(bind(b"a_much_longer_client_name", portal=b"P1") + SYNC)
    expected_body = b"P1\0gv_1\0\0\0\0\0\0\0"
    assert sent == b"B" + struct.pack("!I", len(expected_body) + 4) + expected_body + SYNC


def test_describe_statement_is_rewritten(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    link.send(parse(b"s", b"select 1") + SYNC)
    link.reply(PARSE_COMPLETE + READY)
    sent, _ = link.send(describe(b"S", b"s") + describe(b"P", b"") + SYNC)
    assert sent == describe(b"S", b"gv_1") + describe(b"P", b"") + SYNC


def test_close_drops_only_the_client_mapping(names: StatementNames) -> None:
    server = ServerStatements(10)
    link = Link(names, server)
    link.send(parse(b"s", b"select 1") + SYNC)
    link.reply(PARSE_COMPLETE + READY)
    sent, early = link.send(close(b"S", b"s") + SYNC)
    assert sent == SYNC  # nothing is closed on the server
    assert early == CLOSE_COMPLETE  # nothing outstanding before it: faked at once
    assert link.reply(READY) == READY
    assert b"s" not in link.session.statements
    assert server.has(b"gv_1")


def test_close_is_faked_in_order(names: StatementNames) -> None:
    server = ServerStatements(10)
    link = Link(names, server)
    sent, early = link.send(parse(b"s", b"select 1") + close(b"S", b"s") + SYNC)
    assert sent == parse(b"gv_1", b"select 1") + SYNC
    assert early == b""
    assert link.reply(PARSE_COMPLETE + READY) == PARSE_COMPLETE + CLOSE_COMPLETE + READY
    assert server.has(b"gv_1")  # still prepared on the server for others
    # The name can be reused for another query now.
    sent, _ = link.send(parse(b"s", b"select 2") + SYNC)
    assert sent == parse(b"gv_2", b"select 2") + SYNC


def test_duplicate_name_gets_postgres_error(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    link.send(parse(b"dup", b"select 1") + SYNC)
    link.reply(PARSE_COMPLETE + READY)
    sent, _ = link.send(parse(b"dup", b"select 2") + bind(b"dup") + EXECUTE + SYNC)
    assert sent.startswith(POISON_PARSE)
    server_error = error(b"42601", b'syntax error at or near "greenvisor"')
    out = link.reply(server_error + READY)
    assert b"C42P05\0" in out
    assert b'prepared statement "dup" already exists' in out
    assert b"42601" not in out
    assert out.endswith(READY)
    assert not link.session.queue
    # The original statement is still the client's.
    sent, _ = link.send(bind(b"dup") + SYNC)
    assert sent == bind(b"gv_1") + SYNC


def test_unknown_statement_gets_postgres_error(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    sent, _ = link.send(bind(b"nope") + EXECUTE + SYNC)
    assert sent == bind(b"gv_missing_statement") + EXECUTE + SYNC
    out = link.reply(
        error(b"26000", b'prepared statement "gv_missing_statement" does not exist') + READY
    )
    assert b"C26000\0" in out and b'prepared statement "nope" does not exist' in out
    assert b"gv_missing_statement" not in out


def test_failed_parse_is_forgotten_everywhere(names: StatementNames) -> None:
    server = ServerStatements(10)
    link = Link(names, server)
    sent, _ = link.send(parse(b"bad", b"selec 1") + parse(b"later", b"select 3") + SYNC)
    assert b"gv_1" in sent and b"gv_2" in sent
    out = link.reply(error(b"42601", b"syntax error") + READY)
    assert out == error(b"42601", b"syntax error") + READY
    assert not server.has(b"gv_1") and not server.has(b"gv_2")  # the second was skipped
    assert "bad" not in {k.decode() for k in link.session.statements}
    assert b"later" not in link.session.statements
    assert link.ex.releasable()


def test_error_mid_pipeline_skips_to_sync(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    batch1 = msg(b"P", b"\0select 1/0\0\0\0") + bind(b"") + EXECUTE + SYNC
    batch2 = msg(b"P", b"\0select 1\0\0\0") + bind(b"") + EXECUTE + SYNC
    link.send(batch1 + batch2)
    assert link.ex.expected == 8
    out = link.reply(PARSE_COMPLETE + BIND_COMPLETE + error(b"22012", b"division by zero") + READY)
    assert out.endswith(READY)
    assert not link.ex.releasable()  # the second batch is still running
    link.reply(PARSE_COMPLETE + BIND_COMPLETE + COMMAND_COMPLETE + READY)
    assert link.ex.releasable()


def test_lru_eviction_closes_on_the_server(names: StatementNames) -> None:
    server = ServerStatements(2)
    link = Link(names, server)
    sent, _ = link.send(
        parse(b"a", b"select 1") + parse(b"b", b"select 2") + parse(b"c", b"select 3") + SYNC
    )
    assert sent == (
        parse(b"gv_1", b"select 1")
        + parse(b"gv_2", b"select 2")
        + parse(b"gv_3", b"select 3")
        + close(b"S", b"gv_1")
        + SYNC
    )
    out = link.reply(PARSE_COMPLETE * 3 + CLOSE_COMPLETE + READY)
    assert out == PARSE_COMPLETE * 3 + READY  # our Close's reply is swallowed
    assert list(server.names) == [b"gv_2", b"gv_3"]
    # "a" is re-prepared transparently when used again.
    sent, _ = link.send(bind(b"a") + SYNC)
    assert sent.startswith(parse(b"gv_1", b"select 1"))


def test_deallocate_all_clears_both_caches(names: StatementNames) -> None:
    server = ServerStatements(10)
    link = Link(names, server)
    link.send(parse(b"s", b"select 1") + SYNC)
    link.reply(PARSE_COMPLETE + READY)
    link.send(msg(b"Q", b"deallocate all\0"))
    link.reply(msg(b"C", b"DEALLOCATE ALL\0") + READY)
    assert not server.names and not link.session.statements


def test_extended_copy_in_with_ignored_sync(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    link.send(msg(b"P", b"\0copy t from stdin\0\0\0") + bind(b"") + EXECUTE + SYNC)
    link.reply(PARSE_COMPLETE + BIND_COMPLETE + msg(b"G", b"\0\0\0"))
    link.send(msg(b"d", b"1\n") + msg(b"c") + SYNC)
    assert not link.ex.releasable()
    out = link.reply(msg(b"C", b"COPY 1\0") + READY)
    assert out.endswith(READY)
    assert link.ex.releasable()


def test_large_bind_is_rewritten_and_streamed(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    link.send(parse(b"s", b"select $1") + SYNC)
    link.reply(PARSE_COMPLETE + READY)
    value = b"x" * 100_000
    params = b"\0\0\0\1" + struct.pack("!i", len(value)) + value + b"\0\0"
    whole = bind(b"s", params=params)
    to_server: list = []
    view = whole[:1000]
    consumed = link.session.frontend(view, 1000, link.ex, to_server, [])
    assert consumed == 1000
    assert link.ex.fe_remaining == len(whole) - 1000
    head = b"".join(bytes(p) for p in to_server)
    rest_out: list = []
    tail = whole[1000:] + SYNC
    link.session.frontend(tail, len(tail), link.ex, rest_out, [])
    assert head + b"".join(bytes(p) for p in rest_out) == bind(b"gv_1", params=params) + SYNC


def test_incomplete_parse_is_held_until_whole(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    data = parse(b"s", b"select 1")
    to_server: list = []
    consumed = link.session.frontend(data[:8], 8, link.ex, to_server, [])
    assert consumed == 0 and to_server == []


def test_simple_query_error_keeps_the_query_outstanding(names: StatementNames) -> None:
    link = Link(names, ServerStatements(10))
    link.send(msg(b"Q", b"select 1/0\0"))
    link.reply(error(b"22012", b"division by zero"))
    assert not link.ex.releasable()
    link.reply(READY)
    assert link.ex.releasable()


def test_prepare_and_sync_without_a_server_when_the_statement_is_known(
    names: StatementNames,
) -> None:
    server = ServerStatements(10)
    first = Link(names, server)
    first.send(parse(b"s", b"select 1") + SYNC)
    first.reply(PARSE_COMPLETE + READY)  # confirmed by a server
    other = PreparedSession(names)  # a client with no server linked
    data = parse(b"mine", b"select 1") + close(b"S", b"old") + SYNC
    answer = other.answer_without_server(data, len(data))
    assert answer == PARSE_COMPLETE + CLOSE_COMPLETE + READY
    assert other.statements == {b"mine": b"select 1\0\0\0"}


def test_unknown_statement_needs_a_server(names: StatementNames) -> None:
    session = PreparedSession(names)
    for data in (
        parse(b"s", b"select 42") + SYNC,
        parse(b"s", b"select 1"),
        bind(b"s") + SYNC,
        msg(b"Q", b"select 1\0"),
    ):
        assert session.answer_without_server(data, len(data)) is None
    assert session.statements == {}


@pytest.mark.parametrize("length", [0x40000000, 0xFFFFFFFF])
def test_oversize_length_after_a_whole_message_is_refused(
    names: StatementNames, length: int
) -> None:
    link = Link(names, ServerStatements(10))
    data = SYNC + b"Q" + struct.pack("!I", length) + b"\0" * 8
    with pytest.raises(ProtocolError, match="invalid frontend message length"):
        link.session.frontend(data, len(data), link.ex, [], [])
    data = READY + b"D" + struct.pack("!I", length) + b"\0" * 8
    with pytest.raises(ProtocolError, match="invalid backend message length"):
        link.session.backend(data, len(data), link.ex, [])


def test_bind_with_a_long_portal_name_is_rewritten(names: StatementNames) -> None:
    # The statement name lies past the first 256 bytes the fast path looks at.
    link = Link(names, ServerStatements(10))
    link.send(parse(b"s1", b"select 1") + SYNC)
    link.reply(PARSE_COMPLETE + READY)
    portal = b"p" * 300
    sent, _early = link.send(bind(b"s1", portal=portal) + EXECUTE + SYNC)
    assert sent == bind(b"gv_1", portal=portal) + EXECUTE + SYNC


@pytest.mark.parametrize("size", [1, SHORT_NAME - 1, SHORT_NAME, SHORT_NAME + 1, 300])
@pytest.mark.parametrize("portal", [b"", b"P1"])
def test_bind_finds_statement_names_of_any_length(
    names: StatementNames, size: int, portal: bytes
) -> None:
    """_bind finds short names byte by byte and longer ones by a search: both, at the
    boundary between them, with and without a portal name, rewrite to the same bytes."""
    link = Link(names, ServerStatements(10))
    name = (b"s%d_" % size + b"n" * size)[:size]
    link.send(parse(name, b"select 1") + SYNC)
    link.reply(PARSE_COMPLETE + READY)
    sent, _ = link.send(bind(name, portal=portal) + EXECUTE + SYNC)
    assert sent == bind(b"gv_1", portal=portal) + EXECUTE + SYNC


@pytest.mark.parametrize("size", [3, SHORT_NAME, 300])
def test_bind_without_a_statement_name_terminator_is_refused(
    names: StatementNames, size: int
) -> None:
    link = Link(names, ServerStatements(10))
    body = b"\0" + b"s" * size  # unnamed portal, then a name that never ends
    with pytest.raises(ProtocolError, match="statement name is not terminated"):
        link.send(msg(b"B", body) + SYNC)
