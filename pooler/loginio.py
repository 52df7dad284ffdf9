"""Buffered reads for a client's login: one recv() takes whatever the kernel already has.

Theory of operation. The login reads each message as a header then a body
(:func:`pooler.netio.recv_exact`), which on a bare gevent socket is two recv() system calls
per message, and a third when an SSLRequest is followed by the CVE-2021-3935 check. A
client sends each login message in one piece, so the first recv() of a larger size gets
the whole message: :class:`LoginSocket` wraps the gevent socket, reads up to
:data:`READ_SIZE` bytes at a time and serves ``recv(n)`` from what it holds. Everything
else (sendall, setsockopt, family...) goes to the wrapped socket unchanged, so the login
code, which only calls ``recv`` through ``recv_exact``/``read_message``, does not change.

Bytes the client sent ahead (before the server answered) are kept, never lost:

- after an SSLRequest/GSSENCRequest they are the CVE-2021-3935 case, refused exactly as
  bytes still in the kernel are (:attr:`LoginSocket.buffered`, checked by
  :func:`pooler.tls.check_nothing_follows`);
- before a TLS handshake (direct TLS) they go to the TLS layer with the header;
- at the hand-off to the relay, :meth:`LoginSocket.take` gives them to the client's
  :class:`pooler.netio.Conn` as its ``carry`` (a client that pipelines past its last
  login message: its bytes are relayed as if they had arrived after the welcome);
- :meth:`LoginSocket.detach` with bytes still held refuses (a path that did not take
  them would drop them silently); only the plain single-node login uses this class.

Sans-IO apart from the wrapped socket's ``recv``: tests drive it with any object that has
one (tests/unit/test_loginio.py).
"""

from __future__ import annotations

from typing import Any

from gevent import Greenlet, getcurrent
from gevent.socket import socket as GeventSocket

from pooler.protocol.errors import ProtocolError

#: How many connections one readiness event of a listening socket accepts at most (gevent's
#: StreamServer.max_accept): then the loop runs everything else before accepting more.
MAX_ACCEPT = 100

#: What one recv() asks for: more than any login message a well-behaved client sends in
#: one go (a startup packet is < 1 KB, SCRAM messages ~100 bytes).
READ_SIZE = 8192


class LoginSocket:
    """A gevent socket during the login, with reads buffered (see the module docstring)."""

    __slots__ = ("sock", "buf", "answered")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = b""
        #: We spoke last (pooler.netio.sendall sets it): the client's answer cannot be there
        #: yet, so the next read waits for it first instead of failing with EAGAIN.
        self.answered = False

    def _read(self, size: int) -> bytes:
        """One recv() of the socket. After an answer of ours, wait until the socket is
        readable first: gevent's recv() would try the read, fail with EAGAIN (a system call
        and an exception), then wait; three times per SCRAM login."""
        sock = self.sock
        if self.answered:
            self.answered = False
            if type(sock) is GeventSocket:
                sock._wait(sock._read_event)
        data: bytes = sock.recv(size)
        return data

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
        fd: int = self.sock.detach()
        return fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def accept_logins(listener: Any, handle: Any, logins: set[Any]) -> bool:
    """Accept the connections waiting on a listening socket (a plain non-blocking socket,
    at most :data:`MAX_ACCEPT`) and start a greenlet per login: ``handle(sock, address)``
    with a gevent socket, remembered in ``logins`` while it runs and closed after it unless
    the login took the descriptor. What gevent's StreamServer does with a greenlet pool and
    a dozen interpreted calls per connection (pooler.listener.LoginServer). False at an
    accept error other than "nothing waiting": the caller handles that (EMFILE...)."""
    family, kind, proto = listener.family, listener.type, listener.proto
    for _ in range(MAX_ACCEPT):
        try:
            fd, address = listener._accept()
        except BlockingIOError:
            return True
        except OSError:
            return False
        Greenlet.spawn(
            _login_then_close, handle, GeventSocket(family, kind, proto, fd), address, logins
        )
    return True


def _login_then_close(handle: Any, sock: Any, address: Any, logins: set[Any]) -> None:
    me = getcurrent()
    logins.add(me)
    try:
        handle(sock, address)
    finally:
        logins.discard(me)
        if sock.fileno() != -1:  # not detached by a successful login: ours to close
            sock.close()
