"""Node-to-node connections: relayed clients and forwarded cancels.

Handshake on a fresh TCP connection to a node's internal port:

1. the owner sends ``GVI1`` and a 32-byte random nonce;
2. the peer sends a 4-byte length, a JSON request and HMAC-SHA256(cluster secret,
   nonce + request): ``{"op": "client", tenant, user, database, mode, params}`` for a
   client it has authenticated, or ``{"op": "cancel", pid, key}``;
3. for a client the owner answers one byte: ``Y`` (then the client's welcome, or its FATAL
   when the pool cannot serve it, exactly as the owner would send it on its own port) or
   ``N`` + a reason (not the owner any more: the peer looks the owner up again).

After ``Y`` the peer is a byte pipe: the owner treats the connection as one of its own
clients (a :class:`~pooler.client.Client`), so transactions, prepared statements, COPY and
the BackendKeyData all come from the owner. The pipe is two detached sockets relayed by
watcher callbacks on the hub (:class:`PipeEnd`), no greenlet per client; when one side's
kernel buffer is full the other side stops being read until it drains (backpressure).
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
from pooler.client import Client
from pooler.config import TenantConfig, UserConfig
from pooler.pool import PoolKey
from pooler.protocol import builders
from pooler.protocol.errors import ProtocolError
from pooler.protocol.params import REPORTED, client_settings

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
    node: Node,
    tenant: TenantConfig,
    user: UserConfig,
    database: str,
    mode: str,
    params: dict[str, str],
) -> bool:
    """Hand an authenticated client to the pool's owner; False when this node owns it."""
    from pooler.login import LoginFailed  # login imports nothing of the cluster

    cluster = node.cluster
    assert cluster is not None
    key = PoolKey(tenant.external_id, user.db_user_alias, database, mode)
    deadline = time.monotonic() + node.settings.client_login_timeout * 0.8
    why = "no owner yet"
    while True:
        try:
            with gevent.Timeout(COORDINATOR_TIMEOUT, LookupError("the coordinator is slow")):
                owner = cluster.owner_for(key)
        except Exception as exc:  # noqa: BLE001 - coordinator trouble: retry until the deadline
            owner, why = None, str(exc) or exc.__class__.__name__
        else:
            if owner is None:
                return False
            request = {
                "op": "client",
                "tenant": tenant.external_id,
                "user": user.db_user_alias,
                "database": database,
                "mode": mode,
                "params": params,
            }
            try:
                peer = _handshake(cluster, owner, request)
                peer.settimeout(node.settings.client_login_timeout)  # the owner may warm up
                answer = netio.recv_exact(peer, 1)
                if answer == b"Y":
                    pipelined = tls.is_tls(gsock) and gsock.pending()  # decrypted, unread
                    _pipe(cluster, tls.detach(gsock), netio.detach(peer), bool(pipelined))
                    return True
                why = peer.recv(512).decode(errors="replace") or "refused"
                peer.close()
            except (OSError, netio.ConnectionClosed) as exc:
                why = f"node {owner.node_id} unreachable: {exc}"
        if time.monotonic() >= deadline:
            raise LoginFailed(
                "08006",
                f"the cluster node serving {key} cannot be reached ({why}); retry shortly: "
                "another node takes the pool over when that node's session expires",
            )
        gevent.sleep(0.25)


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
    from pooler.login import LoginFailed

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
        if request.get("op") == "cancel":
            node.cancel(int(request["pid"]), bytes.fromhex(request["key"]), forward=False)
            return
        if request.get("op") != "client":
            return
        try:
            accepted = _accept_client(gsock, node, cluster, request)
        except LoginFailed as exc:
            gsock.sendall(b"Y" + builders.error_response("FATAL", exc.sqlstate, exc.message))
            return
        except ProtocolError as exc:
            gsock.sendall(b"Y" + builders.error_response("FATAL", exc.sqlstate, exc.message))
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
    except gevent.Timeout as exc:
        if exc is not timeout:
            raise
        return
    except (netio.ConnectionClosed, OSError, ValueError, KeyError):
        return
    finally:
        timeout.close()
    client = Client(sock, node, pool, addr, pid, key, settings)
    node.client_opened(client)
    client.start()


def _accept_client(gsock: Any, node: Node, cluster: Cluster, request: dict[str, Any]) -> Any:
    from pooler.login import LoginFailed, _warm_up, _welcome

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
        with gevent.Timeout(COORDINATOR_TIMEOUT, LookupError("the coordinator is slow")):
            owner = cluster.owner_for(key)
    except Exception as exc:  # noqa: BLE001 - coordinator trouble: the peer retries
        gsock.sendall(b"N" + (str(exc) or exc.__class__.__name__).encode()[:400])
        return None
    if owner is not None:
        gsock.sendall(b"N" + f"not the owner of {key}".encode())
        return None
    pool = node.pool_for(tenant, user, database, mode)
    if not pool.client_joined():
        raise LoginFailed(
            "53300",
            f"too many client connections for {pool.key} (max_clients "
            f"{pool.limits.max_clients}): close idle connections or raise max_clients",
        )
    try:
        if pool.server_params is None:
            _warm_up(
                pool, min(pool.limits.checkout_timeout, node.settings.client_login_timeout * 0.8)
            )
        settings = client_settings({str(k): str(v) for k, v in request["params"].items()})
        for name in REPORTED.values():
            if name not in settings and name in (pool.server_params or {}):
                settings[name] = (pool.server_params or {})[name]
        pid, bkey = node.new_backend_key()
        message = _welcome(pool, settings, pid, bkey)
    except BaseException:
        pool.client_left()
        raise
    return pool, pid, bkey, message, settings


# -- the pipe ---------------------------------------------------------------------------------


#: ReadyForQuery "idle": a relayed chunk from the owner ending with it leaves the client
#: between transactions (the only state in which a stopping node may cut it).
_IDLE_READY = b"Z\x00\x00\x00\x05I"


class PipeEnd(netio.Conn):
    """One side of a relayed client; reads here are written to ``peer``.

    The client side (``to_owner`` False) also tracks ``at_rest``: True when the last bytes
    moved were the owner's ReadyForQuery(idle), with nothing sent by the client since. One
    comparison per chunk, no message parsing."""

    __slots__ = ("peer", "cluster", "to_owner", "at_rest")

    peer: PipeEnd
    cluster: Cluster
    to_owner: bool
    at_rest: bool

    def on_readable(self) -> None:
        try:
            view, n = self.recv()
            if n == -1:
                return
            if n == 0:
                self.shut()
                return
            if self.to_owner:  # bytes from the owner, for the client
                client = self.peer
                client.at_rest = view[max(0, n - 6) : n] == _IDLE_READY
            else:
                self.at_rest = False
            if not self.peer.write(view[:n]):
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
        self.cluster.pipes.discard(self)
        self.cluster.pipes.discard(self.peer)
        self.close_socket()
        self.peer.close_socket()


SHUTDOWN_REASON = (
    "terminating connection due to administrator command: this Greenvisor node is shutting "
    "down; reconnect to reach another node"
)


def _pipe(cluster: Cluster, client_sock: Any, owner_sock: Any, pipelined: bool = False) -> None:
    a = PipeEnd(client_sock)
    b = PipeEnd(owner_sock)
    a.peer, b.peer = b, a
    a.cluster = b.cluster = cluster
    a.to_owner, b.to_owner = False, True
    a.at_rest = b.at_rest = False
    cluster.pipes.add(a)
    cluster.pipes.add(b)
    a.start_reading(a.on_readable)
    b.start_reading(b.on_readable)
    if pipelined:  # TLS already holds client bytes: no readiness event will announce them
        get_hub().loop.run_callback(a.on_readable)


def drain(cluster: Cluster) -> None:
    """Stopping: cut relayed clients that are between transactions now, the others as soon
    as their transaction ends (see PipeEnd.on_readable)."""
    cluster.draining = True
    for end in list(cluster.pipes):
        if not end.to_owner and end.at_rest and not end.closed:
            end.leave()


def busy(cluster: Cluster) -> int:
    return sum(1 for end in cluster.pipes if not end.to_owner)
