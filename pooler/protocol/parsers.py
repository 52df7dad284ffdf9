"""Decoders for the message bodies the pooler reads during login (bodies without the header).

Every body is hostile input: a short, overrunning or unterminated body is a
:class:`ProtocolError`, never an IndexError, struct.error or UnicodeDecodeError. Text the
pooler only relays (parameter values, error fields) is decoded leniently so that one odd
byte from a server does not break a login; see each function.
"""

from __future__ import annotations

import struct

from pooler.protocol.errors import ProtocolError
from pooler.protocol.startup import MAX_CANCEL_KEY, MIN_CANCEL_KEY

Buffer = bytes | bytearray | memoryview

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")

READY_STATUSES = (b"I", b"T", b"E")


def _cstring(body: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """The NUL-terminated string at ``pos`` and the offset just past its NUL."""
    end = body.find(b"\0", pos)
    if end < 0:
        raise ProtocolError(f"invalid {what}: a string is missing its NUL terminator")
    return body[pos:end], end + 1


def parse_error_fields(body: Buffer) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse, keyed by their one-letter code.

    Nothing is required: a server may omit the SQLSTATE ('C') or message ('M'), so use
    ``.get``. Bytes that are not UTF-8 are replaced (U+FFFD); anything after the
    terminating zero byte is ignored; a repeated field keeps its last value.
    """
    body = bytes(body)
    fields: dict[str, str] = {}
    pos = 0
    while True:
        if pos >= len(body):
            raise ProtocolError("invalid error message from the server: missing terminator")
        code = body[pos]
        if code == 0:
            return fields
        value, pos = _cstring(body, pos + 1, "error message from the server")
        fields[chr(code)] = value.decode("utf-8", "replace")


def parse_authentication(body: Buffer) -> tuple[int, bytes]:
    """An Authentication request ('R'): its code and the bytes after it."""
    if len(body) < 4:
        raise ProtocolError(f"invalid authentication request: {len(body)}-byte body, need 4+")
    return _UINT32.unpack_from(body)[0], bytes(body[4:])


def parse_parameter_status(body: Buffer) -> tuple[str, str]:
    """A ParameterStatus ('S'): (name, value).

    Decoded with ``surrogateescape``: bytes that are not UTF-8 survive a round trip through
    ``builders.parameter_status`` unchanged.
    """
    body = bytes(body)
    name, pos = _cstring(body, 0, "parameter status")
    value, pos = _cstring(body, pos, "parameter status")
    if pos != len(body) or not name:
        raise ProtocolError("invalid parameter status: expected exactly a name and a value")
    return name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")


def parse_backend_key_data(body: Buffer) -> tuple[int, bytes]:
    """A BackendKeyData ('K'): (pid, secret key of 4 to 256 bytes)."""
    if not 4 + MIN_CANCEL_KEY <= len(body) <= 4 + MAX_CANCEL_KEY:
        raise ProtocolError(
            f"invalid backend key data: {len(body)}-byte body, expected a 4-byte process id "
            f"and a {MIN_CANCEL_KEY} to {MAX_CANCEL_KEY} byte key"
        )
    return _UINT32.unpack_from(body)[0], bytes(body[4:])


def parse_ready_for_query(body: Buffer) -> bytes:
    """A ReadyForQuery ('Z'): the transaction status b"I", b"T" or b"E"."""
    status = bytes(body)
    if status not in READY_STATUSES:
        raise ProtocolError(f"invalid ready-for-query status {status[:8]!r}: expected I, T or E")
    return status


def parse_password_message(body: Buffer) -> bytes:
    """A PasswordMessage ('p') carrying a cleartext or MD5 password: the bytes before the NUL."""
    body = bytes(body)
    if not body or body.find(b"\0") != len(body) - 1:
        raise ProtocolError(
            "invalid password packet: expected one NUL-terminated string "
            "(is the client speaking SASL where a password was asked for?)"
        )
    return body[:-1]


_SCRAM_PREFIX = b"SCRAM-SHA-256\0"


def parse_sasl_initial_response(body: Buffer) -> tuple[str, bytes]:
    """A SASLInitialResponse ('p'): (mechanism, initial data; b"" when the length is -1)."""
    body = bytes(body)
    if body.startswith(_SCRAM_PREFIX):  # the usual one, checked in one go
        length = int.from_bytes(body[14:18], "big", signed=True)
        if length == len(body) - 18:
            return "SCRAM-SHA-256", body[18:]
    raw_mechanism, pos = _cstring(body, 0, "SASL initial response")
    if len(body) - pos < 4:
        raise ProtocolError("invalid SASL initial response: the data length is missing")
    length = _INT32.unpack_from(body, pos)[0]
    pos += 4
    if length == -1:
        data = b""
    elif 0 <= length <= len(body) - pos:
        data = body[pos : pos + length]
        pos += length
    else:
        raise ProtocolError(
            f"invalid SASL initial response: data length {length} but {len(body) - pos} "
            "bytes follow"
        )
    if pos != len(body):
        raise ProtocolError("invalid SASL initial response: unexpected bytes after the data")
    try:
        mechanism = raw_mechanism.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("invalid SASL initial response: mechanism name is not ASCII") from None
    if not mechanism:
        raise ProtocolError("invalid SASL initial response: empty mechanism name")
    return mechanism, data


def parse_sasl_response(body: Buffer) -> bytes:
    """A SASLResponse ('p'): the mechanism's data, opaque here (size bounded by the caller)."""
    return bytes(body)
