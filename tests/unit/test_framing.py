"""Hot-path framing: boundaries, held-back headers and the release rule, byte for byte."""

from __future__ import annotations

import struct

import pytest

from pooler.protocol.errors import ProtocolError
from pooler.protocol.framing import Exchange

pytestmark = pytest.mark.unit


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def feed_frontend(ex: Exchange, data: bytes) -> int:
    return ex.frontend(data, len(data))


def feed_backend(ex: Exchange, data: bytes) -> int:
    return ex.backend(data, len(data))


QUERY = msg(b"Q", b"select 1\0")
SYNC = msg(b"S")
PARSE = msg(b"P", b"\0select 1\0\0\0")
BIND = msg(b"B", b"\0\0\0\0\0\0\0\0")
EXECUTE = msg(b"E", b"\0\0\0\0\0")
FLUSH = msg(b"H")
RFQ_IDLE = msg(b"Z", b"I")
RFQ_TX = msg(b"Z", b"T")
COMMAND_COMPLETE = msg(b"C", b"SELECT 1\0")


def test_simple_query_round_trip_releases_on_idle_ready_for_query() -> None:
    ex = Exchange()
    assert feed_frontend(ex, QUERY) == len(QUERY)
    assert ex.expected == 1 and not ex.releasable()
    reply = COMMAND_COMPLETE + RFQ_IDLE
    assert feed_backend(ex, reply) == len(reply)
    assert ex.releasable()


def test_transaction_block_is_not_releasable() -> None:
    ex = Exchange()
    feed_frontend(ex, msg(b"Q", b"begin\0"))
    feed_backend(ex, msg(b"C", b"BEGIN\0") + RFQ_TX)
    assert ex.expected == 0
    assert not ex.releasable()
    feed_frontend(ex, msg(b"Q", b"commit\0"))
    feed_backend(ex, msg(b"C", b"COMMIT\0") + RFQ_IDLE)
    assert ex.releasable()


def test_pipeline_stays_linked_until_last_sync_answered() -> None:
    ex = Exchange()
    batch = PARSE + BIND + EXECUTE + SYNC
    feed_frontend(ex, batch + batch)
    assert ex.expected == 2
    feed_backend(ex, RFQ_IDLE)
    assert not ex.releasable()
    feed_backend(ex, RFQ_IDLE)
    assert ex.releasable()


def test_flush_does_not_end_an_extended_sequence() -> None:
    ex = Exchange()
    feed_frontend(ex, QUERY)
    feed_frontend(ex, PARSE + BIND + EXECUTE + FLUSH)
    # A late ReadyForQuery for the earlier Query must not release a server that is in the
    # middle of an unsynced extended sequence.
    feed_backend(ex, RFQ_IDLE)
    assert ex.expected == 0
    assert not ex.releasable()
    feed_frontend(ex, SYNC)
    feed_backend(ex, RFQ_IDLE)
    assert ex.releasable()


def test_sync_inside_extended_copy_in_is_not_counted() -> None:
    # libpq: Parse/Bind/Describe/Execute/Sync for COPY FROM STDIN, then data, CopyDone, Sync.
    ex = Exchange()
    feed_frontend(ex, PARSE + BIND + EXECUTE + SYNC)
    feed_backend(ex, msg(b"G", b"\0\0\0"))
    feed_frontend(ex, msg(b"d", b"1\n") + msg(b"c") + SYNC)
    assert ex.expected == 1
    feed_backend(ex, msg(b"C", b"COPY 1\0") + RFQ_IDLE)
    assert ex.releasable()


def test_simple_query_copy_in() -> None:
    ex = Exchange()
    feed_frontend(ex, msg(b"Q", b"copy t from stdin\0"))
    feed_frontend(ex, msg(b"d", b"1\n") + msg(b"c"))
    assert ex.expected == 1
    feed_backend(ex, msg(b"C", b"COPY 1\0") + RFQ_IDLE)
    assert ex.releasable()


def test_partial_header_is_held_back() -> None:
    ex = Exchange()
    data = QUERY + SYNC[:3]
    assert feed_frontend(ex, data) == len(QUERY)
    assert ex.fe_remaining == 0


def test_body_split_across_reads_is_streamed() -> None:
    ex = Exchange()
    big = msg(b"Q", b"x" * 1000 + b"\0")
    assert feed_frontend(ex, big[:100]) == 100
    assert ex.fe_remaining == len(big) - 100
    assert ex.expected == 1
    assert not ex.at_rest()
    assert feed_frontend(ex, big[100:600]) == 500
    rest = big[600:] + SYNC
    assert feed_frontend(ex, rest) == len(rest)
    assert ex.fe_remaining == 0
    assert ex.expected == 2


def test_ready_for_query_without_status_byte_is_held_back() -> None:
    ex = Exchange()
    feed_frontend(ex, QUERY)
    data = COMMAND_COMPLETE + RFQ_IDLE[:5]
    assert feed_backend(ex, data) == len(COMMAND_COMPLETE)
    assert ex.expected == 1
    assert feed_backend(ex, RFQ_IDLE) == len(RFQ_IDLE)
    assert ex.releasable()


def test_large_backend_row_streams_without_parsing() -> None:
    ex = Exchange()
    feed_frontend(ex, QUERY)
    row = msg(b"D", b"\0\1" + struct.pack("!i", 50_000) + b"a" * 50_000)
    assert feed_backend(ex, row[:7]) == 7
    assert ex.be_remaining == len(row) - 7
    assert not ex.releasable()
    tail = row[7:] + COMMAND_COMPLETE + RFQ_IDLE
    assert feed_backend(ex, tail) == len(tail)
    assert ex.releasable()


def test_terminate_is_reported_not_forwarded() -> None:
    ex = Exchange()
    data = QUERY + msg(b"X")
    assert feed_frontend(ex, data) == len(QUERY)
    assert ex.terminate_at == len(QUERY)


@pytest.mark.parametrize("length", [0, 3, 0x40000000, 0xFFFFFFFF])
def test_bad_lengths_are_protocol_errors(length: int) -> None:
    data = b"Q" + struct.pack("!I", length) + b"\0" * 8
    with pytest.raises(ProtocolError) as info:
        feed_frontend(Exchange(), data)
    assert info.value.sqlstate == "08P01"
    with pytest.raises(ProtocolError):
        feed_backend(Exchange(), b"D" + struct.pack("!I", length) + b"\0" * 8)


def test_ready_for_query_with_wrong_length_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        feed_backend(Exchange(), b"Z" + struct.pack("!I", 6) + b"II")


def test_stray_ready_for_query_never_goes_negative() -> None:
    ex = Exchange()
    feed_backend(ex, RFQ_IDLE)
    assert ex.expected == 0
    assert ex.releasable()


@pytest.mark.parametrize("length", [0x40000000, 0xFFFFFFFF])
def test_oversize_length_after_a_whole_message_is_refused(length: int) -> None:
    # The scanner refuses an oversize length where the read ends inside that message
    # (it cannot end inside a read): it must still be refused mid-chunk, in both directions.
    data = QUERY + b"Q" + struct.pack("!I", length) + b"\0" * 8
    with pytest.raises(ProtocolError) as info:
        feed_frontend(Exchange(), data)
    assert info.value.sqlstate == "08P01"
    assert "invalid frontend message length" in info.value.message
    with pytest.raises(ProtocolError) as info:
        feed_backend(Exchange(), RFQ_IDLE + b"D" + struct.pack("!I", length) + b"\0" * 8)
    assert "invalid backend message length" in info.value.message


def test_kinds_since_rest_are_overwritten_not_kept() -> None:
    """While watching, the kinds are the requests and replies since the exchange was last at
    rest; the second transaction's kinds must not include the first's (the lists are
    reused with a count), and a longer pipeline than any before grows them."""
    ex = Exchange()
    ex.start_watching()
    assert ex.kinds() == (b"", b"")
    parse_complete, bind_complete = msg(b"1"), msg(b"2")
    for _ in range(2):
        feed_frontend(ex, PARSE + BIND + EXECUTE + SYNC)
        assert ex.kinds() == (b"PBES", b"")
        feed_backend(ex, parse_complete + bind_complete + COMMAND_COMPLETE)
        assert ex.kinds() == (b"PBES", b"12C")
        feed_backend(ex, RFQ_IDLE)
        assert ex.kinds() == (b"", b"")  # at rest: forgotten
        assert ex.releasable()
    pipeline = (PARSE + BIND + EXECUTE) * 8 + SYNC
    feed_frontend(ex, pipeline)
    assert ex.kinds() == (b"PBE" * 8 + b"S", b"")
    feed_backend(ex, parse_complete)
    assert ex.kinds() == (b"PBE" * 8 + b"S", b"1")
    # Replies past the seven kept packed, and any byte value in any place.
    odd = bytes(range(0x80, 0x100, 0x11))  # eight types with the high bit set
    feed_backend(ex, b"".join(msg(bytes([kind])) for kind in odd))
    assert ex.kinds() == (b"PBE" * 8 + b"S", b"1" + odd)
    ex.reset()  # a new server: nothing owed any more
    assert ex.kinds() == (b"", b"")
