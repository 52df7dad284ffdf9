"""pgbouncer.ini's ``auth_user`` + ``auth_query``: secrets of users missing from the auth_file.

Theory of operation
-------------------
When a client's user is not in the auth_file and its database has an ``auth_user`` (the
``[databases]`` entry's, else ``[pgbouncer]``'s), :func:`lookup` logs in upstream as that
user (its password: the entry's ``password=`` when the entry forces that user, else its
auth_file entry), in ``auth_dbname`` or the entry's database, and runs ``auth_query`` with
the client's user name in place of ``$1`` (a quoted literal; standard_conforming_strings
is on in every supported Postgres). The first row's second column is the secret (md5,
SCRAM verifier or plain), classified like an auth_file line; no row or NULL means no such
user. The result is not cached: each login asks, as PgBouncer does. A failure (auth_user
unknown, the query failing) is logged and treated as "no such user", so the client gets
the usual 28P01.

The login runs in the client's login greenlet, bounded by server_connect_timeout (login)
and client_login_timeout (the whole client login).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent

from pooler import netio
from pooler.pgbouncer.authfile import AuthEntry, AuthFileError, _entry
from pooler.protocol import builders, parsers
from pooler.server import Target, UpstreamError, login

if TYPE_CHECKING:
    from pooler.pgbouncer.dropin import DropIn
    from pooler.pgbouncer.ini import DatabaseEntry

log = logging.getLogger("pooler.pgbouncer")

MAX_REPLY = 64 * 1024


def literal(text: str) -> str:
    """``text`` as an SQL string literal (standard_conforming_strings = on)."""
    return "'" + text.replace("'", "''") + "'"


def _cells(body: bytes) -> list[str | None]:
    count, pos, row = int.from_bytes(body[:2], "big"), 2, []
    for _ in range(count):
        size = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        row.append(None if size < 0 else body[pos : pos + size].decode("utf-8", "replace"))
        pos += max(size, 0)
    return row


def lookup(dropin: DropIn, db_entry: DatabaseEntry, name: str) -> AuthEntry | None:
    """The secret of ``name`` from auth_query, or None (no auth_user, no such user, error)."""
    settings = dropin.config.settings
    auth_user = db_entry.auth_user or settings.auth_user
    if not auth_user:
        return None
    password = db_entry.password if db_entry.user == auth_user else None
    if password is None:
        found = dropin.authfile.get(auth_user)
        password = found.upstream_password() if found is not None else None
    if password is None:
        log.warning(
            "auth_query: auth_user %r has no usable password in the auth_file (plain or md5 "
            "needed); users missing from the auth_file cannot log in",
            auth_user,
        )
        return None
    node_settings = dropin.node.settings
    target = Target(
        host=db_entry.host if db_entry.host and not db_entry.host.startswith("/") else "127.0.0.1",
        port=db_entry.port,
        database=settings.auth_dbname or db_entry.dbname or name,
        user=auth_user,
        password=password,
        connect_timeout=node_settings.server_connect_timeout,
        application_name="greenvisor auth_query",
    )
    try:
        secret = _run(target, settings.auth_query.replace("$1", literal(name)))
    except (UpstreamError, OSError, netio.ConnectionClosed, gevent.Timeout) as exc:
        log.warning("auth_query as %r failed: %s", auth_user, getattr(exc, "message", exc))
        return None
    if secret is None:
        return None
    try:
        return _entry(name, secret, "auth_query", 0)
    except AuthFileError as exc:
        log.warning("auth_query returned an unusable secret for %r: %s", name, exc.problem)
        return None


def _run(target: Target, sql: str) -> str | None:
    sock, _pid, _key, _params = login(target)
    try:
        with gevent.Timeout(target.connect_timeout):
            sock.sendall(builders.query(sql))
            row: list[str | None] | None = None
            error: dict[str, str] | None = None
            while True:
                msg_type, body = netio.read_message(sock, MAX_REPLY)
                if msg_type == ord("D") and row is None:
                    row = _cells(body)
                elif msg_type == ord("E"):
                    error = parsers.parse_error_fields(body)
                elif msg_type == ord("Z"):
                    break
            try:
                sock.sendall(builders.terminate())
            except OSError:
                pass
    finally:
        sock.close()
    if error is not None:
        raise UpstreamError(error.get("C") or "XX000", error.get("M") or "auth_query failed")
    if row is None or len(row) < 2:
        return None
    return row[1]
