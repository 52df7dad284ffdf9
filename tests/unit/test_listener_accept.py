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
import greenlet
import pytest
from gevent import socket as gsocket

from pooler import listener as listener_mod
from pooler.cluster import setup

pytestmark = pytest.mark.unit


def _hub_keeps_running(server: Any, port: int, handled: list[float]) -> float:
    """Connect once, then watch the hub for a second; return the longest stall.

    A watchdog thread connects again and again after 2 s so that a hub blocked in accept()
    wakes up and the test fails instead of hanging. Each connection sends a byte, as a
    client's first message would: the protocol listeners accept only then
    (TCP_DEFER_ACCEPT)."""
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(2.0):
            return
        while not done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as knock:
                    knock.sendall(b"\0")
            except OSError:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        peer = gsocket.create_connection(("127.0.0.1", port))
        peer.sendall(b"\0")
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


def _closed_by_the_server(peer: Any) -> bool:
    """EOF, or a reset: closed with our first byte unread, the kernel answers with RST."""
    peer.settimeout(5)
    try:
        return bool(peer.recv(1) == b"")
    except ConnectionResetError:
        return True


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
    for peer in peers:
        peer.sendall(b"\0")  # a client speaks first: accepted only then (TCP_DEFER_ACCEPT)
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
                assert _closed_by_the_server(peer)
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
    peer.sendall(b"\0")
    try:
        assert started.wait(5)
        assert len(server.logins) == 1
        began = time.monotonic()
        server.stop(timeout=0.1)
        assert time.monotonic() - began < 5
        assert not server.logins
        assert _closed_by_the_server(peer)
    finally:
        peer.close()


def test_a_login_that_raises_is_reported_and_the_listener_serves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each login runs in a plain greenlet that the accept loop switches to at once: an
    error its handler lets out goes to the hub's handle_error (as gevent's Greenlet reported
    it), its socket is closed, and neither the accept loop nor the next logins notice."""
    reported: list[Any] = []
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "handle_error", lambda ctx, t, v, tb: reported.append((ctx, v)))
    kinds: set[type] = set()
    handled: list[int] = []

    def handle(sock: Any, addr: Any) -> bool:
        me = gevent.getcurrent()
        kinds.add(type(me))
        assert me.parent is hub
        handled.append(addr[1])
        nth = len(handled)
        if nth == 1:  # before its first wait: in the accept loop's batch
            raise RuntimeError("a bug in one login")
        gevent.sleep(0)  # the first wait: back to the accept loop
        if nth == 2:
            raise RuntimeError("a bug after a wait")
        return False

    server, port = _login_server(handle)
    peers = [gsocket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for peer in peers:
        peer.sendall(b"\0")
    try:
        with gevent.Timeout(10):
            while len(handled) < 3 or server.logins:
                gevent.sleep(0.01)
        # Reported as the login's own (the greenlet as context), not as an error of the
        # listener's watcher or of a loop callback it escaped into.
        assert [str(v) for _, v in reported] == ["a bug in one login", "a bug after a wait"]
        assert all(type(ctx) is greenlet.greenlet for ctx, _ in reported)
        for peer in peers:
            assert _closed_by_the_server(peer)
        # The listener still serves the logins that come after.
        late = gsocket.create_connection(("127.0.0.1", port))
        late.sendall(b"\0")
        with gevent.Timeout(10):
            while len(handled) < 4:
                gevent.sleep(0.01)
        assert _closed_by_the_server(late)
        late.close()
        assert kinds == {greenlet.greenlet}  # plain, switched to from the accept loop
    finally:
        server.stop()
        for peer in peers:
            peer.close()


def test_a_login_accepted_outside_the_hub_is_spawned() -> None:
    """accept_logins called from a greenlet of its own (not the hub's readiness callback)
    spawns each login instead of switching to it: that greenlet would not be switched back
    to when the login first waits."""
    from pooler import loginio

    done: list[int] = []
    kinds: set[type] = set()

    def handle(sock: Any, addr: Any) -> bool:
        kinds.add(type(gevent.getcurrent()))
        gevent.sleep(0.01)
        done.append(addr[1])
        return False

    lsock = listener_mod.protocol_listener("transaction", "127.0.0.1", 0, "--port", handle)
    listening = lsock.server.socket
    port = listening.getsockname()[1]

    peer = gsocket.create_connection(("127.0.0.1", port))
    peer.sendall(b"\0")
    logins: set[Any] = set()
    try:
        with gevent.Timeout(10):
            accepted = False
            while not accepted:
                gevent.sleep(0.01)
                before = len(logins) + len(done)
                assert gevent.spawn(loginio.accept_logins, listening, handle, logins).get()
                accepted = len(logins) + len(done) > before
            while not done:
                gevent.sleep(0.01)
        assert _closed_by_the_server(peer)
        assert kinds == {gevent.Greenlet}
    finally:
        peer.close()
        listening.close()


def _silent_then_speaking(defer_seconds: int) -> tuple[int, bool, bool]:
    """A protocol listener with ``defer_seconds``; one client connects and stays silent for
    0.3 s, then sends a byte. Returns (TCP_DEFER_ACCEPT as read back, handled while silent,
    handled after the byte)."""
    handled: list[float] = []

    def handle(sock: Any, addr: Any) -> None:
        handled.append(time.monotonic())

    lst = listener_mod.protocol_listener(
        "transaction", "127.0.0.1", 0, "--port", handle, defer_seconds=defer_seconds
    )
    server = lst.server
    option = server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
    server.start()
    peer = gsocket.create_connection(("127.0.0.1", server.socket.getsockname()[1]))
    try:
        gevent.sleep(0.3)
        while_silent = bool(handled)
        peer.sendall(b"\0")
        with gevent.Timeout(5, False):
            while not handled:
                gevent.sleep(0.01)
        return option, while_silent, bool(handled)
    finally:
        peer.close()
        server.stop()


def test_a_silent_connection_is_accepted_only_once_it_speaks() -> None:
    """TCP_DEFER_ACCEPT (PgBouncer's tcp_defer_accept, on by default): the kernel holds a
    connection until its first bytes, so no login starts (no descriptor, no greenlet) for a
    client that never sends any, and a login's first read finds its bytes there."""
    option, while_silent, after = _silent_then_speaking(listener_mod.DEFER_ACCEPT_SECONDS)
    assert option >= listener_mod.DEFER_ACCEPT_SECONDS  # the kernel rounds up (to 63)
    assert not while_silent, "a connection that sent nothing was accepted"
    assert after, "the connection was not accepted after it sent its first byte"


def test_defer_accept_off_accepts_at_once() -> None:
    option, while_silent, after = _silent_then_speaking(0)
    assert option == 0
    assert while_silent and after


def test_defer_accept_is_for_tcp_only(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(listener_mod.log, "warning", lambda msg, *args: warnings.append(msg % args))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert listener_mod.defer_accept(unix, 45) is False
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp6:
        assert listener_mod.defer_accept(tcp6, 45) is True
        assert tcp6.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) >= 45
    refused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refused.close()  # setsockopt fails (EBADF): a warning, and the start goes on
    assert listener_mod.defer_accept(refused, 45) is False
    assert len(warnings) == 1 and "cannot set TCP_DEFER_ACCEPT=45" in warnings[0]


def test_tcp_defer_accept_option_takes_whole_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.management.base import CommandError

    from pooler.management.commands.runpooler import Command

    def parsed(*argv: str) -> int:
        value: int = (
            Command().create_parser("manage.py", "runpooler").parse_args(argv).tcp_defer_accept
        )
        return value

    monkeypatch.delenv("TCP_DEFER_ACCEPT", raising=False)
    assert parsed() == listener_mod.DEFER_ACCEPT_SECONDS
    assert parsed("--tcp-defer-accept", "0") == 0
    for bad in ("-1", "4.5", "soon"):
        with pytest.raises(CommandError, match="whole number of seconds"):
            parsed("--tcp-defer-accept", bad)
    monkeypatch.setenv("TCP_DEFER_ACCEPT", "7")
    assert parsed() == 7
    monkeypatch.setenv("TCP_DEFER_ACCEPT", "-3")
    with pytest.raises(CommandError, match="env TCP_DEFER_ACCEPT"):
        parsed()
