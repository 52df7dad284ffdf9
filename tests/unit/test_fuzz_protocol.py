"""Fuzzing the sans-IO protocol code with Hypothesis: startup packets, Exchange framing over
arbitrary chunk splits, and prepared-statement rewriting.

Properties: only the documented ProtocolError ever escapes; nothing reads past ``n`` (bytes
after it in the buffer never change a result); feeding a stream in chunks gives the same
bytes and the same state as feeding it whole.

Budget: the "fuzz-ci" profile (a few seconds per test). For a long run:
``HYPOTHESIS_PROFILE=long python -m pytest tests/unit/test_fuzz_protocol.py``.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pooler.protocol.errors import ProtocolError
from pooler.protocol.framing import MAX_TRACKED_STATUS, Exchange
from pooler.protocol.prepared import PreparedSession, ServerStatements, StatementNames
from pooler.protocol.startup import (
    parse_options,
    parse_startup_packet,
    split_options,
    split_tenant,
    startup_packet_length,
)

pytestmark = pytest.mark.unit

settings.register_profile(
    "fuzz-ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci"))
if FUZZ is settings.get_profile("default"):  # an unknown name: stay within the CI budget
    FUZZ = settings.get_profile("fuzz-ci")

JUNK = b"\xff\x00Z\x00\x00\x00\x05I" * 4  # what "past the buffer" holds in these tests


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


# -- startup ---------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_startup_parsing_raises_only_protocol_error(data: bytes) -> None:
    for packet in (data, struct.pack("!I", len(data) + 4) + data):
        try:
            startup_packet_length(packet[:4])
        except ProtocolError:
            pass
        try:
            parse_startup_packet(packet)
        except ProtocolError:
            pass


PARAM_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20
)


@FUZZ
@given(
    st.dictionaries(PARAM_TEXT.filter(bool), PARAM_TEXT, max_size=6),
    st.sampled_from([0, 1, 2]),
)
def test_startup_round_trip(params: dict[str, str], minor: int) -> None:
    params = {"user": "u.t", **params}
    body = struct.pack("!I", 3 << 16 | minor)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    packet = struct.pack("!I", len(body) + 4) + body
    try:
        parsed = parse_startup_packet(packet)
    except ProtocolError:
        assert len(packet) > 10000
        return
    assert parsed.params == params  # type: ignore[union-attr]
    assert (parsed.major, parsed.minor) == (3, minor)  # type: ignore[union-attr]


@FUZZ
@given(st.text(max_size=80))
def test_options_and_tenant_split_never_crash(text: str) -> None:
    split_options(text)
    try:
        parse_options(text)
    except ProtocolError:
        pass
    name, tenant = split_tenant(text)
    assert tenant is None or f"{name}.{tenant}" == text


# -- framing ---------------------------------------------------------------------------------

FRONTEND_TYPES = b"QSPBDECHFcdf"
BACKEND_TYPES = b"123CDEINSTZnstvAKGHdcW"


@st.composite
def frontend_stream(draw: st.DrawFn) -> bytes:
    messages = draw(
        st.lists(
            st.tuples(st.sampled_from(list(FRONTEND_TYPES)), st.binary(max_size=40)), max_size=12
        )
    )
    return b"".join(msg(bytes([kind]), body) for kind, body in messages)


@st.composite
def backend_stream(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(list(BACKEND_TYPES)))
        if kind == ord("Z"):
            parts.append(msg(b"Z", draw(st.sampled_from([b"I", b"T", b"E"]))))
        else:
            parts.append(msg(bytes([kind]), draw(st.binary(max_size=40))))
    return b"".join(parts)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed(ex: Exchange, chunks: list[bytes], side: str) -> bytes:
    """Drive ``ex`` like the relay: keep the unconsumed tail, prepend it to the next read,
    and put junk after ``n`` in the buffer (it must never be read)."""
    carry = b""
    out = b""
    scan = ex.frontend if side == "frontend" else ex.backend
    for chunk in chunks:
        data = carry + chunk
        end = scan(data + JUNK, len(data))
        assert 0 <= end <= len(data)
        if side == "frontend" and (ex.terminate_at >= 0 or ex.named_at >= 0):
            return out + data[:end]  # the relay stops here (hangs up / hands to the rewriter)
        out += data[:end]
        carry = data[end:]
        # held back: at most an incomplete header (frontend), or a whole ParameterStatus
        assert len(carry) < (6 if side == "frontend" else 1 + MAX_TRACKED_STATUS)
    return out


def state(ex: Exchange) -> tuple[object, ...]:
    return (ex.expected, ex.extended, ex.fe_remaining, ex.be_remaining, ex.tx_status)


@FUZZ
@given(frontend_stream(), st.lists(st.integers(0, 10_000), max_size=8), st.booleans())
def test_frontend_chunked_equals_whole(stream: bytes, cuts: list[int], watch: bool) -> None:
    whole, chunked = Exchange(), Exchange()
    if watch:  # stop at a message naming a statement, as before the rewriter takes over
        whole.start_watching()
        chunked.start_watching()
    out = feed(whole, [stream], "frontend")
    assert out == stream or (watch and stream.startswith(out) and whole.named_at >= 0)
    out_chunked = feed(chunked, splits(stream, cuts), "frontend")
    if not watch:
        assert out_chunked == out
        assert state(whole) == state(chunked)
        return
    # While watching, a message whose deciding bytes are cut off by a read counts as naming
    # a statement (the rewriter takes over early, which is safe): never later than whole.
    assert out.startswith(out_chunked)
    assert out_chunked == out or chunked.named_at >= 0


@FUZZ
@given(backend_stream(), st.lists(st.integers(0, 10_000), max_size=8))
def test_backend_chunked_equals_whole(stream: bytes, cuts: list[int]) -> None:
    whole, chunked = Exchange(), Exchange()
    assert feed(whole, [stream], "backend") == stream
    assert feed(chunked, splits(stream, cuts), "backend") == stream
    assert state(whole) == state(chunked)
    assert whole.ready_count == chunked.ready_count == stream_ready_count(stream)


def stream_ready_count(stream: bytes) -> int:
    pos = count = 0
    while pos < len(stream):
        count += stream[pos] == ord("Z")
        pos += 1 + struct.unpack_from("!I", stream, pos + 1)[0]
    return count


@FUZZ
@given(st.binary(max_size=120), st.lists(st.integers(0, 200), max_size=6))
def test_garbage_raises_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    for side in ("frontend", "backend"):
        try:
            feed(Exchange(), splits(data, cuts), side)
        except ProtocolError:
            pass


# -- prepared statements ---------------------------------------------------------------------

NAMES = st.sampled_from([b"", b"s1", b"s2", b"s3"])
QUERIES = st.sampled_from([b"SELECT 1", b"SELECT $1", b"SELECT 2"])


@st.composite
def extended_stream(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 10))):
        what = draw(st.sampled_from("PBDCESQd?"))
        name = draw(NAMES)
        if what == "P":
            parts.append(msg(b"P", name + b"\0" + draw(QUERIES) + b"\0\0\0"))
        elif what == "B":
            parts.append(msg(b"B", b"\0" + name + b"\0" + b"\0\0\0\0\0\0"))
        elif what in "DC":
            parts.append(msg(what.encode(), draw(st.sampled_from([b"S", b"P"])) + name + b"\0"))
        elif what == "E":
            parts.append(msg(b"E", b"\0\0\0\0\0"))
        elif what == "S":
            parts.append(msg(b"S", b""))
        elif what == "Q":
            parts.append(msg(b"Q", draw(QUERIES) + b"\0"))
        elif what == "d":
            parts.append(msg(b"d", draw(st.binary(max_size=20))))
        else:  # a malformed body for a rewritten type
            parts.append(msg(draw(st.sampled_from([b"P", b"B", b"D", b"C"])), draw(st.binary())))
    return b"".join(parts)


def drive_prepared(chunks: list[bytes]) -> tuple[bytes, bytes, int]:
    session = PreparedSession(StatementNames())
    session.link(ServerStatements(4))
    ex = Exchange()
    carry, to_server_all, to_client_all = b"", b"", b""
    for chunk in chunks:
        data = carry + chunk
        to_server: list = []
        to_client: list = []
        end = session.frontend(data + JUNK, len(data), ex, to_server, to_client)
        assert 0 <= end <= len(data)
        to_server_all += b"".join(bytes(p) for p in to_server)
        to_client_all += b"".join(bytes(p) for p in to_client)
        carry = data[end:]
    return to_server_all, to_client_all, ex.expected


@FUZZ
@given(extended_stream(), st.lists(st.integers(0, 10_000), max_size=6))
def test_prepared_rewrite_chunked_equals_whole(stream: bytes, cuts: list[int]) -> None:
    try:
        whole = drive_prepared([stream])
    except ProtocolError:
        with pytest.raises(ProtocolError):
            drive_prepared(splits(stream, cuts))
        return
    assert drive_prepared(splits(stream, cuts)) == whole


@FUZZ
@given(st.binary(max_size=150))
def test_prepared_garbage_raises_only_protocol_error(data: bytes) -> None:
    try:
        drive_prepared([data])
    except ProtocolError:
        pass


# -- a state machine: a client and a server talking through one Exchange ---------------------


class ExchangeMachine(RuleBasedStateMachine):
    """Queries and extended-protocol batches, answered by the server, delivered to the
    Exchange in arbitrary pieces: the release rule must hold whenever all is answered."""

    def __init__(self) -> None:
        super().__init__()
        self.ex = Exchange()
        self.fe_pending = b""
        self.be_pending = b""
        self.owed = 0  # ReadyForQuery the model server still owes

    @rule(query=QUERIES)
    def simple_query(self, query: bytes) -> None:
        self.fe_pending += msg(b"Q", query + b"\0")
        self.owed += 1

    @rule(syncs=st.integers(1, 3))
    def extended_batch(self, syncs: int) -> None:
        for _ in range(syncs):
            self.fe_pending += msg(b"P", b"\0SELECT 1\0\0\0") + msg(b"E", b"\0\0\0\0\0")
            self.fe_pending += msg(b"S", b"")
        self.owed += syncs

    @rule(cut=st.integers(0, 200))
    def deliver_frontend(self, cut: int) -> None:
        piece, self.fe_pending = self.fe_pending[:cut], self.fe_pending[cut:]
        if piece:
            self.fe_pending = feed_tail(self.ex, piece, "frontend") + self.fe_pending

    @rule()
    def server_answers(self) -> None:
        if self.fe_pending:
            return  # the server answers what it received
        for _ in range(self.owed):
            self.be_pending += msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
        self.owed = 0

    @rule(cut=st.integers(0, 200))
    def deliver_backend(self, cut: int) -> None:
        piece, self.be_pending = self.be_pending[:cut], self.be_pending[cut:]
        if piece:
            self.be_pending = feed_tail(self.ex, piece, "backend") + self.be_pending

    @invariant()
    def release_rule(self) -> None:
        quiet = not self.fe_pending and not self.be_pending and self.owed == 0
        if quiet:
            assert self.ex.releasable()
        if self.owed and not self.fe_pending:  # the Exchange has seen unanswered requests
            assert not self.ex.releasable()


def feed_tail(ex: Exchange, piece: bytes, side: str) -> bytes:
    """Scan ``piece``; return the bytes it did not consume (kept for the next delivery)."""
    scan = ex.frontend if side == "frontend" else ex.backend
    end = scan(piece + JUNK, len(piece))
    return piece[end:]


ExchangeMachine.TestCase.settings = settings(
    FUZZ, max_examples=max(FUZZ.max_examples // 3, 20), stateful_step_count=25
)
TestExchangeMachine = ExchangeMachine.TestCase
