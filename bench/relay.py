"""Microbenchmark cases for the whole relay path of one round trip, sockets included.

``bench.micro``'s other cases time the sans-IO scanners alone. These drive the real
:class:`pooler.client.Client`, :class:`pooler.server.ServerConn` and
:class:`pooler.pool.Pool` objects over Unix socket pairs, calling the watcher callbacks
directly (no event loop), so they also count what the scanners leave out: the receive and
send calls, the checkout, the release and hand-off to a waiting client, the session-state
look, the counters. Two cases, both with pgbench's select-only ``-M extended`` streams and
the transaction-mode defaults (prepared-statement watching on, session-state policy reset):

* ``relay.handoff``: pgbench -c 100 on a pool of 20 in miniature. Two clients share one
  server: while A's query runs, B's arrives and waits; A's reply releases the server, which
  goes straight to B, whose query is forwarded. One call = one transaction.
* ``relay.prepared_handoff``: the same with pgbench's ``-M prepared`` streams: each client
  prepared its statement once; then every transaction is Bind/Describe/Execute/Sync of it,
  rewritten to the server's name for it.
* ``relay.linked``: a client that keeps its server (a transaction block, or session mode):
  request forwarded, reply forwarded, nothing else. One call = one round trip.
  ``relay.linked_native``: the same with the server's event run as runpooler runs it, by
  pooler/_sysio.c's watcher, whose C relay forwards such a reply (compiled build only).
* ``relay.idle_pool``: one client on a quiet pool (pgbench -c 1, the latency target): the
  server is checked out of the idle list, linked, released and parked idle again on every
  transaction. One call = one transaction.

The peers' ends of the socket pairs are read and written by the harness itself, so each
call also pays for those system calls (about as much again as the relay's own); compare
runs with each other, not with the pooler's CPU per transaction.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pooler.client import Client
from pooler.node import Node, NodeSettings
from pooler.pool import Pool, PoolKey, PoolLimits
from pooler.server import ServerConn, Target

_BUF = 1 << 16


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


def relay_objects(
    clients: int,
) -> tuple[Pool, list[Client], list[socket.socket], ServerConn, Any]:
    """A pool of one server (idle) and ``clients`` logged-in clients, each over a socket
    pair: (pool, clients, the clients' peer sockets, the server, the server's peer socket).
    Also used by the unit tests of the relay's waiting path."""
    node = Node(NodeSettings())  # nothing here dials out: the pool opens no server
    limits = PoolLimits(size=1, max_clients=100, checkout_timeout=30.0, max_prepared_statements=200)
    pool = Pool(PoolKey("t1", "app", "app", "transaction"), limits, lambda _pool: None)
    params = {"client_encoding": "UTF8", "application_name": "pgbench"}
    server_sock, server_peer = _pair()
    target = Target("127.0.0.1", 5432, "app", "app", "")  # never dialled: the pair is the server
    server = ServerConn(server_sock, pool, target, 1, b"k", dict(params))
    pool.idle.append(server)
    relays, peers = [], []
    for i in range(clients):
        sock, peer = _pair()
        client = Client(sock, node, pool, ("127.0.0.1", i), 100 + i, b"k", dict(params))
        pool.clients += 1
        client.start()  # its read watcher, as after a login (the loop never runs here)
        relays.append(client)
        peers.append(peer)
    return pool, relays, peers, server, server_peer


def handoff_case(
    request: bytes, reply: bytes, first: tuple[bytes, bytes] | None = None
) -> Callable[[], None]:
    """``relay.handoff`` (see the module docstring). ``first``: a transaction each client
    runs once, alone, before (e.g. the one that prepares its statement)."""
    pool, (a, b), (peer_a, peer_b), server, server_peer = relay_objects(2)
    if first is not None:
        for client, peer in ((a, peer_a), (b, peer_b)):
            peer.sendall(first[0])
            client._on_client_readable()
            server_peer.recv(_BUF)
            server_peer.sendall(first[1])
            client._on_server_readable()
            peer.recv(_BUF)
            if client.server is not None:
                raise AssertionError("the first transaction did not release the server")
    # A holds the server with its query in flight.
    peer_a.sendall(request)
    a._on_client_readable()
    server_peer.recv(_BUF)
    state = {"running": a, "waiting": b}
    peers = {id(a): peer_a, id(b): peer_b}

    def run() -> None:
        running, waiting = state["running"], state["waiting"]
        peers[id(waiting)].sendall(request)
        waiting._on_client_readable()  # no idle server: waits
        server_peer.sendall(reply)
        running._on_server_readable()  # reply out, release, hand-off, B's query in
        if waiting.server is not server or running.server is not None:
            raise AssertionError("the server was not handed to the waiting client")
        peers[id(running)].recv(_BUF)
        server_peer.recv(_BUF)
        state["running"], state["waiting"] = waiting, running

    return run


def native_watcher(conn: Any) -> Callable[[], object]:
    """Give ``conn`` (a ServerConn or Client) pooler._sysio's read watcher, as under
    runpooler's hub, still running the callback it ran; return what one readiness event on
    it does (Watcher.fire: the C relay of pooler/_sysio.c when the event is its case, else
    the callback)."""
    from gevent import get_hub

    from pooler import hub

    sysio, why = hub._native()
    if sysio is None:
        raise RuntimeError(f"no native watcher: {why}")
    callback = conn.reading
    conn.stop_reading()
    conn.rw = sysio.Watcher(get_hub().loop, conn.fd)
    if callback is not None:
        conn.start_reading(callback)
    return conn.rw.fire  # type: ignore[no-any-return]


def linked_case(
    request: bytes, reply: bytes, in_block: bytes, native: bool = False
) -> Callable[[], None]:
    """``relay.linked`` (see the module docstring): replies end in ReadyForQuery 'T', so the
    server stays with the client. ``native``: the server's event as pooler/_sysio.c's watcher
    runs it (``relay.linked_native``: its C relay), not the compiled Python callback."""
    pool, (a,), (peer_a,), server, server_peer = relay_objects(1)
    event = native_watcher(server) if native else a._on_server_readable
    tail = reply.rindex(b"Z\x00\x00\x00\x05")
    reply_in_block = reply[:tail] + in_block

    def run() -> None:
        peer_a.sendall(request)
        a._on_client_readable()
        server_peer.recv(_BUF)
        server_peer.sendall(reply_in_block)
        event()
        if a.server is not server:
            raise AssertionError("the server left a client inside a transaction block")
        peer_a.recv(_BUF)

    return run


def idle_pool_case(request: bytes, reply: bytes) -> Callable[[], None]:
    """``relay.idle_pool`` (see the module docstring)."""
    pool, (a,), (peer_a,), server, server_peer = relay_objects(1)

    def run() -> None:
        peer_a.sendall(request)
        a._on_client_readable()  # checkout from idle, link, forward
        server_peer.recv(_BUF)
        server_peer.sendall(reply)
        a._on_server_readable()  # forward, release, park
        if a.server is not None or pool.idle[-1] is not server:
            raise AssertionError("the server did not go back to the idle list")
        peer_a.recv(_BUF)

    return run
