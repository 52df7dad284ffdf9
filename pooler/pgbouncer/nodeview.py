"""The node as PgBouncer's admin console sees it: :class:`pooler.admin.NodeView`.

Theory of operation
-------------------
Read side: rows are built from the node's live objects at each SHOW (pools, clients, the
servers idle in pools or linked to clients, the loaded pgbouncer.ini). A pool's database
is its pgbouncer.ini name (for ``*`` the name the client asked for; for metadata-DB
tenants the tenant id). Statistics are the pools' counters plus those of clients still
connected; times are microseconds. The averages columns are 0: Greenvisor keeps no
per-period samples (its Prometheus metrics give rates).

Write side: PAUSE stops lending servers and returns once the database's servers are all
released, then closes them (PgBouncer's PAUSE); RESUME undoes PAUSE, KILL and SUSPEND;
RECONNECT replaces servers as they are released; KILL drops every client and server of a
database and leaves it paused; SUSPEND pauses every pool without waiting (there is no
online restart to hand sockets to); DISABLE/ENABLE refuse/allow new clients of a database;
WAIT_CLOSE returns once no server of an older generation (RECONNECT, RELOAD) is left;
RELOAD re-reads the files; SHUTDOWN stops the process (WAIT_FOR_CLIENTS: once the last
client has left; no new ones are accepted meanwhile). SET is refused: edit the file and
RELOAD. Waits poll every 50 ms in the console's own greenlet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import gevent

from pooler.admin import (
    ADMIN_DATABASE,
    UNSUPPORTED_SQLSTATE,
    AdminError,
    ConfigItem,
    DatabaseRow,
    PoolRow,
    SocketRow,
    StatCounters,
    StatsRow,
    UserRow,
    admin_database_row,
)

if TYPE_CHECKING:
    from pooler.pgbouncer.dropin import DropIn
    from pooler.pool import Pool

POLL = 0.05


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _wall(monotonic_time: float) -> float:
    return time.time() - (time.monotonic() - monotonic_time)


def _local(sock: Any) -> tuple[str, int]:
    try:
        addr = sock.getsockname()
        return str(addr[0]), int(addr[1])
    except (OSError, AttributeError, IndexError):
        return "", 0


class DropInView:
    """NodeView over the node a DropIn is attached to."""

    def __init__(self, dropin: DropIn) -> None:
        self.dropin = dropin
        self.node = dropin.node

    # -- helpers ----------------------------------------------------------------------------

    def _db(self, pool: Pool) -> str:
        return self.dropin.database_of(pool)

    def _pools(self, database: str | None) -> list[Pool]:
        pools = list(self.node.pools.values())
        if database is None:
            return pools
        return [pool for pool in pools if self._db(pool) == database]

    def _known(self, database: str) -> None:
        if database not in self.dropin.config.databases and not self._pools(database):
            raise AdminError(f"no such database: {database}")

    def _servers(self) -> Iterator[tuple[Any, str, Any]]:
        """(server, state, linked client or None) for every server of every pool."""
        for pool in list(self.node.pools.values()):
            for server in list(pool.idle):
                yield server, "idle", None
        for client in list(self.node.clients.values()):
            if client.server is not None:
                yield client.server, "active", client

    # -- SHOW -------------------------------------------------------------------------------

    def list_pools(self) -> Iterable[PoolRow]:
        now = time.monotonic()
        rows = [PoolRow(ADMIN_DATABASE, ADMIN_DATABASE, cl_active=self.dropin.consoles,
                        pool_mode="statement")]  # fmt: skip
        for pool in list(self.node.pools.values()):
            waiting = len(pool.waiters)
            rows.append(
                PoolRow(
                    self._db(pool),
                    pool.key.user,
                    cl_active=max(pool.clients - waiting, 0),
                    cl_waiting=waiting,
                    sv_active=pool.active,
                    sv_idle=len(pool.idle),
                    sv_login=pool.connecting,
                    maxwait=(now - pool.waiters[0].wait_started) if waiting else 0.0,
                    pool_mode=pool.key.mode,
                )
            )
        return rows

    def list_stats(self) -> Iterable[StatsRow]:
        totals: dict[str, list[int]] = {}
        for pool in list(self.node.pools.values()):
            s = pool.stats
            row = totals.setdefault(self._db(pool), [0] * 7)
            values = (
                s.transactions,
                s.queries,
                s.bytes_in,
                s.bytes_out,
                _us(s.xact_time.total),
                0,
                _us(s.checkout_wait.total),
            )
            for i, value in enumerate(values):
                row[i] += value
        for client in list(self.node.clients.values()):
            row = totals.setdefault(self._db(client.pool), [0] * 7)
            row[0] += client.transactions
            row[1] += client.ex.ready_count
            row[2] += client.bytes_in
            row[3] += client.bytes_out
        return [StatsRow(db, StatCounters(*row), StatCounters()) for db, row in totals.items()]

    def list_clients(self) -> Iterable[SocketRow]:
        rows = []
        for client in list(self.node.clients.values()):
            addr = client.addr
            host, port = (addr[0], addr[1]) if isinstance(addr, tuple) else (str(addr), 0)
            local = _local(client.sock)
            waiting = client.pending is not None
            server = client.server
            rows.append(
                SocketRow(
                    "C",
                    client.pool.key.user,
                    self._db(client.pool),
                    "waiting" if waiting else "active",
                    str(host),
                    int(port),
                    *local,
                    connect_time=client.connected_at,
                    request_time=client.connected_at,
                    wait=(time.monotonic() - client.wait_started) if waiting else 0.0,
                    ptr=f"{id(client):x}",
                    link=f"{id(server):x}" if server else "",
                    application_name=client.settings.get("application_name", ""),
                )
            )
        return rows

    def list_servers(self) -> Iterable[SocketRow]:
        rows = []
        for server, state, client in self._servers():
            target = server.target
            rows.append(
                SocketRow(
                    "S",
                    target.user,
                    self._db(server.pool),
                    state,
                    target.host,
                    target.port,
                    *_local(server.sock),
                    connect_time=_wall(server.created_at),
                    request_time=_wall(server.idle_since),
                    close_needed=server.generation != server.pool.generation,
                    ptr=f"{id(server):x}",
                    link=f"{id(client):x}" if client else "",
                    remote_pid=server.pid,
                    application_name=target.application_name,
                )
            )
        return rows

    def list_databases(self) -> Iterable[DatabaseRow]:
        config = self.dropin.config
        settings = config.settings
        servers: dict[str, int] = {}
        for pool in list(self.node.pools.values()):
            servers[self._db(pool)] = servers.get(self._db(pool), 0) + pool.total
        entries = dict(config.databases)
        if config.autodb is not None:
            for pool in self.node.pools.values():
                if pool.key.tenant == "*":
                    entries.setdefault(pool.key.database, config.autodb.resolve(pool.key.database))
        rows = []
        for name, entry in sorted(entries.items()):
            rows.append(
                DatabaseRow(
                    name,
                    entry.host,
                    entry.port,
                    entry.dbname or name,
                    entry.user,
                    entry.pool_size if entry.pool_size is not None else settings.default_pool_size,
                    entry.min_pool_size or settings.min_pool_size,
                    entry.reserve_pool
                    if entry.reserve_pool is not None
                    else settings.reserve_pool_size,
                    entry.pool_mode,
                    entry.max_db_connections or 0,
                    servers.get(name, 0),
                    self._paused(name),
                    name in self.dropin.disabled,
                )
            )
        rows.append(admin_database_row(settings.listen_port))
        return rows

    def _paused(self, database: str) -> bool:
        paused = self.dropin.paused
        return None in paused or database in paused or self.dropin.suspended

    def list_users(self) -> Iterable[UserRow]:
        config = self.dropin.config
        names = sorted(set(self.dropin.authfile.users()) | set(config.users))
        return [
            UserRow(name, config.users[name].pool_mode if name in config.users else None)
            for name in names
        ]

    def config_items(self) -> Iterable[ConfigItem]:
        return [ConfigItem(*item) for item in self.dropin.config.config_items()]

    def list_counts(self) -> Mapping[str, int]:
        config = self.dropin.config
        clients = list(self.node.clients.values())
        return {
            "databases": len(config.databases) + 1,
            "users": len(set(self.dropin.authfile.users()) | set(config.users)),
            "pools": len(self.node.pools) + 1,
            "used_clients": len(clients) + self.dropin.consoles,
            "free_servers": 0,
            "used_servers": sum(1 for _ in self._servers()),
        }

    # -- commands -----------------------------------------------------------------------------

    def pause(self, database: str | None) -> None:
        if database is not None:
            self._known(database)
        self.dropin.paused.add(database)
        pools = self._pools(database)
        for pool in pools:
            pool.pause()
        while any(pool.active for pool in pools):
            gevent.sleep(POLL)
        for pool in pools:
            pool.bump_generation()  # PgBouncer closes the servers of a paused database

    def resume(self, database: str | None) -> None:
        dropin = self.dropin
        if database is None:
            if not dropin.paused and not dropin.suspended:
                raise AdminError("pooler is not paused/suspended")
            dropin.paused.clear()
            dropin.suspended = False
        else:
            if database not in dropin.paused:
                raise AdminError(f"database {database} is not paused")
            dropin.paused.discard(database)
        for pool in self._pools(database):
            if not self._paused(self._db(pool)):
                pool.resume()

    def reconnect(self, database: str | None) -> None:
        if database is not None:
            self._known(database)
        for pool in self._pools(database):
            pool.bump_generation()

    def kill(self, database: str) -> None:
        self._known(database)
        self.dropin.paused.add(database)
        reason = f"database {database} killed from the admin console"
        for pool in self._pools(database):
            self.node._drop_pool(pool, reason)

    def suspend(self) -> None:
        self.dropin.suspended = True
        for pool in self._pools(None):
            pool.pause()

    def shutdown(self, wait_for_clients: bool) -> None:
        hook = self.dropin.shutdown_hook
        if hook is None:
            raise AdminError("SHUTDOWN is not available in this process")
        hook(wait_for_clients)

    def reload(self) -> None:
        from pooler.pgbouncer.dropin import DropInError

        try:
            self.dropin.reload()
        except DropInError as exc:
            raise AdminError(f"RELOAD failed, the old configuration stays: {exc}") from None

    def enable(self, database: str) -> None:
        self._known(database)
        self.dropin.disabled.discard(database)

    def disable(self, database: str) -> None:
        self._known(database)
        self.dropin.disabled.add(database)

    def wait_close(self, database: str | None) -> None:
        if database is not None:
            self._known(database)
        while any(
            server.generation != server.pool.generation
            and (database is None or self._db(server.pool) == database)
            for server, _state, _client in self._servers()
        ):
            gevent.sleep(POLL)

    def set_config(self, key: str, value: str) -> None:
        raise AdminError(
            f"SET {key} is not supported by Greenvisor: change pgbouncer.ini and RELOAD",
            UNSUPPORTED_SQLSTATE,
        )
