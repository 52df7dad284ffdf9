"""auth_query: log in users that are not configured, with the verifiers Postgres stores.

Theory of operation
-------------------
A tenant with ``require_user`` false and an ``auth_query`` lets clients log in as any role
of its database. When a client's user is not one of the tenant's configured users,
:class:`AuthQueryRunner` asks the tenant database for that role's verifier:

* as the tenant's **manager** (its user with ``is_manager``), on a connection of its own
  that never carries anything the client sent: its startup packet is fixed and pins
  ``search_path=pg_catalog, pg_temp`` (CVE-2025-12819: a client's search_path reached
  PgBouncer's auth query);
* with the **extended protocol**, the user name a bound parameter (never formatted into
  SQL), followed in the same round trip by a check of ``pg_roles.rolvaliduntil``
  (CVE-2025-2291: an expired role is refused like a wrong password);
* **no row, a NULL password, an expired role or an unusable verifier all mean "no such
  user"**: the login then runs the same mock exchange as for an unknown user and fails with
  the same message. The client never becomes the manager (CVE-2015-6817).

The lookup runs on every login (no cache), so a password changed in Postgres counts at the
next login. At most :data:`MAX_CONCURRENT` lookups per tenant run at once (a flood of
logins cannot exhaust the tenant's connections). The connection is kept for the next
lookup (at most :data:`IDLE_PER_TARGET` per tenant) and dropped on any error; a kept
connection that went away is retried once.

A SCRAM verifier checks the client's proof (``login`` runs the exchange); the proof yields
the ClientKey (ClientProof XOR ClientSignature), which with the verifier's ServerKey lets
the pool log in upstream **as that user** without the password (pass-through: the keys go
into the pool's :class:`~pooler.server.Target`). An "md5..." verifier works the same way
for MD5 client auth, but only when the client hashes with the role's own name (Postgres
salts MD5 with the user name, and a "user.tenant" login name does not match it).

Pools of auth_query users are keyed (tenant, user, database, mode) like any other and
sized by the tenant's ``default_pool_size``. When a client logs in with keys that differ
from its pool's (the password was rotated), the pool moves to the new keys and replaces its
servers as they are released.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent.lock import BoundedSemaphore

from pooler import netio
from pooler.auth.md5 import is_md5_secret
from pooler.auth.scram import InvalidSecret, ScramSecret
from pooler.config import TenantConfig, UserConfig
from pooler.protocol import parsers
from pooler.protocol.errors import AuthError, ProtocolError
from pooler.server import Target, UpstreamError, login

if TYPE_CHECKING:
    from pooler.node import Node
    from pooler.pool import Pool

log = logging.getLogger("pooler.authquery")

#: Pinned on the auth_query connection: pg_temp last, so nothing can shadow pg_catalog.
SEARCH_PATH = "pg_catalog, pg_temp"
#: Asked in the same round trip: has the role expired (VALID UNTIL in the past)?
EXPIRED_QUERY = (
    "SELECT rolvaliduntil IS NOT NULL AND rolvaliduntil < pg_catalog.now() "
    "FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1"
)
IDLE_PER_TARGET = 2
#: Lookups running at once per tenant (more wait, within client_login_timeout).
MAX_CONCURRENT = 4
MAX_REPLY = 64 * 1024

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")


class LookupFailed(Exception):
    """The auth_query could not run (database down, manager refused, bad query)."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """What the tenant database stores for a role: one of a SCRAM or an MD5 secret."""

    scram: ScramSecret | None = None
    md5: str | None = None

    def __repr__(self) -> str:
        return f"Verifier(scram={self.scram is not None}, md5={self.md5 is not None})"


def manager_of(tenant: TenantConfig) -> UserConfig | None:
    for user in tenant.users:
        if user.is_manager:
            return user
    return None


def enabled(tenant: TenantConfig) -> bool:
    """True when unknown users of ``tenant`` are looked up with its auth_query."""
    return not tenant.require_user and bool(tenant.auth_query) and manager_of(tenant) is not None


def passthrough_user(name: str, mode: str) -> UserConfig:
    """The UserConfig of an auth_query user (no password: the pool gets keys instead)."""
    return UserConfig(db_user_alias=name, db_user=name, db_password="", mode_type=mode)


def install(pool: Pool, scram_keys: tuple[bytes, bytes] | None, md5: str | None) -> None:
    """Give ``pool`` the keys this client proved; new keys (rotation) replace its servers."""
    target = dataclasses.replace(pool.upstream, scram_keys=scram_keys, md5_secret=md5)
    if target != pool.upstream:
        had_keys = pool.upstream.scram_keys or pool.upstream.md5_secret
        pool.upstream = target
        if had_keys:
            pool.bump_generation()


def carry_keys(target: Target, old: Any) -> Target:
    """``target`` rebuilt from a new config, keeping the pass-through keys of ``old``."""
    return dataclasses.replace(
        target,
        scram_keys=getattr(old, "scram_keys", None),
        md5_secret=getattr(old, "md5_secret", None),
    )


def is_passthrough(target: Any) -> bool:
    return bool(getattr(target, "scram_keys", None) or getattr(target, "md5_secret", None))


def keeps_pool(tenant: TenantConfig | None, pool: Pool) -> bool:
    """After a config change: does this auth_query user's pool live on?"""
    return tenant is not None and enabled(tenant) and is_passthrough(pool.upstream)


# -- wire messages ---------------------------------------------------------------------------


def _cstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    if b"\0" in raw:
        raise ValueError("a NUL byte cannot be sent in a protocol string")
    return raw + b"\0"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _INT32.pack(len(body) + 4) + body


def lookup_messages(query: str, user: str) -> bytes:
    """Parse/Bind/Execute of the auth_query and of the expiry check, then one Sync."""
    value = user.encode("utf-8")
    bind = (
        b"\0\0"  # unnamed portal, unnamed statement
        + _INT16.pack(0)  # parameter formats: all text
        + _INT16.pack(1)
        + _INT32.pack(len(value))
        + value
        + _INT16.pack(0)  # result formats: all text
    )
    execute = _message(b"E", b"\0" + _INT32.pack(0))
    parts = []
    for sql in (query, EXPIRED_QUERY):
        parts.append(_message(b"P", b"\0" + _cstr(sql) + _INT16.pack(0)))
        parts.append(_message(b"B", bind))
        parts.append(execute)
    parts.append(b"S\0\0\0\4")
    return b"".join(parts)


def parse_data_row(body: bytes) -> list[bytes | None]:
    """A DataRow body: its column values (None for NULL); ProtocolError if malformed."""
    if len(body) < 2:
        raise ProtocolError("invalid DataRow: shorter than its column count")
    (count,) = _INT16.unpack_from(body)
    if count < 0:
        raise ProtocolError(f"invalid DataRow: negative column count {count}")
    values: list[bytes | None] = []
    pos = 2
    for _ in range(count):
        if pos + 4 > len(body):
            raise ProtocolError("invalid DataRow: truncated column length")
        (length,) = _INT32.unpack_from(body, pos)
        pos += 4
        if length == -1:
            values.append(None)
            continue
        if length < 0 or pos + length > len(body):
            raise ProtocolError(f"invalid DataRow: column length {length} overruns the message")
        values.append(body[pos : pos + length])
        pos += length
    if pos != len(body):
        raise ProtocolError("invalid DataRow: bytes after the last column")
    return values


def read_results(sock: Any) -> tuple[list[list[bytes | None]], list[list[bytes | None]]]:
    """Rows of the auth_query and of the expiry check, up to ReadyForQuery."""
    results: list[list[list[bytes | None]]] = [[], []]
    done = 0
    error: dict[str, str] | None = None
    while True:
        kind, body = netio.read_message(sock, MAX_REPLY)
        if kind == ord("D"):
            if done < 2:
                results[done].append(parse_data_row(body))
        elif kind == ord("C"):
            done += 1
        elif kind == ord("E"):
            error = parsers.parse_error_fields(body)
        elif kind == ord("Z"):
            if error is not None:
                raise LookupFailed(
                    f"auth_query failed: {error.get('C', '?????')} {error.get('M', 'no message')}"
                )
            if done != 2:
                raise LookupFailed("auth_query: the server skipped a statement")
            return results[0], results[1]
        elif kind not in (ord("1"), ord("2"), ord("N"), ord("S"), ord("A"), ord("n")):
            raise LookupFailed(f"auth_query: unexpected message {chr(kind)!r} from the server")


Rows = list[list[bytes | None]]


def verifier_of(rows: Rows, expiry: Rows) -> Verifier | None:
    """The verifier in the first row (``rolname, rolpassword``), or None: no row, no
    password, an expired or missing role, or a secret of a kind Greenvisor cannot use."""
    if not rows or len(rows[0]) < 2 or rows[0][1] is None:
        return None
    if not expiry or not expiry[0] or expiry[0][0] != b"f":
        return None  # expired (t), or no such role in pg_roles
    secret = rows[0][1].decode("utf-8", "replace")
    if is_md5_secret(secret):
        return Verifier(md5=secret)
    try:
        return Verifier(scram=ScramSecret.parse(secret))
    except InvalidSecret:
        return None


# -- running it ------------------------------------------------------------------------------


class AuthQueryRunner:
    """Runs tenants' auth queries on kept connections of their managers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._idle: dict[Target, list[Any]] = {}
        self._gates: dict[str, BoundedSemaphore] = {}

    def target(self, tenant: TenantConfig, manager: UserConfig) -> Target:
        settings = self.node.settings
        return Target(
            host=tenant.db_host,
            port=tenant.db_port,
            database=tenant.db_database,
            user=manager.db_user,
            password=manager.db_password,
            ip_version=tenant.ip_version,
            connect_timeout=settings.server_connect_timeout,
            application_name=f"{settings.application_name} auth_query",
            startup_extra=(("search_path", SEARCH_PATH),),
        )

    def lookup(self, tenant: TenantConfig, user: str) -> Verifier | None:
        """The verifier of role ``user`` (None when it may not log in); LookupFailed if the
        question could not be asked."""
        manager = manager_of(tenant)
        if manager is None or not tenant.auth_query:
            raise LookupFailed("the tenant has no manager user or no auth_query")
        if "\0" in user:
            return None
        target = self.target(tenant, manager)
        messages = lookup_messages(tenant.auth_query, user)
        gate = self._gates.get(tenant.external_id)
        if gate is None:
            gate = self._gates[tenant.external_id] = BoundedSemaphore(MAX_CONCURRENT)
        with gate:  # a flood of logins never opens more than a few manager connections
            return self._run(target, messages)

    def _run(self, target: Target, messages: bytes) -> Verifier | None:
        for attempt in (0, 1):
            sock, kept = self._checkout(target, fresh=attempt > 0)
            try:
                with gevent.Timeout(target.connect_timeout, LookupFailed("auth_query timed out")):
                    sock.sendall(messages)
                    rows, expiry = read_results(sock)
            except LookupFailed:
                sock.close()
                raise
            except (OSError, netio.ConnectionClosed, ProtocolError) as exc:
                sock.close()
                if kept and attempt == 0:
                    continue  # the kept connection went away meanwhile: once more, fresh
                raise LookupFailed(f"auth_query connection failed: {exc}") from None
            self._checkin(target, sock)
            return verifier_of(rows, expiry)
        raise LookupFailed("auth_query connection failed")  # pragma: no cover

    def _checkout(self, target: Target, fresh: bool) -> tuple[Any, bool]:
        idle = self._idle.get(target)
        if idle and not fresh:
            return idle.pop(), True
        try:
            sock, _pid, _key, _params = login(target)
        except UpstreamError as exc:
            raise LookupFailed(f"the manager could not log in: {exc.message}") from None
        except (ProtocolError, AuthError, OSError, netio.ConnectionClosed) as exc:
            raise LookupFailed(f"the manager could not log in: {exc}") from None
        return sock, False

    def _checkin(self, target: Target, sock: Any) -> None:
        idle = self._idle.setdefault(target, [])
        if len(idle) >= IDLE_PER_TARGET or len(self._idle) > 1000:
            sock.close()
            return
        idle.append(sock)

    def close(self) -> None:
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
        self._idle.clear()
