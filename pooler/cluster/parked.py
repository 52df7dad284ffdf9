"""Parked clients: a client relayed to another node holds no internal connection until it
sends something.

A client that logs in on a node that does not own its pool is authenticated here, as
before. Then, instead of piping it to the owner at once (three descriptors for as long as it
stays: its socket and both ends of an internal connection, and a Client object on the
owner), this node answers the login itself: the owner's server parameters (asked once per
pool with the internal ``params`` request and kept ``PARAMS_TTL`` seconds; asking warms the
owner's pool up, so a wrong upstream setting still fails the first login at once), and a
BackendKeyData of this node's. The socket is then *parked*: one read watcher, no greenlet.

When the client's first bytes arrive (:meth:`Parked.on_readable`), they are read and kept,
and a greenlet wakes it (:func:`_wake`): it looks the owner up again, opens the internal
``client`` connection (the owner admits the client into its pool as on its own port), reads
the owner's welcome and drops it (keeping the owner's BackendKeyData: a cancel sent with
this node's key is forwarded with the owner's), writes the kept bytes and pipes from then on
(internal.PipeEnd). If this node has meanwhile become the owner (the old one died), the
client becomes one of this node's own clients instead, with the key it already has: a
parked client lives through its owner's death without reconnecting.

An idle client that has never queried therefore costs one descriptor and one small object;
once it has queried it stays piped until it leaves.

What differs from a client piped at login: the owner counts it against max_clients only
when it wakes (a full pool then refuses its first query with a FATAL 53300, as at login);
a client that sends Terminate or closes while parked never reaches the owner. The tenant's
client_idle_timeout is enforced here while it is parked (the owner enforces it after),
PAUSE/SUSPEND apply when it wakes, and a stopping node closes parked clients at once with
57P01 (they are between transactions by definition).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent import get_hub

from pooler import netio, tls
from pooler.protocol import builders
from pooler.protocol.framing import F_TERMINATE
from pooler.protocol.parsers import parse_backend_key_data, parse_error_fields

if TYPE_CHECKING:
    from pooler.cluster.cluster import Cluster
    from pooler.cluster.coordinator import NodeInfo
    from pooler.config import ConfigSnapshot
    from pooler.node import Node
    from pooler.pool import PoolKey

log = logging.getLogger("pooler.cluster")

#: How long a pool's server parameters learned from its owner are reused for new clients.
PARAMS_TTL = 30.0
MAX_WELCOME_MESSAGE = 64 * 1024
_STATE_ASLEEP, _STATE_WAKING, _STATE_PIPED = "asleep", "waking", "piped"


class NotOwner(Exception):
    """The node asked is not (or no longer) the pool's owner; look it up again."""


class Parked(netio.Conn):
    """A logged-in client of a pool another node owns, before (and, for cancels, after) it
    is piped there. Registered in ``cluster.parked`` by its BackendKeyData pid."""

    __slots__ = (
        "cluster",
        "addr",
        "key",
        "request",
        "pid",
        "bkey",
        "since",
        "state",
        "kept",
        "owner",
        "owner_pid",
        "owner_key",
    )

    cluster: Cluster
    addr: Any
    key: PoolKey
    request: dict[str, Any]
    pid: int
    bkey: bytes
    since: float
    state: str
    kept: bytes
    owner: NodeInfo | None
    owner_pid: int
    owner_key: bytes

    @property
    def asleep(self) -> bool:
        return self.state == _STATE_ASLEEP

    @property
    def waking(self) -> bool:
        """Its first bytes arrived and it is being relayed (or served here)."""
        return self.state == _STATE_WAKING and not self.closed

    def on_readable(self) -> None:
        try:
            data = self.recv()
        except OSError:
            self.gone()
            return
        if data is None:
            return
        if not data or data[0] == F_TERMINATE:  # it left without a query: nothing to relay
            self.gone()
            return
        self.kept = data
        self.stop_reading()
        self.state = _STATE_WAKING
        gevent.spawn(_wake, self)

    def gone(self) -> None:
        self.cluster.parked.pop(self.pid, None)
        self.close_socket()

    def leave(self, sqlstate: str, message: str) -> None:
        """Tell the client why with a FATAL, then close."""
        self.cluster.parked.pop(self.pid, None)
        self.close_socket(builders.error_response("FATAL", sqlstate, message))

    def cancel(self, key: bytes) -> None:
        """A CancelRequest with this client's key: forward it, with the owner's key, to the
        owner (nothing runs while the client is parked)."""
        from pooler.cluster.internal import send_cancel_to

        if self.owner is None or not secrets.compare_digest(key, self.bkey):
            return
        gevent.spawn(send_cancel_to, self.cluster, self.owner, self.owner_pid, self.owner_key)


def owner_params(
    cluster: Cluster, key: PoolKey, owner: NodeInfo, request: dict[str, Any]
) -> dict[str, str]:
    """The server parameters of ``key``'s pool on ``owner`` (cached ``PARAMS_TTL`` s).
    Raises NotOwner, LoginFailed (the owner's FATAL: its pool cannot log in upstream),
    OSError or netio.ConnectionClosed."""
    from pooler.cluster.internal import _handshake
    from pooler.login import LoginFailed

    now = time.monotonic()
    hit = cluster.params_cache.get(key)
    if hit is not None and hit[0] > now and hit[1] == owner.node_id:
        return hit[2]
    sock = _handshake(cluster, owner, {**request, "op": "params"})
    try:
        sock.settimeout(cluster.node.settings.client_login_timeout)  # the owner may warm up
        tag = netio.recv_exact(sock, 1)
        if tag == b"P":
            length = int.from_bytes(netio.recv_exact(sock, 4), "big")
            params = json.loads(netio.recv_exact(sock, length).decode()) if length else {}
        elif tag == b"E":
            _kind, body = netio.read_message(sock, MAX_WELCOME_MESSAGE)
            fields = parse_error_fields(body)
            raise LoginFailed(fields.get("C", "08006"), fields.get("M", "upstream login failed"))
        else:
            raise NotOwner(sock.recv(512).decode(errors="replace") or "refused")
    finally:
        sock.close()
    if not isinstance(params, dict):
        raise NotOwner("the owner sent malformed parameters")
    params = {str(k): str(v) for k, v in params.items()}
    if len(cluster.params_cache) > 4096:
        cluster.params_cache.clear()
    cluster.params_cache[key] = (now + PARAMS_TTL, owner.node_id, params)
    return params


def park(
    gsock: Any,
    addr: Any,
    node: Node,
    key: PoolKey,
    request: dict[str, Any],
    server_params: dict[str, str],
) -> None:
    """Welcome an authenticated client with the owner's parameters and park it."""
    from pooler.login import expected_settings, welcome

    cluster = node.cluster
    assert cluster is not None
    settings = expected_settings(request["params"], server_params)
    pid, bkey = node.new_backend_key()
    gsock.sendall(welcome(server_params, settings, pid, bkey))
    pipelined = tls.is_tls(gsock) and gsock.pending()
    parked = Parked(tls.detach(gsock))
    parked.cluster = cluster
    parked.addr = addr
    parked.key = key
    parked.request = request
    parked.pid = pid
    parked.bkey = bkey
    parked.since = time.monotonic()
    parked.state = _STATE_ASLEEP
    parked.kept = b""
    parked.owner = None
    parked.owner_pid = 0
    parked.owner_key = b""
    cluster.parked[pid] = parked
    parked.start_reading(parked.on_readable)
    if pipelined:  # already decrypted: no watcher would see it
        get_hub().loop.run_callback(parked.on_readable)


def _wake(parked: Parked) -> None:
    """The parked client sent its first bytes: pipe it to the owner, or serve it here."""
    from pooler.cluster.internal import SHUTDOWN_REASON, lookup_owner, unreachable_message
    from pooler.login import LoginFailed

    cluster = parked.cluster
    node = cluster.node
    deadline = time.monotonic() + node.settings.client_login_timeout
    why = "no owner yet"
    try:
        while not parked.closed:
            try:
                owner = lookup_owner(cluster, parked.key)
            except LookupError as exc:
                why = str(exc)
            else:
                if owner is None:
                    _serve_here(parked)
                    return
                try:
                    if _pipe_to(parked, owner):
                        return
                    why = f"node {owner.node_id} did not take the client"
                except NotOwner as moved:
                    why = str(moved)
                except (OSError, netio.ConnectionClosed) as lost:
                    why = f"node {owner.node_id} unreachable: {lost}"
            if cluster.draining:
                parked.leave("57P01", SHUTDOWN_REASON)
                return
            if time.monotonic() >= deadline:
                parked.leave("08006", unreachable_message(parked.key, why))
                return
            gevent.sleep(0.25)
    except LoginFailed as refused:
        parked.leave(refused.sqlstate, refused.message)
    except Exception:  # noqa: BLE001 - one client's trouble must not reach the hub
        log.exception("relaying a parked client of %s failed", parked.key)
        parked.leave("08006", "the relay to the pool's node failed; reconnect")


def _pipe_to(parked: Parked, owner: NodeInfo) -> bool:
    """Open the internal connection to ``owner``, take its welcome, pipe. Raises NotOwner,
    LoginFailed (the owner's FATAL for this client), OSError or ConnectionClosed."""
    from pooler.cluster.internal import _handshake, pipe
    from pooler.login import LoginFailed

    cluster = parked.cluster
    peer = _handshake(cluster, owner, parked.request)
    try:
        peer.settimeout(cluster.node.settings.client_login_timeout)  # the owner may warm up
        if netio.recv_exact(peer, 1) != b"Y":
            raise NotOwner(peer.recv(512).decode(errors="replace") or "refused")
        owner_pid, owner_key = 0, b""
        while True:  # the owner's welcome: AuthenticationOk, ParameterStatus..., K, Z
            kind, body = netio.read_message(peer, MAX_WELCOME_MESSAGE)
            if kind == ord("K"):
                owner_pid, owner_key = parse_backend_key_data(body)
            elif kind == ord("E"):
                fields = parse_error_fields(body)
                raise LoginFailed(fields.get("C", "08006"), fields.get("M", "refused"))
            elif kind == ord("Z"):
                break
        sock = netio.detach(peer)
    except BaseException:
        peer.close()
        raise
    if parked.closed:  # stopped meanwhile (drain): nothing to relay
        sock.close()
        return True
    parked.owner, parked.owner_pid, parked.owner_key = owner, owner_pid, owner_key
    parked.state = _STATE_PIPED
    client_end, owner_end = pipe(cluster, parked.sock, sock, parked.pid)
    if not owner_end.write(parked.kept):
        client_end.stop_reading()  # resumed when the owner side drains
    parked.kept = b""
    return True


def _serve_here(parked: Parked) -> None:
    """This node owns the pool now: the client becomes one of its own (same key)."""
    from pooler.login import LoginFailed, admit, expected_settings, serve

    cluster = parked.cluster
    node = cluster.node
    key = parked.key
    tenant = node.registry.snapshot.tenant(key.tenant)
    user = tenant.find_user(key.user, key.mode) if tenant is not None else None
    if tenant is None or user is None:
        raise LoginFailed(
            "28000", f"tenant or user of {key} is no longer configured: reconnect to log in again"
        )
    pool = node.pool_for(tenant, user, key.database, key.mode)
    admit(pool, node)
    if parked.closed:
        pool.client_left()
        return
    cluster.parked.pop(parked.pid, None)
    parked.state = _STATE_PIPED
    # Expected settings from this pool's servers, not the old owner's: its application_name
    # carries the old epoch, which must not be SET on this node's servers.
    settings = expected_settings(parked.request["params"], pool.server_params)
    client = serve(parked.sock, node, pool, parked.addr, parked.pid, parked.bkey, settings)
    client.carry = parked.kept  # read already: handed over as if carried from a read
    client.bytes_in = len(parked.kept)
    parked.kept = b""
    get_hub().loop.run_callback(client._on_client_readable)


def expire(cluster: Cluster, now: float, snapshot: ConfigSnapshot) -> None:
    """Close parked clients past their tenant's client_idle_timeout."""
    for parked in list(cluster.parked.values()):
        if not parked.asleep:
            continue
        tenant = snapshot.tenant(parked.key.tenant)
        limit = tenant.client_idle_timeout if tenant is not None else 0
        if limit and now - parked.since > limit:
            parked.leave(
                "57P05",
                f"terminating connection due to client_idle_timeout ({limit} s without a "
                "query); reconnect when needed",
            )
