"""pgbouncer.ini read the way PgBouncer reads it, into frozen dataclasses and a ConfigSnapshot.

Theory of operation
-------------------
:func:`load` reads the file like PgBouncer's libusual parser: comment lines start with ``;``
or ``#`` (never inline), ``[section]`` headers, ``key = value`` lines (a key may be quoted
with single quotes), ``%include path`` (nested at most 10 deep; a cycle is an error). Then:

* ``[pgbouncer]``: every key PgBouncer 1.18 knows, and the ones newer releases added, is
  parsed into its type with PgBouncer's default (times are seconds, fractions allowed, no
  units). Keys are case-insensitive. An unknown key, or a key Greenvisor does not apply,
  set to something other than its default, becomes a warning in ``config.warnings``; a
  value that does not parse, or that Greenvisor cannot honour safely (client TLS required,
  ``auth_type = cert``...), raises :class:`IniError` ``"file:line: key: problem"``.
  Like PgBouncer, a second ``[pgbouncer]`` header resets the keys to their defaults.
* ``[databases]``: ``name = host=... port=... dbname=... user=... password=...`` connection
  strings (values may be quoted: ``password='a b'``, ``''`` is a quote); ``*`` is the
  fallback for every other database name. Unknown connection-string keys are errors.
* ``[users]``: ``name = pool_mode=... max_user_connections=...``.
* ``[peers]``: ignored with a warning (PgBouncer peering is not supported).

Relative paths (``%include``, ``auth_file``, ``auth_hba_file``, ``logfile``, ``pidfile``)
are taken relative to the directory of the file that names them; PgBouncer takes them
relative to its working directory. Absolute paths behave the same in both.

Routing clients (for the login wiring)
--------------------------------------
Clients use plain user names, no ``user.tenant`` suffix. The *database* a client asks for
picks the tenant: ``config.database(startup_database)`` returns the ``[databases]`` entry
of that name, else the ``*`` entry resolved for it, else None (refuse with 3D000, as
PgBouncer does: ``no such database``). The tenant is ``snapshot.tenant(entry.name)``, or
``snapshot.tenant("*")`` for the fallback; the upstream database is ``entry.dbname``.
The client's user name is the user: it is authenticated against the auth_file
(:mod:`pooler.pgbouncer.authfile`, following ``settings.auth_type``) -- never against
``UserConfig.db_password``, which here is only the *upstream* credential (the plain
password, an ``md5...`` secret that works for md5 upstream logins, or
:data:`UNUSABLE_PASSWORD` for SCRAM-only entries, which need SCRAM pass-through). When the
entry forces a user (``user=``), every client shares that user's pool, as in PgBouncer:
``config.pool_user(database, client_user)`` names the UserConfig to use, and the pool mode
is ``config.pool_mode_for(database, pool_user)`` ([users] entry, then database, then
``pool_mode``).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pooler.config import ConfigSnapshot, TenantConfig, UserConfig

if TYPE_CHECKING:
    from pooler.pgbouncer.authfile import AuthFile

MAX_INCLUDE_DEPTH = 10
SECTIONS = ("pgbouncer", "databases", "users", "peers")
POOL_MODES = ("session", "transaction", "statement")
AUTH_TYPES = ("any", "trust", "plain", "md5", "cert", "hba", "pam", "scram-sha-256")
AUTH_TYPES_SUPPORTED = ("trust", "plain", "md5", "scram-sha-256", "hba")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SSLMODES_REFUSED = ("require", "verify-ca", "verify-full")
RESERVED_DATABASE = "pgbouncer"
#: UserConfig.pool_checkout_timeout when query_wait_timeout = 0 (PgBouncer: wait forever).
NO_TIMEOUT_MS = 2**31 - 1
#: UserConfig.db_password of users whose auth_file entry has no usable upstream password
#: (a SCRAM secret): random per process, so nobody can log in or upstream with it.
UNUSABLE_PASSWORD = "!unusable!" + secrets.token_hex(24)

SUPPORTED = "supported"  # Greenvisor applies it (runpooler --pgbouncer-ini)
PLANNED = "planned"  # parsed and checked; Greenvisor has no mechanism for it yet
IGNORED = "ignored"  # accepted; no effect in Greenvisor (and no need for one)


class IniError(ValueError):
    """pgbouncer.ini cannot be used: ``file:line: key: problem``. Never carries a secret."""

    def __init__(self, file: str, line: int, key: str | None, problem: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem


# -- the [pgbouncer] keys ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One [pgbouncer] key: how to parse it, PgBouncer's default, what Greenvisor does."""

    name: str
    kind: str  # int | count | port | uint | bool | time | str | path | list | choice
    default: str | None  # as PgBouncer's SHOW CONFIG prints it; None: not set
    reload: bool  # False: only read at start (PgBouncer's CF_NO_RELOAD)
    support: str  # SUPPORTED | PLANNED | IGNORED
    note: str


def _k(
    name: str, kind: str, default: str | None, support: str, note: str, *, reload: bool = True
) -> Key:
    return Key(name, kind, default, reload, support, note)


_NO_TLS = (
    "not read: TLS to clients is runpooler --tls-cert/--tls-key; servers are reached in plaintext"
)
_TRACKED = "IntervalStyle is tracked already"
_AUTH_QUERY = (
    "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
    "FROM pg_authid WHERE rolname=$1 AND rolcanlogin"
)

#: Every key PgBouncer 1.18 has, plus the ones later releases added, in PgBouncer's order.
KEYS: tuple[Key, ...] = (
    _k("admin_users", "list", "", SUPPORTED, "admin console: full access"),
    _k("application_name_add_host", "bool", "0", IGNORED, "Greenvisor names its own servers"),
    _k("auth_dbname", "str", None, SUPPORTED, "database auth_query runs in"),
    _k("auth_file", "path", None, SUPPORTED, "read by pooler.pgbouncer.authfile"),
    _k("auth_hba_file", "path", "", SUPPORTED, "pg_hba.conf subset for auth_type = hba"),
    _k("auth_ident_file", "path", None, IGNORED, "no ident/peer authentication (TCP only)"),
    _k("auth_ldap_options", "str", None, IGNORED, "no LDAP authentication"),
    _k("auth_query", "str", _AUTH_QUERY, SUPPORTED, "users missing from auth_file"),
    _k("auth_type", "choice", "md5", SUPPORTED, "trust, plain, md5, scram-sha-256"),
    _k("auth_user", "str", None, SUPPORTED, "runs auth_query"),
    _k("autodb_idle_timeout", "time", "3600", IGNORED, "pools of * databases stay"),
    _k("cancel_wait_timeout", "time", "10", IGNORED, "cancels are forwarded at once"),
    _k("client_idle_timeout", "time", "0", SUPPORTED, "TenantConfig.client_idle_timeout (s)"),
    _k("client_login_timeout", "time", "60", SUPPORTED, "NodeSettings.client_login_timeout"),
    _k("client_tls13_ciphers", "str", None, IGNORED, _NO_TLS),
    _k("client_tls_ca_file", "path", "", IGNORED, _NO_TLS),
    _k("client_tls_cert_file", "path", "", IGNORED, _NO_TLS),
    _k("client_tls_ciphers", "str", "fast", IGNORED, _NO_TLS),
    _k("client_tls_dheparams", "str", "auto", IGNORED, _NO_TLS),
    _k("client_tls_ecdhcurve", "str", "auto", IGNORED, _NO_TLS),
    _k("client_tls_key_file", "path", "", IGNORED, _NO_TLS),
    _k("client_tls_protocols", "str", "secure", IGNORED, _NO_TLS),
    _k("client_tls_sslmode", "choice", "disable", IGNORED, "runpooler --tls-cert/--tls-key decide"),
    _k("conffile", "str", None, IGNORED, "the file given on the command line"),
    _k("default_pool_size", "count", "20", SUPPORTED, "TenantConfig.default_pool_size"),
    _k("disable_pqexec", "bool", "0", IGNORED, "the simple query protocol stays on", reload=False),
    _k("dns_max_ttl", "time", "15", IGNORED, "host names are resolved at each server login"),
    _k("dns_nxdomain_ttl", "time", "15", IGNORED, "no DNS cache"),
    _k("dns_zone_check_period", "time", "0", IGNORED, "no DNS cache"),
    _k("idle_transaction_timeout", "time", "0", SUPPORTED, "NodeSettings.idle_transaction_timeout"),
    _k("ignore_startup_parameters", "list", "", SUPPORTED, "not needed: all are accepted"),
    _k("job_name", "str", "pgbouncer", IGNORED, "Windows service name", reload=False),
    _k("listen_addr", "list", "", SUPPORTED, "TCP listen addresses (* = all)", reload=False),
    _k("listen_backlog", "int", "128", IGNORED, "the listener's default backlog", reload=False),
    _k("listen_port", "port", "6432", SUPPORTED, "the TCP port", reload=False),
    _k("log_connections", "bool", "1", IGNORED, "Python logging decides"),
    _k("log_disconnections", "bool", "1", IGNORED, "Python logging decides"),
    _k("log_pooler_errors", "bool", "1", IGNORED, "Python logging decides"),
    _k("log_stats", "bool", "1", IGNORED, "Prometheus metrics instead"),
    _k("logfile", "path", "", SUPPORTED, "the log also goes to this file"),
    _k("login_notify_message", "str", "", IGNORED, "no login notice"),
    _k("max_client_conn", "count", "100", SUPPORTED, "clients of the whole process, console too"),
    _k("max_db_client_connections", "count", "0", PLANNED, "clients per database"),
    _k("max_db_connections", "count", "0", PLANNED, "servers per database"),
    _k("max_packet_size", "uint", "2147483647", IGNORED, "messages of any size are streamed"),
    _k(
        "max_prepared_statements", "count", "200", SUPPORTED, "NodeSettings.max_prepared_statements"
    ),
    _k("max_user_client_connections", "count", "0", PLANNED, "clients per user"),
    _k("max_user_connections", "count", "0", PLANNED, "servers per user"),
    _k("min_pool_size", "count", "0", SUPPORTED, "servers kept open (pooler.pgbouncer.upkeep)"),
    _k("peer_id", "int", "0", IGNORED, "no peering"),
    _k("pidfile", "path", "", SUPPORTED, "the process id, removed at exit", reload=False),
    _k("pkt_buf", "int", "4096", IGNORED, "Greenvisor sizes its own buffers", reload=False),
    _k("pool_idle_timeout", "time", "0", IGNORED, "pools stay"),
    _k("pool_mode", "choice", "session", SUPPORTED, "session, transaction, statement"),
    _k("query_timeout", "time", "0", SUPPORTED, "cancel and cut long queries (0.5 s ticks)"),
    _k("query_wait_notify", "int", "5", IGNORED, "no wait notice"),
    _k("query_wait_timeout", "time", "120", SUPPORTED, "NodeSettings.query_wait_timeout"),
    _k("reserve_pool_size", "count", "0", SUPPORTED, "PoolLimits.reserve_size"),
    _k("reserve_pool_timeout", "time", "5", SUPPORTED, "PoolLimits.reserve_timeout"),
    _k("resolv_conf", "path", "", IGNORED, "the system resolver is used", reload=False),
    _k("sbuf_loopcnt", "int", "5", IGNORED, "gevent schedules fairly"),
    _k("scram_iterations", "count", "4096", SUPPORTED, "AuthEntry.scram_secret(iterations)"),
    _k("server_check_delay", "time", "30", SUPPORTED, "PoolLimits.check_delay"),
    _k("server_check_query", "str", "select 1", SUPPORTED, "PoolLimits.check_query"),
    _k("server_connect_timeout", "time", "15", SUPPORTED, "NodeSettings.server_connect_timeout"),
    _k("server_fast_close", "bool", "0", IGNORED, "servers close when released"),
    _k("server_idle_timeout", "time", "600", SUPPORTED, "NodeSettings.server_idle_timeout"),
    _k("server_lifetime", "time", "3600", SUPPORTED, "NodeSettings.server_lifetime"),
    _k("server_login_retry", "time", "15", SUPPORTED, "NodeSettings.connect_retry_interval"),
    _k("server_reset_query", "str", "DISCARD ALL", SUPPORTED, "PoolLimits.reset_query"),
    _k("server_reset_query_always", "bool", "0", SUPPORTED, "PoolLimits.reset_always"),
    _k("server_round_robin", "bool", "0", IGNORED, "the warmest idle server is reused"),
    _k("server_tls13_ciphers", "str", None, IGNORED, _NO_TLS),
    _k("server_tls_ca_file", "path", "", IGNORED, _NO_TLS),
    _k("server_tls_cert_file", "path", "", IGNORED, _NO_TLS),
    _k("server_tls_ciphers", "str", "fast", IGNORED, _NO_TLS),
    _k("server_tls_key_file", "path", "", IGNORED, _NO_TLS),
    _k("server_tls_protocols", "str", "secure", IGNORED, _NO_TLS),
    _k("server_tls_sslmode", "choice", "disable", IGNORED, "servers are reached without TLS"),
    _k("service_name", "str", None, IGNORED, "Windows service name", reload=False),
    _k("so_reuseport", "bool", "0", IGNORED, "one process per port", reload=False),
    _k("stats_period", "count", "60", PLANNED, "SHOW STATS averages period"),
    _k("stats_users", "list", "", SUPPORTED, "admin console: SHOW only"),
    _k("suspend_timeout", "time", "10", IGNORED, "no online restart"),
    _k("syslog", "bool", "0", IGNORED, "Python logging decides"),
    _k("syslog_facility", "str", "daemon", IGNORED, "Python logging decides"),
    _k("syslog_ident", "str", "pgbouncer", IGNORED, "Python logging decides"),
    _k(
        "tcp_defer_accept",
        "int",
        "1",
        SUPPORTED,
        "TCP_DEFER_ACCEPT on the listeners, 45 s (PgBouncer's) when not 0",
    ),
    _k("tcp_keepalive", "bool", "1", IGNORED, "SO_KEEPALIVE is always on for servers"),
    _k("tcp_keepcnt", "int", "0", IGNORED, "kernel defaults"),
    _k("tcp_keepidle", "int", "0", IGNORED, "kernel defaults"),
    _k("tcp_keepintvl", "int", "0", IGNORED, "kernel defaults"),
    _k("tcp_socket_buffer", "int", "0", IGNORED, "kernel defaults"),
    _k("tcp_user_timeout", "int", "0", IGNORED, "kernel defaults"),
    _k("track_extra_parameters", "list", "IntervalStyle", IGNORED, _TRACKED, reload=False),
    _k("transaction_timeout", "time", "0", PLANNED, "end long transactions"),
    _k("unix_socket_dir", "str", "/tmp", IGNORED, "TCP only: no Unix socket", reload=False),
    _k("unix_socket_group", "str", "", IGNORED, "TCP only", reload=False),
    _k("unix_socket_mode", "int", "0777", IGNORED, "TCP only", reload=False),
    _k("user", "str", None, IGNORED, "start Greenvisor as the right user", reload=False),
    _k("verbose", "int", None, IGNORED, "Python logging decides"),
)
KEYS_BY_NAME: Mapping[str, Key] = {key.name: key for key in KEYS}
CHOICES: Mapping[str, tuple[str, ...]] = {
    "auth_type": AUTH_TYPES,
    "pool_mode": POOL_MODES,
    "client_tls_sslmode": SSLMODES,
    "server_tls_sslmode": SSLMODES,
}


@dataclass(frozen=True, slots=True)
class PgBouncerSettings:
    """The [pgbouncer] keys Greenvisor applies or will apply, typed (times in seconds)."""

    listen_addr: tuple[str, ...]
    listen_port: int
    unix_socket_dir: str
    auth_type: str
    auth_file: str | None
    auth_hba_file: str
    auth_user: str | None
    auth_query: str
    auth_dbname: str | None
    pool_mode: str
    max_client_conn: int
    default_pool_size: int
    min_pool_size: int
    reserve_pool_size: int
    reserve_pool_timeout: float
    max_db_connections: int
    max_user_connections: int
    server_reset_query: str
    server_reset_query_always: bool
    server_check_query: str
    server_check_delay: float
    server_lifetime: float
    server_idle_timeout: float
    server_connect_timeout: float
    server_login_retry: float
    query_timeout: float
    query_wait_timeout: float
    client_idle_timeout: float
    client_login_timeout: float
    idle_transaction_timeout: float
    transaction_timeout: float
    max_prepared_statements: int
    ignore_startup_parameters: tuple[str, ...]
    admin_users: tuple[str, ...]
    stats_users: tuple[str, ...]
    logfile: str
    pidfile: str
    log_connections: bool
    log_disconnections: bool
    stats_period: int
    scram_iterations: int
    tcp_keepalive: bool
    tcp_defer_accept: int
    pkt_buf: int
    client_tls_sslmode: str
    server_tls_sslmode: str


# -- value parsers ----------------------------------------------------------------------------

_TIME = re.compile(r"\+?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_C_INT = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _c_int(text: str) -> int:
    """C ``strtol(text, &end, 0)`` accepting only a complete parse: 0x.. hex, 0.. octal."""
    match = _C_INT.fullmatch(text)
    if match is None:
        raise ValueError("not an integer")
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits[1:], 8)
    else:
        value = int(digits)
    return -value if sign == "-" else value


def _int32(text: str) -> int:
    value = _c_int(text)
    if not -(2**31) <= value < 2**31:
        raise ValueError("out of range for a 32-bit integer")
    return value


def _count(text: str) -> int:
    value = _int32(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _port(text: str) -> int:
    value = _int32(text)
    if not 1 <= value <= 65535:
        raise ValueError("a port is 1 to 65535")
    return value


def _uint(text: str) -> int:
    value = _c_int(text)
    if not 0 <= value < 2**32:
        raise ValueError("out of range for an unsigned 32-bit integer")
    return value


def _time(text: str) -> float:
    if _TIME.fullmatch(text) is None:
        raise ValueError("not a number of seconds (no units: 2.5 means 2.5 s)")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number of seconds")
    return value


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": _int32,
    "count": _count,
    "port": _port,
    "uint": _uint,
    "bool": lambda text: _int32(text) != 0,
    "time": _time,
    "str": str,
    "path": str,
    "list": _list,
}


def _choice(key: str, text: str) -> str:
    value = text.lower()
    if value not in CHOICES[key]:
        raise ValueError(f"must be one of {', '.join(CHOICES[key])}")
    return value


def _refusal(key: str, value: Any) -> str | None:
    """Why Greenvisor refuses to start with this (valid) value, if it does."""
    if key == "auth_type" and value not in AUTH_TYPES_SUPPORTED:
        return f"auth_type {value} is not supported by Greenvisor: use one of " + ", ".join(
            AUTH_TYPES_SUPPORTED
        )
    if key in ("client_tls_sslmode", "server_tls_sslmode") and value in SSLMODES_REFUSED:
        return f"{value} needs TLS settings Greenvisor does not take from pgbouncer.ini: {_NO_TLS}"
    if key == "disable_pqexec" and value:
        return "Greenvisor cannot turn the simple query protocol off"
    return None


def parse_value(key: Key, text: str) -> Any:
    """``text`` as the typed value of ``key``; ValueError with the problem when invalid."""
    value = _choice(key.name, text) if key.kind == "choice" else _PARSERS[key.kind](text)
    refusal = _refusal(key.name, value)
    if refusal:
        raise ValueError(refusal)
    return value


# -- reading the file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """One ``key = value`` line, or a section header (``key`` None)."""

    file: str
    line: int
    section: str
    key: str | None = None
    value: str = ""


_UNQUOTED_KEY = re.compile(r"[A-Za-z0-9_.*-]*")
_SPACE = " \t\r\n\v\f"


class _Reader:
    """Turns a file and its includes into a flat list of items, in reading order."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.files: list[str] = []
        self.section: str | None = None

    def read(self, path: Path, chain: tuple[Path, ...] = ()) -> None:
        self.files.append(str(path))
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise IniError(str(path), 0, None, f"cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[: exc.start].count(b"\n") + 1
            raise IniError(str(path), line, None, "not valid UTF-8") from None
        for number, raw in enumerate(text.split("\n"), 1):
            self._line(path, number, raw.lstrip(_SPACE), chain + (path,))

    def _line(self, path: Path, number: int, text: str, chain: tuple[Path, ...]) -> None:
        if not text or text[0] in "#;":
            return
        if text.startswith("%include"):
            self._include(path, number, text[8:], chain)
        elif text[0] == "[":
            self._section(path, number, text, chain)
        else:
            self._key_value(path, number, text)

    def _include(self, path: Path, number: int, rest: str, chain: tuple[Path, ...]) -> None:
        where = str(path)
        target = rest.strip(_SPACE)
        if not rest[:1].isspace() or not target:
            raise IniError(where, number, None, "%include needs a file name")
        if len(chain) > MAX_INCLUDE_DEPTH:
            raise IniError(where, number, None, f"%include nested deeper than {MAX_INCLUDE_DEPTH}")
        included = (path.parent / target).resolve()
        if included in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(included) :], included))
            raise IniError(where, number, None, f"%include cycle: {cycle}")
        if not included.is_file():
            raise IniError(where, number, None, f"%include {target}: no such file ({included})")
        self.read(included, chain)

    def _section(self, path: Path, number: int, text: str, chain: tuple[Path, ...]) -> None:
        end = text.find("]")
        if end < 0:
            raise IniError(str(path), number, None, "section header without ']'")
        name = text[1:end].strip().lower()
        if name not in SECTIONS:
            raise IniError(
                str(path), number, None, f"unknown section [{text[1:end]}]: PgBouncer knows "
                + ", ".join(f"[{s}]" for s in SECTIONS),
            )  # fmt: skip
        self.section = name
        self.items.append(_Item(str(path), number, name))
        rest = text[end + 1 :].lstrip(_SPACE)
        if rest:  # PgBouncer reads on after the ']' as if a new line started
            self._line(path, number, rest, chain)

    def _key_value(self, path: Path, number: int, text: str) -> None:
        where = str(path)
        if text[0] == "'":
            end = text.find("'", 1)
            if end <= 1:
                raise IniError(where, number, None, "unterminated or empty quoted key")
            key, rest = text[1:end], text[end + 1 :]
        else:
            match = _UNQUOTED_KEY.match(text)
            key = match.group() if match else ""
            rest = text[len(key) :]
        rest = rest.lstrip(" \t")
        if not key or not rest.startswith("="):
            raise IniError(where, number, key or None, "syntax error: expected key = value")
        if self.section is None:
            raise IniError(where, number, key, "key outside of any [section]")
        value = rest[1:].lstrip(" \t").rstrip(_SPACE)
        self.items.append(_Item(where, number, self.section, key, value))


# -- connection strings -----------------------------------------------------------------------


def parse_connstr(text: str) -> list[tuple[str, str]]:
    """``key=value key='quoted '' value'`` pairs, as PgBouncer's connection-string parser.

    ValueError (never quoting a value, which may be a password) when malformed.
    """
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in " \t":
            pos += 1
        if pos == end:
            return pairs
        start = pos
        while pos < end and text[pos] not in "= \t":
            pos += 1
        key = text[start:pos]
        while pos < end and text[pos] in " \t":
            pos += 1
        if not key or pos == end or text[pos] != "=":
            raise ValueError(f"syntax error near {key or '='!r}: expected key=value")
        value, pos = _connstr_value(text, pos + 1, key)
        pairs.append((key, value))


def _connstr_value(text: str, pos: int, key: str) -> tuple[str, int]:
    end = len(text)
    while pos < end and text[pos] in " \t":
        pos += 1
    if pos < end and text[pos] == "'":
        chars: list[str] = []
        pos += 1
        while True:
            if pos == end:
                raise ValueError(f"unterminated quoted value for {key}")
            if text[pos] == "'":
                if text[pos + 1 : pos + 2] != "'":
                    break
                pos += 1
            chars.append(text[pos])
            pos += 1
        value, pos = "".join(chars), pos + 1
        if pos < end and text[pos] not in " \t":
            raise ValueError(f"a space must follow the quoted value of {key}")
    else:
        start = pos
        while pos < end and text[pos] not in " \t":
            pos += 1
        value = text[start:pos]
    if not value:
        raise ValueError(f"empty value for {key}")
    return value, pos


# -- [databases] and [users] ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatabaseEntry:
    """One [databases] line. ``dbname`` None only for ``*`` (the client's own database)."""

    name: str
    host: str | None = None
    port: int = 5432
    dbname: str | None = None
    user: str | None = None  # forced user: every client shares this user's pool
    password: str | None = field(default=None, repr=False)
    auth_user: str | None = None
    pool_size: int | None = None  # None: the [pgbouncer] value applies
    min_pool_size: int | None = None
    reserve_pool: int | None = None
    max_db_connections: int | None = None
    pool_mode: str | None = None
    client_encoding: str | None = None
    datestyle: str | None = None
    timezone: str | None = None
    application_name: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # newer keys, not applied yet
    source: str = field(default="", compare=False)  # "file:line"

    def resolve(self, requested: str) -> DatabaseEntry:
        """The ``*`` entry for a client asking for database ``requested``."""
        return replace(self, name=requested, dbname=self.dbname or requested)


_DB_INT_KEYS = {
    "pool_size": "pool_size",
    "min_pool_size": "min_pool_size",
    "reserve_pool": "reserve_pool",
    "reserve_pool_size": "reserve_pool",
    "max_db_connections": "max_db_connections",
}
_DB_STR_KEYS = (
    "dbname", "host", "user", "password", "auth_user", "client_encoding", "datestyle",
    "timezone", "application_name",
)  # fmt: skip
_DB_LATER_KEYS = (
    "auth_dbname", "auth_query", "query_wait_timeout", "max_db_client_connections",
    "server_lifetime", "load_balance_hosts",
)  # fmt: skip
#: Known [databases] keys Greenvisor records but does not apply yet (a warning each).
_DB_NOT_APPLIED = (
    "max_db_connections",
    "client_encoding", "datestyle", "timezone", "application_name",
)  # fmt: skip
_USER_LATER_KEYS = (
    "pool_size", "reserve_pool_size", "transaction_timeout", "idle_transaction_timeout",
    "query_timeout", "query_wait_timeout", "client_idle_timeout", "max_user_client_connections",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class UserEntry:
    """One [users] line."""

    name: str
    pool_mode: str | None = None
    max_user_connections: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    source: str = field(default="", compare=False)


def _pool_mode(text: str) -> str:
    if text.lower() not in POOL_MODES:
        raise ValueError(f"invalid pool_mode: must be one of {', '.join(POOL_MODES)}")
    return text.lower()


class _Sections:
    """Builds the [databases] and [users] entries, collecting warnings."""

    def __init__(self, warnings: list[str]) -> None:
        self.warnings = warnings
        self.databases: dict[str, DatabaseEntry] = {}
        self.users: dict[str, UserEntry] = {}

    def database(self, item: _Item) -> None:
        name = item.key or ""
        if name == RESERVED_DATABASE:
            raise IniError(item.file, item.line, name, "the name pgbouncer is reserved")
        try:
            pairs = parse_connstr(item.value)
            values = self._database_values(item, pairs)
        except ValueError as exc:
            raise IniError(item.file, item.line, name, str(exc)) from None
        if name != "*":
            values.setdefault("dbname", name)
        entry = DatabaseEntry(name=name, source=f"{item.file}:{item.line}", **values)
        self._check_host(item, entry)
        self.databases[name] = entry

    def _database_values(self, item: _Item, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, text in pairs:
            lower = key.lower()
            if lower in _DB_STR_KEYS:
                values[lower] = text
            elif lower == "port":
                values["port"] = _port(text)
            elif lower in _DB_INT_KEYS:
                values[_DB_INT_KEYS[lower]] = _count(text)
            elif lower == "pool_mode":
                values["pool_mode"] = _pool_mode(text)
            elif lower in _DB_LATER_KEYS:
                extra[lower] = text
            elif lower == "connect_query":
                raise ValueError("connect_query is not supported by Greenvisor")
            else:
                raise ValueError(f"unknown connection parameter {key}")
            if lower in _DB_NOT_APPLIED or lower in _DB_LATER_KEYS:
                self._not_applied(item, lower)
        values["extra"] = extra
        return values

    def _check_host(self, item: _Item, entry: DatabaseEntry) -> None:
        host = entry.host
        if host is not None and "," in host:
            raise IniError(item.file, item.line, entry.name, "several hosts are not supported")
        if host is None or host.startswith("/"):
            self._warn(
                item, entry.name, "no TCP host: PgBouncer would use a Unix socket; Greenvisor "
                "connects to 127.0.0.1 over TCP (set host= to choose)",
            )  # fmt: skip

    def user(self, item: _Item) -> None:
        name = item.key or ""
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        try:
            for key, text in parse_connstr(item.value):
                lower = key.lower()
                if lower == "pool_mode":
                    values["pool_mode"] = _pool_mode(text)
                elif lower == "max_user_connections":
                    values["max_user_connections"] = _count(text)
                    self._not_applied(item, lower)
                elif lower in _USER_LATER_KEYS:
                    extra[lower] = text
                    self._not_applied(item, lower)
                else:
                    raise ValueError(f"unknown user parameter {key}")
        except ValueError as exc:
            raise IniError(item.file, item.line, name, str(exc)) from None
        source = f"{item.file}:{item.line}"
        self.users[name] = UserEntry(name=name, extra=extra, source=source, **values)

    def _warn(self, item: _Item, key: str, message: str) -> None:
        self.warnings.append(f"{item.file}:{item.line}: {key}: {message}")

    def _not_applied(self, item: _Item, parameter: str) -> None:
        self._warn(item, item.key or "", f"{parameter} is accepted but not applied yet")


# -- the whole configuration ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgBouncerConfig:
    """Everything one pgbouncer.ini (with its includes) says."""

    path: str
    files: tuple[str, ...]  # every file read, the main one first (watch them for reloads)
    settings: PgBouncerSettings
    values: Mapping[str, Any]  # every known [pgbouncer] key, typed (defaults included)
    texts: Mapping[str, str | None]  # the same keys as written (or PgBouncer's default)
    databases: Mapping[str, DatabaseEntry]  # without "*"
    autodb: DatabaseEntry | None  # the "*" entry
    users: Mapping[str, UserEntry]
    warnings: tuple[str, ...]

    def database(self, name: str) -> DatabaseEntry | None:
        """The entry serving a client that asks for database ``name`` (None: refuse)."""
        entry = self.databases.get(name)
        if entry is not None:
            return entry
        return self.autodb.resolve(name) if self.autodb is not None else None

    def pool_user(self, database: str, client_user: str) -> str:
        """The user whose pool a client joins: the forced user=, else the client itself."""
        entry = self.database(database)
        return entry.user if entry is not None and entry.user else client_user

    def pool_mode_for(self, database: str, user: str) -> str:
        """PgBouncer's precedence: the [users] entry, then the database, then pool_mode."""
        user_entry = self.users.get(user)
        if user_entry is not None and user_entry.pool_mode:
            return user_entry.pool_mode
        entry = self.database(database)
        if entry is not None and entry.pool_mode:
            return entry.pool_mode
        return self.settings.pool_mode

    def config_items(self) -> list[tuple[str, str | None, str | None, bool]]:
        """SHOW CONFIG rows: (key, value, default, changeable), as PgBouncer prints them."""
        rows = []
        for key in KEYS:
            if key.name == "conffile":
                value: str | None = self.path
            elif key.kind in ("str", "path", "list"):
                value = self.texts[key.name]  # PgBouncer shows strings as written
            else:
                value = _show(key, self.values[key.name])
            rows.append((key.name, value, key.default, key.reload))
        return rows

    def to_snapshot(self, authfile: AuthFile, *, version: int = 1) -> ConfigSnapshot:
        """One tenant per [databases] entry (``*`` included), external_id = its name."""
        entries = list(self.databases.values())
        if self.autodb is not None:
            entries.append(self.autodb)
        tenants = {entry.name: self._tenant(entry, authfile) for entry in entries}
        return ConfigSnapshot(version=version, tenants=tenants)

    def _tenant(self, entry: DatabaseEntry, authfile: AuthFile) -> TenantConfig:
        settings = self.settings
        auth_user = entry.auth_user or settings.auth_user
        return TenantConfig(
            external_id=entry.name,
            db_host=entry.host if entry.host and not entry.host.startswith("/") else "127.0.0.1",
            db_port=entry.port,
            db_database=entry.dbname or "*",
            default_pool_size=settings.default_pool_size
            if entry.pool_size is None
            else entry.pool_size,
            default_max_clients=settings.max_client_conn,
            auth_query=settings.auth_query if auth_user else None,
            client_idle_timeout=math.ceil(settings.client_idle_timeout),
            users=tuple(self._users(entry, authfile)),
        )

    def _users(self, entry: DatabaseEntry, authfile: AuthFile) -> Iterable[UserConfig]:
        if entry.user:
            password = entry.password
            if password is None:
                found = authfile.get(entry.user)
                password = found.upstream_password() if found is not None else None
            yield self._user(entry, entry.user, password)
            return
        for name in sorted(authfile.users()):
            found = authfile.get(name)
            yield self._user(entry, name, found.upstream_password() if found else None)

    def make_user(self, entry: DatabaseEntry, name: str, password: str | None) -> UserConfig:
        """The UserConfig of ``name`` in ``entry``'s tenant (e.g. a user found by auth_query)."""
        return self._user(entry, name, password)

    def _user(self, entry: DatabaseEntry, name: str, password: str | None) -> UserConfig:
        wait = self.settings.query_wait_timeout
        return UserConfig(
            db_user_alias=name,
            db_user=name,
            db_password=UNUSABLE_PASSWORD if password is None else password,
            mode_type=self.pool_mode_for(entry.name, name),
            pool_checkout_timeout=int(wait * 1000) if wait > 0 else NO_TIMEOUT_MS,
        )


def _show(key: Key, value: Any) -> str | None:
    """A typed value as PgBouncer's SHOW CONFIG prints it."""
    if value is None:
        return None
    if key.kind == "bool":
        return "1" if value else "0"
    if key.kind == "time":
        return f"{value:g}"
    return str(value)


def _initial(key: Key) -> Any:
    """PgBouncer's value for a key never set: its default, else 0 for numbers, else NULL."""
    if key.default is not None:
        return parse_value(key, key.default)
    return parse_value(key, "0") if key.kind in ("int", "count", "uint", "bool") else None


_DEFAULT_VALUES: Mapping[str, Any] = {key.name: _initial(key) for key in KEYS}


def _defaults() -> tuple[dict[str, Any], dict[str, str | None]]:
    return dict(_DEFAULT_VALUES), {k.name: k.default for k in KEYS}


class _Builder:
    """Applies the items in order, as PgBouncer's loader does."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.values, self.texts = _defaults()
        self.where: dict[str, _Item] = {}
        self.sections = _Sections(self.warnings)
        self.main_seen = False

    def apply(self, item: _Item) -> None:
        if item.key is None:
            self._section(item)
        elif item.section == "pgbouncer":
            self._setting(item)
        elif item.section == "databases":
            self.sections.database(item)
        elif item.section == "users":
            self.sections.user(item)
        else:
            self._warn(item, item.key, "[peers] is not supported (no PgBouncer peering); ignored")

    def _section(self, item: _Item) -> None:
        if item.section != "pgbouncer":
            return
        if self.main_seen:
            self._warn(item, None, "a second [pgbouncer] section resets its keys to the defaults")
            keep = {k.name for k in KEYS if k.default is None}
            fresh_values, fresh_texts = _defaults()
            self.values.update({k: v for k, v in fresh_values.items() if k not in keep})
            self.texts.update({k: v for k, v in fresh_texts.items() if k not in keep})
        self.main_seen = True

    def _setting(self, item: _Item) -> None:
        name = (item.key or "").lower()
        key = KEYS_BY_NAME.get(name)
        if key is None:
            self._warn(item, item.key, "unknown key, ignored")
            return
        try:
            value = parse_value(key, item.value)
        except ValueError as exc:
            raise IniError(item.file, item.line, name, f"{item.value[:80]!r}: {exc}") from None
        if key.kind == "path" and value:
            value = str(Path(item.file).parent / value)
        self.values[name], self.texts[name] = value, item.value
        self.where[name] = item

    def _warn(self, item: _Item, key: str | None, message: str) -> None:
        prefix = f"{item.file}:{item.line}: " + (f"{key}: " if key else "")
        self.warnings.append(prefix + message)

    def finish_warnings(self) -> None:
        """Keys set to something Greenvisor will not apply (yet)."""
        defaults = _DEFAULT_VALUES
        for name, item in self.where.items():
            key = KEYS_BY_NAME[name]
            if name == "unix_socket_dir":
                if self.values[name]:
                    self._warn(item, name, "Greenvisor listens on TCP only, not on a Unix socket")
            elif key.support != SUPPORTED and self.values[name] != defaults[name]:
                what = "not applied yet" if key.support == PLANNED else "ignored"
                self._warn(item, name, f"{what} by Greenvisor ({key.note})")


def load(path: str | Path) -> PgBouncerConfig:
    """Read ``path`` (and its %includes); IniError with file, line and key if unusable."""
    main = Path(path).resolve()
    reader = _Reader()
    reader.read(main)
    builder = _Builder()
    for item in reader.items:
        builder.apply(item)
    if not builder.main_seen:
        raise IniError(str(main), 0, None, "the [pgbouncer] section is missing")
    builder.finish_warnings()
    values = builder.values
    settings = PgBouncerSettings(**{f.name: values[f.name] for f in fields(PgBouncerSettings)})
    databases = dict(builder.sections.databases)
    autodb = databases.pop("*", None)
    return PgBouncerConfig(
        path=str(main),
        files=tuple(dict.fromkeys(reader.files)),
        settings=settings,
        values=values,
        texts=builder.texts,
        databases=databases,
        autodb=autodb,
        users=builder.sections.users,
        warnings=tuple(builder.warnings),
    )


# -- reload -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadDiff:
    """What a RELOAD / SIGHUP changes (names sorted)."""

    databases_added: tuple[str, ...] = ()
    databases_removed: tuple[str, ...] = ()
    databases_changed: tuple[str, ...] = ()  # connection string differs ("*" included)
    users_added: tuple[str, ...] = ()
    users_removed: tuple[str, ...] = ()
    users_changed: tuple[str, ...] = ()
    settings_changed: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()  # changed keys a reload cannot apply

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


def _compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    added = tuple(sorted(set(new) - set(old)))
    removed = tuple(sorted(set(old) - set(new)))
    changed = tuple(sorted(k for k in set(old) & set(new) if old[k] != new[k]))
    return added, removed, changed


def diff(old: PgBouncerConfig, new: PgBouncerConfig) -> ReloadDiff:
    """What reloading ``new`` over ``old`` changes; listen_addr/port etc. need a restart."""
    old_dbs = {**old.databases, **({"*": old.autodb} if old.autodb else {})}
    new_dbs = {**new.databases, **({"*": new.autodb} if new.autodb else {})}
    db_added, db_removed, db_changed = _compare(old_dbs, new_dbs)
    user_added, user_removed, user_changed = _compare(old.users, new.users)
    settings = tuple(k.name for k in KEYS if old.values[k.name] != new.values[k.name])
    restart = tuple(name for name in settings if not KEYS_BY_NAME[name].reload)
    return ReloadDiff(
        db_added, db_removed, db_changed, user_added, user_removed, user_changed, settings, restart
    )
