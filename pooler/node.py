"""One Greenvisor node: settings, the live config snapshot, pools, clients, cancel keys.

The node is the wiring between the listeners (login), the pools and the servers; it holds
no protocol logic. Configuration changes arrive as whole snapshots (:meth:`apply_snapshot`)
and are applied to the running pools without dropping anybody.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent

from pooler import authquery
from pooler.auth.scram import ScramSecret, make_secret
from pooler.bans import BanList
from pooler.client import SHUTDOWN_MESSAGE
from pooler.config import ConfigSnapshot, TenantConfig, UserConfig
from pooler.pool import Pool, PoolKey, PoolLimits
from pooler.protocol.errors import AuthError, ProtocolError
from pooler.protocol.prepared import StatementNames
from pooler.server import Target, UpstreamError, open_server, send_cancel

if TYPE_CHECKING:
    from pooler.client import Client
    from pooler.tls import ServerTLS

log = logging.getLogger("pooler.node")

#: Login failures worth waiting out (the database is restarting, failing over or full);
#: anything else (wrong password, no such database or role) fails the waiting clients now.
RETRYABLE_SQLSTATES = frozenset(("08006", "08001", "08004", "57P01", "57P02", "57P03", "53300"))


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Process-wide knobs (per-tenant ones live in the tenant config)."""

    client_auth: str = "scram-sha-256"  # or "md5"
    client_login_timeout: float = 15.0
    server_connect_timeout: float = 10.0
    server_reset_timeout: float = 10.0  # reset/check query unanswered: close that server
    server_lifetime: float = 3600.0
    server_idle_timeout: float = 600.0
    application_name: str = "greenvisor"
    max_prepared_statements: int = 200  # per server connection; 0 turns rewriting off
    query_wait_timeout: float = 30.0  # longest wait for a server (caps pool_checkout_timeout)
    idle_transaction_timeout: float = 0.0  # close clients idle in a transaction (0 = off)
    connect_retry_interval: float = 0.25  # while a tenant database does not answer
    tls: ServerTLS | None = None  # our certificate for clients (None: SSLRequest gets 'N')
    ban_failures: int = 10  # failed logins per (tenant, client IP) within ban_window; 0 = off
    ban_window: float = 60.0
    ban_time: float = 60.0  # how long such a pair is refused
    auth_failure_delay: float = 0.2  # a failed login is answered no sooner than this


class Registry:
    """Holds the current config snapshot; replaced whole, never mutated."""

    def __init__(self, snapshot: ConfigSnapshot | None = None) -> None:
        self.snapshot = snapshot or ConfigSnapshot()


class Node:
    def __init__(self, settings: NodeSettings, snapshot: ConfigSnapshot | None = None) -> None:
        self.settings = settings
        self.registry = Registry(snapshot)
        self.pools: dict[PoolKey, Pool] = {}
        # The same pools by the plain tuple of the key's fields: a login finds its pool
        # without making, hashing and comparing a PoolKey (a dataclass: interpreted code).
        self._pools_by_fields: dict[tuple[str, str, str, str], Pool] = {}
        self.clients: dict[int, Client] = {}  # by Greenvisor's own backend pid
        self.mock_key = os.urandom(32)
        self._secrets: dict[tuple[str, str], ScramSecret] = {}
        self.statement_names = StatementNames()
        self.shutting_down = False
        self.cluster: Any = None  # pooler.cluster.cluster.Cluster when part of a cluster
        self.pid_prefix = 0  # the node's index in the high bits of its BackendKeyData pids
        self.bans = BanList(settings.ban_failures, settings.ban_window, settings.ban_time)
        self.auth_query = authquery.AuthQueryRunner(self)
        self.pgbouncer: Any = None  # pooler.pgbouncer.dropin.DropIn (runpooler --pgbouncer-ini)

    # -- config ---------------------------------------------------------------------------

    def apply_snapshot(self, snapshot: ConfigSnapshot) -> None:
        """Swap in a new configuration and bring the pools in line with it."""
        if self.pgbouncer is not None:
            snapshot = self.pgbouncer.overlay(snapshot)  # pgbouncer.ini tenants join in
        old = self.registry.snapshot
        self.registry.snapshot = snapshot
        for key, pool in list(self.pools.items()):
            tenant = snapshot.tenant(key.tenant)
            user = tenant.find_user(key.user, key.mode) if tenant is not None else None
            passthrough = user is None and authquery.keeps_pool(tenant, pool)
            if passthrough:
                user = authquery.passthrough_user(key.user, key.mode)
            if tenant is None or user is None:
                self._drop_pool(pool, "the tenant or user was deleted")
                continue
            target = self._target(tenant, user, key.database)
            if passthrough or (self.pgbouncer is not None and self.pgbouncer.keeps_keys(user)):
                target = authquery.carry_keys(target, pool.upstream)
            if target != pool.upstream:
                pool.upstream = target
                pool.bump_generation()
            limits = self._limits(tenant, user)
            if limits != pool.limits:
                pool.resize(limits)
        if snapshot.version != old.version and old.version:
            log.info(
                "configuration version %s applied (%d tenants)",
                snapshot.version,
                len(snapshot.tenants),
            )

    def _drop_pool(self, pool: Pool, reason: str) -> None:
        key = pool.key
        del self.pools[key]
        del self._pools_by_fields[key.tenant, key.user, key.database, key.mode]
        pool.close(reason)
        for client in list(self.clients.values()):
            if client.pool is pool:
                client.fatal("57P01", f"terminating connection: {reason} ({pool.key})")
        if pool.resetting:  # after the clients: leaving, they may have started resets
            # The janitor no longer sees this pool: a reset that answers closes its server
            # (the pool is closed); one that hangs is expired here, once, after the limit.
            gevent.spawn_later(self.settings.server_reset_timeout + 1.0, self._expire_dropped, pool)

    def scram_secret(self, user: UserConfig) -> ScramSecret:
        """A SCRAM verifier for a tenant user, made once per password."""
        cache_key = (user.db_user_alias, user.db_password)
        secret = self._secrets.get(cache_key)
        if secret is None:
            if len(self._secrets) > 10000:
                self._secrets.clear()
            secret = self._secrets[cache_key] = make_secret(user.db_password)
        return secret

    # -- pools ----------------------------------------------------------------------------

    def pool_for(self, tenant: TenantConfig, user: UserConfig, database: str, mode: str) -> Pool:
        fields = (tenant.external_id, user.db_user_alias, database, mode)
        pool = self._pools_by_fields.get(fields)
        if pool is None:
            key = PoolKey(*fields)
            pool = Pool(key, self._limits(tenant, user), self._connect)
            pool.upstream = self._target(tenant, user, database)
            self.pools[key] = pool
            self._pools_by_fields[fields] = pool
        return pool

    def _limits(self, tenant: TenantConfig, user: UserConfig) -> PoolLimits:
        limits = PoolLimits(
            size=user.pool_size or tenant.default_pool_size,
            max_clients=user.max_clients or tenant.default_max_clients,
            checkout_timeout=min(
                user.pool_checkout_timeout / 1000.0, self.settings.query_wait_timeout
            ),
            server_lifetime=self.settings.server_lifetime,
            server_idle_timeout=self.settings.server_idle_timeout,
            max_prepared_statements=self.settings.max_prepared_statements,
            state_policy=tenant.session_state_policy,
        )
        if self.pgbouncer is not None:  # reserve pool, reset and check queries of the ini
            limits = self.pgbouncer.pool_limits(tenant, limits)
        return limits

    def _target(self, tenant: TenantConfig, user: UserConfig, database: str) -> Target:
        return Target(
            host=tenant.db_host,
            port=tenant.db_port,
            database=database,
            user=user.db_user,
            password=user.db_password,
            ip_version=tenant.ip_version,
            connect_timeout=self.settings.server_connect_timeout,
            application_name=self.settings.application_name,
            ssl=tenant.upstream_ssl,
            verify=tenant.upstream_verify,
            ca=tenant.upstream_tls_ca,
        )

    def _connect(self, pool: Pool) -> None:
        gevent.spawn(self._open_server, pool)

    def _open_server(self, pool: Pool) -> None:
        target = pool.upstream
        retry = self.settings.connect_retry_interval
        try:
            if self.cluster is None:
                server = open_server(pool, target)
            else:  # only the pool's owner opens servers, and fences older owners first
                server = self.cluster.open_server(pool, target)
        except UpstreamError as down:
            # One warning per outage, not one per retry.
            level = (
                logging.DEBUG
                if pool.last_error == (down.sqlstate, down.message)
                else logging.WARNING
            )
            log.log(level, "cannot open a server for %s: %s", pool.key, down.message)
            pool.open_failed(
                down.sqlstate,
                down.message,
                retry if down.retry and down.sqlstate in RETRYABLE_SQLSTATES else 0.0,
            )
            return
        except (ProtocolError, AuthError) as refused:
            log.warning("cannot open a server for %s: %s", pool.key, refused.message)
            pool.open_failed(
                "08P01", f"logging in to the tenant database failed: {refused.message}"
            )
            return
        except Exception as other:  # noqa: BLE001 - any failure must reach the waiters
            log.exception("cannot open a server for %s", pool.key)
            pool.open_failed(
                "08006",
                f"could not open a connection to the tenant database: {other.__class__.__name__}",
                retry,
            )
            return
        if pool.server_params is None:
            # A copy: server.params follows this server's session (our SETs for its clients),
            # and a later client must be greeted with the server's defaults, not with the
            # last client's application_name or TimeZone (PgBouncer copies its welcome too).
            pool.server_params = dict(server.params)
        if pool.last_error is not None:
            log.warning("server connections for %s work again", pool.key)
        pool.opened(server)

    # -- clients --------------------------------------------------------------------------

    def new_backend_key(self) -> tuple[int, bytes]:
        """Greenvisor's own BackendKeyData for a client: random, never the server's."""
        while True:  # one urandom() call: 4 bytes for the pid, 4 for the key
            random = os.urandom(8)
            low = int.from_bytes(random[:4], "big")
            if self.pid_prefix:  # cluster: the pid says which node issued it (cancel)
                low &= 0x1FFFFF  # 1 to 0x1FFFFF
                pid = self.pid_prefix | low
            else:
                low &= 0x7FFFFFFF  # 1 to 0x7FFFFFFE
                if low == 0x7FFFFFFF:
                    low = 0  # drawn again, as 0 is
                pid = low
            parked = self.cluster is not None and pid in self.cluster.parked
            if low and pid not in self.clients and not parked:
                return pid, random[4:]

    def client_opened(self, client: Client) -> None:
        self.clients[client.pid] = client

    def client_closed(self, client: Client) -> None:
        if self.clients.get(client.pid) is client:
            del self.clients[client.pid]

    def cancel(self, pid: int, key: bytes, forward: bool = True) -> None:
        """A CancelRequest: forward it only while that client is linked to a server."""
        if forward and self.cluster is not None and self.cluster.forward_cancel(pid, key):
            return  # another node issued that key
        client = self.clients.get(pid)
        if client is None and self.cluster is not None:
            self.cluster.cancel_parked(pid, key)  # a client this node relays to the owner
            return
        if client is None or not secrets.compare_digest(client.key, key):
            return
        server = client.server
        if server is None:
            return
        target = server.target
        server.cancels += 1
        try:
            send_cancel(target.host, target.port, server.pid, server.key)
        finally:
            server.cancel_done()

    def cancel_server(self, server: Any) -> None:
        """Cancel whatever ``server``'s backend runs (its client has gone)."""
        target = server.target
        gevent.spawn(send_cancel, target.host, target.port, server.pid, server.key)

    # -- housekeeping ---------------------------------------------------------------------

    def janitor(self, interval: float = 0.1) -> None:
        """Fail waiters past their checkout timeout, retry logins, close idle servers past
        their time and servers whose reset or check query hangs, and enforce the client
        idle timeouts."""
        ticks = 0
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            ticks += 1
            for pool in list(self.pools.values()):
                if pool.waiters:
                    pool.expire_waiters(now)
                    pool.retry_due(now)
                if ticks % 10 == 0 and pool.idle:
                    pool.close_idle(now)
                if ticks % 10 == 0 and pool.resetting:
                    self.expire_resets(pool, now)
            if ticks % 10 == 0:
                self._client_timeouts(now)

    def _expire_dropped(self, pool: Pool) -> None:
        self.expire_resets(pool, time.monotonic())

    def expire_resets(self, pool: Pool, now: float) -> None:
        """Close ``pool``'s servers whose reset or check query hangs, and cancel it."""
        limit = self.settings.server_reset_timeout
        for server in pool.expire_resets(now, limit):
            log.warning(
                "server pid=%s of %s did not answer its reset or check query within %g s: "
                "closed, its query cancelled (is the database overloaded or unreachable? "
                "--server-reset-timeout sets the limit)",
                server.pid,
                pool.key,
                limit,
            )
            self.cancel_server(server)

    def _client_timeouts(self, now: float) -> None:
        idle_tx = self.settings.idle_transaction_timeout
        snapshot = self.registry.snapshot
        if snapshot.idle_timeouts and self.cluster is not None and self.cluster.parked:
            from pooler.cluster.parked import expire

            expire(self.cluster, now, snapshot)
        if not idle_tx and not snapshot.idle_timeouts:
            return  # nothing to enforce: no walk over every client each second
        for client in list(self.clients.values()):
            if client.server is None:
                if client.pending is not None:
                    continue
                tenant = snapshot.tenant(client.pool.key.tenant)
                limit = tenant.client_idle_timeout if tenant is not None else 0
                if limit and now - client.idle_since > limit:
                    client.fatal(
                        "57P05",
                        f"terminating connection due to client_idle_timeout "
                        f"({limit} s without a query); reconnect when needed",
                    )
            elif idle_tx and client.idle_in_transaction_since(now) > idle_tx:
                client.fatal(
                    "25P03",
                    "terminating connection due to idle_transaction_timeout "
                    f"({idle_tx:g} s idle inside a transaction); its transaction was "
                    "rolled back",
                )

    # -- operations -----------------------------------------------------------------------

    def pools_of(self, tenant: str) -> list[Pool]:
        return [pool for key, pool in self.pools.items() if key.tenant == tenant]

    def pause_tenant(self, tenant: str) -> int:
        """PAUSE: new transactions wait; running ones finish. Returns servers still busy."""
        for pool in self.pools_of(tenant):
            pool.pause()
        return sum(pool.active for pool in self.pools_of(tenant))

    def resume_tenant(self, tenant: str) -> None:
        for pool in self.pools_of(tenant):
            pool.resume()

    def reconnect_tenant(self, tenant: str) -> None:
        """RECONNECT: every server is replaced as soon as it is released."""
        for pool in self.pools_of(tenant):
            pool.bump_generation()

    def begin_shutdown(self) -> None:
        """Stop serving: idle and waiting clients get 57P01 now; clients in a transaction
        get it when the transaction ends (see Client)."""
        self.shutting_down = True
        if self.cluster is not None:
            self.cluster.begin_shutdown()
        for client in list(self.clients.values()):
            client.closing = True  # read by the relay when a transaction ends
            if client.server is None:
                client.fatal("57P01", SHUTDOWN_MESSAGE)

    def busy_clients(self) -> int:
        busy = sum(1 for client in self.clients.values() if client.server is not None)
        return busy + (self.cluster.busy_relays() if self.cluster is not None else 0)

    def stats(self) -> list[dict[str, Any]]:
        return [pool.snapshot() for pool in self.pools.values()]

    # -- management (read by the HTTP side; runs on the hub like everything else) ----------

    def clients_of(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """The per-connection view: every client (of one tenant), no secrets."""
        return [
            c.describe()
            for c in list(self.clients.values())
            if tenant is None or c.pool.key.tenant == tenant
        ]

    def terminate_tenant(self, tenant: str, reason: str = "terminated by an operator") -> int:
        """Close every pool and client of ``tenant``; return how many clients were closed."""
        closed = sum(1 for c in self.clients.values() if c.pool.key.tenant == tenant)
        for pool in [p for k, p in self.pools.items() if k.tenant == tenant]:
            self._drop_pool(pool, reason)
        if self.cluster is not None:
            why = f"terminating connection: {reason}"
            closed += self.cluster.close_parked(tenant, "57P01", why)
        return closed
