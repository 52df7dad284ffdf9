"""Listening sockets: the Postgres-protocol StreamServers and the HTTP (WSGI) server.

Every socket is bound before anything starts, so a port in use ends start-up with one clear
line. Each Postgres-protocol listener starts a greenlet per login (:class:`LoginServer`):
many slow or half-open logins can delay new logins, never the clients already logged in
(they have no greenlet). Logins are bounded by the open-file limit, each cut by
client_login_timeout (tests/integration/test_hostile.py opens 10,000 half-open sockets).

TCP listeners set TCP_DEFER_ACCEPT (``--tcp-defer-accept``, PgBouncer's ``tcp_defer_accept``,
on by default in both): the kernel completes a connection for accept() only once the client
has sent its first bytes (Postgres clients speak first: an SSLRequest or the startup
packet), so a login's first read finds them instead of failing and waiting for them, and a
connection that never sends anything costs the pooler no descriptor, no greenlet and no
wake-up. After the period the kernel hands it over anyway (then client_login_timeout runs).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from pooler.loginio import accept_logins

log = logging.getLogger("pooler.listener")


class ListenError(Exception):
    """A listener could not be bound; the message is the one line to print."""


@dataclass
class Listener:
    name: str  # "transaction", "session", "http"
    host: str
    port: int
    server: Any
    option: str  # the command-line option that moves it

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.name} listener on {host}:{self.port}"


def _bind(listener: Listener) -> None:
    try:
        listener.server.init_socket()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "the address is already in use (another Greenvisor, PgBouncer or Postgres?)"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges)"
        else:
            why = exc.strerror or str(exc)
        raise ListenError(
            f"greenvisor: cannot open the {listener.describe()}: {why}; "
            f"free the port or choose another with {listener.option}"
        ) from None


def _address(host: str, port: int, reuse_port: bool, option: str, name: str) -> Any:
    """``(host, port)``, or with ``reuse_port`` a socket bound with SO_REUSEPORT, so that
    several worker processes share the port (the kernel spreads new connections)."""
    if not reuse_port:
        return (host, port)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)  # gevent's accept loop stops at EAGAIN (never blocks the hub)
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"greenvisor: cannot open the {name} listener on {host}:{port}: "
            f"{exc.strerror or exc}; free the port or choose another with {option}"
        ) from None
    return sock


class LoginServer(StreamServer):
    """The Postgres-protocol listener: a gevent StreamServer whose accept loop is
    :func:`pooler.loginio.accept_logins` (compiled with the login). One plain greenlet per
    login, switched to from the accept loop and kept in :attr:`logins` while it runs,
    instead of gevent's greenlet pool (a semaphore, links and a dozen interpreted calls per
    connection). gevent's own loop still handles accept errors (it backs off while the
    process is out of file descriptors), and :meth:`stop` does what it did with a pool:
    logins in progress get ``timeout`` seconds, then are cut."""

    def __init__(self, address: Any, handle: Callable[[Any, Any], object], backlog: Any) -> None:
        super().__init__(address, handle, spawn="default", backlog=backlog)
        self.logins: set[Any] = set()

    def _do_read(self) -> None:
        if not accept_logins(self.socket, self._handle, self.logins):
            super()._do_read()  # an accept error: gevent logs it and backs off

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        running = list(self.logins)
        if running:
            _wait_until_dead(running, self.stop_timeout if timeout is None else timeout)
            for login in running:
                gevent.kill(login)  # a plain greenlet (accept_logins): GreenletExit from the loop
            _wait_until_dead(running, 1.0)


def _wait_until_dead(greenlets: list[Any], seconds: float) -> None:
    """Wait up to ``seconds`` for ``greenlets`` to end: gevent.joinall for plain greenlets,
    which have no links to wait on (a poll every 10 ms; stop() only)."""
    deadline = time.monotonic() + seconds
    while any(not g.dead for g in greenlets) and time.monotonic() < deadline:
        gevent.sleep(0.01)


#: PgBouncer's TCP_DEFER_ACCEPT when its tcp_defer_accept is on ("hardcoded to 45 seconds").
DEFER_ACCEPT_SECONDS = 45


def defer_seconds(tcp_defer_accept: int) -> int:
    """pgbouncer.ini's tcp_defer_accept (a boolean: 0 off) as TCP_DEFER_ACCEPT seconds."""
    return DEFER_ACCEPT_SECONDS if tcp_defer_accept else 0


def defer_accept(sock: Any, seconds: int) -> bool:
    """Set TCP_DEFER_ACCEPT on a TCP listening socket (0 turns it off). False where there is
    nothing to set: not TCP (a Unix socket), a platform without the option (not Linux), or
    a kernel that refuses it (logged: logins work as before, accepted at the handshake)."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, seconds)
    except OSError as exc:
        log.warning(
            "greenvisor: cannot set TCP_DEFER_ACCEPT=%d on a listener (%s); connections are "
            "accepted at the handshake instead (set --tcp-defer-accept 0 to silence this)",
            seconds,
            exc.strerror or exc,
        )
        return False
    return True


def protocol_listener(
    name: str,
    host: str,
    port: int,
    option: str,
    handle: Callable[[Any, Any], object],
    reuse_port: bool = False,
    defer_seconds: int = DEFER_ACCEPT_SECONDS,
) -> Listener:
    address = _address(host, port, reuse_port, option, name)
    # One greenlet per login: gevent records each new greenlet's spawning greenlet, tree
    # locals and stack by default (debugging aids nothing here reads), which showed in
    # login profiles. Process-wide, so set where the listeners are made.
    gevent.config.track_greenlet_tree = False
    server = LoginServer(address, handle, backlog=None if reuse_port else 4096)
    server.reuse_addr = 1
    listener = Listener(name, host, port, server, option)
    _bind(listener)
    defer_accept(server.socket, defer_seconds)
    return listener


def http_listener(host: str, port: int, application: Any, reuse_port: bool = False) -> Listener:
    address = _address(host, port, reuse_port, "--http-port", "http")
    server = WSGIServer(address, application, log=None, error_log=log)
    listener = Listener("http", host, port, server, "--http-port")
    _bind(listener)
    return listener


def start_all(listeners: list[Listener]) -> None:
    for listener in listeners:
        listener.server.start()
        log.info("greenvisor: %s", listener.describe())


def stop_all(listeners: list[Listener], timeout: float = 1.0) -> None:
    for listener in listeners:
        listener.server.stop(timeout=timeout)
