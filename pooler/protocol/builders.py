"""Complete wire messages (type byte, Int32 length, body) for both directions of the protocol.

Strings are encoded as UTF-8 (with ``surrogateescape``, so a value parsed from non-UTF-8
bytes by :mod:`pooler.protocol.parsers` is rebuilt byte for byte) and NUL-terminated. A NUL
inside a string or an out-of-range number is a programming error: :class:`ValueError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from pooler.protocol.startup import (
    CANCEL_REQUEST_CODE,
    MAX_CANCEL_KEY,
    MIN_CANCEL_KEY,
    SSL_REQUEST_CODE,
)

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_TWO_INT32 = struct.Struct("!ii")
_HEADER = struct.Struct("!cI")
_FIELD = struct.Struct("!IhIhih")  # table oid, column, type oid, typlen, typmod, format

AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

TX_STATUSES = (b"I", b"T", b"E")

#: typlen of the types the pooler's own result sets use (pg_type.typlen); others: -1.
_TYPLEN = {16: 1, 19: 64, 20: 8, 21: 2, 23: 4, 26: 4, 700: 4, 701: 8, 1184: 8, 1114: 8}


def _message(msg_type: bytes, body: bytes) -> bytes:
    return _HEADER.pack(msg_type, len(body) + 4) + body


def _cstr(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"a protocol string cannot contain a NUL byte: {text!r}")
    return raw + b"\0"


def _pid(pid: int) -> bytes:
    if not 0 <= pid <= 0xFFFFFFFF:
        raise ValueError(f"process id {pid} does not fit in 32 bits")
    return _UINT32.pack(pid)


def _cancel_key(key: bytes) -> bytes:
    if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
        raise ValueError(
            f"a cancel key is {MIN_CANCEL_KEY} to {MAX_CANCEL_KEY} bytes, not {len(key)}"
        )
    return bytes(key)


# -- backend messages ------------------------------------------------------------------------


def _error_fields(
    severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None
) -> bytes:
    if len(sqlstate) != 5:
        raise ValueError(f"a SQLSTATE is 5 characters, not {sqlstate!r}")
    fields = [
        b"S",
        _cstr(severity),
        b"V",
        _cstr(severity),
        b"C",
        _cstr(sqlstate),
        b"M",
        _cstr(message),
    ]
    if detail is not None:
        fields += (b"D", _cstr(detail))
    if hint is not None:
        fields += (b"H", _cstr(hint))
    fields.append(b"\0")
    return b"".join(fields)


def error_response(
    severity: str,
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """ErrorResponse ('E'): severity (S and V), SQLSTATE, message, optional detail and hint."""
    return _message(b"E", _error_fields(severity, sqlstate, message, detail, hint))


def notice_response(
    severity: str,
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """NoticeResponse ('N'), laid out like an ErrorResponse."""
    return _message(b"N", _error_fields(severity, sqlstate, message, detail, hint))


def _authentication(code: int, data: bytes = b"") -> bytes:
    return _message(b"R", _INT32.pack(code) + data)


def authentication_ok() -> bytes:
    return _authentication(AUTH_OK)


def authentication_cleartext_password() -> bytes:
    return _authentication(AUTH_CLEARTEXT_PASSWORD)


def authentication_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError(f"an MD5 salt is 4 bytes, not {len(salt)}")
    return _authentication(AUTH_MD5_PASSWORD, bytes(salt))


def authentication_sasl(mechanisms: Iterable[str]) -> bytes:
    """AuthenticationSASL: the mechanism names, then an empty name ending the list."""
    names = [_cstr(m) for m in mechanisms]
    if not names or b"\0" in names:
        raise ValueError("AuthenticationSASL needs at least one non-empty mechanism name")
    return _authentication(AUTH_SASL, b"".join(names) + b"\0")


def authentication_sasl_continue(data: bytes) -> bytes:
    return _authentication(AUTH_SASL_CONTINUE, bytes(data))


def authentication_sasl_final(data: bytes) -> bytes:
    return _authentication(AUTH_SASL_FINAL, bytes(data))


def parameter_status(name: str, value: str) -> bytes:
    return _message(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, key: bytes) -> bytes:
    return _message(b"K", _pid(pid) + _cancel_key(key))


def ready_for_query(status: bytes = b"I") -> bytes:
    """ReadyForQuery ('Z') with transaction status b"I" (idle), b"T" (in block), b"E" (failed)."""
    if status not in TX_STATUSES:
        raise ValueError(f"transaction status must be one of {TX_STATUSES}, not {status!r}")
    return _message(b"Z", bytes(status))


def negotiate_protocol_version(newest_minor: int, unrecognized: Iterable[str]) -> bytes:
    """NegotiateProtocolVersion ('v'): the newest version served for major 3, whole, as
    Postgres sends it (``3 << 16 | newest_minor``: libpq reads the major from it too), then
    the unrecognized _pq_ options."""
    names = [_cstr(name) for name in unrecognized]
    if not 0 <= newest_minor <= 0xFFFF:
        raise ValueError(f"minor protocol version {newest_minor} out of range")
    version = 3 << 16 | newest_minor
    return _message(b"v", _TWO_INT32.pack(version, len(names)) + b"".join(names))


def command_complete(tag: str) -> bytes:
    return _message(b"C", _cstr(tag))


def empty_query_response() -> bytes:
    return b"I\0\0\0\4"


def row_description(columns: Iterable[tuple[str, int]]) -> bytes:
    """RowDescription ('T') of text-format columns given as (name, type oid)."""
    parts = []
    for name, type_oid in columns:
        parts.append(_cstr(name))
        parts.append(_FIELD.pack(0, 0, type_oid, _TYPLEN.get(type_oid, -1), -1, 0))
    return _message(b"T", _INT16.pack(len(parts) // 2) + b"".join(parts))


def data_row(values: Iterable[str | None]) -> bytes:
    """DataRow ('D') of text values; None is SQL NULL (length -1)."""
    parts = []
    for value in values:
        if value is None:
            parts.append(_INT32.pack(-1))
        else:
            raw = value.encode("utf-8", "surrogateescape")
            parts.append(_INT32.pack(len(raw)) + raw)
    return _message(b"D", _INT16.pack(len(parts)) + b"".join(parts))


# -- frontend messages (Greenvisor logging in upstream) --------------------------------------


def startup_message(params: Mapping[str, str], major: int = 3, minor: int = 0) -> bytes:
    """StartupMessage: no type byte; Int32 length, Int32 version, name/value pairs, NUL."""
    if any(not k for k in params):
        raise ValueError("a startup parameter name cannot be empty")
    body = b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return _TWO_INT32.pack(len(body) + 8, major << 16 | minor) + body


def password_message(data: bytes) -> bytes:
    """PasswordMessage ('p'): ``data`` as given (cleartext or md5 callers add the NUL)."""
    return _message(b"p", bytes(data))


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    """SASLInitialResponse ('p'): mechanism, Int32 length (-1: no data), data."""
    if data is None:
        return _message(b"p", _cstr(mechanism) + _INT32.pack(-1))
    return _message(b"p", _cstr(mechanism) + _INT32.pack(len(data)) + bytes(data))


def sasl_response(data: bytes) -> bytes:
    return _message(b"p", bytes(data))


def query(sql: str) -> bytes:
    return _message(b"Q", _cstr(sql))


def terminate() -> bytes:
    return b"X\0\0\0\4"


def sync() -> bytes:
    return b"S\0\0\0\4"


def cancel_request(pid: int, key: bytes) -> bytes:
    """CancelRequest: no type byte; Int32 length, Int32 80877102, Int32 pid, key."""
    key = _cancel_key(key)
    return _UINT32.pack(12 + len(key)) + _UINT32.pack(CANCEL_REQUEST_CODE) + _pid(pid) + key


def ssl_request() -> bytes:
    return _TWO_INT32.pack(8, SSL_REQUEST_CODE)
