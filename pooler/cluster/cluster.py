"""What a node does as a member of a cluster: own pools, fence, react to session changes.

Ownership is taken lazily: the first login for a pool key on any node tries the key's lock
(:meth:`Cluster.owner_for`). The winner serves the pool; every other node relays its
clients there (:mod:`pooler.cluster.internal`). Ownership then sticks until the node stops
or loses its coordinator session.

Only the owner opens servers (:meth:`Cluster.open_server`, the node's server-opening hook):

1. the lock is re-checked authoritatively (a node paused past its session timeout finds it
   gone here and opens nothing);
2. the server logs in with ``application_name = "<name> <pool tag> e<epoch>"``;
3. the first server of a new epoch *fences* before anyone uses it: it terminates the
   backends that older owners registered (and any still named with an older epoch of this
   pool), waiting for them to end, so the tenant never has more than pool_size backends
   even when the old owner wakes up;
4. the backend pid is registered under the epoch, conditionally on the lock still being
   held; a server that cannot be registered is closed unused.

Session states: SUSPENDED pauses the owned pools (no server is lent while we might have
lost them), CONNECTED resumes them, LOST closes them (their clients get 57P01 and reconnect
to whichever node takes over).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from pooler import netio
from pooler.cluster.coordinator import (
    CONNECTED,
    LOST,
    SUSPENDED,
    Coordinator,
    NodeInfo,
    index_of_pid,
    pid_prefix,
)
from pooler.pool import PoolKey
from pooler.protocol import builders, parsers
from pooler.server import ServerConn, Target, UpstreamError, login

if TYPE_CHECKING:
    from pooler.node import Node
    from pooler.pool import Pool

log = logging.getLogger("pooler.cluster")


def pool_tag(key: PoolKey) -> str:
    return hashlib.sha256(str(key).encode()).hexdigest()[:8]


def fence_sql(app_name: str, tag: str, epoch: int, pids: list[int], wait_ms: int) -> str:
    """Terminate this role's backends in this database that an older owner of the pool
    registered or named; ``wait_ms`` > 0 waits for each to end (Postgres 14+)."""
    prefix = f"{app_name} {tag} e".replace("'", "''")
    pattern = "^" + "".join(c if c.isalnum() or c == " " else "\\" + c for c in prefix)
    pid_list = ",".join(str(int(p)) for p in pids) or "0"
    terminate = f"pg_terminate_backend(pid, {wait_ms})" if wait_ms else "pg_terminate_backend(pid)"
    return (
        f"SELECT count({terminate}) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND usename = current_user "
        "AND datname = current_database() AND ("
        f"pid IN ({pid_list}) OR (application_name ~ '{pattern}[0-9]+$' AND "
        f"substring(application_name from ' e([0-9]+)$')::bigint < {int(epoch)}))"
    )


def run_query(gsock: Any, sql: str) -> None:
    """A simple query on a logged-in gevent socket; raise UpstreamError on an error."""
    gsock.sendall(builders.query(sql))
    error = None
    while True:
        msg_type, body = netio.read_message(gsock, 1 << 20)
        if msg_type == ord("E"):
            error = parsers.parse_error_fields(body)
        elif msg_type == ord("Z"):
            break
    if error is not None:
        raise UpstreamError(error.get("C") or "XX000", f"fencing failed: {error.get('M')}")


class _Fence:
    """The fence of one epoch: run once, by the first server that logs in."""

    __slots__ = ("done", "running")

    def __init__(self) -> None:
        self.done = Event()
        self.running = False


class Cluster:
    def __init__(self, node: Node, coordinator: Coordinator, secret: bytes) -> None:
        self.node = node
        self.coord = coordinator
        self.secret = secret
        self.owned: dict[PoolKey, int] = {}
        self.fenced: dict[PoolKey, _Fence] = {}  # per owned key: has the epoch's fence run
        self.suspended = False
        self.guards: dict[PoolKey, Semaphore] = {}
        self.pipes: set[Any] = set()  # relayed clients (internal.PipeEnd pairs)
        self.parked: dict[int, Any] = {}  # parked.Parked by BackendKeyData pid
        self.params_cache: dict[PoolKey, tuple[float, str, dict[str, str]]] = {}
        self.draining = False  # the node is stopping: cut relays between transactions
        self.info: NodeInfo | None = None
        coordinator.on_state = self._on_state
        node.cluster = self

    def start(self, node_id: str, host: str, internal_port: int) -> NodeInfo:
        self.info = self.coord.start(node_id, host, internal_port)
        self.node.pid_prefix = pid_prefix(self.info.index)
        log.info(
            "cluster: joined as node %s (index %d, internal port %d)",
            self.info.node_id,
            self.info.index,
            internal_port,
        )
        return self.info

    def begin_shutdown(self) -> None:
        from pooler.cluster.internal import drain

        drain(self)

    def busy_relays(self) -> int:
        """Relayed clients not yet cut (in a transaction, or not yet at rest)."""
        from pooler.cluster.internal import busy

        return busy(self)

    def close(self) -> None:
        """Leave: close the owned pools' servers, then release every lock (callers first
        let the transactions finish), so the next owner finds nothing to fence."""
        for pipe in list(self.pipes):
            pipe.shut()
        for parked in list(self.parked.values()):
            if parked.asleep:
                parked.leave("57P01", "this Greenvisor node is leaving the cluster: reconnect")
        closed = 0
        for key in list(self.owned):
            pool = self.node.pools.get(key)
            if pool is not None:
                closed += len(pool.idle)
                pool.close("this node is leaving the cluster")
        self.owned.clear()
        if closed:
            gevent.sleep(0.2)  # let Postgres end those backends before a new owner starts
        self.coord.close()

    # -- ownership ------------------------------------------------------------------------

    def owner_for(self, key: PoolKey) -> NodeInfo | None:
        """None when this node owns ``key`` (taking the lock if it is free), else the
        owner. Raises LookupError while nobody can be named (retry shortly)."""
        if key in self.owned:
            return None
        if self.suspended:
            raise LookupError("this node lost contact with the cluster coordinator")
        guard = self.guards.get(key)
        if guard is None:
            guard = self.guards[key] = Semaphore()
        with guard:  # one lock attempt per key at a time on this node
            if key in self.owned:
                return None
            return self._owner_for(key)

    def _owner_for(self, key: PoolKey) -> NodeInfo | None:
        epoch = self.coord.acquire(str(key))
        if epoch is not None:
            self.owned[key] = epoch
            self.fenced[key] = _Fence()
            log.info("cluster: this node now owns %s (epoch %d)", key, epoch)
            return None
        owner = self.coord.owner(str(key))
        if owner is None:
            raise LookupError(f"the owner of {key} just left")
        return owner

    def open_server(self, pool: Pool, target: Target) -> ServerConn:
        """The node's hook for opening a server of ``pool`` (see the module docstring)."""
        key = pool.key
        epoch = self.owned.get(key)
        if epoch is None or self.suspended or not self.coord.holds(str(key), epoch):
            raise UpstreamError(
                "57P03",
                f"this node no longer owns {key} in the cluster; reconnect to be served by "
                "the node that does",
            )
        tag = pool_tag(key)
        target = replace(target, application_name=f"{target.application_name} {tag} e{epoch}")
        gate = self.fenced.setdefault(key, _Fence())
        fencing = False
        if not gate.done.is_set():
            if gate.running:
                gate.done.wait(timeout=target.connect_timeout)
                if not gate.done.is_set():
                    raise UpstreamError("57P03", f"fencing older owners of {key} is not done")
            else:
                gate.running = True
                fencing = True
        if fencing:
            try:
                self._fence(key, epoch, tag, target)
            except BaseException:
                gate.running = False
                raise
            gate.done.set()
        gsock, pid, bkey, params = login(target)
        try:
            if not self.coord.register_backend(str(key), epoch, pid):
                raise UpstreamError(
                    "57P03", f"this node lost the ownership of {key} while logging in"
                )
        except BaseException:
            gsock.close()
            raise
        return ServerConn(netio.detach(gsock), pool, target, pid, bkey, params)

    def _fence(self, key: PoolKey, epoch: int, tag: str, target: Target) -> None:
        """Terminate older owners' backends over a short-lived session of its own, named
        "<name> <tag> fence e<epoch>": the one extra connection a takeover needs."""
        base_name = target.application_name.rsplit(" ", 2)[0]
        fence_target = replace(target, application_name=f"{base_name} {tag} fence e{epoch}")
        pids = self.coord.stale_backends(str(key), epoch)
        gsock, _pid, _key, params = login(fence_target)
        try:
            version = params.get("server_version", "0").split(".")[0]
            wait_ms = 2000 if version.isdigit() and int(version) >= 14 else 0
            run_query(gsock, fence_sql(base_name, tag, epoch, pids, wait_ms))
            gsock.sendall(builders.terminate())
        finally:
            gsock.close()
        self.coord.forget_stale(str(key), epoch)
        if pids:
            log.info(
                "cluster: fenced %s: terminated what remained of %d backends registered by "
                "older owners",
                key,
                len(pids),
            )

    # -- session state --------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == SUSPENDED:
            self.suspended = True
            log.warning(
                "cluster: coordinator connection lost; pausing the %d pools this node owns",
                len(self.owned),
            )
            for key in self.owned:
                pool = self.node.pools.get(key)
                if pool is not None:
                    pool.pause()
        elif state == LOST:
            self.suspended = False
            owned = list(self.owned)
            self.owned.clear()
            self.fenced.clear()
            log.error(
                "cluster: coordinator session expired; closing the %d pools this node owned",
                len(owned),
            )
            for key in owned:
                pool = self.node.pools.get(key)
                if pool is not None:
                    self.node._drop_pool(
                        pool,
                        "this node lost the cluster ownership of the pool (coordinator "
                        "session expired); reconnect",
                    )
        elif state == CONNECTED and self.suspended:
            self.suspended = False
            log.warning("cluster: coordinator connection back; resuming owned pools")
            for key in self.owned:
                pool = self.node.pools.get(key)
                if pool is not None:
                    pool.resume()

    # -- cancel ---------------------------------------------------------------------------

    def cancel_parked(self, pid: int, key: bytes) -> None:
        """A cancel for a client this node parked (and maybe piped to the owner since)."""
        parked = self.parked.get(pid)
        if parked is not None:
            parked.cancel(key)

    def close_parked(self, tenant: str, sqlstate: str, message: str) -> int:
        """Close the tenant's parked clients that have not queried yet; how many."""
        found = [p for p in self.parked.values() if p.asleep and p.key.tenant == tenant]
        for parked in found:
            parked.leave(sqlstate, message)
        return len(found)

    def forward_cancel(self, pid: int, key: bytes) -> bool:
        """True when ``pid`` was issued by another node (the cancel is sent there)."""
        index = index_of_pid(pid)
        if self.info is None or index == self.info.index or index == 0:
            return False
        from pooler.cluster.internal import send_cancel_to

        info = self.coord.node_by_index(index)
        if info is not None:
            gevent.spawn(send_cancel_to, self, info, pid, key)
        return True
