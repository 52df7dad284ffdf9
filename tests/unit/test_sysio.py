"""pooler/_sysio.c against os: read against os.read, send against os.write's answers
(netio._os_send_all), call for call.

netio and the login read and write plain sockets with the native pair when the compiled
hot path is built (it keeps the GIL during the system call) and with os.read/os.write
otherwise. Every case here runs on both, so the native pair is checked to answer exactly
what os would: the same bytes, the same counts, the same errors with the same errno.
"""

from __future__ import annotations

import errno
import importlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pooler import hotpath, loginio, netio

pytestmark = pytest.mark.unit

IMPLEMENTATIONS: list[Any] = [pytest.param((os.read, netio._os_send_all), id="os")]
if hotpath.compiled:
    _native = importlib.import_module("pooler._sysio")
    IMPLEMENTATIONS.append(pytest.param((_native.read, _native.send), id="native"))


@pytest.fixture(params=IMPLEMENTATIONS)
def io(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    return request.param


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_the_compiled_hot_path_uses_the_native_pair() -> None:
    """With the hot path compiled, netio's reads and writes are _sysio's; `make test`'s
    compiled run (GREENVISOR_EXPECT_COMPILED=1) fails if the C was not built."""
    assert hotpath.compiled == netio.NATIVE_IO
    if os.environ.get("GREENVISOR_EXPECT_COMPILED") == "1":
        assert netio.NATIVE_IO
    if netio.NATIVE_IO:
        assert netio._os_read.__module__ == "pooler._sysio"
        assert netio._os_send.__module__ == "pooler._sysio"
    else:
        assert netio._os_read is os.read and netio._os_send is netio._os_send_all
    # The login's accept loop: _sysio.accept with it, socket._accept without.
    assert (loginio._accept is not None) == netio.NATIVE_IO
    if netio.NATIVE_IO:
        assert loginio._accept.__module__ == "pooler._sysio"


@pytest.mark.parametrize("size", [1, 5, 479, 480, 4096, 65536, 65537, 200_000])
def test_read_returns_what_arrived_up_to_the_size(
    io: tuple[Any, Any], pair: Any, size: int
) -> None:
    read, _ = io
    ours, theirs = pair
    payload = bytes(range(256)) * 4  # 1,024 distinct-ish bytes
    theirs.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = read(ours.fileno(), size)
        assert type(chunk) is bytes
        assert 0 < len(chunk) <= size
        got += chunk
    assert got == payload


def test_a_large_read_takes_everything_there(io: tuple[Any, Any], pair: Any) -> None:
    """Sizes above the native read's 64 KB staging buffer allocate the bytes directly."""
    read, _ = io
    ours, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    payload = os.urandom(150_000)
    theirs.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += read(ours.fileno(), 300_000)
    assert got == payload


def test_read_of_zero_bytes_is_empty(io: tuple[Any, Any], pair: Any) -> None:
    read, _ = io
    ours, theirs = pair
    theirs.sendall(b"x")
    assert read(ours.fileno(), 0) == b""
    assert read(ours.fileno(), 10) == b"x"


def test_end_of_file_is_empty_bytes(io: tuple[Any, Any], pair: Any) -> None:
    read, _ = io
    ours, theirs = pair
    theirs.sendall(b"last")
    theirs.close()
    assert read(ours.fileno(), 100) == b"last"
    assert read(ours.fileno(), 100) == b""


def test_nothing_to_read_is_eagain(io: tuple[Any, Any], pair: Any) -> None:
    read, _ = io
    ours, _ = pair
    with pytest.raises(OSError) as caught:
        read(ours.fileno(), 100)
    assert caught.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


def test_a_closed_descriptor_is_ebadf(io: tuple[Any, Any]) -> None:
    read, send = io
    with pytest.raises(OSError) as caught:
        read(-1, 10)
    assert caught.value.errno == errno.EBADF
    with pytest.raises(OSError) as caught:
        send(-1, b"x")
    assert caught.value.errno == errno.EBADF


def test_bad_arguments_are_refused(io: tuple[Any, Any], pair: Any) -> None:
    read, send = io
    ours, _ = pair
    with pytest.raises(OSError) as caught:
        read(ours.fileno(), -1)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        read(ours.fileno(), "10")
    with pytest.raises(TypeError):
        send(ours.fileno(), "text")  # str has no buffer: encode first, as with os.write
    with pytest.raises(TypeError):
        read(ours.fileno())
    with pytest.raises(TypeError):
        send(ours.fileno())
    with pytest.raises(OverflowError):
        read(1 << 40, 10)


# -- send(fd, data): None when all was written, else the count (0: full) ------------------

SENDS: list[Any] = [pytest.param(netio._os_send_all, id="os")]
if hotpath.compiled:
    SENDS.append(pytest.param(_native.send, id="native"))


@pytest.mark.parametrize("send", SENDS)
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"Q\x00\x00\x00\x0dSELECT 1\x00", id="bytes"),
        pytest.param(b"D" * 300, id="bytes-over-256"),
        pytest.param(bytearray(b"Z\x00\x00\x00\x05I"), id="bytearray"),
        pytest.param(memoryview(b"..T\x00\x00\x00\x06\x00\x00")[2:], id="memoryview-slice"),
        pytest.param(b"", id="empty"),
    ],
)
def test_send_of_everything_answers_none(send: Any, pair: Any, data: Any) -> None:
    ours, theirs = pair
    assert send(ours.fileno(), data) is None
    if len(data):
        assert theirs.recv(1000) == bytes(data)


@pytest.mark.parametrize("send", SENDS)
def test_send_to_a_full_socket_counts_then_answers_zero(send: Any, pair: Any) -> None:
    """A short write is its count; a full socket is 0, not an exception (the relay then
    keeps the rest and waits until the socket is writable)."""
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    chunk = os.urandom(1 << 20)
    sent = send(ours.fileno(), chunk)
    assert isinstance(sent, int) and 0 < sent < len(chunk)
    for _ in range(1000):  # bounded: the buffer fills within a few sends
        answer = send(ours.fileno(), chunk[:65536])
        if answer == 0:
            break
    assert answer == 0
    theirs.setblocking(False)
    got = theirs.recv(1 << 20)
    assert got == chunk[: len(got)]


@pytest.mark.parametrize("send", SENDS)
def test_send_errors_raise_as_write_does(send: Any, pair: Any) -> None:
    ours, theirs = pair
    with pytest.raises(OSError) as caught:
        send(-1, b"x")
    assert caught.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        send(ours.fileno(), "text")
    theirs.close()
    with pytest.raises(OSError) as caught:
        send(ours.fileno(), b"x")
    assert caught.value.errno in (errno.EPIPE, errno.ECONNRESET)


# -- accept(fd): socket._accept() without the exception for "nothing waiting" ---------------

ACCEPTS: list[Any] = [pytest.param(None, id="socket")]
if hotpath.compiled:
    ACCEPTS.append(pytest.param(_native.accept, id="native"))


def _accept_with(accept: Any, listener: socket.socket) -> tuple[int, Any] | None:
    """accept's answer, or socket._accept()'s with BlockingIOError as None."""
    if accept is not None:
        answer: tuple[int, Any] | None = accept(listener.fileno())
        return answer
    try:
        fd, address = listener._accept()  # type: ignore[attr-defined]
    except BlockingIOError:
        return None
    return fd, address


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX])
def test_accept_answers_what_socket_accept_does(accept: Any, family: int, tmp_path: Any) -> None:
    """Nothing waiting: None (no exception). A connection: its descriptor (close-on-exec,
    connected to the client) and the peer address exactly as socket.accept() gives it
    (IPv4 pair, IPv6 4-tuple, Unix path: '' for a client that did not bind)."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_UNIX:
        where: Any = str(tmp_path / "s")
    elif family == socket.AF_INET6:
        where = ("::1", 0)
    else:
        where = ("127.0.0.1", 0)
    try:
        listener.bind(where)
    except OSError as exc:  # no IPv6 loopback on this machine
        listener.close()
        pytest.skip(f"cannot bind {where}: {exc}")
    listener.listen(4)
    listener.setblocking(False)
    with listener:
        assert _accept_with(accept, listener) is None
        client = socket.socket(family, socket.SOCK_STREAM)
        with client:
            client.connect(listener.getsockname())
            answer = _accept_with(accept, listener)
            assert answer is not None
            fd, address = answer
            conn = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            with conn:
                assert conn.get_inheritable() is False
                assert address == conn.getpeername() == client.getsockname()
                assert type(address) is type(client.getsockname())
                client.sendall(b"ping")
                assert conn.recv(10) == b"ping"
            assert _accept_with(accept, listener) is None


@pytest.mark.parametrize("accept", ACCEPTS)
def test_accept_refuses_what_is_not_a_listening_socket(accept: Any, pair: Any) -> None:
    """A socket that is not listening: OSError EINVAL from both; the native one also
    refuses a closed descriptor (EBADF) and a non-integer."""
    ours, _ = pair
    with pytest.raises(OSError) as caught:
        _accept_with(accept, ours)
    assert caught.value.errno == errno.EINVAL
    if accept is None:
        return
    closed = os.dup(ours.fileno())
    os.close(closed)
    with pytest.raises(OSError) as caught:
        accept(closed)
    assert caught.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        accept("3")
