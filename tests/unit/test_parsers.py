"""Parsers: round trips with the builders, and hostile bodies that must raise ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooler.protocol import builders, parsers
from pooler.protocol.errors import ProtocolError

pytestmark = pytest.mark.unit


def body(message: bytes) -> bytes:
    """Strip and check the 5-byte header of a builder's output."""
    assert struct.unpack("!I", message[1:5])[0] == len(message) - 1
    return message[5:]


# -- error fields ----------------------------------------------------------------------------


def test_error_fields_round_trip() -> None:
    message = builders.error_response("FATAL", "28P01", "bad", detail="d", hint="h")
    assert parsers.parse_error_fields(body(message)) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28P01",
        "M": "bad",
        "D": "d",
        "H": "h",
    }


def test_error_fields_from_a_real_server() -> None:
    raw = (
        b"SFATAL\x00VFATAL\x00C3D000\x00"
        b'Mdatabase "nope" does not exist\x00Fpostinit.c\x00L1015\x00RInitPostgres\x00\x00'
    )
    fields = parsers.parse_error_fields(raw)
    assert fields["C"] == "3D000" and fields["R"] == "InitPostgres"
    assert fields["M"] == 'database "nope" does not exist'


def test_error_fields_without_sqlstate_or_message() -> None:
    # CVE-2026-6666: a server may send neither; parsing must not fail.
    assert parsers.parse_error_fields(b"SFATAL\x00\x00") == {"S": "FATAL"}
    assert parsers.parse_error_fields(b"\x00") == {}


def test_error_fields_tolerate_bad_utf8_and_trailing_bytes() -> None:
    fields = parsers.parse_error_fields(b"Mcaf\xe9\x00\x00ignored garbage")
    assert fields == {"M": "caf\ufffd"}
    assert parsers.parse_error_fields(memoryview(b"\x80x\x00\x00")) == {"\x80": "x"}
    assert parsers.parse_error_fields(b"Ma\x00Mb\x00\x00") == {"M": "b"}


@pytest.mark.parametrize("raw", [b"", b"SFATAL", b"SFATAL\x00", b"SFATAL\x00Mmsg", b"M"])
def test_error_fields_missing_terminator(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parsers.parse_error_fields(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_error_fields_arbitrary_bytes(raw: bytes) -> None:
    try:
        fields = parsers.parse_error_fields(raw)
    except ProtocolError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


# -- authentication --------------------------------------------------------------------------


def test_authentication_round_trips() -> None:
    assert parsers.parse_authentication(body(builders.authentication_ok())) == (0, b"")
    assert parsers.parse_authentication(body(builders.authentication_cleartext_password())) == (
        3,
        b"",
    )
    md5 = builders.authentication_md5_password(b"salt")
    assert parsers.parse_authentication(body(md5)) == (5, b"salt")
    sasl = builders.authentication_sasl(["SCRAM-SHA-256"])
    assert parsers.parse_authentication(body(sasl)) == (10, b"SCRAM-SHA-256\x00\x00")
    cont = builders.authentication_sasl_continue(b"r=abc")
    assert parsers.parse_authentication(body(cont)) == (11, b"r=abc")
    final = builders.authentication_sasl_final(b"v=xyz")
    assert parsers.parse_authentication(body(final)) == (12, b"v=xyz")


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x00\x00"])
def test_authentication_too_short(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parsers.parse_authentication(raw)


# -- parameter status, backend key, ready for query -------------------------------------------


def test_parameter_status_round_trip() -> None:
    message = builders.parameter_status("server_version", "15.8")
    assert parsers.parse_parameter_status(body(message)) == ("server_version", "15.8")
    assert parsers.parse_parameter_status(b"x\x00\x00") == ("x", "")


def test_parameter_status_non_utf8_survives_a_round_trip() -> None:
    raw = b"application_name\x00caf\xe9\x00"
    name, value = parsers.parse_parameter_status(raw)
    assert body(builders.parameter_status(name, value)) == raw


@pytest.mark.parametrize(
    "raw", [b"", b"name", b"name\x00", b"name\x00value", b"a\x00b\x00c", b"\x00v\x00"]
)
def test_parameter_status_malformed(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parsers.parse_parameter_status(raw)


def test_backend_key_data_round_trip() -> None:
    message = builders.backend_key_data(4242, b"\x01\x02\x03\x04")
    assert parsers.parse_backend_key_data(body(message)) == (4242, b"\x01\x02\x03\x04")
    long_key = builders.backend_key_data(0xFFFFFFFF, bytes(range(256)))
    assert parsers.parse_backend_key_data(body(long_key)) == (0xFFFFFFFF, bytes(range(256)))


@pytest.mark.parametrize("size", [0, 4, 7, 261, 1000])
def test_backend_key_data_bad_length(size: int) -> None:
    with pytest.raises(ProtocolError):
        parsers.parse_backend_key_data(b"k" * size)


def test_ready_for_query_round_trip() -> None:
    for status in (b"I", b"T", b"E"):
        assert parsers.parse_ready_for_query(body(builders.ready_for_query(status))) == status


@pytest.mark.parametrize("raw", [b"", b"X", b"II", b"\x00"])
def test_ready_for_query_bad_status(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parsers.parse_ready_for_query(raw)


# -- password messages -----------------------------------------------------------------------


def test_password_message_round_trip() -> None:
    message = builders.password_message(b"md5abc\x00")
    assert parsers.parse_password_message(body(message)) == b"md5abc"
    assert parsers.parse_password_message(b"\x00") == b""
    assert parsers.parse_password_message(b"p\xc3\xa4ss\x00") == b"p\xc3\xa4ss"


@pytest.mark.parametrize("raw", [b"", b"secret", b"sec\x00ret\x00", b"secret\x00\x00"])
def test_password_message_malformed(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parsers.parse_password_message(raw)


def test_sasl_initial_response_round_trip() -> None:
    message = builders.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert parsers.parse_sasl_initial_response(body(message)) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    none = builders.sasl_initial_response("SCRAM-SHA-256", None)
    assert parsers.parse_sasl_initial_response(body(none)) == ("SCRAM-SHA-256", b"")
    empty = builders.sasl_initial_response("SCRAM-SHA-256", b"")
    assert parsers.parse_sasl_initial_response(body(empty)) == ("SCRAM-SHA-256", b"")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"SCRAM-SHA-256",  # no terminator
        b"SCRAM-SHA-256\x00",  # no length
        b"SCRAM-SHA-256\x00\x00\x00",  # short length
        b"SCRAM-SHA-256\x00\x00\x00\x00\x05abc",  # CVE-2026-6664: length overruns the body
        b"SCRAM-SHA-256\x00\x7f\xff\xff\xffabc",  # huge length
        b"SCRAM-SHA-256\x00\xff\xff\xff\xfeabc",  # negative length other than -1
        b"SCRAM-SHA-256\x00\x80\x00\x00\x00",  # most negative length
        b"SCRAM-SHA-256\x00\x00\x00\x00\x01ab",  # bytes after the data
        b"SCRAM-SHA-256\x00\xff\xff\xff\xffab",  # data after a -1 length
        b"\x00\x00\x00\x00\x00",  # empty mechanism
        b"SCR\xc3\x84M\x00\x00\x00\x00\x00",  # non-ASCII mechanism
    ],
)
def test_sasl_initial_response_malformed(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parsers.parse_sasl_initial_response(raw)


def test_sasl_initial_response_overrun_is_named() -> None:
    # CVE-2026-6664: the announced length, not the bytes present, is what is wrong
    with pytest.raises(ProtocolError) as info:
        parsers.parse_sasl_initial_response(b"SCRAM-SHA-256\x00\x7f\xff\xff\xffabc")
    assert "data length 2147483647 but 3 bytes follow" in info.value.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(-(2**31), 2**31 - 1), st.binary(max_size=64))
def test_sasl_initial_response_arbitrary(mechanism: bytes, length: int, data: bytes) -> None:
    framed = mechanism + b"\x00" + struct.pack("!i", length) + data
    # The second form has no length of ours: when its bytes happen to frame a message (a
    # NUL, then a length that fits), that length is theirs, so only the name is checked.
    # A NUL inside the mechanism ends it early: then the length read is not ours either.
    ours = max(length, 0) if b"\x00" not in mechanism else None
    for raw, expected in ((framed, ours), (mechanism + data, None)):
        try:
            name, payload = parsers.parse_sasl_initial_response(raw)
        except ProtocolError:
            continue
        assert name.isascii()
        if expected is not None:
            assert len(payload) == expected


def test_sasl_response() -> None:
    assert parsers.parse_sasl_response(body(builders.sasl_response(b"c=biws"))) == b"c=biws"
    assert parsers.parse_sasl_response(memoryview(b"")) == b""
