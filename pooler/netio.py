"""All socket I/O: blocking helpers for the login phase and the watcher-driven relay endpoint.

Two worlds meet here. Logins (client startup and auth, server connect and auth) run in
greenlets on gevent sockets with timeouts: they are rare and easier to read as straight
code. Once logged in, a socket is detached from gevent and driven by plain libev watcher
callbacks on the hub (:class:`Conn`): no greenlet per connection, no greenlet switch per
message, and an idle client costs one socket, one watcher and one small object.

Callbacks run on the hub and must never block: every send is non-blocking; what the kernel
does not take is copied into ``outbuf`` and the owner stops reading the other side until
:meth:`Conn.on_drained` fires (backpressure, so memory stays flat whatever the sizes).
"""

from __future__ import annotations

import _socket
import errno
import os
from typing import Any, Final

from gevent import get_hub
from gevent.socket import socket as GeventSocket
from mypy_extensions import i64

from pooler.loginio import _SYSIO, LoginSocket, PlainSocket
from pooler.loginio import read_watcher as _reader
from pooler.protocol.errors import ProtocolError

#: Bytes asked for per relay read. Each read returns a new ``bytes`` (which the compiled
#: scanners index as C arrays, see framing): at 64 KB its buffer comes from the malloc heap;
#: at 128 KB and more glibc would mmap, mremap and munmap it, three system calls per read.
RECV_SIZE: Final = 64 * 1024
#: Conn.write_many joins its pieces into one write up to this many bytes, sends them with
#: one sendmsg (no copy) above it.
JOIN_LIMIT: Final = 16 * 1024

#: What a connection asks for while its reads are small (the usual query and reply): a
#: ``bytes`` of up to 512 bytes with its header comes from CPython's small-object
#: allocator. A 64 KB read is a malloc that consolidates the heap's free lists, then a
#: realloc down to what arrived, then a free: a tenth of a select transaction's
#: instructions. A read that fills this size switches the connection to RECV_SIZE (the
#: rest is read on the next turn of the loop: one more read for a big reply after small
#: ones); a read shorter than this switches it back. Plain sockets only: a TLS stream
#: always asks for RECV_SIZE, because the rest of a decrypted record would wait inside
#: the stream, where no readiness event announces it.
SMALL_READ: Final = 512 - 33  # sys.getsizeof(b"") == 33


def _os_send_all(fd: int, data: bytes | memoryview) -> int | None:
    """pooler._sysio.send's answer from os.write (plain Python): None when all of ``data``
    was written, else how many bytes were, 0 when the socket is full."""
    try:
        sent = os.write(fd, data)
    except BlockingIOError:  # EAGAIN / EWOULDBLOCK
        return 0
    return None if sent == len(data) else sent


def _syscalls() -> tuple[Any, Any, bool]:
    """(read, send, native): pooler._sysio's read and send when the compiled hot path has
    them (loginio found the module), else os.read and :func:`_os_send_all`."""
    if _SYSIO is None:
        return os.read, _os_send_all, False
    return _SYSIO.read, _SYSIO.send, True


#: A plain socket is read and written with read(2)/write(2) on its descriptor: the same
#: system calls as recv/send without flags, minus CPython's method lookup and argument
#: parsing (about a tenth of a compiled transaction's instructions). TLS streams keep
#: their own recv/send. With the compiled hot path these are pooler/_sysio.c's, which keep
#: the GIL during the call (the sockets are non-blocking: the call cannot wait) where
#: os.read and os.write release and take it again, ~400 instructions a call.
_SYSCALLS: Final = _syscalls()
_os_read: Final = _SYSCALLS[0]
#: send(fd, data): None when the kernel took all of it, else how much (0: full), no int
#: object made on the usual path (pooler/_sysio.c).
_os_send: Final = _SYSCALLS[1]
NATIVE_IO: Final = _SYSCALLS[2]
#: The two read sizes as Python ints made once: an i64 passed to os.read() is boxed on
#: every call, and above 256 that is an allocation (twice per transaction). The native
#: read returns a bytes of exactly what arrived whatever the size asked, so with it every
#: plain read asks for RECV_SIZE (no second read for a big reply after small ones).
_SMALL_READ_OBJ: Final[Any] = RECV_SIZE if NATIVE_IO else SMALL_READ
_RECV_SIZE_OBJ: Final[Any] = RECV_SIZE

_WRITE: Final = 2
_AGAIN: Final = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def detach(gsock: Any) -> _socket.socket:
    """Take the file descriptor away from a gevent socket as a plain non-blocking socket."""
    # gevent's own family/type/proto properties convert to enums (measurable per login);
    # the socket it wraps has the plain ints.
    inner = gsock.sock if type(gsock) is LoginSocket else gsock
    inner = getattr(inner, "_sock", inner)  # a gevent socket's plain socket, or the plain one
    family, type_, proto = inner.family, inner.type, inner.proto
    fd = gsock.detach()
    sock = _socket.socket(family, type_, proto, fd)
    sock.setblocking(False)
    return sock


def sendall(gsock: Any, data: bytes) -> None:
    """``gsock.sendall(data)`` for the login phase, minus gevent's overhead when the kernel
    takes it all at once (nearly always: login messages are small). gevent's sendall asks
    the kernel for SO_SNDBUF and walks a chunk loop on every call; this is one send()."""
    if type(gsock) is LoginSocket:
        gsock.answered = True  # its next read waits for the client's answer first
        inner = gsock.sock
    else:
        inner = gsock
    if type(inner) is GeventSocket and data:  # not a TLS stream: that encrypts in sendall
        try:  # send_now(), inline
            sent = inner._sock.send(data)
        except OSError as exc:
            if exc.errno not in _AGAIN:
                raise
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    gsock.sendall(data)


def send_now(sock: Any, data: Any) -> int:
    """One non-blocking send(): how many bytes the kernel took (0 when its buffer is full)."""
    try:
        return int(sock.send(data))
    except OSError as exc:
        if exc.errno not in _AGAIN:
            raise
        return 0


def recv_exact(gsock: Any, size: int) -> bytes:
    """Read exactly ``size`` bytes from a gevent socket (login phase only)."""
    chunks = []
    left = size
    while left:
        chunk = gsock.recv(min(left, 65536))
        if not chunk:
            raise ConnectionClosed("peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_message(gsock: Any, max_length: int) -> tuple[int, bytes]:
    """Read one typed message (login phase); refuse bodies over ``max_length`` bytes."""
    if type(gsock) is LoginSocket:  # usually the whole message is in one read
        whole = gsock.message(1, 4, max_length + 4)
        if whole is not None:
            return whole[0], whole[5:]
    header = recv_exact(gsock, 5)
    length = int.from_bytes(header[1:5], "big")
    if length < 4 or length - 4 > max_length:
        raise ProtocolError(
            f"invalid message length {length} for message type {header[:1]!r} during login"
        )
    body = recv_exact(gsock, length - 4) if length > 4 else b""
    return header[0], body


class ConnectionClosed(Exception):
    """The peer went away."""


class Conn:
    """A logged-in socket driven by watcher callbacks."""

    __slots__ = (
        "sock",
        "fd",
        "plain",
        "rw",
        "reading",
        "ww",
        "outbuf",
        "carry",
        "closed",
        "rsize",
        "__weakref__",
    )

    def __init__(self, sock: _socket.socket) -> None:
        loop = get_hub().loop
        self.sock = sock
        # -1 once closed (then reads and writes fail with EBADF). Typed Any: kept as the
        # Python int that os.read/os.write take, not re-boxed for every call.
        self.fd: Any = sock.fileno()
        self.plain = isinstance(sock, PlainSocket)  # not TLS: read/write the fd directly
        # pooler._sysio's Watcher when pooler/hub.py runs the loop (called by libev without
        # gevent's generic callback in between), else gevent's io watcher.
        self.rw = _reader(loop, self.fd)
        # The callback ``rw`` runs now, None while stopped: starting it again with the same
        # callback (a waiting client given a server, a server given the next client) is
        # then no call into gevent at all, and stopping a stopped watcher neither.
        self.reading: Any = None
        # Made at the first write the kernel does not take whole (rare): a watcher is an
        # object per connection, made per login and kept by every idle client.
        self.ww: Any = None
        self.outbuf: bytearray | None = None  # bytes the kernel did not take yet
        self.carry = b""  # an incomplete header kept from the last read
        self.closed = False
        # The next read's size (see SMALL_READ), as one of the two ints made once.
        self.rsize: Any = _SMALL_READ_OBJ if self.plain else _RECV_SIZE_OBJ

    # -- reading --------------------------------------------------------------------------

    def start_reading(self, callback: Any) -> None:
        if not self.closed and self.reading is not callback:
            self.reading = callback
            self.rw.start(callback)

    def stop_reading(self) -> None:
        if self.reading is not None:
            self.reading = None
            self.rw.stop()

    def recv(self) -> bytes | None:
        """Receive, after the carried bytes: the bytes, ``b""`` at EOF, None when there is
        nothing to read yet. Carried bytes with nothing new are handed back alone (a parked
        client's first bytes, see cluster.parked; or login read-ahead)."""
        carry = self.carry
        # A big carry is a message that must be handled whole (the rewriter's Parse, up to
        # MAX_REWRITE), joined again on every read: ask for as much as is carried, so the
        # reads (and the copies of the carry) double instead of adding 64 KB each time.
        size: Any = self.rsize if len(carry) < RECV_SIZE else len(carry)
        try:
            if self.plain:
                data: bytes = _os_read(self.fd, size)
            else:
                data = self.sock.recv(size)
        except OSError as exc:
            if exc.errno not in _AGAIN:
                raise
            if not carry:
                return None
            self.carry = b""
            return carry
        got: i64 = len(data)
        if got == SMALL_READ:
            self.rsize = _RECV_SIZE_OBJ  # filled: a big reply, most likely
        elif got < SMALL_READ and self.plain:
            self.rsize = _SMALL_READ_OBJ
        if len(carry) == 0 or got == 0:  # lengths: a bytes' truth test is a generic call
            return data
        self.carry = b""
        return carry + data

    # -- writing --------------------------------------------------------------------------

    def write(self, data: memoryview | bytes) -> bool:
        """Send now what the kernel takes and keep the rest; False when some was kept."""
        if self.outbuf is not None:
            self.outbuf += data
            return False
        # An int, not Any: compared with the length as C integers, not PyObject_RichCompare.
        sent: int
        if self.plain:  # the relay's every send: None when the kernel took all of it
            left = _os_send(self.fd, data)
            if left is None:
                return True
            sent = left
        else:  # a TLS stream
            sent = send_now(self.sock, data)
            if sent == len(data):
                return True
        self.outbuf = bytearray(data[sent:])
        self._wait_writable()
        return False

    def write_many(self, parts: list) -> bool:
        """:meth:`write` for several pieces at once: joined into one write when small (a
        copy of a few hundred bytes is cheaper than a call of the socket's sendmsg from
        compiled code: ~1,600 instructions per rewritten Bind), else one sendmsg (no copy)."""
        if len(parts) == 1:
            return self.write(parts[0])
        if self.outbuf is not None:
            for part in parts:
                self.outbuf += part
            return False
        size: i64 = 0
        for part in parts:
            size += len(part)
        if size <= JOIN_LIMIT or len(parts) > 512:
            return self.write(b"".join(parts))
        try:
            sent = self.sock.sendmsg(parts)
        except OSError as exc:
            if exc.errno not in _AGAIN:
                raise
            sent = 0
        if sent == size:
            return True
        left = bytearray()
        for part in parts:
            size = len(part)
            if sent >= size:
                sent -= size
                continue
            left += part[sent:]
            sent = 0
        self.outbuf = left
        self._wait_writable()
        return False

    def _wait_writable(self) -> None:
        """Send ``outbuf`` when the socket is writable (see :meth:`_on_writable`)."""
        ww = self.ww
        if ww is None:
            ww = self.ww = self.rw.loop.io(self.fd, _WRITE)
        ww.start(self._on_writable)

    def _on_writable(self) -> None:
        buf = self.outbuf
        if buf is None:
            self.ww.stop()
            return
        try:
            sent = self.sock.send(buf)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return
            self.ww.stop()
            self.on_write_error(exc)
            return
        if sent < len(buf):
            del buf[:sent]
            return
        self.outbuf = None
        self.ww.stop()
        self.on_drained()

    def on_drained(self) -> None:
        """Everything kept has been sent (owners override)."""

    def on_write_error(self, exc: OSError) -> None:
        """Sending failed (owners override)."""
        self.close_socket()

    # -- closing --------------------------------------------------------------------------

    def close_socket(self, last_words: bytes = b"") -> None:
        """Stop the watchers and close; ``last_words`` are sent first if the kernel takes
        them right away (never blocks)."""
        if self.closed:
            return
        self.closed = True
        self.fd = -1  # never read or write a descriptor number the kernel may hand out again
        self.reading = None
        self.rw.stop()
        if self.ww is not None:
            self.ww.stop()
        if last_words and self.outbuf is None:
            try:
                self.sock.send(last_words)
            except OSError:
                pass
        self.outbuf = None
        try:
            self.sock.close()
        except OSError:
            pass
