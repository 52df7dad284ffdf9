"""The admin console session: ``psql -p PORT -U admin pgbouncer`` over a logged-in socket.

Theory of operation
-------------------
A login to database ``pgbouncer`` has been authenticated against the auth_file by
:meth:`pooler.pgbouncer.dropin.DropIn.login`. :func:`open_console` decides the role
(``admin_users`` -> admin, ``stats_users`` -> stats, anyone else refused with 28000, as
PgBouncer refuses them), sends PgBouncer's welcome (its ParameterStatus set, a
BackendKeyData, ReadyForQuery) and moves the socket to a greenlet of its own, so the
listener's login greenlet (and its client_login_timeout) ends as for any other client.

The session greenlet reads one message at a time: each simple Query goes to the shared
:class:`pooler.admin.AdminConsole` (which never raises) and its answer is sent with a
ReadyForQuery; Terminate or EOF ends the session; anything else (the extended query
protocol, COPY...) gets an error and the session ends, as in PgBouncer. Commands that wait
(PAUSE, WAIT_CLOSE, SHUTDOWN WAIT_FOR_CLIENTS) block only this greenlet. Roles are read at
each query, so a RELOAD that removes a user from admin_users takes effect at once.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket

from pooler import netio, tls
from pooler.admin import (
    ADMIN_PARAMETERS,
    MAX_QUERY,
    ROLE_ADMIN,
    ROLE_STATS,
    SYNTAX_SQLSTATE,
    AdminConsole,
    error,
)
from pooler.protocol import builders
from pooler.protocol.errors import ProtocolError

if TYPE_CHECKING:
    from pooler.pgbouncer.dropin import DropIn

log = logging.getLogger("pooler.pgbouncer.console")

VERSION = "PgBouncer 1.18.0 (Greenvisor)"


def role_of(dropin: DropIn, user: str) -> str | None:
    settings = dropin.config.settings
    if user in settings.admin_users:
        return ROLE_ADMIN
    if user in settings.stats_users:
        return ROLE_STATS
    return None


def open_console(dropin: DropIn, gsock: Any, user: str) -> None:
    """Welcome an authenticated console user and serve it in a greenlet of its own."""
    from pooler.login import LoginFailed

    if role_of(dropin, user) is None:
        raise LoginFailed(
            "28000",
            f'not allowed: user "{user}" is not in admin_users or stats_users of pgbouncer.ini',
        )
    parts = [builders.authentication_ok()]
    parts += [builders.parameter_status(name, value) for name, value in ADMIN_PARAMETERS]
    parts.append(builders.backend_key_data(0, os.urandom(4)))
    parts.append(builders.ready_for_query(b"I"))
    gsock.sendall(b"".join(parts))
    sock = _move(gsock)  # the listener's greenlet ends (and closes its socket); this lives on
    dropin.consoles += 1
    gevent.spawn(_serve, dropin, sock, user)


def _move(gsock: Any) -> Any:
    """The same connection on a gevent socket of its own (TLS state kept)."""
    inner = gsock.gsock if tls.is_tls(gsock) else gsock
    raw = netio.detach(inner)
    raw.setblocking(True)
    moved = gsocket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    if tls.is_tls(gsock):
        gsock.gsock = moved
        return gsock
    return moved


def _console(dropin: DropIn) -> AdminConsole:
    console = dropin.console
    if console is None:
        from pooler.pgbouncer.nodeview import DropInView

        console = AdminConsole(DropInView(dropin), version=VERSION)
        dropin.console = console
    return console


def _serve(dropin: DropIn, sock: Any, user: str) -> None:
    ready = builders.ready_for_query(b"I")
    try:
        while True:
            msg_type, body = netio.read_message(sock, MAX_QUERY + 1)
            if msg_type == ord("X"):
                return
            if msg_type != ord("Q"):
                sock.sendall(
                    builders.error_response(
                        "FATAL",
                        SYNTAX_SQLSTATE,
                        f"unsupported message type {chr(msg_type)!r} on the admin console: "
                        "use simple queries (psql), not the extended query protocol",
                    )
                )
                return
            sql = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            role = role_of(dropin, user) or ""
            answer = _console(dropin).execute(sql, role)
            sock.sendall(answer + ready)
    except ProtocolError as exc:
        _last_words(sock, error(SYNTAX_SQLSTATE, exc.message))
    except (netio.ConnectionClosed, OSError):
        pass
    finally:
        dropin.consoles -= 1
        sock.close()


def _last_words(sock: Any, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass
