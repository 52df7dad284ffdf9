"""The running PgBouncer drop-in: one pgbouncer.ini + auth_file, routing and logging clients in.

Theory of operation
-------------------
:class:`DropIn` is attached to the node (``node.pgbouncer``) by ``runpooler
--pgbouncer-ini``. It holds the loaded :class:`~pooler.pgbouncer.ini.PgBouncerConfig`, its
auth_file and the tenants they make (one per ``[databases]`` entry, ``*`` included), and:

* merges those tenants into every snapshot the node applies (:meth:`overlay`, called by
  ``Node.apply_snapshot``), so tenants from the metadata DB and from the ini live side by
  side in one process. An ini database whose name is also a metadata-DB tenant id wins
  (a warning is logged); the metadata-DB tenant is then unreachable in this process.
* routes logins (:meth:`login`, called by ``pooler.login`` for every user name that does
  not end in ``.<metadata-DB tenant>``): the startup packet's database picks the
  ``[databases]`` entry (or ``*``), the user name is authenticated against the auth_file
  following ``auth_type`` (:mod:`pooler.pgbouncer.clientauth`), the pool is the forced
  user's (``user=``) or the client's own, its mode the [users] / database / ``pool_mode``
  one. Database ``pgbouncer`` is the admin console (:mod:`pooler.pgbouncer.console`).
* re-reads both files on :meth:`reload` (SIGHUP and the console's RELOAD) and applies them
  to the running node without dropping clients: the node settings are replaced and the
  merged snapshot applied (changed databases get new servers once the old are released).
  A file that does not load leaves the running configuration untouched.
* remembers the console's PAUSE/KILL/SUSPEND/DISABLE state per database, so pools created
  later (a new user of a paused database) start paused too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pooler.config import ConfigSnapshot, TenantConfig, UserConfig
from pooler.listener import defer_accept, defer_seconds
from pooler.node import NodeSettings
from pooler.pgbouncer.authfile import AuthEntry, AuthFile, load_auth_file
from pooler.pgbouncer.ini import (
    UNUSABLE_PASSWORD,
    DatabaseEntry,
    IniError,
    PgBouncerConfig,
    diff,
    load,
)
from pooler.protocol.params import client_settings

if TYPE_CHECKING:
    from pooler.node import Node
    from pooler.pool import Pool, PoolLimits
    from pooler.protocol.startup import StartupMessage

log = logging.getLogger("pooler.pgbouncer")

T = TypeVar("T")
CONSOLE_DATABASE = "pgbouncer"
#: query_wait_timeout = 0 (wait forever) becomes this many seconds.
FOREVER = 10.0 * 365 * 24 * 3600


class DropInError(Exception):
    """The configuration cannot be used; the message names the file (and line)."""


def load_files(path: str | Path) -> tuple[PgBouncerConfig, AuthFile]:
    """pgbouncer.ini and its auth_file, checked; DropInError with file:line:key if unusable."""
    from pooler.pgbouncer.authfile import AuthFileError

    try:
        config = load(path)
    except IniError as exc:
        raise DropInError(str(exc)) from None
    except OSError as exc:
        raise DropInError(f"{path}: cannot read: {exc.strerror}") from None
    settings = config.settings
    if settings.auth_file:
        try:
            authfile = load_auth_file(settings.auth_file)
        except AuthFileError as exc:
            raise DropInError(str(exc)) from None
    elif settings.auth_type != "trust":
        raise DropInError(
            f"{config.path}: auth_file: not set; auth_type {settings.auth_type} needs an "
            "auth_file with the users' passwords"
        )
    else:
        authfile = AuthFile("")
    if settings.auth_type == "hba":
        from pooler.pgbouncer.hba import HbaError, load_hba

        if not settings.auth_hba_file:
            raise DropInError(
                f"{config.path}: auth_hba_file: not set; auth_type hba needs a pg_hba.conf-style "
                "file saying which method each database, user and address gets"
            )
        try:
            authfile = replace(authfile, hba=load_hba(settings.auth_hba_file))
        except HbaError as exc:
            raise DropInError(str(exc)) from None
    return config, authfile


def node_settings(config: PgBouncerConfig, base: NodeSettings) -> NodeSettings:
    """The process-wide knobs pgbouncer.ini sets (times in seconds)."""
    s = config.settings
    return replace(
        base,
        client_login_timeout=s.client_login_timeout or FOREVER,
        server_connect_timeout=s.server_connect_timeout or FOREVER,
        server_lifetime=s.server_lifetime,
        server_idle_timeout=s.server_idle_timeout,
        max_prepared_statements=s.max_prepared_statements,
        query_wait_timeout=s.query_wait_timeout or FOREVER,
        idle_transaction_timeout=s.idle_transaction_timeout,
        connect_retry_interval=s.server_login_retry or base.connect_retry_interval,
    )


class DropIn:
    """pgbouncer.ini tenants, logins and console state of one node."""

    def __init__(self, node: Node, config: PgBouncerConfig, authfile: AuthFile) -> None:
        self.node = node
        self.config = config
        self.authfile = authfile
        #: auth_query users by tenant id: kept across reloads, so their clients stay.
        self.query_users: dict[str, dict[str, UserConfig]] = {}
        self.ini_tenants = self._tenants()
        self.db_snapshot = ConfigSnapshot()
        self.paused: set[str | None] = set()  # database names; None: every database
        self.disabled: set[str] = set()
        self.suspended = False
        self.consoles = 0  # admin console sessions open
        self.console: Any = None  # pooler.admin.AdminConsole, made at the first console login
        self.shutdown_hook: Any = None  # set by serve: callable(wait_for_clients: bool)
        #: The Postgres listening sockets (set by serve): a reload applies tcp_defer_accept.
        self.listen_sockets: list[Any] = []
        self._shadowed: set[str] = set()
        node.pgbouncer = self
        node.settings = node_settings(config, node.settings)

    # -- configuration ----------------------------------------------------------------------

    def overlay(self, snapshot: ConfigSnapshot) -> ConfigSnapshot:
        """``snapshot`` (from the metadata DB) with the ini's tenants added."""
        self.db_snapshot = snapshot
        shadowed = set(snapshot.tenants) & set(self.ini_tenants)
        for name in sorted(shadowed - self._shadowed):
            log.warning(
                "metadata-DB tenant %r has the name of a pgbouncer.ini database; the ini "
                "database wins on this node (rename one of them)",
                name,
            )
        self._shadowed = shadowed
        return ConfigSnapshot(snapshot.version, {**snapshot.tenants, **self.ini_tenants})

    def pool_limits(self, tenant: TenantConfig, limits: PoolLimits) -> PoolLimits:
        """An ini database's pool limits: its reserve pool (the database's reserve_pool, else
        reserve_pool_size), server_reset_query(_always), server_check_query/_delay.
        Metadata-DB tenants keep theirs."""
        tenant_id = tenant.external_id
        if tenant_id not in self.ini_tenants:
            return limits
        config = self.config
        entry = config.databases.get(tenant_id) if tenant_id != "*" else config.autodb
        s = config.settings
        reserve = s.reserve_pool_size
        if entry is not None and entry.reserve_pool is not None:
            reserve = entry.reserve_pool
        return replace(
            limits,
            reserve_size=reserve,
            reserve_timeout=s.reserve_pool_timeout,
            reset_query=s.server_reset_query.strip(),
            reset_always=s.server_reset_query_always,
            check_query=s.server_check_query.strip(),
            check_delay=s.server_check_delay,
        )

    def is_db_tenant(self, tenant_id: str | None) -> bool:
        """A ``user.<tenant>`` login goes to the metadata DB's tenant of that id."""
        return (
            tenant_id is not None
            and tenant_id in self.db_snapshot.tenants
            and tenant_id not in self.ini_tenants
        )

    def reload(self) -> None:
        """Re-read pgbouncer.ini and the auth_file and apply them; DropInError if unusable."""
        config, authfile = load_files(self.config.path)
        changes = diff(self.config, config)
        for warning in (*config.warnings, *authfile.warnings):
            log.warning("pgbouncer.ini: %s", warning)
        if changes.restart_required:
            log.warning(
                "pgbouncer.ini: %s changed: takes effect only after a restart",
                ", ".join(changes.restart_required),
            )
        self.config, self.authfile = config, authfile
        for sock in self.listen_sockets:  # applies from the next connection on
            defer_accept(sock, defer_seconds(config.settings.tcp_defer_accept))
        self.ini_tenants = self._tenants()
        self.node.settings = node_settings(config, self.node.settings)
        self.node.apply_snapshot(self.db_snapshot)
        log.info(
            "pgbouncer.ini reloaded from %s (%d databases, %d auth_file users)",
            config.path,
            len(self.ini_tenants),
            len(authfile),
        )

    def _tenants(self) -> dict[str, TenantConfig]:
        """The ini's tenants, auth_query users included."""
        tenants = dict(self.config.to_snapshot(self.authfile).tenants)
        for tenant_id, users in self.query_users.items():
            tenant = tenants.get(tenant_id)
            if tenant is not None:
                known = {user.db_user_alias for user in tenant.users}
                extra = tuple(u for name, u in users.items() if name not in known)
                tenants[tenant_id] = replace(tenant, users=tenant.users + extra)
        return tenants

    def _remember(self, db_entry: DatabaseEntry, name: str, entry: AuthEntry) -> None:
        """An auth_query user becomes a user of its database's tenant (its own pool)."""
        config = self.config
        tenant_id = db_entry.name if db_entry.name in config.databases else "*"
        source = config.databases.get(tenant_id) or config.autodb
        if source is None or db_entry.user:
            return  # a forced user= pool needs no per-user entry
        user = config.make_user(source, name, entry.upstream_password())
        users = self.query_users.setdefault(tenant_id, {})
        if users.get(name) != user:
            users[name] = user
            self.ini_tenants = self._tenants()
            self.node.apply_snapshot(self.db_snapshot)

    # -- logins ----------------------------------------------------------------------------

    def login(self, gsock: Any, startup: StartupMessage, addr: Any = None) -> Any:
        """Authenticate and route a plain-user login; what ``pooler.login._login`` returns."""
        from pooler.login import LoginFailed, _warm_up, expected_settings, welcome
        from pooler.pgbouncer.clientauth import authenticate

        config = self.config
        name = startup.user
        database = startup.database
        iterations = config.settings.scram_iterations
        self._check_room()
        auth_type = self._auth_type(gsock, addr, database, name)
        if database == CONSOLE_DATABASE:
            from pooler.pgbouncer.console import open_console

            entry = self.authfile.get(name)
            self._guarded(
                addr,
                CONSOLE_DATABASE,
                lambda: authenticate(gsock, self.node, auth_type, name, entry, iterations),
            )
            self._check_room()
            open_console(self, gsock, name)
            return None
        db_entry = config.database(database)
        if db_entry is None:
            raise LoginFailed("3D000", f"no such database: {database}")
        entry = self.authfile.get(name)
        tenant_id = db_entry.name if db_entry.name in config.databases else "*"

        def check() -> tuple[bytes, bytes] | None:
            found = entry
            if found is None:  # auth_user + auth_query, when the database has an auth_user
                from pooler.pgbouncer.authquery import lookup

                found = lookup(self, db_entry, name)
                if found is not None:
                    self._remember(db_entry, name, found)
            return authenticate(gsock, self.node, auth_type, name, found, iterations)

        keys = self._guarded(addr, tenant_id, check)
        if database in self.disabled:
            raise LoginFailed("55000", f'database "{database}" does not allow connections')
        tenant = self.node.registry.snapshot.tenant(tenant_id)
        pool_user = config.pool_user(database, name)
        user = _find(tenant, pool_user)
        if tenant is None or user is None:
            raise LoginFailed(
                "28000",
                f'no upstream credentials for user "{pool_user}" of database "{database}": '
                "add the user to the auth_file or set user=/password= in [databases]",
            )
        pool = self.node.pool_for(tenant, user, db_entry.dbname or database, user.mode_type)
        self._pass_through(pool, user, keys if pool_user == name else None)
        requested = client_settings(startup.settings())
        self._check_room()  # no yield from here to client_joined: the count stays right
        if not pool.client_joined():
            raise LoginFailed(
                "53300",
                f"no more connections allowed (max_client_conn {pool.limits.max_clients}) "
                f"for {pool.key}: close idle connections or raise max_client_conn",
            )
        try:
            if pool.server_params is None:
                wait = min(pool.limits.checkout_timeout, self.node.settings.client_login_timeout)
                _warm_up(pool, wait * 0.8)
            self._pause_if_paused(pool)  # after the warm-up: a new pool needs one server
            settings = expected_settings(requested, pool.server_params)
            pid, key = self.node.new_backend_key()
            message = welcome(pool.server_params, settings, pid, key)
        except BaseException:
            pool.client_left()
            raise
        return pool, pid, key, message, settings, -1  # -1: the client works out its id

    def clients(self) -> int:
        """Clients of the ini's databases and console sessions: what max_client_conn limits
        (process-wide, as PgBouncer; metadata-DB tenants keep their per-pool max_clients)."""
        ini = self.ini_tenants
        pools = self.node.pools
        return self.consoles + sum(p.clients for k, p in pools.items() if k.tenant in ini)

    def _check_room(self) -> None:
        """Refuse a login when max_client_conn clients are in already (53300)."""
        from pooler.login import LoginFailed

        if self.clients() >= self.config.settings.max_client_conn:
            raise LoginFailed("53300", "no more connections allowed (max_client_conn)")

    def _auth_type(self, gsock: Any, addr: Any, database: str, user: str) -> str:
        """The auth_type of this login: pgbouncer.ini's, or the auth_hba_file's first matching
        line (auth_type = hba); a reject line or no line refuses it (28000, Postgres's words)."""
        from pooler import tls
        from pooler.login import LoginFailed
        from pooler.pgbouncer.hba import METHODS, refusal

        auth_type = self.config.settings.auth_type
        rules = self.authfile.hba
        if auth_type != "hba" or rules is None:
            return auth_type
        address = str(addr[0]) if isinstance(addr, tuple) and addr else None
        encrypted = tls.is_tls(gsock)
        rule = rules.find(database, user, address, encrypted)
        method = METHODS.get(rule.method) if rule is not None else None
        if method is None:
            raise LoginFailed("28000", refusal(rule, database, user, address, encrypted))
        return method

    def _guarded(self, addr: Any, tenant_id: str, check: Callable[[], T]) -> T:
        """``check()`` (authentication) behind the node's bans: a banned (database, client
        IP) pair is refused, failures are counted and answered no sooner than
        auth_failure_delay, as for metadata-DB tenants (pooler.bans)."""
        from pooler import bans
        from pooler.login import LoginFailed

        node = self.node
        ip = bans.client_ip(addr)
        key = (tenant_id, ip)
        started = time.monotonic()
        try:
            banned = node.bans.banned_for(key)
            if banned:
                raise LoginFailed("28000", bans.ban_message(tenant_id, ip, banned))
            return check()
        except LoginFailed as exc:
            if exc.sqlstate == "28P01" and node.bans.failed(key):
                log.warning("banning %s for database %s: too many failed logins", ip, tenant_id)
            bans.pad(started, node.settings.auth_failure_delay)
            raise

    @staticmethod
    def keeps_keys(user: UserConfig) -> bool:
        """A SCRAM-only user's pool keeps its pass-through keys across config changes."""
        return user.db_password == UNUSABLE_PASSWORD

    @staticmethod
    def _pass_through(pool: Pool, user: UserConfig, keys: tuple[bytes, bytes] | None) -> None:
        """SCRAM pass-through keys for the upstream login of a SCRAM-only user."""
        if keys is not None and user.db_password == UNUSABLE_PASSWORD:
            target = pool.upstream
            if target.scram_keys != keys:
                pool.upstream = replace(target, scram_keys=keys)

    def _pause_if_paused(self, pool: Pool) -> None:
        """A pool created while its database is paused (PAUSE, KILL, SUSPEND) starts paused."""
        database = self.database_of(pool)
        if not pool.paused and (None in self.paused or database in self.paused or self.suspended):
            pool.pause()

    def database_of(self, pool: Pool) -> str:
        """The PgBouncer database name of a pool (what the console shows and takes)."""
        key = pool.key
        return key.database if key.tenant == "*" else key.tenant


def _find(tenant: TenantConfig | None, alias: str) -> UserConfig | None:
    if tenant is None:
        return None
    for user in tenant.users:
        if user.db_user_alias == alias:
            return user
    return None
