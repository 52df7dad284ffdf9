"""A new client connection: startup negotiation, tenant lookup, authentication, welcome.

Runs in a greenlet of its own, started by the listener (:class:`pooler.listener.LoginServer`)
and cut at client_login_timeout. Compiled with the relay (``pooler/hotpath.py``): a
connection storm spends its CPU here. On success the socket is detached from gevent and
handed to a :class:`pooler.client.Client`, and the greenlet ends: a logged-in client costs
no greenlet.

Unknown tenant, unknown user and wrong password look the same to the client: the same
exchange (a mock SCRAM/MD5 challenge for users that do not exist) and the same message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket as pysocket
import time
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent.event import AsyncResult

from pooler import authquery, bans, loginio, netio, tls
from pooler.auth.md5 import md5_secret, verify_md5_response
from pooler.auth.scram import ChannelBindingError, ScramSecret, ScramServer
from pooler.client import Client
from pooler.config import TenantConfig, UserConfig
from pooler.loginio import LoginSocket
from pooler.pool import Pool
from pooler.protocol import builders, parsers
from pooler.protocol.errors import AuthError, ProtocolError
from pooler.protocol.params import REPORTED, client_settings, settings_id
from pooler.protocol.startup import (
    MAX_STARTUP_PACKET,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_startup_packet,
    split_tenant,
    startup_packet_length,
)

if TYPE_CHECKING:
    from pooler.node import Node

log = logging.getLogger("pooler.login")

# Read per login, bound once (a module attribute lookup each in the compiled build).
_IPPROTO_TCP: Final = pysocket.IPPROTO_TCP
_TCP_NODELAY: Final = pysocket.TCP_NODELAY
_get_hub: Final = gevent.get_hub
_getcurrent: Final = gevent.getcurrent

MAX_AUTH_MESSAGE = 8192


class LoginTimeout(BaseException):
    """Thrown into a login's greenlet at client_login_timeout (by its class: an instance
    is made only when the timer fires). A BaseException, like gevent.Timeout, so that no
    ``except Exception`` on the way swallows it."""


class LoginFailed(Exception):
    """The client is refused; ``sqlstate`` and ``message`` go into its FATAL."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


def auth_failed(user: str) -> LoginFailed:
    return LoginFailed("28P01", f'password authentication failed for user "{user}"')


def handle_client(gsock: Any, addr: Any, node: Node, mode: str) -> bool:
    """Listener entry point: log the client in, then hand it to the relay. True when the
    relay took ``gsock`` itself (pooler.loginio.accept_logins then leaves it open); else
    it was closed, or its descriptor taken, here."""
    try:
        gsock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
    except OSError:
        pass
    # A plain libev timer throws LoginTimeout into this greenlet at client_login_timeout:
    # what gevent.Timeout(seconds).start() does, minus its Python-level bookkeeping.
    timer = _get_hub().loop.timer(node.settings.client_login_timeout)
    timer.start(_getcurrent().throw, LoginTimeout)
    # Buffered reads (pooler.loginio) over the plain socket on the single-node path; a TLS
    # login continues on a gevent socket from the handshake; relays to other nodes and
    # PgBouncer's console detach the socket their own way, reading from a gevent socket.
    plain = node.cluster is None and node.pgbouncer is None
    sock: Any = LoginSocket(gsock) if plain else loginio.to_gevent(gsock)
    # Closed when the login ends, as gevent's StreamServer closed the socket it handed out:
    # a no-op once the descriptor went to the relay (or a console moved it away), else the
    # end of a refused, cancelled or relayed connection. Not `sock`: a TLS login's wrapper
    # may carry a socket that lives on (pooler.pgbouncer.console._move).
    own = sock
    leftover = b""  # bytes the client pipelined past its last login message
    held: list[bytes] = []  # AuthenticationSASLFinal: it leaves with what follows it
    kept = False  # the relay took the plain socket itself (LoginSocket.hand_over)
    try:
        startup, sock = _read_startup(sock, node)
        if startup is None:  # TLS is up: the startup packet comes inside it
            startup, sock = _read_startup(sock, node)
        assert startup is not None
        welcome = _login(sock, startup, addr, node, mode, held)
        if welcome is None:
            return False
        pool, pid, key, message, settings, sid = welcome
        try:
            netio.sendall(sock, b"".join(held) + message if held else message)
            if type(sock) is LoginSocket:  # plain: no TLS helper to ask
                leftover = sock.take()
                pipelined = bool(leftover)
                kept = type(sock.sock) is loginio.PlainSocket  # else a gevent socket (tests)
                sock = sock.hand_over() if kept else netio.detach(sock)
            else:
                pipelined = tls.is_tls(sock) and sock.pending()
                sock = tls.detach(sock)
        except BaseException:
            pool.client_left()
            raise
    except LoginTimeout:
        _refuse(
            sock,
            held,
            "08P01",
            "timed out waiting for the login to complete "
            "(client_login_timeout): check the client's network and credentials",
        )
        return False
    except LoginFailed as failed:
        log.info("login refused for %s: %s %s", _peer(addr), failed.sqlstate, failed.message)
        _refuse(sock, held, failed.sqlstate, failed.message)
        return False
    except ProtocolError as violation:
        log.info("protocol violation from %s: %s", _peer(addr), violation.message)
        _refuse(sock, held, violation.sqlstate, violation.message)
        return False
    except (netio.ConnectionClosed, OSError):
        return False
    finally:
        timer.stop()
        timer.close()
        own.close()
    client = serve(sock, node, pool, addr, pid, key, settings, sid)
    if leftover:
        client.carry = leftover  # Conn.recv hands it over even if nothing more comes
    if pipelined:  # already decrypted, or read ahead: no watcher would see it
        _get_hub().loop.run_callback(client._on_client_readable)
    return kept


def serve(
    sock: Any,
    node: Node,
    pool: Pool,
    addr: Any,
    pid: int,
    key: bytes,
    settings: dict[str, str],
    sid: int = -1,
) -> Client:
    """Make a logged-in socket one of the node's relayed clients (``sid``: the
    params.settings_id of ``settings`` when known, else -1)."""
    client: Client
    if pool.key.mode == "statement":
        from pooler.pgbouncer.statement import StatementClient

        client = StatementClient(sock, node, pool, addr, pid, key, settings, sid)
    else:
        client = Client(sock, node, pool, addr, pid, key, settings, sid)
    node.client_opened(client)
    client.start()
    return client


def _user_of(tenant: TenantConfig, alias: str, mode: str) -> UserConfig | None:
    """``tenant.find_user(alias, mode)``, compiled. A login's greenlet runs no Python frame
    unless it calls interpreted code, and its first frame costs it a 16 KB frame stack
    (CPython's data stack: an mmap, a page fault and a munmap per login); the interpreted
    config methods were the last such calls of a plain login."""
    index = tenant.user_index
    return index.get((alias, mode)) or index.get((alias, ""))


def _peer(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _refuse(gsock: Any, held: list[bytes], sqlstate: str, message: str) -> None:
    try:
        netio.sendall(gsock, b"".join(held) + builders.error_response("FATAL", sqlstate, message))
    except OSError:
        pass


def _read_startup(gsock: Any, node: Node) -> tuple[StartupMessage | CancelRequest | None, Any]:
    """Read packets until a StartupMessage or CancelRequest; return it and the socket.

    SSLRequest gets 'S' and a TLS handshake when a certificate is configured, then
    ``(None, TLS socket)`` returns: call again on that socket. Otherwise, and for
    GSSENCRequest, 'N'. A direct TLS ClientHello (Postgres 17 ``sslnegotiation=direct``)
    starts the handshake at once. Bytes sent after a request before our answer end the
    connection (CVE-2021-3935)."""
    server_tls = node.settings.tls
    plain = type(gsock) is LoginSocket  # never a TLS stream
    encrypted = not plain and tls.is_tls(gsock)
    for _ in range(3):
        # Usually one read holds the whole packet; else (a TLS ClientHello, a bad length, a
        # packet in pieces) read the header first.
        whole = gsock.message(0, 8, MAX_STARTUP_PACKET) if plain else None
        if whole is None:
            header = netio.recv_exact(gsock, 4)
            if header[0] == tls.HANDSHAKE_RECORD and not encrypted:
                if server_tls is None:
                    raise ProtocolError(
                        "direct TLS connection refused: this Greenvisor has no TLS certificate "
                        "(--tls-cert/--tls-key); connect without sslnegotiation=direct"
                    )
                if type(gsock) is LoginSocket:  # the rest of the ClientHello may be held
                    header += gsock.take()
                    gsock = gsock.to_gevent()
                return None, tls.accept(gsock, server_tls, header)
            length = startup_packet_length(header)
            whole = header + netio.recv_exact(gsock, length - 4)
        packet = parse_startup_packet(whole)
        if isinstance(packet, (SSLRequest, GSSENCRequest)):
            if encrypted:
                raise ProtocolError("encryption requested again on an encrypted connection")
            if server_tls is not None and isinstance(packet, SSLRequest):
                tls.check_nothing_follows(gsock)  # bytes in the kernel too: stricter than
                netio.sendall(gsock, b"S")  # Postgres, which checks only what it has read
                green = gsock.to_gevent() if type(gsock) is LoginSocket else gsock
                return None, tls.accept(green, server_tls)
            # 'N': the connection stays plaintext. As Postgres does, refuse the bytes read
            # ahead; no peek at the kernel (a system call and an exception per login) could
            # find anything a man in the middle gains by.
            if not plain or gsock.buf:
                tls.check_nothing_follows(gsock)
            netio.sendall(gsock, b"N")
            continue
        return packet, gsock
    raise ProtocolError("too many encryption requests before the startup message")


def _login(
    gsock: Any,
    startup: StartupMessage | CancelRequest,
    addr: Any,
    node: Node,
    mode: str,
    held: list[bytes] | None = None,
) -> tuple[Pool, int, bytes, bytes, dict[str, str], int] | None:
    """Authenticate; return what to welcome the client with, or None when it was handled
    (a cancel, or piped to another node). Bytes put in ``held`` (SASLFinal) are the
    caller's to send ahead of the welcome or of the FATAL: one send instead of two."""
    if isinstance(startup, CancelRequest):
        node.cancel(startup.pid, startup.key)
        return None
    if startup.minor > 0 or startup.protocol_options:
        netio.sendall(
            gsock, builders.negotiate_protocol_version(0, sorted(startup.protocol_options))
        )
    snapshot = node.registry.snapshot
    user_name, tenant_id = split_tenant(startup.user)
    plain = type(gsock) is LoginSocket  # no TLS: no server name, no channel binding
    sni_tenant = None if plain else snapshot.tenant_by_sni(tls.server_name(gsock))
    if sni_tenant is not None:  # the TLS server name names the tenant
        tenant_id = sni_tenant.external_id
        user_name = tls.sni_user(startup.user, tenant_id)
    if node.pgbouncer is not None and not node.pgbouncer.is_db_tenant(tenant_id):
        return node.pgbouncer.login(gsock, startup, addr)  # pgbouncer.ini: route by database
    if tenant_id is None:
        raise LoginFailed(
            "08P01",
            f'tenant id missing from user name "{startup.user}": connect as <user>.<tenant>, '
            f'e.g. "{user_name}.my_tenant"',
        )
    # Not snapshot.tenant() nor tenant.find_user(): see _user_of.
    tenant = snapshot.tenants.get(tenant_id)
    if tenant is not None and tenant.enforce_ssl and (plain or not tls.is_tls(gsock)):
        raise LoginFailed(
            "28000",
            f'tenant "{tenant_id}" accepts only encrypted connections: connect with '
            "sslmode=require (or verify-full)",
        )
    user = _user_of(tenant, user_name, mode) if tenant is not None else None
    keys = _checked_login(gsock, addr, node, tenant, tenant_id, user_name, startup.user, user, held)
    if held and node.cluster is not None:  # the relay below may hand the socket over
        netio.sendall(gsock, b"".join(held))
        held.clear()
    assert tenant is not None
    if user is None:
        user = authquery.passthrough_user(user_name, mode)
    database = startup.database if "database" in startup.params else tenant.db_database
    params = tuple(startup.params.items())
    requested = _REQUESTED.get(params)
    if requested is None:
        requested = client_settings(startup.settings())  # may refuse the packet
        if len(_REQUESTED) >= _GREETINGS_LIMIT:
            _REQUESTED.clear()
        _REQUESTED[params] = requested
    if node.cluster is not None:
        from pooler.cluster.internal import relay_client

        if relay_client(gsock, addr, node, tenant, user, database, mode, requested):
            return None  # another node owns the pool: this client is piped (or parked)
    pool = node.pool_for(tenant, user, database, mode)
    if keys is not None:
        authquery.install(pool, *keys)
    admit(pool, node)
    pid, key = node.new_backend_key()
    settings, greeting, sid = greeting_for(params, requested, pool.server_params)
    welcome = greeting + builders.backend_key_data(pid, key) + _READY_IDLE
    return pool, pid, key, welcome, settings, sid


def admit(pool: Pool, node: Node) -> None:
    """Count a new client into ``pool`` (53300 when it is full) and make sure the pool has
    a logged-in server, so its ParameterStatus is known and a wrong upstream setting is
    reported to the first client at once. On failure the client is counted out again."""
    if not pool.client_joined():
        raise LoginFailed(
            "53300",
            f"too many client connections for {pool.key} (max_clients "
            f"{pool.limits.max_clients}): close idle connections or raise max_clients",
        )
    try:
        if pool.server_params is None:
            warm_up_for(pool, node)
    except BaseException:
        pool.client_left()
        raise


def warm_up_for(pool: Pool, node: Node) -> None:
    """_warm_up, leaving time to tell the client why before client_login_timeout cuts the
    login off."""
    _warm_up(pool, min(pool.limits.checkout_timeout, node.settings.client_login_timeout * 0.8))


def expected_settings(
    requested: dict[str, str], server_params: dict[str, str] | None
) -> dict[str, str]:
    """The session parameters a client expects: its own (``requested``, from
    params.client_settings), else what the pool's servers report."""
    settings = dict(requested)
    for name in REPORTED.values():
        if name not in settings and server_params and name in server_params:
            settings[name] = server_params[name]
    return settings


#: AuthenticationOk + ParameterStatus messages by the values they report: clients of a pool
#: mostly report the same ones, and building a dozen messages per login showed in profiles.
_GREETINGS: dict[tuple[tuple[str, str], ...], bytes] = {}
_GREETINGS_LIMIT = 1024
_READY_IDLE = builders.ready_for_query(b"I")


#: A client's settings (params.client_settings) by its startup parameters, and the settings
#: and greeting (welcome() without the key) by those and the pool's server parameters: a
#: pool's clients mostly send the same startup packet, and working these out again showed
#: in login profiles. Values are never changed in place (the client gets a copy).
_REQUESTED: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
_WELCOMES: dict[tuple[Any, int], tuple[dict[str, str], bytes, int, dict[str, str] | None]] = {}


def greeting_for(
    params: tuple[tuple[str, str], ...],
    requested: dict[str, str],
    server_params: dict[str, str] | None,
) -> tuple[dict[str, str], bytes, int]:
    """expected_settings() (a copy), welcome() up to the BackendKeyData, and the settings'
    params.settings_id, for a client whose startup parameters are ``params`` (``requested``
    is what they ask for) and whose pool's servers reported ``server_params``.

    ``server_params`` is a pool's own copy, never changed in place (Pool.server_params), so
    the cache knows it by identity: hashing and comparing its dozen items was ~5,000
    instructions per login. The entry holds the dict, so no other dict can have its id
    while the entry exists."""
    cache_key = (params, id(server_params))
    found = _WELCOMES.get(cache_key)
    if found is None or found[3] is not server_params:
        settings = expected_settings(requested, server_params)
        greeting = _greeting(server_params, settings)
        found = (settings, greeting, settings_id(settings), server_params)
        if len(_WELCOMES) >= _GREETINGS_LIMIT:
            _WELCOMES.clear()
        _WELCOMES[cache_key] = found
    return dict(found[0]), found[1], found[2]


def welcome(
    server_params: dict[str, str] | None, settings: dict[str, str], pid: int, key: bytes
) -> bytes:
    """AuthenticationOk, the ParameterStatus a client of these servers expects, its
    BackendKeyData and ReadyForQuery: the bytes that end a login."""
    return _greeting(server_params, settings) + builders.backend_key_data(pid, key) + _READY_IDLE


def _greeting(server_params: dict[str, str] | None, settings: dict[str, str]) -> bytes:
    """AuthenticationOk and the ParameterStatus messages of welcome()."""
    reported = dict(server_params or {})
    for name in REPORTED.values():
        if name in settings:
            reported[name] = settings[name]
    items = tuple(reported.items())
    greeting = _GREETINGS.get(items)
    if greeting is None:
        parts = [builders.authentication_ok()]
        for name, value in items:
            parts.append(builders.parameter_status(name, value))
        greeting = b"".join(parts)
        if len(_GREETINGS) >= _GREETINGS_LIMIT:
            _GREETINGS.clear()
        _GREETINGS[items] = greeting
    return greeting


# -- authentication --------------------------------------------------------------------------


def _checked_login(
    gsock: Any,
    addr: Any,
    node: Node,
    tenant: TenantConfig | None,
    tenant_id: str,
    user_name: str,
    login_name: str,
    user: UserConfig | None,
    held: list[bytes] | None = None,
) -> tuple[tuple[bytes, bytes] | None, str | None] | None:
    """Allow list, bans, then authentication (pooler.bans); a failure is counted and
    answered no sooner than auth_failure_delay. Returns auth_query pass-through keys."""
    ip = bans.client_ip(addr)
    if tenant is not None and not bans.address_allowed(tenant.allow_list, ip):
        raise LoginFailed("28000", bans.not_allowed_message(ip, user_name, tenant_id))
    started = time.monotonic()
    ban_key = (tenant_id, ip)
    banned = node.bans.banned_for(ban_key)
    try:
        if banned:
            raise LoginFailed("28000", bans.ban_message(tenant_id, ip, banned))
        if user is None and tenant is not None and authquery.enabled(tenant):
            return _authenticate_auth_query(gsock, node, tenant, user_name, login_name, held)
        _authenticate(gsock, node, login_name, user, held)
        return None
    except LoginFailed as exc:
        if exc.sqlstate == "28P01" and node.bans.failed(ban_key):
            log.warning("banning %s for tenant %s: too many failed logins", ip, tenant_id)
        bans.pad(started, node.settings.auth_failure_delay)
        raise


def _authenticate_auth_query(
    gsock: Any,
    node: Node,
    tenant: TenantConfig,
    user_name: str,
    login_name: str,
    held: list[bytes] | None = None,
) -> tuple[tuple[bytes, bytes] | None, str | None]:
    """Check the client against the verifier the tenant's auth_query returns."""
    try:
        found = node.auth_query.lookup(tenant, user_name)
    except authquery.LookupFailed as exc:
        log.warning("auth_query of tenant %s failed: %s", tenant.external_id, exc)
        raise LoginFailed(
            "08006",
            "could not check the password: the tenant's auth_query failed; "
            "try again later or ask the tenant's administrator (see the pooler log)",
        ) from None
    user = authquery.passthrough_user(user_name, "") if found is not None else None
    if node.settings.client_auth == "md5":
        md5 = found.md5 if found is not None else None
        _authenticate_md5(gsock, login_name, user if md5 else None, md5)
        return None, md5
    secret = found.scram if found is not None else None
    server = _authenticate_scram(gsock, node, login_name, user if secret else None, secret, held)
    assert secret is not None and server.client_key is not None
    return (server.client_key, secret.server_key), None


def _authenticate(
    gsock: Any, node: Node, login_name: str, user: UserConfig | None, held: list[bytes] | None
) -> None:
    if node.settings.client_auth == "md5":
        _authenticate_md5(gsock, login_name, user)
    else:
        _authenticate_scram(gsock, node, login_name, user, None, held)


def _read_password_message(gsock: Any) -> bytes:
    msg_type, body = netio.read_message(gsock, MAX_AUTH_MESSAGE)
    if msg_type != ord("p"):
        raise ProtocolError(
            f"expected a password message during authentication, got {chr(msg_type)!r}"
        )
    return body


def _authenticate_md5(
    gsock: Any, login_name: str, user: UserConfig | None, secret: str | None = None
) -> None:
    salt = os.urandom(4)
    netio.sendall(gsock, builders.authentication_md5_password(salt))
    response = parsers.parse_password_message(_read_password_message(gsock))
    if user is None:
        raise auth_failed(login_name)
    if secret is None:
        secret = md5_secret(login_name, user.db_password)
    if not verify_md5_response(secret, salt, response):
        raise auth_failed(login_name)


def _authenticate_scram(
    gsock: Any,
    node: Node,
    login_name: str,
    user: UserConfig | None,
    secret: ScramSecret | None = None,
    held: list[bytes] | None = None,
) -> ScramServer:
    """The SCRAM exchange; with ``held`` the SASLFinal is appended there (the caller sends
    it with the welcome) instead of sent on its own."""
    if secret is None:
        secret = node.scram_secret(user) if user is not None else _mock_secret(node, login_name)
    # SCRAM-SHA-256-PLUS only over TLS
    binding = None if type(gsock) is LoginSocket else tls.channel_binding(gsock)
    server = ScramServer(secret, channel_binding=binding)
    mechanisms = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"] if binding else _SCRAM_ONLY
    netio.sendall(gsock, builders.authentication_sasl(mechanisms) if binding else _SASL_SCRAM)
    try:
        mechanism, data = parsers.parse_sasl_initial_response(_read_password_message(gsock))
        if mechanism not in mechanisms:
            raise LoginFailed(
                "28000",
                f"unsupported SASL mechanism {mechanism!r}: use {' or '.join(mechanisms)}",
            )
        first = server.client_first(data, plus=mechanism == "SCRAM-SHA-256-PLUS")
        netio.sendall(gsock, builders.authentication_sasl_continue(first))
        final = parsers.parse_sasl_response(_read_password_message(gsock))
        server_final = server.client_final(final)
    except ChannelBindingError as exc:  # the connection's fault, not the password's
        raise LoginFailed(exc.sqlstate, exc.message) from None
    except AuthError:
        raise auth_failed(login_name) from None
    if user is None:
        raise auth_failed(login_name)
    final = builders.authentication_sasl_final(server_final)
    if held is None:
        netio.sendall(gsock, final)
    else:
        held.append(final)
    return server


_SCRAM_ONLY = ["SCRAM-SHA-256"]
_SASL_SCRAM = builders.authentication_sasl(_SCRAM_ONLY)  # the offer without TLS, made once


def _mock_secret(node: Node, login_name: str) -> ScramSecret:
    """A stable, wrong secret for a user that does not exist (the salt must not vary, or it
    would tell an attacker which names exist)."""
    digest = hmac.new(node.mock_key, login_name.encode(), hashlib.sha256).digest()
    return ScramSecret(4096, digest[:16], os.urandom(32), os.urandom(32))


# -- first login of a pool -------------------------------------------------------------------


class _LoginWaiter:
    """Waits in a greenlet for a pool's first server (pool.Waiter)."""

    def __init__(self) -> None:
        self.result: AsyncResult = AsyncResult()
        self.wait_started = time.monotonic()
        self.gone = False

    def server_ready(self, server: Any) -> bool:
        if self.gone:
            return False
        self.result.set(server)
        return True

    def checkout_failed(self, sqlstate: str, message: str) -> None:
        self.result.set_exception(LoginFailed(sqlstate, message))


def _warm_up(pool: Pool, wait: float) -> None:
    """Make sure one server of the pool has logged in, so its ParameterStatus is known and
    a wrong upstream setting is reported to the first client at once."""
    waiter = _LoginWaiter()
    server = pool.checkout(waiter)
    try:
        if server is None:
            waiter.result.wait(timeout=wait)
            if not waiter.result.ready():
                raise LoginFailed(*pool.timeout_error(wait))
            server = waiter.result.get()
    finally:
        if server is None:
            waiter.gone = True
            pool.cancel_wait(waiter)
            if waiter.result.ready() and waiter.result.successful():
                pool.checkin(waiter.result.value)
    pool.checkin(server)
