"""One upstream Postgres connection: connect, log in, park idle, reset, close.

Logging in runs in a greenlet on a gevent socket (:func:`open_server`); the logged-in
socket becomes a :class:`ServerConn`, driven by callbacks like the client side. While idle
in its pool a server is watched for EOF or stray bytes, and closed on either, so a dead
connection is never handed out.
"""

from __future__ import annotations

import logging
import socket as pysocket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent import socket as gsocket

from pooler import netio, tls
from pooler.auth.md5 import md5_response
from pooler.auth.scram import ScramClient
from pooler.protocol import builders, parsers
from pooler.protocol.errors import AuthError, ProtocolError
from pooler.protocol.params import Replies
from pooler.protocol.prepared import ServerStatements

_monotonic: Final = time.monotonic  # looked up once (see client.py)

if TYPE_CHECKING:
    from pooler.client import Client
    from pooler.pool import Pool

log = logging.getLogger("pooler.server")

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_NO_PASSTHROUGH = (
    "the tenant database asks for {} but this auth_query user's password is unknown to "
    "Greenvisor (pass-through): use scram-sha-256 or md5 for it in pg_hba.conf"
)

#: Login replies larger than this are not a Postgres server talking.
MAX_LOGIN_MESSAGE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Target:
    """Where and as whom to log in upstream."""

    host: str
    port: int
    database: str
    user: str
    password: str
    ip_version: str = "auto"
    connect_timeout: float = 10.0
    application_name: str = "greenvisor"
    ssl: bool = False  # SSLRequest first, then log in over TLS
    verify: str = "none"  # none | peer
    ca: str | None = None  # PEM CA for verify peer (None: the system CAs)
    #: auth_query pass-through (pooler.authquery): log in with the client's SCRAM keys
    #: (ClientKey, ServerKey) or the stored "md5..." secret instead of a password.
    scram_keys: tuple[bytes, bytes] | None = field(default=None, repr=False)
    md5_secret: str | None = field(default=None, repr=False)
    #: Extra startup parameters (the auth_query connection pins search_path with them).
    startup_extra: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # never show the password
        return f"Target({self.user}@{self.host}:{self.port}/{self.database})"


class UpstreamError(Exception):
    """Logging in upstream failed; ``sqlstate``/``message`` are fit for the client."""

    def __init__(
        self, sqlstate: str, message: str, severity: str = "FATAL", retry: bool = True
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity
        self.retry = retry  # False: a setting is wrong (e.g. TLS); waiting will not help


class ServerConn(netio.Conn):
    """A logged-in server connection owned by a pool."""

    __slots__ = (
        "pool",
        "target",
        "generation",
        "created_at",
        "idle_since",
        "pid",
        "key",
        "params",
        "client",
        "resetting",
        "statements",
        "extra",
        "fits",
        "dirty",
        "cancels",
        "held_back",
        "read_cb",
    )

    def __init__(
        self, sock: Any, pool: Pool, target: Target, pid: int, key: bytes, params: dict[str, str]
    ) -> None:
        super().__init__(sock)
        self.pool = pool
        self.target = target
        self.generation = pool.generation
        self.created_at = _monotonic()
        self.idle_since = self.created_at
        self.pid = pid
        self.key = key
        self.params = params
        self.client: Client | None = None
        self.resetting: Replies | None = None
        self.extra: set[str] = set()  # non-reported settings we SET for a client
        # params.settings_id() of client settings these params are known to satisfy;
        # emptied whenever params or extra change (see Client._link).
        self.fits: set[int] = set()
        self.dirty = False  # a client left session state: reset before the next one
        self.cancels = 0  # CancelRequests on their way to this server's backend
        self.held_back = False  # released while a cancel was in flight: not pooled yet
        capacity = pool.limits.max_prepared_statements
        self.statements = ServerStatements(capacity) if capacity > 0 else None
        # The one callback its watcher ever runs (see _on_readable), made once and dropped
        # when the socket closes (a bound method holds the connection: a reference cycle).
        self.read_cb: Any = self._on_readable

    def __repr__(self) -> str:
        return f"<ServerConn pid={self.pid} {self.pool.key}>"

    # -- pool protocol --------------------------------------------------------------------

    def park(self, now: float = 0.0) -> None:
        """Idle in the pool: any byte or EOF from the server now means it is unusable
        (``now``: the clock, when the caller just read it)."""
        self.client = None
        self.idle_since = now if now else _monotonic()
        self.start_reading(self.read_cb)

    def close(self, reason: str) -> None:
        if not self.closed:
            log.debug("closing server pid=%s of %s: %s", self.pid, self.pool.key, reason)
            self.close_socket(builders.terminate())

    def close_socket(self, last_words: bytes = b"") -> None:
        super().close_socket(last_words)
        self.read_cb = None

    def resume_reading(self) -> None:
        """Watch for the server's bytes again (after backpressure, or a new client)."""
        self.start_reading(self.read_cb)

    def _on_readable(self) -> None:
        """The server sent something: to the linked client, to the reset in flight, or (idle
        in the pool) a sign that it is unusable. One callback for the connection's life, so
        that handing it from client to client is an attribute store, not a call into gevent
        to swap the watcher's callback (twice per transaction in transaction mode)."""
        client = self.client
        if client is not None:
            client._on_server_readable()
        elif self.resetting is not None:
            self._on_reset_readable()
        else:
            self._on_idle_readable()

    def on_drained(self) -> None:
        client = self.client
        if client is not None:
            client.server_drained()

    def on_write_error(self, exc: OSError) -> None:
        client = self.client
        if client is not None:
            client.server_write_failed(exc)
        else:
            self.close_socket()

    def _on_idle_readable(self) -> None:
        try:
            data = self.recv()
        except OSError:
            data = b""
        if data is None:
            return
        if self.pool.forget_idle(self):
            log.info("idle server pid=%s of %s went away; dropped", self.pid, self.pool.key)
        self.close_socket()

    # -- giving it back ---------------------------------------------------------------------

    def release(self, clean: bool = False, now: float = 0.0) -> None:
        """A client is done with this server: reset it if needed, then back to the pool.
        ``clean``: it was just reset (server_reset_query_always is not run again); ``now``:
        the clock, when the caller just read it (one read per transaction less).

        While a cancel for the last client is still on its way, the server is held back, so
        a late cancel can never interrupt the next client's query."""
        self.client = None
        if self.cancels:
            self.held_back = True
            self.stop_reading()
            return
        if self.dirty:
            self.dirty = False
            self.reset("DISCARD ALL")
        elif not clean and self.pool.limits.reset_always and self.pool.limits.reset_query:
            self.reset(self.pool.limits.reset_query)
        else:
            self.pool.checkin(self, now)

    def cancel_done(self) -> None:
        self.cancels -= 1
        if not self.cancels and self.held_back:
            self.held_back = False
            if self.closed:
                self.pool.discard(self, "closed while a cancel was in flight")
            else:
                self.release()

    # -- reset before reuse ---------------------------------------------------------------

    def reset(self, query: str) -> None:
        """Run ``query`` (e.g. DISCARD ALL or ROLLBACK), swallow its replies, then go back to
        the pool if the server is idle, else close it."""
        self.client = None
        upper = query.upper()
        if upper.startswith("DISCARD") and self.statements is not None:
            self.statements.clear()
        if upper != "ROLLBACK" and query != self.pool.limits.check_query:
            # DISCARD ALL (or an operator's server_reset_query) may have reset the
            # non-reported settings we made: forget them, the next client SETs them again.
            for name in self.extra:
                self.params.pop(name, None)
            self.extra.clear()
            self.fits.clear()
        self.resetting = Replies()
        # The janitor closes it if no answer comes within server_reset_timeout (a server
        # that stopped answering must not hold a pool slot, see Pool.expire_resets).
        self.pool.resetting[self] = _monotonic()
        self.start_reading(self.read_cb)
        try:
            complete = self.write(builders.query(query))
        except OSError:
            complete = False
        if not complete:
            self._reset_over()
            self.pool.discard(self, "could not send the reset query")

    def _reset_over(self) -> None:
        self.resetting = None
        self.pool.resetting.pop(self, None)

    def abandon_reset(self) -> bool:
        """The reset or check query took too long: stop waiting for its answer. False when
        there is nothing to abandon (it finished, or the connection is already closed)."""
        if self.resetting is None or self.closed:
            return False
        self.resetting = None
        self.stop_reading()
        return True

    def _on_reset_readable(self) -> None:
        replies = self.resetting
        if replies is None:
            return
        try:
            data = self.recv()
            if data is None:
                return
            n = len(data)
            if n == 0:
                raise netio.ConnectionClosed("server closed during reset")
            used = replies.feed(data, n)
            if used < n:
                self.carry = data[used:]
        except (OSError, ProtocolError, netio.ConnectionClosed) as exc:
            self._reset_over()
            self.pool.discard(self, f"reset failed: {exc}")
            return
        self.note_statuses(replies.statuses)
        replies.statuses.clear()
        if replies.ready is None:
            return
        self._reset_over()
        self.stop_reading()
        if replies.ready == b"I" and replies.error is None and not self.carry:
            self.release(clean=True)
        else:
            self.pool.discard(self, "the reset query failed or left a transaction open")

    def note_statuses(self, statuses: list[tuple[str, str]]) -> None:
        for name, value in statuses:
            self.params[name] = value
        if statuses:
            self.fits.clear()


# -- connecting and logging in -------------------------------------------------------------


def _family(ip_version: str) -> int:
    if ip_version == "v4":
        return pysocket.AF_INET
    if ip_version == "v6":
        return pysocket.AF_INET6
    return pysocket.AF_UNSPEC


def _connect(target: Target) -> Any:
    infos = gsocket.getaddrinfo(
        target.host, target.port, _family(target.ip_version), pysocket.SOCK_STREAM
    )
    last: Exception | None = None
    for family, type_, proto, _name, addr in infos:
        sock = gsocket.socket(family, type_, proto)
        sock.settimeout(target.connect_timeout)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
        sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_KEEPALIVE, 1)
        return sock
    raise UpstreamError(
        "08006",
        f"could not connect to the tenant database at {target.host}:{target.port}: {last}; "
        "check that it is running and that db_host/db_port are right",
    )


def login(target: Target) -> tuple[Any, int, bytes, dict[str, str]]:
    """Connect and authenticate; return (gevent socket, pid, key, parameter statuses)."""
    sock = _connect(target)
    try:
        with gevent.Timeout(
            target.connect_timeout,
            UpstreamError(
                "08006",
                f"timed out setting up TLS with the tenant database at {target.host}:{target.port}",
            ),
        ):
            if target.ssl:
                sock = _start_tls(sock, target)
        with gevent.Timeout(
            target.connect_timeout,
            UpstreamError(
                "08006",
                f"timed out logging in to the tenant database at {target.host}:{target.port}",
            ),
        ):
            return (sock, *_authenticate(sock, target))
    except (OSError, netio.ConnectionClosed) as exc:
        sock.close()  # e.g. Postgres shutting down mid-login: retryable, no traceback
        where = f"the tenant database at {target.host}:{target.port}"
        if isinstance(exc, TimeoutError):
            raise UpstreamError("08006", f"timed out logging in to {where}") from None
        raise UpstreamError(
            "08006", f"lost the connection to {where} while logging in ({exc}); is it restarting?"
        ) from None
    except BaseException:
        sock.close()
        raise


def _start_tls(sock: Any, target: Target) -> Any:
    try:
        return tls.start_upstream(sock, tls.client_context(target.verify, target.ca), target.host)
    except tls.TLSError as exc:
        raise UpstreamError("08006", f"{exc} ({target.host}:{target.port})", retry=False) from None


def _authenticate(sock: Any, target: Target) -> tuple[int, bytes, dict[str, str]]:
    sock.sendall(
        builders.startup_message(
            {
                "user": target.user,
                "database": target.database,
                "application_name": target.application_name,
                **dict(target.startup_extra),
            }
        )
    )
    scram: ScramClient | None = None
    params: dict[str, str] = {}
    pid, key = 0, b""
    while True:
        msg_type, body = netio.read_message(sock, MAX_LOGIN_MESSAGE)
        if msg_type == ord("R"):
            code, data = parsers.parse_authentication(body)
            scram = _answer_auth(sock, target, code, data, scram)
        elif msg_type == ord("S"):
            name, value = parsers.parse_parameter_status(body)
            params[name] = value
        elif msg_type == ord("K"):
            pid, key = parsers.parse_backend_key_data(body)
        elif msg_type == ord("Z"):
            return pid, key, params
        elif msg_type == ord("E"):
            fields = parsers.parse_error_fields(body)
            raise UpstreamError(
                fields.get("C") or "08006",
                f"the tenant database refused the login: {fields.get('M') or 'no reason given'}",
            )
        elif msg_type in (ord("N"), ord("v")):
            continue  # notices; NegotiateProtocolVersion (we asked for 3.0 only)
        else:
            raise UpstreamError("08P01", f"unexpected message {chr(msg_type)!r} during login")


def _answer_auth(
    sock: Any, target: Target, code: int, data: bytes, scram: ScramClient | None
) -> ScramClient | None:
    if code == AUTH_OK:
        return scram
    if code == AUTH_CLEARTEXT:
        if target.scram_keys or target.md5_secret:
            raise UpstreamError("28000", _NO_PASSTHROUGH.format("a cleartext password"))
        sock.sendall(builders.password_message(target.password.encode() + b"\0"))
        return None
    if code == AUTH_MD5:
        if len(data) != 4:
            raise UpstreamError("08P01", "malformed MD5 authentication request from the server")
        if target.scram_keys:
            raise UpstreamError("28000", _NO_PASSTHROUGH.format("md5 with a SCRAM secret"))
        response = md5_response(target.user, target.md5_secret or target.password, data)
        sock.sendall(builders.password_message(response + b"\0"))
        return None
    if code == AUTH_SASL:
        mechanisms = [m for m in data.split(b"\0") if m]
        if b"SCRAM-SHA-256" not in mechanisms:
            raise UpstreamError("08P01", "the tenant database offers no SASL mechanism we support")
        if target.md5_secret:
            raise UpstreamError("28000", _NO_PASSTHROUGH.format("SCRAM with an md5 secret"))
        if target.scram_keys:
            client_key, server_key = target.scram_keys
            scram = ScramClient(client_key=client_key, server_key=server_key)
        else:
            scram = ScramClient(target.password)
        sock.sendall(builders.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
        return scram
    if code == AUTH_SASL_CONTINUE and scram is not None:
        try:
            sock.sendall(builders.sasl_response(scram.server_first(data)))
        except AuthError as exc:
            raise UpstreamError(
                "08P01", f"SCRAM exchange with the tenant database failed: {exc.message}"
            ) from None
        return scram
    if code == AUTH_SASL_FINAL and scram is not None:
        try:
            scram.server_final(data)
        except AuthError as exc:
            raise UpstreamError(
                "28P01", f"the tenant database failed SCRAM server verification: {exc.message}"
            ) from None
        return scram
    raise UpstreamError(
        "08P01",
        f"unsupported authentication request {code} from the tenant "
        "database: use trust, password, md5 or scram-sha-256 in its pg_hba.conf",
    )


def open_server(pool: Pool, target: Target) -> ServerConn:
    """Log in and wrap the connection for the relay (runs in a greenlet)."""
    gsock, pid, key, params = login(target)
    return ServerConn(tls.detach(gsock), pool, target, pid, key, params)


def send_cancel(host: str, port: int, pid: int, key: bytes, timeout: float = 5.0) -> None:
    """Forward a CancelRequest to a server on a fresh connection (greenlet)."""
    try:
        sock = gsocket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        log.info("cancel to %s:%s failed: %s", host, port, exc)
        return
    try:
        sock.sendall(builders.cancel_request(pid, key))
        sock.recv(1)  # the server closes when done
    except OSError:
        pass
    finally:
        sock.close()
