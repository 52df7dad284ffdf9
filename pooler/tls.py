"""TLS on both sides: clients (SSLRequest and direct TLS), SNI, upstream servers, channel binding.

Theory of operation
-------------------
Greenvisor's sockets live two lives (see :mod:`pooler.netio`): a login in a greenlet on a
gevent socket, then a relay driven by libev watcher callbacks on a plain non-blocking socket.
TLS follows the same split, and both halves use one :class:`ssl.SSLObject` over a pair of
:class:`ssl.MemoryBIO` (OpenSSL never touches the socket, so the same object survives the
hand-over from greenlet to watchers):

* :class:`GreenTLS` is the login half. It looks like the gevent socket the login code already
  uses (``recv``, ``sendall``, ``setsockopt``, ``close``) and feeds OpenSSL exactly one TLS
  record at a time, so when the login ends no ciphertext sits unread in the BIO (bytes the
  client pipelined stay in the kernel, where the relay watcher sees them).
* :class:`TLSStream` is the relay half. It looks like the ``_socket.socket`` that
  :class:`netio.Conn` drives (``recv``, ``send``, ``sendmsg``, ``fileno``, ``close``),
  so the relay code does not change and plaintext connections pay nothing at all: they never
  meet this module after login.

Reading (:meth:`TLSStream.recv_into`): each time the socket is readable, decrypt until OpenSSL
wants more ciphertext, never reading more ciphertext from the kernel than the caller's buffer
can take as plaintext (plaintext is never longer than its ciphertext). So no decrypted byte is
ever left inside OpenSSL where no watcher would notice it; what stays in the kernel keeps the
level-triggered watcher firing.

Writing (:meth:`TLSStream.send`): encrypt a chunk, hand the ciphertext to the kernel; if the
kernel takes only part of it, keep the rest and report that chunk as *not sent*. Conn then
keeps those plaintext bytes in its ``outbuf`` and calls ``send`` again with them first when
the socket is writable; the stream flushes the kept ciphertext and counts the chunk as sent
then, without encrypting it twice (``owed``). Conn's backpressure therefore stays exact: it
believes everything was sent only when the kernel really has every TLS byte.

Security points (../shared/ANCHORS.md, "Security history"):

* CVE-2021-3935 / CVE-2021-23214: bytes that arrive after an SSLRequest (or GSSENCRequest)
  before our one-byte answer could be injected by a man in the middle; the connection ends
  (:func:`check_nothing_follows`). CVE-2021-23222, the client side of the same: after the
  upstream server answers 'S', nothing else may be waiting.
* Direct TLS (Postgres 17 ``sslnegotiation=direct``): the first byte is a TLS handshake
  record; like Postgres, the client must negotiate ALPN ``postgresql``.
* SCRAM-SHA-256-PLUS: :func:`end_point_hash` is RFC 5929 ``tls-server-end-point`` data for our
  certificate, offered only on TLS connections (see :mod:`pooler.auth.scram`).
"""

from __future__ import annotations

import _ssl
import errno
import hashlib
import logging
import socket as pysocket
import ssl
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from pooler import netio
from pooler.loginio import LoginSocket
from pooler.protocol.builders import error_response, ssl_request
from pooler.protocol.errors import ProtocolError

log = logging.getLogger("pooler.tls")

ALPN = "postgresql"
#: The first byte of a TLS record carrying a handshake message (a direct-TLS ClientHello).
HANDSHAKE_RECORD = 0x16
#: The largest TLS record body (2^14 plaintext + 2048 bytes of expansion, RFC 5246 6.2.3).
MAX_RECORD = 16384 + 2048
#: Plaintext encrypted per step when sending (what a partial kernel write can leave owed).
SEND_CHUNK = 64 * 1024

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_SCRATCH = memoryview(bytearray(netio.RECV_SIZE))  # ciphertext on its way into a BIO
_PLAIN = memoryview(bytearray(netio.RECV_SIZE))  # plaintext on its way to the relay (recv)
#: The most ciphertext one TLS record takes (16 KB of plaintext plus overhead): what
#: OpenSSL may hold of a partial record where ``incoming.pending`` no longer counts it.
_RECORD_MAX = 16384 + 2048


class TLSError(Exception):
    """TLS could not be set up; the message says what to fix."""


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTLS:
    """Greenvisor's own certificate, for clients."""

    context: ssl.SSLContext
    #: tls-server-end-point channel-binding data, None if the certificate's signature
    #: algorithm has no single hash (e.g. Ed25519): then SCRAM-SHA-256-PLUS is not offered.
    end_point: bytes | None

    @classmethod
    def load(cls, cert_path: str, key_path: str) -> ServerTLS:
        """Load the certificate chain and key; :class:`TLSError` says what is wrong."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert_path, key_path)
            with open(cert_path, encoding="ascii", errors="replace") as file:
                der = ssl.PEM_cert_to_DER_cert(_first_pem(file.read()))
        except (OSError, ValueError) as exc:
            raise TLSError(
                f"cannot load the TLS certificate {cert_path!r} and key {key_path!r}: {exc}; "
                "give a PEM certificate (chain) and its unencrypted PEM private key"
            ) from None
        context.set_alpn_protocols([ALPN])
        # The C-level setter: gevent's patched SSLContext wraps the callback for its own
        # SSLSocket and breaks on an SSLObject (we only ever use memory BIOs).
        setter: Any = _ssl._SSLContext.__dict__["sni_callback"]
        setter.__set__(context, _remember_server_name)
        return cls(context, end_point_hash(der))


def _first_pem(text: str) -> str:
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, begin)
    if begin < 0 or end < 0:
        raise ValueError("no PEM certificate found in the file")
    return text[begin : end + len(end_marker)] + "\n"


def _remember_server_name(sslobj: Any, server_name: str | None, _context: Any) -> None:
    sslobj.gv_server_name = server_name.lower() if server_name else None


def end_point_hash(der: bytes) -> bytes | None:
    """RFC 5929 tls-server-end-point: the certificate hashed with its signature's hash
    algorithm, SHA-256 when that is MD5 or SHA-1; None when there is no such hash."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    except (UnsupportedAlgorithm, ValueError):
        return None
    if algorithm is None:
        return None
    name = "sha256" if algorithm.name in ("md5", "sha1") else algorithm.name
    try:
        return hashlib.new(name, der).digest()
    except ValueError:
        return None


@lru_cache(maxsize=256)
def client_context(verify: str, ca_pem: str | None) -> ssl.SSLContext:
    """The context for logging in upstream: verify "none", or "peer" (the certificate chain
    against ``ca_pem``, else the system CAs, and the host name, like libpq's verify-full)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify == "peer":
        try:
            if ca_pem:
                context.load_verify_locations(cadata=ca_pem)
            else:
                context.load_default_certs()
        except (ssl.SSLError, ValueError) as exc:
            raise TLSError(
                f"upstream_tls_ca is not a usable PEM CA certificate ({exc}): fix the "
                "tenant's upstream_tls_ca"
            ) from None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- the login half --------------------------------------------------------------------------


class GreenTLS:
    """A TLS connection during login, over a gevent socket (greenlet code, may block)."""

    def __init__(self, gsock: Any, sslobj: ssl.SSLObject, prefix: bytes = b"") -> None:
        self.gsock = gsock
        self.sslobj = sslobj
        self.incoming: ssl.MemoryBIO = sslobj.gv_incoming  # type: ignore[attr-defined]
        self.outgoing: ssl.MemoryBIO = sslobj.gv_outgoing  # type: ignore[attr-defined]
        self._prefix = prefix  # bytes already read from the socket (a direct-TLS header)
        self.end_point: bytes | None = None  # our certificate's channel-binding data

    @property
    def server_name(self) -> str | None:
        """The host name the client asked for (SNI), lower-cased."""
        return getattr(self.sslobj, "gv_server_name", None)

    def _raw_exact(self, size: int) -> bytes:
        prefix = self._prefix
        if not prefix:
            return netio.recv_exact(self.gsock, size)
        head, self._prefix = prefix[:size], prefix[size:]
        if len(head) == size:
            return head
        return head + netio.recv_exact(self.gsock, size - len(head))

    def _read_record(self) -> None:
        """Move exactly one TLS record from the socket into OpenSSL."""
        header = self._raw_exact(5)
        length = int.from_bytes(header[3:5], "big")
        if length > MAX_RECORD:
            raise ProtocolError("invalid TLS record length: is the peer speaking TLS?")
        self.incoming.write(header + self._raw_exact(length))

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.gsock.sendall(data)

    def handshake(self) -> None:
        while True:
            try:
                self.sslobj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._read_record()
        self._flush()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self.sslobj.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                self._read_record()
            except ssl.SSLZeroReturnError:
                return b""

    def sendall(self, data: bytes) -> None:
        self.sslobj.write(data)
        self._flush()

    def setsockopt(self, *args: Any) -> None:
        self.gsock.setsockopt(*args)

    def close(self) -> None:
        self.gsock.close()

    def pending(self) -> bool:
        """Plaintext the client sent that the login has not read (it pipelined)."""
        return self.sslobj.pending() > 0

    def detach(self) -> TLSStream:
        """Hand the connection over to the relay (see :func:`detach`)."""
        return TLSStream(netio.detach(self.gsock), self.sslobj, self.incoming, self.outgoing)


def _wrap(context: ssl.SSLContext, server_side: bool, hostname: str | None) -> ssl.SSLObject:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = context.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=hostname)
    sslobj.gv_incoming = incoming  # type: ignore[attr-defined]
    sslobj.gv_outgoing = outgoing  # type: ignore[attr-defined]
    return sslobj


def accept(gsock: Any, server: ServerTLS, prefix: bytes = b"") -> GreenTLS:
    """Run the server side of a handshake (after our 'S', or on a direct-TLS ClientHello
    whose first ``prefix`` bytes were already read)."""
    conn = GreenTLS(gsock, _wrap(server.context, True, None), prefix)
    try:
        conn.handshake()
    except ssl.SSLError as exc:
        raise ProtocolError(f"TLS handshake failed: {exc.reason or exc}") from None
    conn.end_point = server.end_point
    if prefix and conn.sslobj.selected_alpn_protocol() != ALPN:
        # As Postgres 17: a direct TLS connection must say it speaks PostgreSQL. Told over
        # the TLS channel the client just opened, so it can read why.
        message = (
            "received direct SSL connection request without ALPN protocol negotiation "
            f'extension: the client must offer ALPN "{ALPN}" (libpq 17 does with '
            "sslnegotiation=direct)"
        )
        log.info("direct TLS client refused: no ALPN %r", ALPN)
        conn.sendall(error_response("FATAL", "08P01", message))
        raise netio.ConnectionClosed(message)
    return conn


_PEEK_NOW = int(pysocket.MSG_PEEK | pysocket.MSG_DONTWAIT)  # an int: enum "|" costs per call


def bytes_waiting(gsock: Any) -> bool:
    """Whether the peer already sent bytes we have not read (never waits). A peek on the
    socket itself: select() cannot watch descriptors above 1023, which a pooler holding
    thousands of clients hands out all the time."""
    if type(gsock) is LoginSocket:
        gsock = gsock.sock
    raw = getattr(gsock, "_sock", gsock)  # gevent's socket would wait on EAGAIN
    try:
        return bool(raw.recv(1, _PEEK_NOW))
    except (BlockingIOError, InterruptedError):
        return False


def check_nothing_follows(gsock: Any) -> None:
    """CVE-2021-3935: refuse bytes sent right after an SSLRequest/GSSENCRequest, before our
    answer (a man in the middle injecting plaintext ahead of the handshake). Bytes a
    pooler.loginio.LoginSocket read ahead count (Postgres checks its own buffer the same way)."""
    held = getattr(gsock, "buffered", 0)
    if held or bytes_waiting(gsock):
        if held:
            gsock.take()
        if not held or bytes_waiting(gsock):
            gsock.recv(65536)  # read, so closing sends our FATAL and a FIN, not a reset
        raise ProtocolError(
            "received unencrypted data after SSL request: this could be either a "
            "client-software bug or evidence of an attempted man-in-the-middle attack"
        )


def start_upstream(gsock: Any, context: ssl.SSLContext, host: str) -> GreenTLS:
    """SSLRequest to a Postgres server and the client side of the handshake."""
    gsock.sendall(ssl_request())
    answer = netio.recv_exact(gsock, 1)
    if answer != b"S":
        raise TLSError(
            f"the tenant database at {host} does not accept TLS (it answered {answer!r} to "
            "SSLRequest): turn ssl on in its postgresql.conf, or set upstream_ssl false"
        )
    if bytes_waiting(gsock):  # CVE-2021-23222
        raise TLSError(
            f"the tenant database at {host} sent unencrypted data after agreeing to TLS "
            "(a man in the middle?)"
        )
    hostname = host if context.check_hostname else None
    conn = GreenTLS(gsock, _wrap(context, False, hostname))
    try:
        conn.handshake()
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(
            f"the tenant database's TLS certificate failed verification "
            f"({exc.verify_message or exc.reason}): give the CA that signed it in "
            f"upstream_tls_ca and make sure the certificate names db_host {host!r}, or set "
            "upstream_verify none"
        ) from None
    except ssl.SSLError as exc:
        reason = exc.reason or exc
        raise TLSError(f"TLS handshake with the tenant database failed: {reason}") from None
    return conn


# -- hooks for login.py and server.py ------------------------------------------------------


def is_tls(sock: Any) -> bool:
    return isinstance(sock, GreenTLS)


def detach(gsock: Any) -> Any:
    """The relay endpoint for a logged-in gevent socket: a plain socket, or a TLSStream."""
    if isinstance(gsock, GreenTLS):
        return gsock.detach()
    return netio.detach(gsock)


def channel_binding(sock: Any) -> bytes | None:
    """tls-server-end-point data when ``sock`` is a client TLS connection, else None."""
    return sock.end_point if isinstance(sock, GreenTLS) else None


def server_name(sock: Any) -> str | None:
    return sock.server_name if isinstance(sock, GreenTLS) else None


def sni_user(login_name: str, tenant_id: str) -> str:
    """The user alias when the tenant came from SNI: ``user.<that tenant>`` loses its
    suffix; any other name is taken whole (so dotted user names work over SNI)."""
    suffix = "." + tenant_id
    if login_name.endswith(suffix) and len(login_name) > len(suffix):
        return login_name[: -len(suffix)]
    return login_name


# -- the relay half --------------------------------------------------------------------------


class TLSStream:
    """A logged-in TLS connection, in the shape of the non-blocking socket netio.Conn drives."""

    __slots__ = ("sock", "sslobj", "incoming", "outgoing", "cipher", "owed", "eof")

    def __init__(
        self, sock: Any, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self.sock = sock
        self.sslobj = sslobj
        self.incoming = incoming
        self.outgoing = outgoing
        self.cipher = bytearray()  # ciphertext the kernel has not taken yet
        self.owed = 0  # plaintext bytes behind ``cipher`` not yet reported as sent
        self.eof = False

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def recv(self, size: int) -> bytes:
        """:meth:`recv_into`, the way netio.Conn reads: new bytes (empty at EOF)."""
        view = _PLAIN[: min(size, len(_PLAIN))]
        return bytes(view[: self.recv_into(view)])

    def recv_into(self, view: memoryview) -> int:
        """Decrypt into ``view``; 0 at EOF; BlockingIOError when nothing is there yet."""
        space = len(view)
        got = 0
        sslobj = self.sslobj
        incoming = self.incoming
        while got < space:
            try:
                count = cast(int, sslobj.read(space - got, view[got:]))  # int given a buffer
            except ssl.SSLWantReadError:
                if self.eof:
                    break
                # Never more ciphertext than the rest of ``view`` holds as plaintext, with
                # room for a record OpenSSL already started: plaintext left decryptable
                # after a full ``view`` would wait for a readiness event that never comes
                # (the kernel has nothing more), and a client that sent its last bytes
                # would wait for ever.
                want = min(space - got - incoming.pending - _RECORD_MAX, len(_SCRATCH))
                if want <= 0:
                    if got:
                        break  # the kernel's bytes stay there: the socket stays readable
                    want = min(space, len(_SCRATCH))  # a small view: make progress
                try:
                    size = self.sock.recv_into(_SCRATCH[:want])
                except OSError as exc:
                    if exc.errno in _AGAIN:
                        break
                    raise
                if size == 0:
                    self.eof = True
                    incoming.write_eof()
                else:
                    incoming.write(_SCRATCH[:size])
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.eof = True
                break
            if count == 0:
                self.eof = True
                break
            got += count
        if self.outgoing.pending:  # TLS 1.3 post-handshake replies (e.g. KeyUpdate)
            self.cipher += self.outgoing.read()
            self._flush()
        if got:
            return got
        if self.eof:
            return 0
        raise BlockingIOError(errno.EAGAIN, "no TLS application data yet")

    def _flush(self) -> bool:
        """Give kept ciphertext to the kernel; True when none is left."""
        cipher = self.cipher
        try:
            sent = self.sock.send(cipher)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return False
            raise
        del cipher[:sent]
        return not cipher

    def send(self, data: Any) -> int:
        """Encrypt and send; return the plaintext bytes whose ciphertext the kernel took."""
        done = 0
        if self.cipher:
            if not self._flush():
                raise BlockingIOError(errno.EAGAIN, "TLS data still waiting for the socket")
            done, self.owed = self.owed, 0  # ``data`` starts with those bytes (Conn's outbuf)
        view = memoryview(data)
        total = len(view)
        while done < total:
            chunk = view[done : done + SEND_CHUNK]
            self.sslobj.write(chunk)
            out = self.outgoing.read()
            sent = netio.send_now(self.sock, out)
            if sent < len(out):
                self.cipher += out[sent:]
                self.owed = len(chunk)
                return done
            done += len(chunk)
        return done

    def sendmsg(self, parts: list[Any]) -> int:
        return self.send(b"".join(parts))

    def close(self) -> None:
        if not self.cipher:
            try:  # close_notify, best effort (never blocks)
                self.sslobj.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            try:
                data = self.outgoing.read()
                if data:
                    self.sock.send(data)
            except OSError:
                pass
        self.sock.close()
