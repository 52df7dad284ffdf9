"""Frontend packets without a type byte: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage.

Each is ``Int32 length, Int32 code, payload`` with ``length`` counting itself. The code is
either a request code (major version 1234) or the protocol version ``major << 16 | minor``.
The caller reads the 4-byte header, asks :func:`startup_packet_length` how much follows, and
hands the whole packet to :func:`parse_startup_packet`. Everything here treats its input as
hostile: every failure is a :class:`ProtocolError` carrying the SQLSTATE for the FATAL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pooler.protocol.errors import (
    FEATURE_NOT_SUPPORTED,
    INVALID_AUTHORIZATION,
    PROTOCOL_VIOLATION,
    SYNTAX_ERROR,
    ProtocolError,
)

PROTOCOL_3_0 = 3 << 16
#: The newest minor version of protocol 3 a client may ask for (3.2, PostgreSQL 18).
#: Which one a connection gets is negotiated (``builders.negotiate_protocol_version``).
LATEST_MINOR = 2
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678
MAX_STARTUP_PACKET = 10000  # Postgres's MAX_STARTUP_PACKET_LENGTH
MIN_CANCEL_KEY = 4  # protocol 3.0
MAX_CANCEL_KEY = 256  # protocol 3.2
PROTOCOL_OPTION_PREFIX = "_pq_."

#: Startup parameters that are not settings: the rest are applied as GUCs by Postgres.
_NOT_SETTINGS = frozenset(("user", "database", "options", "replication"))

_HEADER = struct.Struct("!II")
_LENGTH = struct.Struct("!I")
_PID = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS before the startup message."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption before the startup message."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query running on backend ``pid``; ``key`` is 4 bytes (3.0) up to 256 (3.2)."""

    pid: int
    key: bytes

    def __repr__(self) -> str:  # the key is a credential: never print it
        return f"CancelRequest(pid={self.pid}, key=<{len(self.key)} bytes>)"


class StartupMessage:
    """The client's protocol version and its startup parameters (user, database, ...).

    A plain class, not a dataclass like the packets above: one is made per login, and a
    dataclass's generated ``__init__`` runs interpreted even in the compiled build."""

    __slots__ = ("major", "minor", "params")

    def __init__(self, major: int, minor: int, params: dict[str, str]) -> None:
        self.major = major
        self.minor = minor
        self.params = params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StartupMessage):
            return NotImplemented
        return (self.major, self.minor, self.params) == (other.major, other.minor, other.params)

    __hash__ = None  # type: ignore[assignment]  # params is a dict: never a dict key

    def __repr__(self) -> str:
        return f"StartupMessage(major={self.major}, minor={self.minor}, params={self.params!r})"

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        """The database asked for; like Postgres, the user name when none is given."""
        return self.params.get("database") or self.user

    @property
    def options(self) -> str:
        """The raw ``options`` parameter (command-line switches), or ""."""
        return self.params.get("options", "")

    @property
    def protocol_options(self) -> dict[str, str]:
        """The ``_pq_.`` protocol extension parameters (the caller negotiates them away)."""
        if PROTOCOL_OPTION_PREFIX not in "".join(self.params):  # the usual case, no loop
            return {}
        return {k: v for k, v in self.params.items() if k.startswith(PROTOCOL_OPTION_PREFIX)}

    def settings(self) -> dict[str, str]:
        """Run-time settings the client asked for, as Postgres would apply them.

        Postgres applies the ``-c`` switches of ``options`` first and the other startup
        parameters after them, so a parameter given both ways takes the explicit value.
        Raises :class:`ProtocolError` for an ``options`` value it cannot use.
        """
        options = self.params.get("options")
        settings = parse_options(options) if options else {}
        for key, value in self.params.items():
            if key not in _NOT_SETTINGS and not key.startswith(PROTOCOL_OPTION_PREFIX):
                settings[key] = value
        return settings


def startup_packet_length(header: bytes | memoryview) -> int:
    """The total length (length field included) announced by a startup packet's first 4 bytes."""
    if len(header) < 4:
        raise ProtocolError("incomplete startup packet: fewer than 4 bytes received")
    length: int = _LENGTH.unpack_from(header)[0]
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolError(
            f"invalid startup packet length {length}: must be 8 to {MAX_STARTUP_PACKET} bytes "
            "(is the client speaking the PostgreSQL protocol?)"
        )
    return length


def parse_startup_packet(
    packet: bytes | memoryview,
) -> SSLRequest | GSSENCRequest | CancelRequest | StartupMessage:
    """Decode one whole startup-phase packet (4-byte length included)."""
    if len(packet) < 8:
        raise ProtocolError(f"invalid startup packet length {len(packet)}: must be at least 8")
    length, code = _HEADER.unpack_from(packet)
    if length != len(packet):
        raise ProtocolError(
            f"invalid startup packet: length field says {length} bytes but {len(packet)} were given"
        )
    if length > MAX_STARTUP_PACKET:
        startup_packet_length(packet[:4])  # says what is wrong
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        return _parse_encryption_request(code, length)
    if code == CANCEL_REQUEST_CODE:
        return _parse_cancel_request(packet)
    return _parse_startup_message(code, bytes(packet[8:]))


def _parse_encryption_request(code: int, length: int) -> SSLRequest | GSSENCRequest:
    name = "SSLRequest" if code == SSL_REQUEST_CODE else "GSSENCRequest"
    if length != 8:
        raise ProtocolError(f"invalid {name} packet length {length}: must be exactly 8 bytes")
    return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()


def _parse_cancel_request(packet: bytes | memoryview) -> CancelRequest:
    key_length = len(packet) - 12
    if not MIN_CANCEL_KEY <= key_length <= MAX_CANCEL_KEY:
        raise ProtocolError(
            f"invalid cancel request length {len(packet)}: the secret key must be "
            f"{MIN_CANCEL_KEY} to {MAX_CANCEL_KEY} bytes"
        )
    return CancelRequest(_PID.unpack_from(packet, 8)[0], bytes(packet[12:]))


def _parse_startup_message(version: int, body: bytes) -> StartupMessage:
    major, minor = version >> 16, version & 0xFFFF
    if major != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to "
            f"3.{LATEST_MINOR}",
            PROTOCOL_VIOLATION,
        )
    params = _parse_params(body)
    if not params.get("user"):
        raise ProtocolError(
            "no PostgreSQL user name specified in startup packet", INVALID_AUTHORIZATION
        )
    return StartupMessage(major, minor, params)


def _parse_params(body: bytes) -> dict[str, str]:
    """NUL-terminated key/value strings followed by one more NUL."""
    if not body or body[-1] != 0 or (len(body) > 1 and body[-2] != 0):
        raise ProtocolError("invalid startup packet layout: expected a terminator as the last byte")
    if len(body) == 1:
        return {}
    try:  # the usual case in one go: valid UTF-8 (so is every part), no duplicate, no ""
        texts = body[:-2].decode("utf-8").split("\0")
        n = len(texts)
        if not n % 2:
            # A plain loop, not dict(zip(texts[::2], texts[1::2], strict=True)): compiled,
            # that was two slices, a zip with a keyword and a generic dict(), ~9k
            # instructions per login.
            fast: dict[str, str] = {}
            for i in range(0, n, 2):
                fast[texts[i]] = texts[i + 1]
            if len(fast) * 2 == n and "" not in fast:
                return fast
    except UnicodeDecodeError:
        pass
    strings = body[:-2].split(b"\0")  # find what is wrong, and say it
    if len(strings) % 2:
        raise ProtocolError(
            "invalid startup packet layout: a parameter name has no value "
            "(a NUL byte inside a name or value?)"
        )
    params: dict[str, str] = {}
    for i in range(0, len(strings), 2):
        key, value = _decode(strings[i], "name"), _decode(strings[i + 1], "value")
        if not key:
            raise ProtocolError("invalid startup packet layout: empty parameter name")
        if key in params:
            raise ProtocolError(f'invalid startup packet: parameter "{key}" given twice')
        params[key] = value
    return params


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(
            f"invalid startup packet: a parameter {what} is not valid UTF-8; "
            "send startup parameters in UTF-8"
        ) from None


# -- options ---------------------------------------------------------------------------------

_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale


def split_options(options: str) -> list[str]:
    """Split ``options`` into words like Postgres's pg_split_opts.

    Words are separated by whitespace; a backslash makes the next character literal
    (so ``\\ `` is a space inside a word and ``\\\\`` a backslash); a trailing lone
    backslash is dropped.
    """
    words: list[str] = []
    word: list[str] = []
    in_word = escaped = False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = in_word = True
        elif ch in _C_SPACE:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
    if in_word:
        words.append("".join(word))
    return words


def parse_options(options: str) -> dict[str, str]:
    """The settings in a libpq ``options`` value: ``-c k=v``, ``-ck=v`` and ``--k=v``.

    As in Postgres, dashes in a name become underscores and a later setting of the same
    name wins. Any other switch is refused with 0A000 (feature not supported: Postgres
    would accept some, Greenvisor cannot apply them per pooled connection); a malformed
    setting (no ``=``, no name, a stray word) with 42601, as Postgres does.
    """
    settings: dict[str, str] = {}
    words = split_options(options)
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            setting = word[2:]
        elif word.startswith("-c"):
            setting = word[2:]
            if not setting:
                i += 1
                if i == len(words):
                    raise ProtocolError(
                        "-c requires a value: use -c name=value in options", SYNTAX_ERROR
                    )
                setting = words[i]
        elif word.startswith("-") and len(word) > 1:
            raise ProtocolError(
                f'unsupported startup option "{word}" in options: only -c name=value and '
                "--name=value are supported",
                FEATURE_NOT_SUPPORTED,
            )
        else:
            raise ProtocolError(
                f'invalid command-line argument "{word}" in options: use -c name=value',
                SYNTAX_ERROR,
            )
        name, value = _split_setting(setting, "--" if word.startswith("--") else "-c")
        settings[name] = value
        i += 1
    return settings


def _split_setting(setting: str, switch: str) -> tuple[str, str]:
    name, sep, value = setting.partition("=")
    if not sep or not name:
        shown = f"-c {setting}" if switch == "-c" else f"--{setting}"
        raise ProtocolError(
            f'"{shown}" in options requires a name and a value: use -c name=value',
            SYNTAX_ERROR,
        )
    return name.replace("-", "_"), value


# -- tenant ----------------------------------------------------------------------------------


def split_tenant(user: str) -> tuple[str, str | None]:
    """Split ``user.tenant`` at the LAST dot: ``"app.t1"`` -> ``("app", "t1")``.

    No dot, or an empty part, means no tenant: ``"app"`` -> ``("app", None)``,
    ``"app."`` -> ``("app", None)`` (the dot dropped, so an error message can suggest
    ``app.<tenant>``), ``".t1"`` -> ``(".t1", None)`` (an empty user is no user).
    """
    name, dot, tenant = user.rpartition(".")
    if not dot:
        return user, None
    if not tenant:
        return name, None
    if not name:
        return user, None
    return name, tenant
