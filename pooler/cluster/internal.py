"""Node-to-node connections: relayed clients and forwarded cancels.

Handshake on a fresh TCP connection to a node's internal port:

1. the owner sends ``GVI1`` and a 32-byte random nonce;
2. the peer sends a 4-byte length, a JSON request and HMAC-SHA256(cluster secret,
   nonce + request): ``{"op": "client", tenant, user, database, mode, params}`` for a
   client it has authenticated, ``{"op": "params", ...the same}`` for the pool's server
   parameters, or ``{"op": "cancel", pid, key}``;
3. for a client the owner answers one byte: ``Y`` (then the client's welcome, or its FATAL
   when the pool cannot serve it, exactly as the owner would send it on its own port) or
   ``N`` + a reason (not the owner any more: the peer looks the owner up again). For
   params: ``P`` + a 4-byte length + JSON, ``E`` + a FATAL ErrorResponse (the pool cannot
   log in upstream), or ``N`` + a reason.

A client that logs in on a node that does not own its pool is welcomed there with the
owner's parameters and parked (pooler.cluster.parked); only its first bytes open the
``client`` connection. After ``Y`` the peer is a byte pipe: the owner treats the connection
as one of its own clients (a :class:`~pooler.client.Client`), so transactions, prepared
statements, COPY and cancels all happen on the owner. The pipe is two detached sockets
relayed by watcher callbacks on the hub (:class:`PipeEnd`), no greenlet per client; when
one side's kernel buffer is full the other side stops being read until it drains
(backpressure).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent import get_hub
from gevent import socket as gsocket

from pooler import netio, tls
from pooler.config import TenantConfig, UserConfig
from pooler.pool import PoolKey
from pooler.protocol import builders
from pooler.protocol.errors import ProtocolError
from pooler.protocol.params import client_settings

if TYPE_CHECKING:
    from pooler.cluster.cluster import Cluster
    from pooler.cluster.coordinator import NodeInfo
    from pooler.node import Node

log = logging.getLogger("pooler.cluster")

MAGIC = b"GVI1"
MAX_REQUEST = 64 * 1024
CONNECT_TIMEOUT = 2.0
#: A lookup or lock attempt that takes longer is abandoned and retried (the login's own
#: deadline still applies), so a wedged coordinator connection never hangs a login.
COORDINATOR_TIMEOUT = 3.0


def _mac(secret: bytes, nonce: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, nonce + payload, hashlib.sha256).digest()


def _handshake(cluster: Cluster, info: NodeInfo, request: dict[str, Any]) -> Any:
    """Connect to ``info``'s internal port and send the signed request; return the socket."""
    sock = gsocket.create_connection((info.host, info.internal_port), timeout=CONNECT_TIMEOUT)
    try:
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        hello = netio.recv_exact(sock, 4 + 32)
        if hello[:4] != MAGIC:
            raise OSError("not a Greenvisor internal port")
        payload = json.dumps(request).encode()
        mac = _mac(cluster.secret, hello[4:], payload)
        sock.sendall(len(payload).to_bytes(4, "big") + payload + mac)
    except BaseException:
        sock.close()
        raise
    return sock


# -- the non-owner side -----------------------------------------------------------------------


def relay_client(
    gsock: Any,
    addr: Any,
    node: Node,
    tenant: TenantConfig,
    user: UserConfig,
    database: str,
    mode: str,
    requested: dict[str, str],
) -> bool:
    """Serve an authenticated client whose pool another node owns: welcome it with the
    owner's server parameters and park it until it sends something (see parked). False
    when this node owns the pool (the caller serves the client itself)."""
    from pooler.cluster.parked import NotOwner, owner_params, park
    from pooler.login import LoginFailed  # login imports nothing of the cluster

    cluster = node.cluster
    assert cluster is not None
    key = PoolKey(tenant.external_id, user.db_user_alias, database, mode)
    request = _request_for(key, requested)
    deadline = time.monotonic() + node.settings.client_login_timeout * 0.8
    why = "no owner yet"
    while True:
        try:
            owner = lookup_owner(cluster, key)
        except LookupError as exc:
            why = str(exc)
        else:
            if owner is None:
                return False
            try:
                server_params = owner_params(cluster, key, owner, request)
            except NotOwner as moved:
                why = str(moved)
            except (OSError, netio.ConnectionClosed) as lost:
                why = f"node {owner.node_id} unreachable: {lost}"
            else:
                park(gsock, addr, node, key, request, server_params)
                return True
        if time.monotonic() >= deadline:
            raise LoginFailed("08006", unreachable_message(key, why))
        gevent.sleep(0.25)


#: One (read-only) request dict per pool and client settings: a parked client keeps its
#: request until it wakes, and most clients of a pool send the same settings.
_REQUESTS: dict[tuple[PoolKey, tuple[tuple[str, str], ...]], dict[str, Any]] = {}


def _request_for(key: PoolKey, requested: dict[str, str]) -> dict[str, Any]:
    cache_key = (key, tuple(sorted(requested.items())))
    request = _REQUESTS.get(cache_key)
    if request is None:
        if len(_REQUESTS) >= 4096:
            _REQUESTS.clear()
        request = _REQUESTS[cache_key] = {
            "op": "client",
            "tenant": key.tenant,
            "user": key.user,
            "database": key.database,
            "mode": key.mode,
            "params": requested,
        }
    return request


def lookup_owner(cluster: Cluster, key: PoolKey) -> NodeInfo | None:
    """cluster.owner_for with a time limit; LookupError (saying why) while nobody can be
    named, so callers retry until their own deadline."""
    try:
        with gevent.Timeout(COORDINATOR_TIMEOUT, LookupError("the coordinator is slow")):
            return cluster.owner_for(key)
    except LookupError as exc:
        raise LookupError(str(exc) or "no owner yet") from exc
    except Exception as trouble:  # noqa: BLE001 - coordinator trouble: retry until the deadline
        raise LookupError(str(trouble) or trouble.__class__.__name__) from trouble


def unreachable_message(key: PoolKey, why: str) -> str:
    return (
        f"the cluster node serving {key} cannot be reached ({why}); retry shortly: "
        "another node takes the pool over when that node's session expires"
    )


def send_cancel_to(cluster: Cluster, info: NodeInfo, pid: int, key: bytes) -> None:
    try:
        sock = _handshake(cluster, info, {"op": "cancel", "pid": pid, "key": key.hex()})
    except (OSError, netio.ConnectionClosed) as exc:
        log.info("cancel forwarded to node %s failed: %s", info.node_id, exc)
        return
    try:
        sock.recv(1)  # the owner closes when done
    except OSError:
        pass
    finally:
        sock.close()


# -- the owner side ---------------------------------------------------------------------------


def handle_peer(gsock: Any, addr: Any, node: Node) -> None:
    """The internal port's listener entry point."""
    from pooler.login import LoginFailed, serve

    cluster = node.cluster
    assert cluster is not None
    timeout = gevent.Timeout(node.settings.client_login_timeout)
    timeout.start()
    try:
        gsock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        nonce = os.urandom(32)
        gsock.sendall(MAGIC + nonce)
        length = int.from_bytes(netio.recv_exact(gsock, 4), "big")
        if length > MAX_REQUEST:
            return
        payload = netio.recv_exact(gsock, length)
        mac = netio.recv_exact(gsock, 32)
        if not hmac.compare_digest(mac, _mac(cluster.secret, nonce, payload)):
            log.warning("internal connection from %s refused: bad cluster secret", addr)
            return
        request = json.loads(payload.decode())
        op = request.get("op")
        if op == "cancel":
            node.cancel(int(request["pid"]), bytes.fromhex(request["key"]), forward=False)
            return
        if op not in ("client", "params"):
            return
        try:
            if op == "params":
                _send_params(gsock, node, cluster, request)
                return
            accepted = _accept_client(gsock, node, cluster, request)
        except (LoginFailed, ProtocolError) as refused:
            tag = b"Y" if op == "client" else b"E"
            gsock.sendall(tag + builders.error_response("FATAL", refused.sqlstate, refused.message))
            return
        if accepted is None:
            return
        pool, pid, key, message, settings = accepted
        try:
            gsock.sendall(b"Y" + message)
            sock = netio.detach(gsock)
        except BaseException:
            pool.client_left()
            raise
    except gevent.Timeout as expired:
        if expired is not timeout:
            raise
        return
    except (netio.ConnectionClosed, OSError, ValueError, KeyError):
        return
    finally:
        timeout.close()
    serve(sock, node, pool, addr, pid, key, settings)


def _owned_pool(gsock: Any, node: Node, cluster: Cluster, request: dict[str, Any]) -> Any:
    """The pool a peer's request names, when this node owns it; else answer ``N`` + why
    (the peer looks the owner up again) and return None."""
    snapshot = node.registry.snapshot
    tenant = snapshot.tenant(str(request["tenant"]))
    mode = str(request["mode"])
    user = tenant.find_user(str(request["user"]), mode) if tenant is not None else None
    if tenant is None or user is None:
        gsock.sendall(b"N" + b"tenant or user unknown on the owner (configuration not in step)")
        return None
    database = str(request["database"])
    key = PoolKey(tenant.external_id, user.db_user_alias, database, mode)
    try:
        owner = lookup_owner(cluster, key)
    except LookupError as exc:
        gsock.sendall(b"N" + str(exc).encode()[:400])
        return None
    if owner is not None:
        gsock.sendall(b"N" + f"not the owner of {key}".encode())
        return None
    return node.pool_for(tenant, user, database, mode)


def _send_params(gsock: Any, node: Node, cluster: Cluster, request: dict[str, Any]) -> None:
    """``P`` + length + JSON of the pool's server parameters (warming the pool up first)."""
    from pooler.login import warm_up_for

    pool = _owned_pool(gsock, node, cluster, request)
    if pool is None:
        return
    if pool.server_params is None:
        warm_up_for(pool, node)
    payload = json.dumps(pool.server_params or {}).encode()
    gsock.sendall(b"P" + len(payload).to_bytes(4, "big") + payload)


def _accept_client(gsock: Any, node: Node, cluster: Cluster, request: dict[str, Any]) -> Any:
    from pooler.login import admit, expected_settings, welcome

    pool = _owned_pool(gsock, node, cluster, request)
    if pool is None:
        return None
    requested = client_settings({str(k): str(v) for k, v in request["params"].items()})
    admit(pool, node)
    settings = expected_settings(requested, pool.server_params)
    pid, bkey = node.new_backend_key()
    return pool, pid, bkey, welcome(pool.server_params, settings, pid, bkey), settings


# -- the pipe ---------------------------------------------------------------------------------


#: ReadyForQuery "idle": a relayed chunk from the owner ending with it leaves the client
#: between transactions (the only state in which a stopping node may cut it).
_IDLE_READY = b"Z\x00\x00\x00\x05I"


class PipeEnd(netio.Conn):
    """One side of a relayed client; reads here are written to ``peer``.

    The client side (``to_owner`` False) also tracks ``at_rest``: True when the last bytes
    moved were the owner's ReadyForQuery(idle), with nothing sent by the client since. One
    comparison per chunk, no message parsing."""

    __slots__ = ("peer", "cluster", "to_owner", "at_rest", "pid")

    peer: PipeEnd
    cluster: Cluster
    to_owner: bool
    at_rest: bool
    pid: int  # the client side of a parked client that woke: its key in cluster.parked

    def on_readable(self) -> None:
        try:
            data = self.recv()
            if data is None:
                return
            if not data:
                self.shut()
                return
            if self.to_owner:  # bytes from the owner, for the client
                client = self.peer
                client.at_rest = data.endswith(_IDLE_READY)
            else:
                self.at_rest = False
            if not self.peer.write(data):
                self.stop_reading()  # resumed by the peer's on_drained
            if self.to_owner and self.cluster.draining and self.peer.at_rest:
                self.peer.leave()
        except OSError:
            self.shut()

    def on_drained(self) -> None:
        self.peer.start_reading(self.peer.on_readable)

    def on_write_error(self, exc: OSError) -> None:
        self.shut()

    def leave(self) -> None:
        """This node stops: tell the (client-side, at rest) client why, then close."""
        if self.outbuf is None:
            self.write(builders.error_response("FATAL", "57P01", SHUTDOWN_REASON))
        self.shut()

    def shut(self) -> None:
        cluster = self.cluster
        cluster.pipes.discard(self)
        cluster.pipes.discard(self.peer)
        for end in (self, self.peer):
            if end.pid:
                cluster.parked.pop(end.pid, None)
        self.close_socket()
        self.peer.close_socket()


SHUTDOWN_REASON = (
    "terminating connection due to administrator command: this Greenvisor node is shutting "
    "down; reconnect to reach another node"
)


def pipe(cluster: Cluster, client_sock: Any, owner_sock: Any, pid: int) -> tuple[PipeEnd, PipeEnd]:
    """Relay ``client_sock`` (a socket or tls.TLSStream) and ``owner_sock`` both ways."""
    a = PipeEnd(client_sock)
    b = PipeEnd(owner_sock)
    a.peer, b.peer = b, a
    a.cluster = b.cluster = cluster
    a.to_owner, b.to_owner = False, True
    a.at_rest = b.at_rest = False
    a.pid, b.pid = pid, 0
    cluster.pipes.add(a)
    cluster.pipes.add(b)
    a.start_reading(a.on_readable)
    b.start_reading(b.on_readable)
    if isinstance(client_sock, tls.TLSStream):  # decrypted bytes no readiness announces
        get_hub().loop.run_callback(a.on_readable)
    return a, b


def drain(cluster: Cluster) -> None:
    """Stopping: cut relayed clients that are between transactions now, the others as soon
    as their transaction ends (see PipeEnd.on_readable)."""
    cluster.draining = True
    for parked in list(cluster.parked.values()):
        if parked.asleep:
            parked.leave("57P01", SHUTDOWN_REASON)
    for end in list(cluster.pipes):
        if not end.to_owner and end.at_rest and not end.closed:
            end.leave()


def busy(cluster: Cluster) -> int:
    """Relayed clients a stopping node waits for: piped ones not cut yet, and parked ones
    whose first query is being relayed."""
    waking = sum(1 for p in cluster.parked.values() if p.waking)
    return waking + sum(1 for end in cluster.pipes if not end.to_owner)
