"""Golden bytes for every message builder, expected values written out by hand."""

from __future__ import annotations

import pytest

from pooler.protocol import builders as b

pytestmark = pytest.mark.unit


# -- backend ---------------------------------------------------------------------------------


def test_error_response() -> None:
    # length 4 + "SFATAL\0" 7 + "VFATAL\0" 7 + "C28P01\0" 7 + "Mbad\0" 5 + terminator 1 = 31
    assert b.error_response("FATAL", "28P01", "bad") == (
        b"E\x00\x00\x00\x1fSFATAL\x00VFATAL\x00C28P01\x00Mbad\x00\x00"
    )


def test_error_response_detail_and_hint() -> None:
    assert b.error_response("ERROR", "0A000", "m", detail="d", hint="h") == (
        b"E\x00\x00\x00\x23SERROR\x00VERROR\x00C0A000\x00Mm\x00Dd\x00Hh\x00\x00"
    )


def test_notice_response() -> None:
    assert b.notice_response("NOTICE", "00000", "hi") == (
        b"N\x00\x00\x00\x20SNOTICE\x00VNOTICE\x00C00000\x00Mhi\x00\x00"
    )


def test_error_response_utf8_message() -> None:
    # "é" is two bytes in UTF-8: length 4 + 7+7+7 + (1+2+1) + 1 = 30
    assert b.error_response("FATAL", "08P01", "é") == (
        b"E\x00\x00\x00\x1eSFATAL\x00VFATAL\x00C08P01\x00M\xc3\xa9\x00\x00"
    )


def test_error_response_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        b.error_response("FATAL", "28P01", "nul\0inside")
    with pytest.raises(ValueError):
        b.error_response("FATAL", "28P0", "short sqlstate")


def test_authentication_requests() -> None:
    assert b.authentication_ok() == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert b.authentication_cleartext_password() == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    assert b.authentication_md5_password(b"\x01\x02\x03\x04") == (
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04"
    )
    with pytest.raises(ValueError):
        b.authentication_md5_password(b"\x01\x02\x03")


def test_authentication_sasl() -> None:
    assert b.authentication_sasl(["SCRAM-SHA-256"]) == (
        b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"
    )
    assert b.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]) == (
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
    )
    with pytest.raises(ValueError):
        b.authentication_sasl([])
    with pytest.raises(ValueError):
        b.authentication_sasl(["SCRAM-SHA-256", ""])


def test_authentication_sasl_continue_and_final() -> None:
    assert b.authentication_sasl_continue(b"r=x") == b"R\x00\x00\x00\x0b\x00\x00\x00\x0br=x"
    assert b.authentication_sasl_final(b"v=yz") == b"R\x00\x00\x00\x0c\x00\x00\x00\x0cv=yz"


def test_parameter_status() -> None:
    assert b.parameter_status("TimeZone", "UTC") == b"S\x00\x00\x00\x11TimeZone\x00UTC\x00"
    assert b.parameter_status("x", "") == b"S\x00\x00\x00\x07x\x00\x00"


def test_backend_key_data() -> None:
    assert b.backend_key_data(12345, b"\xde\xad\xbe\xef") == (
        b"K\x00\x00\x00\x0c\x00\x00\x30\x39\xde\xad\xbe\xef"
    )
    assert b.backend_key_data(0xFFFFFFFF, b"k" * 32) == (
        b"K\x00\x00\x00\x28\xff\xff\xff\xff" + b"k" * 32
    )
    for pid, key in ((-1, b"1234"), (1 << 32, b"1234"), (1, b"123"), (1, b"k" * 257)):
        with pytest.raises(ValueError):
            b.backend_key_data(pid, key)


def test_ready_for_query() -> None:
    assert b.ready_for_query() == b"Z\x00\x00\x00\x05I"
    assert b.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert b.ready_for_query(b"E") == b"Z\x00\x00\x00\x05E"
    with pytest.raises(ValueError):
        b.ready_for_query(b"X")


def test_negotiate_protocol_version() -> None:
    assert b.negotiate_protocol_version(0, []) == (
        b"v\x00\x00\x00\x0c\x00\x03\x00\x00\x00\x00\x00\x00"
    )
    assert b.negotiate_protocol_version(2, ["_pq_.a", "_pq_.bc"]) == (
        b"v\x00\x00\x00\x1b\x00\x03\x00\x02\x00\x00\x00\x02_pq_.a\x00_pq_.bc\x00"
    )


def test_command_complete_and_empty_query() -> None:
    assert b.command_complete("SELECT 1") == b"C\x00\x00\x00\x0dSELECT 1\x00"
    assert b.empty_query_response() == b"I\x00\x00\x00\x04"


def test_row_description() -> None:
    # name, table oid 0, column 0, type oid, typlen, typmod -1, format 0 (text)
    assert b.row_description([("database", 25), ("cl_active", 23)]) == (
        b"T\x00\x00\x00\x3d\x00\x02"  # length 4 + 2 + (9 + 18) + (10 + 18) = 61, 2 fields
        b"database\x00"
        b"\0\0\0\0" b"\0\0" b"\0\0\0\x19" b"\xff\xff" b"\xff\xff\xff\xff" b"\0\0"  # text: -1
        b"cl_active\x00"
        b"\0\0\0\0" b"\0\0" b"\0\0\0\x17" b"\0\x04" b"\xff\xff\xff\xff" b"\0\0"  # int4: 4
    )  # fmt: skip
    assert b.row_description([]) == b"T\x00\x00\x00\x06\x00\x00"


def test_data_row() -> None:
    assert b.data_row(["ab", None, ""]) == (
        b"D\x00\x00\x00\x14\x00\x03\x00\x00\x00\x02ab\xff\xff\xff\xff\x00\x00\x00\x00"
    )
    assert b.data_row(["é"]) == b"D\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x02\xc3\xa9"


# -- frontend --------------------------------------------------------------------------------


def test_startup_message_matches_psql() -> None:
    params = {
        "user": "app.t1",
        "database": "postgres",
        "application_name": "psql",
        "client_encoding": "UTF8",
    }
    assert b.startup_message(params) == (
        b"\x00\x00\x00\x52\x00\x03\x00\x00"
        b"user\x00app.t1\x00database\x00postgres\x00"
        b"application_name\x00psql\x00client_encoding\x00UTF8\x00\x00"
    )
    assert b.startup_message({"user": "u"}, minor=2) == (
        b"\x00\x00\x00\x10\x00\x03\x00\x02user\x00u\x00\x00"
    )
    with pytest.raises(ValueError):
        b.startup_message({"user": "u\0x"})
    with pytest.raises(ValueError):
        b.startup_message({"": "x"})


def test_password_messages() -> None:
    assert b.password_message(b"secret\x00") == b"p\x00\x00\x00\x0bsecret\x00"
    assert b.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc") == (
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc"
    )
    assert b.sasl_initial_response("SCRAM-SHA-256", None) == (
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff"
    )
    assert b.sasl_response(b"c=biws") == b"p\x00\x00\x00\x0ac=biws"


def test_query_terminate_sync() -> None:
    assert b.query("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert b.terminate() == b"X\x00\x00\x00\x04"
    assert b.sync() == b"S\x00\x00\x00\x04"
    with pytest.raises(ValueError):
        b.query("SELECT '\0'")


def test_cancel_and_ssl_request() -> None:
    assert b.cancel_request(12345, b"\xde\xad\xbe\xef") == (
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef"
    )
    assert b.cancel_request(1, b"k" * 256)[:4] == b"\x00\x00\x01\x0c"
    assert b.ssl_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    with pytest.raises(ValueError):
        b.cancel_request(1, b"kk")
