"""Listening sockets we build ourselves must never block the hub in accept().

gevent's StreamServer accepts up to 100 connections per readiness event and relies on
EAGAIN to stop; a blocking listening socket instead blocks the whole process in accept()
after the first connection, until another one arrives. On the internal (node-to-node) port
that froze a relaying node for tens of seconds: its ZooKeeper session expired and its
relayed clients held the owner's servers inside their transactions (the flaky kill -9
test in tests/integration/test_cluster.py).
"""

from __future__ import annotations

import _socket
import socket
import threading
import time
from typing import Any

import gevent
import gevent.event
import pytest
from gevent import socket as gsocket

from pooler import listener as listener_mod
from pooler.cluster import setup

pytestmark = pytest.mark.unit


def _hub_keeps_running(server: Any, port: int, handled: list[float]) -> float:
    """Connect once, then watch the hub for a second; return the longest stall.

    A watchdog thread connects again and again after 2 s so that a hub blocked in accept()
    wakes up and the test fails instead of hanging."""
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(2.0):
            return
        while not done.is_set():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        peer = gsocket.create_connection(("127.0.0.1", port))
        ticks = [time.monotonic()]
        while ticks[-1] - ticks[0] < 1.0:
            gevent.sleep(0.05)
            ticks.append(time.monotonic())
        peer.close()
    finally:
        done.set()
        thread.join(5)
        server.stop()
    assert handled, "the connection was never handled"
    return max(b - a for a, b in zip(ticks, ticks[1:], strict=False))


def test_internal_listener_never_blocks_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    handled: list[float] = []

    def handle(sock: Any, addr: Any, node: Any) -> None:
        handled.append(time.monotonic())
        sock.close()

    monkeypatch.setattr(setup, "handle_peer", handle)
    server = setup.internal_listener("127.0.0.1", 0, None)  # type: ignore[arg-type]
    assert server.socket.getblocking() is False
    server.start()
    stall = _hub_keeps_running(server, server.socket.getsockname()[1], handled)
    assert stall < 1.0, f"the hub stalled {stall:.2f} s after one internal connection"


def test_reuse_port_listener_never_blocks_the_hub() -> None:
    handled: list[float] = []

    def handle(sock: Any, addr: Any) -> None:
        handled.append(time.monotonic())
        sock.close()

    lst = listener_mod.protocol_listener(
        "transaction", "127.0.0.1", 0, "--port", handle, reuse_port=True
    )
    server = lst.server
    server.start()
    stall = _hub_keeps_running(server, server.socket.getsockname()[1], handled)
    assert stall < 1.0, f"the hub stalled {stall:.2f} s after one client connection"


def _login_server(handle: Any) -> tuple[Any, int]:
    lst = listener_mod.protocol_listener("transaction", "127.0.0.1", 0, "--port", handle)
    lst.server.start()
    return lst.server, lst.server.socket.getsockname()[1]


def test_each_login_gets_a_plain_socket_closed_after_it_unless_detached() -> None:
    """More connections at once than one readiness event accepts (MAX_ACCEPT): every one
    is handled, with a plain non-blocking socket; a socket the login did not take is closed
    (the peer reads EOF), one it detached, or took itself (the handler returns True, as
    login.handle_client does when the relay took the socket object), stays open."""
    from pooler import loginio

    seen: list[tuple[type, int]] = []
    kept: list[Any] = []

    def handle(sock: Any, addr: Any) -> bool:
        seen.append((type(sock), addr[1]))
        assert sock.getblocking() is False
        if len(seen) % 3 == 1:
            kept.append(socket.socket(fileno=sock.detach()))
        elif len(seen) % 3 == 2:
            kept.append(sock)
            return True
        return False

    server, port = _login_server(handle)
    count = loginio.MAX_ACCEPT + 20
    peers = [gsocket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        with gevent.Timeout(10):
            while len(seen) < count:
                gevent.sleep(0.01)
        assert {kind for kind, _ in seen} == {_socket.socket}
        assert sorted(p for _, p in seen) == sorted(p.getsockname()[1] for p in peers)
        assert not server.logins  # every login greenlet is gone
        by_port = {p.getsockname()[1]: p for p in peers}
        detached = {k.getpeername()[1] for k in kept}
        for port_, peer in by_port.items():
            if port_ in detached:
                peer.setblocking(False)
                with pytest.raises(BlockingIOError):
                    peer.recv(1)  # still open: the login took it
            else:
                peer.settimeout(5)
                assert peer.recv(1) == b""  # closed for us
    finally:
        server.stop()
        for sock in peers + kept:
            sock.close()


def test_stop_cuts_logins_still_in_progress() -> None:
    """What the greenlet pool did at stop(): a login still running after the timeout is
    killed, and its socket closed."""
    started = gevent.event.Event()

    def handle(sock: Any, addr: Any) -> None:
        started.set()
        gevent.sleep(60)

    server, port = _login_server(handle)
    peer = gsocket.create_connection(("127.0.0.1", port))
    try:
        assert started.wait(5)
        assert len(server.logins) == 1
        began = time.monotonic()
        server.stop(timeout=0.1)
        assert time.monotonic() - began < 5
        assert not server.logins
        peer.settimeout(5)
        assert peer.recv(1) == b""
    finally:
        peer.close()
