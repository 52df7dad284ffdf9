"""Session parameters a pooled client expects: which to track, how to compare, how to SET.

A client states its parameters once (startup packet and ``options``); in transaction mode it
then runs on whichever server is free. Before its bytes reach a server whose values differ,
the relay sends one Query built here (``SET a = '..'; RESET b``) and swallows its replies.
Postgres reports the six GUCs below with ParameterStatus whenever they change, so a client's
own ``SET TimeZone`` is followed too; other settings given at startup (``-c key=value``,
``search_path``) are set by us and remembered per server.
"""

from __future__ import annotations

import re

from pooler.protocol.errors import ProtocolError

#: GUCs Postgres reports with ParameterStatus (GUC_REPORT), by lower-case name.
REPORTED = {
    "client_encoding": "client_encoding",
    "datestyle": "DateStyle",
    "timezone": "TimeZone",
    "intervalstyle": "IntervalStyle",
    "standard_conforming_strings": "standard_conforming_strings",
    "application_name": "application_name",
}

#: Startup parameters that are not run-time settings, or that we must not pass on.
NOT_SETTINGS = frozenset(("user", "database", "options", "replication", "_pq_"))

_ENCODING_ALIASES = {
    "utf8": "UTF8",
    "utf-8": "UTF8",
    "unicode": "UTF8",
    "latin1": "LATIN1",
    "iso88591": "LATIN1",
    "iso-8859-1": "LATIN1",
    "sql_ascii": "SQL_ASCII",
    "win1252": "WIN1252",
}

_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\Z")


def canonical_name(name: str) -> str:
    lower = name.lower()
    return REPORTED.get(lower, lower)


def client_settings(requested: dict[str, str]) -> dict[str, str]:
    """The client's settings by canonical name; refuses names that are not GUC names."""
    out: dict[str, str] = {}
    for name, value in requested.items():
        if name in NOT_SETTINGS or name.startswith("_pq_."):
            continue
        if not _NAME.match(name):
            raise ProtocolError(f"invalid parameter name {name!r} in the startup packet", "42704")
        key = canonical_name(name)
        if key == "client_encoding":
            value = _ENCODING_ALIASES.get(value.strip().lower(), value)
        out[key] = value
    return out


def quote_literal(value: str) -> str:
    """A SQL string literal that means ``value`` whatever standard_conforming_strings is."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def changes_for(
    wanted: dict[str, str], current: dict[str, str], extra: set[str]
) -> list[tuple[str, str | None]]:
    """What to SET (name, value) or RESET (name, None) so a server matches a client.

    ``current`` is what the server has (reported values plus settings we made), ``extra``
    the names we SET on it for earlier clients that are not reported by Postgres.
    """
    changes: list[tuple[str, str | None]] = [
        (name, value) for name, value in wanted.items() if current.get(name) != value
    ]
    for name in extra:
        if name not in wanted:
            changes.append((name, None))
    return changes


#: Settings contents by number (see settings_id); numbers are never reused, so a number a
#: server remembers (ServerConn.fits) always means the same contents.
_SETTINGS_IDS: dict[tuple[tuple[str, str], ...], int] = {}
_SETTINGS_IDS_LIMIT = 4096
_next_settings_id = [1]


def settings_id(settings: dict[str, str]) -> int:
    """A number for these settings' contents: the same number for the same contents (in the
    same order), so a server can remember which clients' settings it already satisfies
    without comparing a dozen values on every transaction."""
    key = tuple(settings.items())
    found = _SETTINGS_IDS.get(key)
    if found is None:
        if len(_SETTINGS_IDS) >= _SETTINGS_IDS_LIMIT:
            _SETTINGS_IDS.clear()  # old numbers stay valid: they are never handed out again
        found = _next_settings_id[0]
        _next_settings_id[0] = found + 1
        _SETTINGS_IDS[key] = found
    return found


def set_statement(changes: list[tuple[str, str | None]]) -> str:
    """One Query that applies ``changes``. set_config() takes a value the way the startup
    packet and postgresql.conf do (so ``search_path=a,b`` stays a list)."""
    sets = [
        f"set_config({quote_literal(name)}, {quote_literal(value)}, false)"
        for name, value in changes
        if value is not None
    ]
    parts = [f"SELECT {', '.join(sets)}"] if sets else []
    parts.extend(f"RESET {name}" for name, value in changes if value is None)
    return "; ".join(parts)


class Replies:
    """What a short exchange we started (SET, reset) answered; fed chunk by chunk."""

    __slots__ = ("statuses", "error", "ready")

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []
        self.error: dict[str, str] | None = None
        self.ready: bytes | None = None  # the ReadyForQuery status, once it arrived

    def feed(self, view: bytes | memoryview, n: int, limit: int = 1 << 20) -> int:
        """Read whole messages from ``view[:n]``; return how many bytes were consumed."""
        from pooler.protocol.parsers import parse_error_fields, parse_parameter_status

        pos = 0
        while n - pos >= 5 and self.ready is None:
            msg_type = view[pos]
            length = int.from_bytes(view[pos + 1 : pos + 5], "big")
            if length < 4 or length > limit:
                raise ProtocolError(f"invalid reply length {length} from the server")
            end = pos + 1 + length
            if end > n:
                break
            body = bytes(view[pos + 5 : end])
            if msg_type == 0x53:  # 'S' ParameterStatus
                self.statuses.append(parse_parameter_status(body))
            elif msg_type == 0x45:  # 'E' ErrorResponse
                self.error = parse_error_fields(body)
            elif msg_type == 0x5A:  # 'Z' ReadyForQuery
                self.ready = body[:1]
            pos = end
        return pos
