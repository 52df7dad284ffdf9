"""Buffered reads for a client's login: one recv() takes whatever the kernel already has.

Theory of operation. The login reads each message as a header then a body
(:func:`pooler.netio.recv_exact`), which on a bare gevent socket is two recv() system calls
per message, and a third when an SSLRequest is followed by the CVE-2021-3935 check. A
client sends each login message in one piece, so the first recv() of a larger size gets
the whole message: :class:`LoginSocket` wraps the client's socket, reads up to
:data:`READ_SIZE` bytes at a time and serves ``recv(n)`` from what it holds. The socket is
the plain non-blocking one the listener accepted (:func:`accept_logins`): LoginSocket waits
for readiness itself, with a libev watcher, and ``sendall`` waits while the kernel's buffer
is full. With the compiled hot path it reads and writes the descriptor as the relay does
(``pooler._sysio`` read/send, the GIL held), waits for reads on a ``pooler._sysio.Watcher``
that switches straight back to the login's greenlet, and the accept loop uses
``pooler._sysio.accept`` (None, not an exception, when nothing is waiting). Everything
else (setsockopt, family...) goes to the wrapped socket unchanged, so the login code, which
only calls ``recv`` through ``recv_exact``/``read_message``, does not change. A TLS
handshake continues on a gevent socket (:meth:`LoginSocket.to_gevent`).

Bytes the client sent ahead (before the server answered) are kept, never lost:

- after an SSLRequest/GSSENCRequest they are the CVE-2021-3935 case, refused exactly as
  bytes still in the kernel are (:attr:`LoginSocket.buffered`, checked by
  :func:`pooler.tls.check_nothing_follows`);
- before a TLS handshake (direct TLS) they go to the TLS layer with the header;
- at the hand-off to the relay, :meth:`LoginSocket.take` gives them to the client's
  :class:`pooler.netio.Conn` as its ``carry`` (a client that pipelines past its last
  login message: its bytes are relayed as if they had arrived after the welcome);
- :meth:`LoginSocket.hand_over` (the plain socket itself goes to the relay) and
  :meth:`LoginSocket.detach` refuse with bytes still held (a path that did not take them
  would drop them silently); only the plain single-node login uses this class.

Sans-IO apart from the wrapped socket (and, over a plain socket, the gevent hub it waits
on): tests drive it with any object that has a ``recv`` (tests/unit/test_loginio.py).
"""

from __future__ import annotations

import _socket
import importlib
import sys
from typing import Any, Final

from gevent import Greenlet, get_hub, getcurrent
from gevent.socket import socket as GeventSocket
from greenlet import greenlet as RawGreenlet

from pooler import hub as _hubs
from pooler.protocol.errors import ProtocolError

#: How many connections one readiness event of a listening socket accepts at most (gevent's
#: StreamServer.max_accept): then the loop runs everything else before accepting more.
MAX_ACCEPT = 100

#: What one recv() asks for: more than any login message a well-behaved client sends in
#: one go (a startup packet is < 1 KB, SCRAM messages ~100 bytes).
READ_SIZE = 8192


_READ = 1
_WRITE = 2

# Module attributes and imported names read per login, bound once: in the compiled build
# ``_socket.socket`` is a module attribute lookup and ``get_hub`` a dictionary lookup on
# every use (some thirty per login), a Final name a C static.
PlainSocket: Final = _socket.socket
_get_hub: Final = get_hub
_getcurrent: Final = getcurrent
_spawn: Final = Greenlet.spawn


def _native() -> Any:
    """pooler._sysio when the compiled hot path has it, else None."""
    try:
        return importlib.import_module("pooler._sysio")
    except ImportError:
        return None


_SYSIO: Final = _native()
#: accept(2) answering None for "nothing waiting" (pooler/_sysio.c), or None: then
#: socket._accept(), which raises BlockingIOError for it.
_accept: Final[Any] = _SYSIO.accept if _SYSIO is not None else None
#: read(2) and the relay's send (write(2): None when all was written) with the GIL held, as
#: netio's relay, or None: then the socket's recv and send, which release the GIL around the
#: call (~450 instructions each, eight per login).
_read_fd: Final[Any] = _SYSIO.read if _SYSIO is not None else None
_send_fd: Final[Any] = _SYSIO.send if _SYSIO is not None else None
#: greenlet's own switch: to the hub without gevent's Hub.switch (a getattr for a
#: ``switch_out`` hook no login greenlet has).
_switch_to: Final = RawGreenlet.switch


def read_watcher(loop: Any, fd: int) -> Any:
    """A read watcher for ``fd`` with ``start(callback)``/``stop()``: pooler._sysio's
    Watcher, which libev calls straight into, when pooler/hub.py's Hub runs the loop; else
    gevent's ``loop.io``. For the relay's connections and the logins' waits.

    Compiled here rather than in pooler/hub.py (interpreted, as gevent's Hub subclass):
    the first interpreted frame a greenlet runs maps it a new 16 KB frame stack (an mmap,
    a page fault, and an munmap when the greenlet ends), one per login."""
    sysio = _hubs._SYSIO
    if sysio is not None:
        return sysio.Watcher(loop, fd)
    return loop.io(fd, 1)


class LoginSocket:
    """A client's socket during the login, with reads buffered (see the module docstring).

    Over the plain non-blocking socket :func:`accept_logins` makes, it waits for readiness
    itself (one libev watcher, made at the first wait); over a gevent socket (tests, and
    anything else that hands one in) gevent waits."""

    __slots__ = ("sock", "buf", "answered", "watcher", "reader")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = b""
        #: We spoke last (pooler.netio.sendall sets it): the client's answer cannot be there
        #: yet, so the next read waits for it first instead of failing with EAGAIN.
        self.answered = False
        self.watcher: Any = None
        #: pooler._sysio's read watcher while pooler/hub.py runs the loop (see _wait).
        self.reader: Any = None

    def _read(self, size: int) -> bytes:
        """One recv() of the socket. After an answer of ours, wait until the socket is
        readable first: trying first would be a failed recv() (a system call and an
        exception) and then the wait; three times per SCRAM login."""
        sock = self.sock
        if type(sock) is PlainSocket:
            if self.answered:
                self.answered = False
                self._wait(_READ)
            while True:
                try:
                    if _read_fd is not None:  # fileno(): -1 once closed (EBADF), never stale
                        data: bytes = _read_fd(sock.fileno(), size)
                    else:
                        data = sock.recv(size)
                    return data
                except BlockingIOError:
                    self._wait(_READ)
        if self.answered:
            self.answered = False
            if type(sock) is GeventSocket:
                sock._wait(sock._read_event)
        data = sock.recv(size)
        return data

    def _wait(self, events: int) -> None:
        """Park this greenlet until the plain socket is readable (or writable).

        Reads, while pooler/hub.py runs the loop (runpooler): a pooler._sysio Watcher whose
        callback is this greenlet's own ``switch``, and a plain switch to the hub; libev's
        event switches straight back here. gevent's ``hub.wait`` does the same through a
        Waiter, a watcher started with a callback and an argument tuple, its generic
        callback and Hub.switch: some 4,000 instructions per wait, four waits per SCRAM
        login. A kill or the login timer's throw arrives at the switch like at gevent's
        wait and stops the watcher on its way out; anything else that switched in early
        finds the socket not yet readable and waits again (_read loops on EAGAIN)."""
        hub = _get_hub()
        if events == _READ and _hubs._SYSIO is not None:
            reader = self.reader
            if reader is None:
                reader = self.reader = read_watcher(hub.loop, self.sock.fileno())
            reader.start(_getcurrent().switch)
            try:
                _switch_to(hub)
            finally:
                reader.stop()
            return
        watcher = self.watcher
        if watcher is None or watcher.events != events:
            if watcher is not None:
                watcher.close()
            watcher = self.watcher = hub.loop.io(self.sock.fileno(), events)
        hub.wait(watcher)

    def sendall(self, data: bytes) -> None:
        """All of ``data``, waiting while the kernel's buffer is full."""
        sock = self.sock
        if type(sock) is not PlainSocket:
            sock.sendall(data)
            return
        first: int
        if _send_fd is not None:  # nearly always taken whole: login messages are small
            left = _send_fd(sock.fileno(), data)
            if left is None:
                return
            first = left
        else:
            try:
                first = sock.send(data)
            except BlockingIOError:
                first = 0
            if first == len(data):
                return
        view = memoryview(data)[first:]
        self._wait(_WRITE)
        while view:
            try:
                sent: int = sock.send(view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            if view:
                self._wait(_WRITE)

    def _drop_watcher(self) -> None:
        self.reader = None  # stopped after every wait
        watcher = self.watcher
        if watcher is not None:
            self.watcher = None
            watcher.close()

    def close(self) -> None:
        """Close the socket (a login that did not complete); nothing once handed over."""
        self._drop_watcher()
        if self.sock is not None:
            self.sock.close()

    def to_gevent(self) -> Any:
        """The socket as a gevent socket, for a TLS handshake (which reads through gevent).
        This wrapper keeps it (its ``close`` closes it if the handshake fails). Only with
        nothing held (the caller checked)."""
        assert not self.buf
        self._drop_watcher()
        green = self.sock = to_gevent(self.sock)
        return green

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes: from what is held, else from one recv() of the socket
        (which waits like the socket does); ``b""`` at EOF."""
        buf = self.buf
        if not buf:
            buf = self._read(size if size > READ_SIZE else READ_SIZE)
            if len(buf) <= size:
                return buf  # the common case: exactly the message, or EOF
        elif len(buf) <= size:
            self.buf = b""
            return buf
        self.buf = buf[size:]
        return buf[:size]

    def message(self, start: int, low: int, high: int) -> bytes | None:
        """The next whole message when the bytes held (or one recv(), when none are held)
        contain it: its 4-byte length field is at ``start`` (0 for a startup packet, 1
        after a typed message's type byte) and counts itself, not what precedes it. None,
        consuming nothing, when the length is outside ``low..high`` or more bytes are to
        come: the caller then reads it piece by piece and reports what is wrong. One slice
        instead of two recv_exact calls, the login's commonest read."""
        buf = self.buf
        if not buf:
            buf = self.buf = self._read(READ_SIZE)
        end = start + 4
        if len(buf) < end:
            return None
        length = int.from_bytes(buf[start:end], "big")
        end = start + length
        if length < low or length > high or len(buf) < end:
            return None
        if len(buf) == end:
            self.buf = b""
            return buf
        self.buf = buf[end:]
        return buf[:end]

    @property
    def buffered(self) -> int:
        """How many bytes the client sent that were read but not consumed yet."""
        return len(self.buf)

    def take(self) -> bytes:
        """The bytes held (and no longer held)."""
        buf = self.buf
        self.buf = b""
        return buf

    def detach(self) -> int:
        if self.buf:
            raise ProtocolError(
                "the client sent data before the login completed: wait for ReadyForQuery"
            )
        self._drop_watcher()
        fd: int = self.sock.detach()
        return fd

    def hand_over(self) -> _socket.socket:
        """The plain socket itself, for the relay, which this wrapper then no longer reads
        or closes: what :meth:`detach` and a new socket object for the descriptor do, minus
        that object and its two system calls (getsockname, ioctl). Refuses like
        :meth:`detach` while bytes are held."""
        sock = self.sock
        assert type(sock) is PlainSocket, "hand_over is for the plain socket of a login"
        if self.buf:
            raise ProtocolError(
                "the client sent data before the login completed: wait for ReadyForQuery"
            )
        self._drop_watcher()
        self.sock = None
        plain: _socket.socket = sock
        return plain

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def accept_logins(listener: Any, handle: Any, logins: set[Any]) -> bool:
    """Accept the connections waiting on a listening socket (a plain non-blocking socket,
    at most :data:`MAX_ACCEPT`) and start a greenlet per login: ``handle(sock, address)``
    with a plain non-blocking socket (no gevent socket: making one and taking the
    descriptor back from it was ~270 interpreted bytecodes per login), remembered in
    ``logins`` while it runs and closed after it unless the login took the descriptor.
    What gevent's StreamServer does with a greenlet pool and a dozen interpreted calls per
    connection (pooler.listener.LoginServer); the greenlet is a plain one, not gevent's
    Greenlet (its __init__, spawn and the loop turn that starts it were ~15k of a SCRAM
    login's 225k instructions), so wait for it and kill it as pooler.listener does. False
    at an accept error other than "nothing waiting": the caller handles that (EMFILE...)."""
    family, kind, proto = listener.family, listener.type, listener.proto
    # Run from the hub (the listener's readiness callback), each login starts at once in a
    # plain greenlet whose parent is the hub: its first wait switches back here and the loop
    # goes on accepting. Elsewhere (a caller in its own greenlet would not be switched back
    # to), gevent's spawn, which starts it from the loop.
    hub = _get_hub()
    direct = _getcurrent() is hub
    # The native accept keeps the GIL: never on a socket in blocking mode (timeout None, the
    # only mode whose descriptor blocks), which would stop the whole process until a client
    # came. The listeners are all non-blocking (gevent's, pooler/listener.py's).
    native = _accept is not None and listener.gettimeout() is not None
    lfd = listener.fileno() if native else -1
    for _ in range(MAX_ACCEPT):
        try:
            if lfd >= 0:  # no exception for the last, failed accept (pooler/_sysio.c)
                accepted = _accept(lfd)
                if accepted is None:
                    return True
                fd, address = accepted
            else:
                fd, address = listener._accept()
        except BlockingIOError:
            return True
        except OSError:
            return False
        sock = PlainSocket(family, kind, proto, fd)
        sock.setblocking(False)
        if direct:
            _switch_to(RawGreenlet(_login_then_close, hub), handle, sock, address, logins)
        else:
            _spawn(_login_then_close, handle, sock, address, logins)
    return True


def _login_then_close(handle: Any, sock: Any, address: Any, logins: set[Any]) -> None:
    """One login's greenlet: ``handle`` it, then close the socket unless the login took it.
    An error ``handle`` lets out is the hub's to report, as gevent's Greenlet reports one,
    and goes no further: in a plain greenlet it would reach the hub where it last switched
    here (the accept loop, a watcher's callback)."""
    me = _getcurrent()
    logins.add(me)
    kept = False
    try:
        kept = bool(handle(sock, address))  # True: the socket itself went to the relay
    except Exception:
        _get_hub().handle_error(me, *sys.exc_info())
    finally:
        logins.discard(me)
        if not kept and sock.fileno() != -1:  # not taken by a successful login: ours
            sock.close()


def to_gevent(sock: Any) -> Any:
    """A gevent socket for a plain one (the cluster relay and PgBouncer's console read
    through gevent); anything else as it is."""
    if type(sock) is not PlainSocket:
        return sock
    return GeventSocket(sock.family, sock.type, sock.proto, sock.detach())
