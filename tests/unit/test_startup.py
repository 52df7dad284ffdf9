"""Startup-phase packets: golden bytes, every refusal path, options and tenant splitting."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooler.protocol.errors import ProtocolError
from pooler.protocol.startup import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_options,
    parse_startup_packet,
    split_options,
    split_tenant,
    startup_packet_length,
)

pytestmark = pytest.mark.unit

# What `psql "host=... user=app.t1 dbname=postgres"` sends (libpq, protocol 3.0), by hand.
PSQL_STARTUP = (
    b"\x00\x00\x00\x52"  # length 82
    b"\x00\x03\x00\x00"  # protocol 3.0
    b"user\x00app.t1\x00"
    b"database\x00postgres\x00"
    b"application_name\x00psql\x00"
    b"client_encoding\x00UTF8\x00"
    b"\x00"
)


def packet(code: int, body: bytes = b"") -> bytes:
    return struct.pack("!II", 8 + len(body), code) + body


def startup(*pairs: bytes, minor: int = 0, major: int = 3) -> bytes:
    return packet(major << 16 | minor, b"".join(p + b"\0" for p in pairs) + b"\0")


def refused(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_startup_packet(data)
    return info.value


# -- constants and lengths -------------------------------------------------------------------


def test_codes_are_postgres_values() -> None:
    assert PROTOCOL_3_0 == 196608 == 3 << 16
    assert SSL_REQUEST_CODE == 80877103 == 1234 << 16 | 5679
    assert GSSENC_REQUEST_CODE == 80877104 == 1234 << 16 | 5680
    assert CANCEL_REQUEST_CODE == 80877102 == 1234 << 16 | 5678
    assert MAX_STARTUP_PACKET == 10000


def test_startup_packet_length_accepts_8_to_10000() -> None:
    assert startup_packet_length(b"\x00\x00\x00\x08") == 8
    assert startup_packet_length(memoryview(b"\x00\x00\x27\x10rest")) == 10000
    assert startup_packet_length(PSQL_STARTUP[:4]) == 82


@pytest.mark.parametrize("length", [0, 4, 7, 10001, 0x7FFFFFFF, 0xFFFFFFFF])
def test_startup_packet_length_refuses(length: int) -> None:
    with pytest.raises(ProtocolError) as info:
        startup_packet_length(struct.pack("!I", length))
    assert f"invalid startup packet length {length}" in info.value.message
    assert info.value.sqlstate == "08P01"


def test_startup_packet_length_needs_four_bytes() -> None:
    with pytest.raises(ProtocolError):
        startup_packet_length(b"\x00\x00\x08")


# -- encryption and cancel requests ---------------------------------------------------------


def test_ssl_request_golden() -> None:
    assert parse_startup_packet(b"\x00\x00\x00\x08\x04\xd2\x16\x2f") == SSLRequest()


def test_gssenc_request_golden() -> None:
    assert parse_startup_packet(b"\x00\x00\x00\x08\x04\xd2\x16\x30") == GSSENCRequest()


@pytest.mark.parametrize("code", [SSL_REQUEST_CODE, GSSENC_REQUEST_CODE])
def test_encryption_request_with_trailing_bytes_refused(code: int) -> None:
    # CVE-2021-3935: bytes after the SSLRequest must never be taken as the next packet.
    error = refused(packet(code, b"\x00\x00\x00\x08"))
    assert "exactly 8 bytes" in error.message


def test_cancel_request_golden() -> None:
    data = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef"
    request = parse_startup_packet(data)
    assert request == CancelRequest(12345, b"\xde\xad\xbe\xef")
    assert "deadbeef" not in repr(request) and "\\xde" not in repr(request)


def test_cancel_request_protocol_3_2_long_key() -> None:
    key = bytes(range(256))
    request = parse_startup_packet(packet(CANCEL_REQUEST_CODE, b"\x7f\xff\xff\xff" + key))
    assert request == CancelRequest(0x7FFFFFFF, key)


@pytest.mark.parametrize("key_length", [0, 3, 257])
def test_cancel_request_bad_key_length_refused(key_length: int) -> None:
    error = refused(packet(CANCEL_REQUEST_CODE, b"\0\0\0\1" + b"k" * key_length))
    assert "cancel request length" in error.message


def test_cancel_request_without_pid_refused() -> None:
    refused(packet(CANCEL_REQUEST_CODE))


# -- startup message ------------------------------------------------------------------------


def test_psql_startup_golden() -> None:
    assert len(PSQL_STARTUP) == 82
    msg = parse_startup_packet(PSQL_STARTUP)
    assert msg == StartupMessage(
        3,
        0,
        {
            "user": "app.t1",
            "database": "postgres",
            "application_name": "psql",
            "client_encoding": "UTF8",
        },
    )
    assert list(msg.params) == ["user", "database", "application_name", "client_encoding"]
    assert msg.user == "app.t1" and msg.database == "postgres"
    assert msg.options == "" and msg.protocol_options == {}
    assert msg.settings() == {"application_name": "psql", "client_encoding": "UTF8"}


def test_memoryview_packet_accepted() -> None:
    assert parse_startup_packet(memoryview(PSQL_STARTUP)).user == "app.t1"


def test_database_defaults_to_user() -> None:
    assert parse_startup_packet(startup(b"user", b"bob")).database == "bob"
    assert parse_startup_packet(startup(b"user", b"bob", b"database", b"")).database == "bob"


def test_options_and_protocol_options() -> None:
    msg = parse_startup_packet(
        startup(
            b"user", b"u.t",
            b"options", b"-c search_path=app -c statement_timeout=5s",
            b"statement_timeout", b"1s",
            b"_pq_.command_compression", b"on",
            b"replication", b"false",
            minor=2,
        )
    )  # fmt: skip
    assert (msg.major, msg.minor) == (3, 2)
    assert msg.options == "-c search_path=app -c statement_timeout=5s"
    assert msg.protocol_options == {"_pq_.command_compression": "on"}
    # explicit startup parameters are applied after options, as Postgres does
    assert msg.settings() == {"search_path": "app", "statement_timeout": "1s"}


def test_empty_value_is_allowed() -> None:
    msg = parse_startup_packet(startup(b"user", b"u", b"options", b""))
    assert msg.params == {"user": "u", "options": ""} and msg.options == ""


def test_any_minor_version_accepted() -> None:
    assert parse_startup_packet(startup(b"user", b"u", minor=0xFFFF)).minor == 0xFFFF


@pytest.mark.parametrize(("major", "minor"), [(2, 0), (4, 0), (1, 0), (0, 0)])
def test_other_major_versions_refused(major: int, minor: int) -> None:
    error = refused(startup(b"user", b"u", major=major, minor=minor))
    assert error.message == (
        f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2"
    )
    assert error.sqlstate == "08P01"


def test_short_packet_refused() -> None:
    for data in (b"", b"\x00\x00\x00\x04", b"\x00\x00\x00\x07\x00\x03\x00"):
        assert "invalid startup packet length" in refused(data).message


def test_oversized_packet_refused() -> None:
    body = b"user\0u\0" + b"x" * MAX_STARTUP_PACKET + b"\0y\0\0"
    assert "invalid startup packet length" in refused(packet(PROTOCOL_3_0, body)).message


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_length_field_must_match(delta: int) -> None:
    data = bytearray(PSQL_STARTUP)
    data[0:4] = struct.pack("!I", len(PSQL_STARTUP) + delta)
    assert "length field says" in refused(bytes(data)).message


def test_missing_final_terminator_refused() -> None:
    assert "terminator" in refused(packet(PROTOCOL_3_0, b"user\0u\0")).message
    assert "terminator" in refused(packet(PROTOCOL_3_0, b"user\0u")).message
    assert "terminator" in refused(packet(PROTOCOL_3_0)).message


def test_odd_number_of_strings_refused() -> None:
    assert "no value" in refused(packet(PROTOCOL_3_0, b"user\0u\0database\0\0")).message


def test_nul_inside_a_value_refused() -> None:
    # "user\0ap\0p\0" + terminator: the NUL splits the value, leaving a name without value
    refused(packet(PROTOCOL_3_0, b"user\0ap\0p\0\0"))
    refused(packet(PROTOCOL_3_0, b"user\0u\0\0x\0y\0\0"))  # empty name in the middle


def test_empty_name_refused() -> None:
    assert "empty parameter name" in refused(startup(b"user", b"u", b"", b"v")).message


def test_invalid_utf8_refused() -> None:
    assert "UTF-8" in refused(startup(b"user", b"\xff\xfe")).message
    assert "UTF-8" in refused(startup(b"user", b"u", b"k\xc3", b"v")).message


def test_duplicate_key_refused() -> None:
    error = refused(startup(b"user", b"a", b"user", b"b"))
    assert 'parameter "user" given twice' in error.message


@pytest.mark.parametrize(
    "pairs", [(), (b"database", b"d"), (b"user", b""), (b"User", b"caps-do-not-count")]
)
def test_missing_user_refused(pairs: tuple[bytes, ...]) -> None:
    error = refused(startup(*pairs))
    assert error.message == "no PostgreSQL user name specified in startup packet"
    assert error.sqlstate == "28000"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    for candidate in (data, struct.pack("!I", len(data) + 4) + data):
        try:
            parse_startup_packet(candidate)
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([PROTOCOL_3_0, CANCEL_REQUEST_CODE, SSL_REQUEST_CODE, 2 << 16]),
    st.binary(max_size=300),
)
def test_arbitrary_bodies_raise_only_protocol_error(code: int, body: bytes) -> None:
    try:
        parse_startup_packet(packet(code, body))
    except ProtocolError:
        pass


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", {}),
        (" \t\n ", {}),
        ("-c search_path=app", {"search_path": "app"}),
        ("-csearch_path=app", {"search_path": "app"}),
        ("--search_path=app", {"search_path": "app"}),
        ("--statement-timeout=5s", {"statement_timeout": "5s"}),
        ("-c a=1 -cb=2   --c=3", {"a": "1", "b": "2", "c": "3"}),
        ("-c a=1 -c a=2", {"a": "2"}),
        ("-c search_path=", {"search_path": ""}),
        ("-c x=a=b", {"x": "a=b"}),
        (r"-c search_path=my\ schema,public", {"search_path": "my schema,public"}),
        (r"-c application_name=back\\slash", {"application_name": "back\\slash"}),
        (r"-c a=\x\y", {"a": "xy"}),
        ("-c\tDateStyle=ISO,\\ DMY", {"DateStyle": "ISO, DMY"}),
        ("-c x=ünï", {"x": "ünï"}),
    ],
)
def test_parse_options(options: str, expected: dict[str, str]) -> None:
    assert parse_options(options) == expected


def test_split_options_escapes() -> None:
    assert split_options(r"a\ b  c\\ d\\\ e") == ["a b", "c\\", "d\\ e"]
    assert split_options("a\\") == ["a"]  # a trailing lone backslash is dropped
    assert split_options("\\") == [""]  # ... leaving an empty word, as pg_split_opts does
    assert split_options("\\ ") == [" "]


@pytest.mark.parametrize("options", ["-B 100", "-F", "-d 5", "-x"])
def test_unsupported_switch_refused(options: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_options(options)
    assert info.value.sqlstate == "0A000"
    assert "unsupported startup option" in info.value.message
    assert "-c name=value" in info.value.message


@pytest.mark.parametrize("options", ["-c", "-c search_path", "--search_path", "-c =x", "--", "x"])
def test_malformed_option_refused(options: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_options(options)
    assert info.value.sqlstate == "42601"
    assert "-c name=value" in info.value.message


def test_settings_propagates_bad_options() -> None:
    msg = parse_startup_packet(startup(b"user", b"u", b"options", b"-B 1"))
    with pytest.raises(ProtocolError):
        msg.settings()


# -- tenant ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("app.t1", ("app", "t1")),
        ("app", ("app", None)),
        ("a.b.c", ("a.b", "c")),
        ("postgres.dev_tenant", ("postgres", "dev_tenant")),
        ("app.", ("app", None)),
        (".t1", (".t1", None)),
        (".", ("", None)),
        ("", ("", None)),
        ("a..b", ("a.", "b")),
    ],
)
def test_split_tenant(user: str, expected: tuple[str, str | None]) -> None:
    assert split_tenant(user) == expected
