"""PgBouncer's admin console (virtual database ``pgbouncer``): one simple Query in, the bytes out.

Theory of operation
-------------------
:class:`AdminConsole` is sans-IO. The caller logs the client in (admin_users -> role
``"admin"``, stats_users -> ``"stats"``, anyone else refused before this), then for each
simple Query calls :meth:`AdminConsole.execute` and sends the returned bytes followed by its
own ReadyForQuery. Everything the console reads or changes goes through a :class:`NodeView`,
which the node implements; the console never touches pools or sockets.

Parsing follows PgBouncer (src/admin.c): ONE command per query, ``WORD [WORD]`` with an
optional trailing ``;``, words unquoted ``[0-9a-z_]`` or double-quoted; ``SET key = value``.
Anything else, ``;;;;``, several statements, an empty query, gets PgBouncer's
``invalid command '...', use SHOW HELP;`` (08P01). Result sets have PgBouncer 1.18's column
names and types, byte for byte: text (25), int4 (23), int8 (20), numeric (1700); PgBouncer
sends its timestamps as text. Permission refusals carry 42501 (PgBouncer sends 08P01).
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from pooler.protocol import builders

log = logging.getLogger("pooler.admin")

TEXT, INT4, INT8, NUMERIC = 25, 23, 20, 1700
Column = tuple[str, int]

ADMIN_DATABASE = "pgbouncer"
ROLE_ADMIN = "admin"
ROLE_STATS = "stats"
SYNTAX_SQLSTATE = "08P01"  # PgBouncer's code for every console error
PRIVILEGE_SQLSTATE = "42501"
UNSUPPORTED_SQLSTATE = "0A000"
INTERNAL_SQLSTATE = "XX000"
MAX_QUERY = 64 * 1024  # longer queries cannot be a console command
MAX_ECHO = 200  # characters of a bad query quoted back in the error

#: ParameterStatus PgBouncer sends when an admin console login succeeds.
ADMIN_PARAMETERS = (
    ("server_version", "1.18.0/bouncer"),
    ("client_encoding", "UTF8"),
    ("server_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("TimeZone", "GMT"),
    ("standard_conforming_strings", "on"),
    ("is_superuser", "on"),
)


def _cols(types: str, *names: str) -> tuple[Column, ...]:
    """Columns from PgBouncer's RowDescription letters: s/T text, i int4, q int8, N numeric."""
    oids = {"s": TEXT, "T": TEXT, "i": INT4, "q": INT8, "N": NUMERIC}
    if len(types) != len(names):
        raise ValueError("one type letter per column")
    return tuple((name, oids[letter]) for letter, name in zip(types, names, strict=True))


_STAT_NAMES: tuple[str, ...] = ("xact_count", "query_count", "bytes_received", "bytes_sent")
_STAT_NAMES += ("xact_time", "query_time", "wait_time")
_SOCKET_NAMES = (
    "type", "user", "database", "state", "addr", "port", "local_addr", "local_port",
    "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link",
    "remote_pid", "tls", "application_name",
)  # fmt: skip

#: SHOW <word> -> its columns, as PgBouncer 1.18 sends them (src/admin.c, src/stats.c).
COLUMNS: Mapping[str, tuple[Column, ...]] = {
    "pools": _cols(
        "ssiiiiiiiiiiiiis", "database", "user", "cl_active", "cl_waiting",
        "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active", "sv_active_cancel",
        "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait",
        "maxwait_us", "pool_mode",
    ),
    "stats": _cols(
        "sNNNNNNNNNNNNNN", "database", "total_xact_count", "total_query_count",
        "total_received", "total_sent", "total_xact_time", "total_query_time",
        "total_wait_time", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
        "avg_xact_time", "avg_query_time", "avg_wait_time",
    ),
    "stats_totals": _cols("sNNNNNNN", "database", *_STAT_NAMES),
    "stats_averages": _cols("sNNNNNNN", "database", *_STAT_NAMES),
    "totals": _cols("sN", "name", "value"),
    "clients": _cols("sssssisiTTiiississ", *_SOCKET_NAMES),
    "servers": _cols("sssssisiTTiiississ", *_SOCKET_NAMES),
    "databases": _cols(
        "ssissiiisiiii", "name", "host", "port", "database", "force_user", "pool_size",
        "min_pool_size", "reserve_pool", "pool_mode", "max_connections",
        "current_connections", "paused", "disabled",
    ),
    "users": _cols("ss", "name", "pool_mode"),
    "config": _cols("ssss", "key", "value", "default", "changeable"),
    "lists": _cols("si", "list", "items"),
    "version": _cols("s", "version"),
    "mem": _cols("siiii", "name", "size", "used", "free", "memtotal"),
    "dns_hosts": _cols("sqs", "hostname", "ttl", "addrs"),
    "dns_zones": _cols("sqi", "zonename", "serial", "count"),
}  # fmt: skip

LISTS = (
    "databases", "users", "pools", "free_clients", "used_clients", "login_clients",
    "free_servers", "used_servers", "dns_names", "dns_zones", "dns_queries", "dns_pending",
)  # fmt: skip

#: SHOW of a few server settings, answered with constants (clients that poke at them).
FAKE_PARAMETERS = {
    "client_encoding": "UTF-8",
    "default_transaction_isolation": "read committed",
    "standard_conforming_strings": "on",
    "datestyle": "ISO",
    "timezone": "GMT",
}

HELP = (
    "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n"
    "\tSHOW LISTS|MEM|DNS_HOSTS|DNS_ZONES\n"
    "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n"
    "\tSET key = arg\n\tRELOAD\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tDISABLE <db>\n"
    "\tENABLE <db>\n\tRECONNECT [<db>]\n\tKILL <db>\n\tSUSPEND\n"
    "\tSHUTDOWN [WAIT_FOR_CLIENTS]\n\tWAIT_CLOSE [<db>]"
)


# -- what the node reports --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolRow:
    """One pool for SHOW POOLS (counts of clients and servers in each PgBouncer state)."""

    database: str
    user: str
    cl_active: int = 0
    cl_waiting: int = 0
    sv_active: int = 0
    sv_idle: int = 0
    sv_used: int = 0
    sv_tested: int = 0
    sv_login: int = 0
    maxwait: float = 0.0  # seconds the oldest waiting client has waited
    pool_mode: str = "session"
    cl_active_cancel_req: int = 0
    cl_waiting_cancel_req: int = 0
    sv_active_cancel: int = 0
    sv_being_canceled: int = 0


@dataclass(frozen=True, slots=True)
class StatCounters:
    """PgBouncer's seven statistics; times in microseconds."""

    xact_count: int = 0
    query_count: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    xact_time: int = 0
    query_time: int = 0
    wait_time: int = 0


@dataclass(frozen=True, slots=True)
class StatsRow:
    """One database for SHOW STATS: totals since start, averages over the last stats_period
    (counts and bytes per second; xact/query time per transaction/query; wait per second)."""

    database: str
    totals: StatCounters
    averages: StatCounters


@dataclass(frozen=True, slots=True)
class SocketRow:
    """One client (type "C") or server ("S") for SHOW CLIENTS / SHOW SERVERS."""

    type: str
    user: str
    database: str
    state: str  # clients: active, waiting; servers: active, idle, used, tested, new
    addr: str
    port: int
    local_addr: str
    local_port: int
    connect_time: float  # Unix time
    request_time: float  # Unix time of the last request (0: now)
    wait: float = 0.0  # seconds waited for a server so far
    close_needed: bool = False
    ptr: str = ""  # an id of this connection (PgBouncer: its address)
    link: str = ""  # the ptr of the linked server/client, "" when none
    remote_pid: int = 0
    tls: str = ""
    application_name: str = ""


@dataclass(frozen=True, slots=True)
class DatabaseRow:
    """One database for SHOW DATABASES (None: NULL, as PgBouncer shows unset values)."""

    name: str
    host: str | None
    port: int
    database: str
    force_user: str | None = None
    pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool: int = 0
    pool_mode: str | None = None
    max_connections: int = 0
    current_connections: int = 0
    paused: bool = False
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    pool_mode: str | None = None


class ConfigItem(NamedTuple):
    """One SHOW CONFIG row (``PgBouncerConfig.config_items()`` gives these as tuples)."""

    key: str
    value: str | None
    default: str | None
    changeable: bool


class AdminError(Exception):
    """A NodeView refusal shown to the console user, e.g. ``no such database: x``."""

    def __init__(self, message: str, sqlstate: str = SYNTAX_SQLSTATE) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class NodeView(Protocol):
    """What the console needs from the node. Methods that change things raise
    :class:`AdminError` to refuse (with PgBouncer's wording where it has one); they may
    block the calling greenlet until done, as PgBouncer answers PAUSE, SUSPEND and
    WAIT_CLOSE only then. ``database`` None means every database."""

    def list_pools(self) -> Iterable[PoolRow]:
        """Every pool, admin pool included if the node wants PgBouncer's exact rows."""
        ...

    def list_stats(self) -> Iterable[StatsRow]:
        """One row per database that has (had) pools."""
        ...

    def list_clients(self) -> Iterable[SocketRow]: ...

    def list_servers(self) -> Iterable[SocketRow]: ...

    def list_databases(self) -> Iterable[DatabaseRow]: ...

    def list_users(self) -> Iterable[UserRow]: ...

    def config_items(self) -> Iterable[ConfigItem]: ...

    def list_counts(self) -> Mapping[str, int]:
        """SHOW LISTS: counts by PgBouncer's names (:data:`LISTS`); missing ones are 0."""
        ...

    def pause(self, database: str | None) -> None:
        """Stop lending servers; return once every server is released (and closed)."""
        ...

    def resume(self, database: str | None) -> None:
        """Undo PAUSE, KILL or SUSPEND; AdminError("pooler is not paused/suspended")."""
        ...

    def reconnect(self, database: str | None) -> None:
        """Close each server once released; new ones are opened as needed."""
        ...

    def kill(self, database: str) -> None:
        """Drop every client and server of ``database`` now; it stays paused."""
        ...

    def suspend(self) -> None:
        """Flush and stop reading all sockets (PgBouncer's online-restart step)."""
        ...

    def shutdown(self, wait_for_clients: bool) -> None:
        """Stop the process: now, or once every client has disconnected."""
        ...

    def reload(self) -> None:
        """Re-read the configuration and auth files and apply them (SIGHUP does the same)."""
        ...

    def enable(self, database: str) -> None: ...

    def disable(self, database: str) -> None:
        """Refuse new clients of ``database``."""
        ...

    def wait_close(self, database: str | None) -> None:
        """Return once servers marked for closing (RECONNECT, RELOAD) are gone."""
        ...

    def set_config(self, key: str, value: str) -> None:
        """SET key = value at run time; AdminError("SET failed") to refuse."""
        ...


def admin_database_row(listen_port: int) -> DatabaseRow:
    """PgBouncer's own row for the console database in SHOW DATABASES."""
    return DatabaseRow(
        ADMIN_DATABASE, None, listen_port, ADMIN_DATABASE, ADMIN_DATABASE, 2, 0, 0, "statement"
    )


# -- wire helpers (PgBouncer's layouts) -------------------------------------------------------


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _fields(*pairs: tuple[bytes, str]) -> bytes:
    parts = [code + text.encode("utf-8", "surrogateescape") + b"\0" for code, text in pairs]
    return b"".join(parts) + b"\0"


def error(sqlstate: str, message: str) -> bytes:
    """ErrorResponse as PgBouncer sends it: severity, SQLSTATE, message (no V field)."""
    return _message(b"E", _fields((b"S", "ERROR"), (b"C", sqlstate), (b"M", message)))


def notice(message: str, detail: str | None = None) -> bytes:
    pairs = [(b"S", "NOTICE"), (b"C", "00000"), (b"M", message)]
    if detail is not None:
        pairs.append((b"D", detail))
    return _message(b"N", _fields(*pairs))


def result(columns: tuple[Column, ...], rows: Iterable[Iterable[object]], tag: str) -> bytes:
    """RowDescription, one DataRow per row (None is NULL), CommandComplete."""
    parts = [builders.row_description(columns)]
    parts.extend(builders.data_row([None if v is None else str(v) for v in r]) for r in rows)
    parts.append(builders.command_complete(tag))
    return b"".join(parts)


def _clean(text: str) -> str:
    """``text`` safe in a protocol string: cut to MAX_ECHO, no NUL, valid UTF-8 (undecodable
    bytes and lone surrogates spelled out as ``\\udcff``)."""
    text = text[:MAX_ECHO].replace("\0", "\\0")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _timestamp(unix_time: float) -> str:
    """PgBouncer's text timestamps: local time, whole seconds, zone name; 0 is now."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(unix_time or time.time()))


def _split_us(seconds: float) -> tuple[int, int]:
    micros = max(0, int(seconds * 1_000_000))
    return micros // 1_000_000, micros % 1_000_000


# -- rows -------------------------------------------------------------------------------------


def _pool_values(p: PoolRow) -> tuple[object, ...]:
    wait_s, wait_us = _split_us(p.maxwait)
    return (
        p.database, p.user, p.cl_active, p.cl_waiting, p.cl_active_cancel_req,
        p.cl_waiting_cancel_req, p.sv_active, p.sv_active_cancel, p.sv_being_canceled,
        p.sv_idle, p.sv_used, p.sv_tested, p.sv_login, wait_s, wait_us, p.pool_mode,
    )  # fmt: skip


def _counters(c: StatCounters) -> tuple[int, ...]:
    return (
        c.xact_count, c.query_count, c.bytes_received, c.bytes_sent, c.xact_time,
        c.query_time, c.wait_time,
    )  # fmt: skip


def _socket_values(s: SocketRow) -> tuple[object, ...]:
    wait_s, wait_us = _split_us(s.wait)
    return (
        s.type, s.user, s.database, s.state, s.addr, s.port, s.local_addr, s.local_port,
        _timestamp(s.connect_time), _timestamp(s.request_time), wait_s, wait_us,
        int(s.close_needed), s.ptr, s.link, s.remote_pid, s.tls, s.application_name,
    )  # fmt: skip


def _database_values(d: DatabaseRow) -> tuple[object, ...]:
    return (
        d.name, d.host, d.port, d.database, d.force_user, d.pool_size, d.min_pool_size,
        d.reserve_pool, d.pool_mode, d.max_connections, d.current_connections, int(d.paused),
        int(d.disabled),
    )  # fmt: skip


def _total(rows: list[StatsRow]) -> tuple[StatCounters, StatCounters]:
    """Every database summed; per-transaction/query averages weighted by their rates."""
    columns = zip(*(_counters(r.totals) for r in rows), strict=True)
    totals = StatCounters(*(sum(column) for column in columns))
    avg = [r.averages for r in rows]
    xacts, queries = sum(a.xact_count for a in avg), sum(a.query_count for a in avg)
    xact_time = sum(a.xact_time * a.xact_count for a in avg) // xacts if xacts else 0
    query_time = sum(a.query_time * a.query_count for a in avg) // queries if queries else 0
    averages = StatCounters(
        xacts, queries, sum(a.bytes_received for a in avg), sum(a.bytes_sent for a in avg),
        xact_time, query_time, sum(a.wait_time for a in avg),
    )  # fmt: skip
    return totals, averages


_TOTAL_NAMES: tuple[str, ...] = ("xact_count", "query_count", "client_bytes", "server_bytes")
_TOTAL_NAMES += ("xact_time", "query_time", "wait_time")


# -- the console ------------------------------------------------------------------------------

_WS0, _WS1 = r"[ \t\n\r]*", r"[ \t\n\r]+"
_WORD = r'("(?:[^"]|"")*"|[0-9a-z_]+)'
_STRING = r"('(?:[^']|'')*')"
_END = _WS0 + r"(?:;" + _WS0 + r")?"
_FLAGS = re.IGNORECASE | re.ASCII
_CMD_RX = re.compile(_WS0 + _WORD + r"(?:" + _WS1 + _WORD + r")?" + _END, _FLAGS)
_SET_HEAD = _WS0 + "set" + _WS1 + _WORD + _WS0 + "(?:=|to)" + _WS0
_SET_STR_RX = re.compile(_SET_HEAD + _STRING + _END, _FLAGS)
_SET_WORD_RX = re.compile(_SET_HEAD + _WORD + _END, _FLAGS)
_CMD_MAX, _ARG_MAX, _VAL_MAX = 16, 64, 256  # PgBouncer's buffers (NUL included)


class _BadArguments(Exception):
    pass


def _unquote(text: str | None, limit: int, quote: str) -> str:
    """PgBouncer's copy_arg: refuse what does not fit its buffer, strip one quote level."""
    if text is None:
        return ""
    if len(text.encode("utf-8", "surrogateescape")) >= limit:
        raise _BadArguments
    if text.startswith(quote):
        return text[1:-1].replace(quote * 2, quote)
    return text


class _NotAdmin(Exception):
    pass


class _Syntax(Exception):
    pass


class AdminConsole:
    """Runs console commands for one process; one instance serves every console client."""

    def __init__(self, node_view: NodeView, *, version: str) -> None:
        self.node = node_view
        self.version = version
        self._commands: dict[str, Callable[[str, bool], bytes]] = {
            "show": self._show,
            "select": self._show,
            "reload": self._reload,
            "shutdown": self._shutdown,
            "suspend": self._suspend,
            "resume": self._resume,
            "pause": self._pause,
            "reconnect": self._reconnect,
            "kill": self._kill,
            "enable": self._enable,
            "disable": self._disable,
            "wait_close": self._wait_close,
        }

    def execute(self, sql: str, user_role: str) -> bytes:
        """The response to one simple Query, without ReadyForQuery; never raises."""
        is_admin = user_role == ROLE_ADMIN
        if user_role not in (ROLE_ADMIN, ROLE_STATS):
            return error(PRIVILEGE_SQLSTATE, "not allowed: not in admin_users or stats_users")
        try:
            return self._dispatch(sql, is_admin)
        except _Syntax:
            return error(SYNTAX_SQLSTATE, f"invalid command '{_clean(sql)}', use SHOW HELP;")
        except _BadArguments:
            return error(SYNTAX_SQLSTATE, "bad arguments")
        except _NotAdmin:
            return error(PRIVILEGE_SQLSTATE, "admin access needed")
        except AdminError as exc:
            return error(exc.sqlstate, _clean(exc.message))
        except Exception:  # noqa: BLE001 - a console command must never take the node down
            log.exception("admin console command failed: %s", _clean(sql))
            return error(INTERNAL_SQLSTATE, "internal error in the admin console; see the log")

    def _dispatch(self, sql: str, is_admin: bool) -> bytes:
        if len(sql) > MAX_QUERY:
            raise _Syntax
        match = _CMD_RX.fullmatch(sql)
        if match is not None:
            command = _unquote(match.group(1), _CMD_MAX, '"').lower()
            arg = _unquote(match.group(2), _ARG_MAX, '"')
            handler = self._commands.get(command)
            if handler is None:
                raise _Syntax
            return handler(arg, is_admin)
        match = _SET_STR_RX.fullmatch(sql)
        quote = "'"
        if match is None:
            match, quote = _SET_WORD_RX.fullmatch(sql), '"'
        if match is None:
            raise _Syntax
        key = _unquote(match.group(1), _ARG_MAX, '"')
        if not key:
            raise _BadArguments
        return self._set(key, _unquote(match.group(2), _VAL_MAX, quote), is_admin)

    # -- SHOW -------------------------------------------------------------------------------

    def _show(self, arg: str, is_admin: bool) -> bytes:
        word = arg.lower()
        if word in FAKE_PARAMETERS:
            return result(((word, TEXT),), [(FAKE_PARAMETERS[word],)], "SHOW")
        if word in ("fds", "sockets", "active_sockets"):
            if word == "fds" and not is_admin:
                raise _NotAdmin
            raise AdminError(
                f"SHOW {word.upper()} is not supported by Greenvisor (no online restart); "
                "use SHOW CLIENTS and SHOW SERVERS",
                UNSUPPORTED_SQLSTATE,
            )
        if word == "help":
            return notice("Console usage", HELP) + builders.command_complete("SHOW")
        rows = self._rows(word)
        if rows is None:
            raise _Syntax
        return result(COLUMNS[word], rows, "SHOW")

    def _rows(self, word: str) -> Iterable[Iterable[object]] | None:
        node = self.node
        if word == "pools":
            return [_pool_values(p) for p in node.list_pools()]
        if word in ("stats", "stats_totals", "stats_averages", "totals"):
            return self._stats_rows(word, list(node.list_stats()))
        if word in ("clients", "servers"):
            sockets = node.list_clients() if word == "clients" else node.list_servers()
            return [_socket_values(s) for s in sockets]
        if word == "databases":
            return [_database_values(d) for d in node.list_databases()]
        if word == "users":
            return [(u.name, u.pool_mode) for u in node.list_users()]
        if word == "config":
            return [(i[0], i[1], i[2], "yes" if i[3] else "no") for i in node.config_items()]
        if word == "lists":
            counts = node.list_counts()
            return [(name, int(counts.get(name, 0))) for name in LISTS]
        if word == "version":
            return [(self.version,)]
        if word in ("mem", "dns_hosts", "dns_zones"):
            return []  # no slab caches, no DNS cache
        return None

    def _stats_rows(self, word: str, rows: list[StatsRow]) -> Sequence[tuple[object, ...]]:
        if word == "stats":
            return [(r.database, *_counters(r.totals), *_counters(r.averages)) for r in rows]
        if word == "stats_totals":
            return [(r.database, *_counters(r.totals)) for r in rows]
        if word == "stats_averages":
            return [(r.database, *_counters(r.averages)) for r in rows]
        totals, averages = _total(rows)
        return [(f"total_{n}", v) for n, v in zip(_TOTAL_NAMES, _counters(totals), strict=True)] + [
            (f"avg_{n}", v) for n, v in zip(_TOTAL_NAMES, _counters(averages), strict=True)
        ]

    # -- SET ---------------------------------------------------------------------------------

    def _set(self, key: str, value: str, is_admin: bool) -> bytes:
        if key.lower() in FAKE_PARAMETERS:
            return notice("SET ignored") + builders.command_complete("SET")
        if not is_admin:
            raise _NotAdmin
        self.node.set_config(key, value)
        return builders.command_complete(_clean(f"SET {key}={value}"))

    # -- process control ---------------------------------------------------------------------

    @staticmethod
    def _admin_only(is_admin: bool) -> None:
        if not is_admin:
            raise _NotAdmin

    @staticmethod
    def _database(arg: str, verb: str, *, required: bool) -> str | None:
        if not arg:
            if required:
                raise AdminError("a database is required")
            return None
        if arg == ADMIN_DATABASE:
            raise AdminError(f"cannot {verb} admin db: {arg}")
        return arg

    def _reload(self, arg: str, is_admin: bool) -> bytes:
        if arg:
            raise _Syntax
        self._admin_only(is_admin)
        self.node.reload()
        return builders.command_complete("RELOAD")

    def _shutdown(self, arg: str, is_admin: bool) -> bytes:
        if arg and arg.lower() != "wait_for_clients":
            raise _Syntax
        self._admin_only(is_admin)
        self.node.shutdown(wait_for_clients=bool(arg))
        return builders.command_complete("SHUTDOWN")

    def _suspend(self, arg: str, is_admin: bool) -> bytes:
        if arg:
            raise _Syntax
        self._admin_only(is_admin)
        self.node.suspend()
        return builders.command_complete("SUSPEND")

    def _resume(self, arg: str, is_admin: bool) -> bytes:
        self._admin_only(is_admin)
        self.node.resume(arg or None)
        return builders.command_complete("RESUME")

    def _pause(self, arg: str, is_admin: bool) -> bytes:
        self._admin_only(is_admin)
        self.node.pause(self._database(arg, "pause", required=False))
        return builders.command_complete("PAUSE")

    def _reconnect(self, arg: str, is_admin: bool) -> bytes:
        self._admin_only(is_admin)
        self.node.reconnect(self._database(arg, "reconnect", required=False))
        return builders.command_complete("RECONNECT")

    def _kill(self, arg: str, is_admin: bool) -> bytes:
        self._admin_only(is_admin)
        self.node.kill(self._database(arg, "kill", required=True) or "")
        return builders.command_complete("KILL")

    def _enable(self, arg: str, is_admin: bool) -> bytes:
        self._admin_only(is_admin)
        self.node.enable(self._database(arg, "enable", required=True) or "")
        return builders.command_complete("ENABLE")

    def _disable(self, arg: str, is_admin: bool) -> bytes:
        self._admin_only(is_admin)
        self.node.disable(self._database(arg, "disable", required=True) or "")
        return builders.command_complete("DISABLE")

    def _wait_close(self, arg: str, is_admin: bool) -> bytes:
        self._admin_only(is_admin)
        self.node.wait_close(self._database(arg, "wait in", required=False))
        return builders.command_complete("WAIT_CLOSE")
