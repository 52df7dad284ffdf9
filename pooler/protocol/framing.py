"""Hot-path framing: message boundaries in both directions and when a server may be released.

Theory of operation
-------------------
After login every Postgres message is ``type:u8 length:u32 body`` with ``length`` counting
itself. The relay hands each chunk it reads to :class:`Exchange`, which walks the 5-byte
headers and never copies or parses a body it does not need. It answers two questions:

* How much of the chunk may be forwarded now? A header cut in two by the read is held back
  (the caller keeps at most four bytes and prepends them to the next read), so the far side
  only ever receives whole headers; bodies are streamed however they arrive.
* Is the server connection clean, so that it may go back to the pool? PgBouncer's rule:
  only at a ReadyForQuery with status 'I' when nothing is outstanding. "Outstanding" is
  counted from the client's stream: every Query, Sync and FunctionCall asks for exactly one
  ReadyForQuery; an extended-query sequence (Parse/Bind/Describe/Execute/Close/Flush) is
  open until its Sync; a Sync sent while the server is in COPY IN is ignored by Postgres
  (libpq sends one right after the Execute of a COPY), so the Syncs between the last
  Execute/Query and a CopyDone/CopyFail are taken back off the count.

The frontend Terminate message is never forwarded: the caller learns its offset and decides.
Nothing here knows about sockets, pools or policy.

Watching for named statements (:attr:`Exchange.watch`): in transaction mode the
prepared-statement rewriter (:mod:`pooler.protocol.prepared`) is only switched on once a
client uses a named statement (or resets statements), because matching every reply to its
request costs CPU that clients of unnamed statements never need. Until then the scanner
stops at the first message that names a statement (:attr:`Exchange.named_at`) and keeps,
one byte per message, the types of the requests and replies since the exchange was last at
rest (:meth:`Exchange.kinds`), so that the rewriter can
rebuild its request queue and take over at any message boundary, even mid-pipeline.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

from pooler.protocol.errors import ProtocolError

#: Postgres refuses messages of 1 GB and more (PQ_LARGE_MESSAGE_LIMIT); so do we.
MAX_MESSAGE_LENGTH: Final = 0x3FFFFFFF

HEADER: Final = 5
# Frontend message types (ints, as indexing bytes yields ints).
F_QUERY: Final = 81  # ord("Q")
F_SYNC: Final = 83  # ord("S")
F_FUNCTION_CALL: Final = 70  # ord("F")
F_PARSE: Final = 80  # ord("P")
F_BIND: Final = 66  # ord("B")
F_DESCRIBE: Final = 68  # ord("D")
F_EXECUTE: Final = 69  # ord("E")
F_CLOSE: Final = 67  # ord("C")
F_FLUSH: Final = 72  # ord("H")
F_TERMINATE: Final = 88  # ord("X")
F_COPY_DATA: Final = 100  # ord("d")
F_COPY_DONE: Final = 99  # ord("c")
F_COPY_FAIL: Final = 102  # ord("f")

# Backend message types.
B_READY_FOR_QUERY: Final = 90  # ord("Z")
B_PARAMETER_STATUS: Final = 83  # ord("S")
B_ERROR_RESPONSE: Final = 69  # ord("E")
B_DATA_ROW: Final = 68  # ord("D")
B_COPY_DATA: Final = 100  # ord("d")

#: A ParameterStatus longer than this is streamed unread (no real GUC value is this long).
MAX_TRACKED_STATUS: Final = 8192

TX_IDLE: Final = 73  # ord("I")
TX_IN_BLOCK: Final = 84  # ord("T")
TX_FAILED: Final = 69  # ord("E")

_EXTENDED_OR_EXECUTE: Final = frozenset((F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE, F_CLOSE, F_FLUSH))
_NAMEABLE: Final = frozenset((F_PARSE, F_BIND, F_DESCRIBE, F_CLOSE))
_BULK: Final = frozenset((B_DATA_ROW, B_COPY_DATA))


def _table(members: frozenset[int]) -> bytes:
    return bytes(1 if i in members else 0 for i in range(256))


# The same sets as 256-byte tables indexed by message type: a C array index in the compiled
# build (pooler/hotpath.py), where set membership would hash a boxed int per message.
IS_EXTENDED_OR_EXECUTE: Final = _table(_EXTENDED_OR_EXECUTE)
IS_BULK: Final = _table(_BULK)
IS_NAMEABLE: Final = _table(_NAMEABLE)


_S_KIND: Final = 83  # ord("S")


def names_statement(buf: bytes, pos: int, n: int) -> bool:
    """Whether the Parse/Bind/Describe/Close at ``buf[pos]`` may name a prepared statement.
    Errs towards True when the bytes that tell are not in the buffer yet."""
    body = pos + HEADER
    if n - body < 2:
        return n - pos >= 1 and buf[pos] in _NAMEABLE
    msg_type = buf[pos]
    if msg_type not in _NAMEABLE:
        return False
    first = buf[body]
    if msg_type == F_PARSE:
        return first != 0
    if msg_type == F_BIND:
        return first != 0 or buf[body + 1] != 0  # a named portal: let the rewriter look
    return first == _S_KIND and buf[body + 1] != 0


def is_fatal(buf: bytes | memoryview, pos: int, n: int) -> bool:
    """Whether the ErrorResponse at ``buf[pos]`` has severity FATAL or PANIC (the server ends
    the session after it). Reads the non-localized severity ('V') near the body's start."""
    head = bytes(buf[pos + 5 : min(n, pos + 64)])
    return b"VFATAL\0" in head or b"VPANIC\0" in head or head.startswith((b"SFATAL\0", b"SPANIC\0"))


def _bad_length(direction: str, msg_type: int, length: int) -> ProtocolError:
    shown = chr(msg_type) if 32 <= msg_type < 127 else f"0x{msg_type:02x}"
    return ProtocolError(
        f"invalid {direction} message length {length} for message type {shown!r}: "
        "the stream is corrupt; reconnect"
    )


def unknown_frontend(msg_type: int) -> ProtocolError:
    """A message type no Postgres backend accepts after login (Postgres ends the session)."""
    shown = chr(msg_type) if 32 <= msg_type < 127 else f"0x{msg_type:02x}"
    return ProtocolError(
        f"invalid frontend message type {shown!r}: the client is not speaking the PostgreSQL "
        "protocol correctly; reconnect"
    )


#: Message kinds kept in an i64, one byte each (seven: no shift reaches the sign bit),
#: before the list takes the rest.
PACKED: Final = 7


def _pack(pack: i64, kinds: list[int], at: i64, kind: i64) -> i64:
    """Keep ``kind`` as the ``at``-th kind: in byte ``at`` of ``pack`` while it fits (no
    int object, no list store: C arithmetic in the compiled build), else in ``kinds``,
    growing the list when it is full (see Exchange.fe_kinds). Returns the new pack."""
    if at < PACKED:
        return kind if at == 0 else pack | kind << (at << 3)
    at -= PACKED
    if at < len(kinds):
        kinds[at] = kind
    else:
        kinds.append(kind)
    return pack


def _unpack(pack: i64, kinds: list[int], n: i64) -> bytes:
    """The first ``n`` kinds kept by :func:`_pack`."""
    packed = bytes([(pack >> (i << 3)) & 0xFF for i in range(min(n, PACKED))])
    return packed + bytes(kinds[: n - PACKED]) if n > PACKED else packed


class Exchange:
    """Framing and release state of one client's conversation with its server."""

    __slots__ = (
        "expected",
        "extended",
        "syncs_since_exec",
        "fe_remaining",
        "be_remaining",
        "tx_status",
        "terminate_at",
        "ready_count",
        "statuses",
        "inspect",
        "sql_type",
        "sql_start",
        "sql_end",
        "sql_at",
        "watch",
        "named_at",
        "fe_kinds",
        "be_kinds",
        "fe_n",
        "be_n",
        "fe_pack",
        "be_pack",
        "server_fatal",
    )

    def __init__(self) -> None:
        self.expected: i64 = 0  # ReadyForQuery messages the server still owes
        self.extended = False  # an extended-query sequence is open (no Sync yet)
        self.syncs_since_exec: i64 = 0  # Syncs after the last Execute/Query (see COPY IN)
        self.fe_remaining: i64 = 0  # body bytes of the current frontend message still to come
        self.be_remaining: i64 = 0  # body bytes of the current backend message still to come
        self.tx_status: i64 = TX_IDLE  # status byte of the last ReadyForQuery
        self.terminate_at: i64 = -1  # offset of a Terminate in the last frontend chunk
        self.ready_count: i64 = 0  # ReadyForQuery messages seen (queries answered), ever
        self.statuses: list[tuple[int, int]] | None = None  # ParameterStatus (start, end)
        self.inspect = False  # record where whole Query/Parse messages are (session state)
        # The first whole Query/Parse of the last chunk (while inspecting): its type (0: none)
        # and body; C integers in the compiled build, where a tuple of three ints in a list
        # was ~670 instructions per statement made and freed. Any more of the same chunk
        # go to sql_at as (type, body start, end).
        self.sql_type: i64 = 0
        self.sql_start: i64 = 0
        self.sql_end: i64 = 0
        self.sql_at: list[tuple[int, int, int]] | None = None
        self.watch = False  # stop at a named statement and keep message kinds (see above)
        self.named_at: i64 = -1  # offset of the message that names a statement, in the last chunk
        # Request and reply types since at rest (while watching): fe_n / be_n of them, the
        # first seven one byte each in fe_pack / be_pack (a transaction of the extended
        # protocol has five requests and six replies: no int objects, no list stores), the
        # rest in lists that are overwritten, not emptied (clear() and append() reallocate).
        self.fe_kinds: list[int] | None = None
        self.be_kinds: list[int] | None = None
        self.fe_n: i64 = 0
        self.be_n: i64 = 0
        self.fe_pack: i64 = 0
        self.be_pack: i64 = 0
        self.server_fatal = False  # the server sent a FATAL/PANIC ErrorResponse (it will hang up)

    def start_watching(self) -> None:
        self.watch = True
        self.fe_kinds = []
        self.be_kinds = []
        self.fe_n = self.be_n = 0

    def stop_watching(self) -> None:
        self.watch = False
        self.fe_kinds = self.be_kinds = None
        self.fe_n = self.be_n = 0

    def kinds(self) -> tuple[bytes, bytes]:
        """The request and reply types since the exchange was last at rest (watching)."""
        fe, be = self.fe_kinds, self.be_kinds
        if fe is None or be is None:
            return b"", b""
        return _unpack(self.fe_pack, fe, self.fe_n), _unpack(self.be_pack, be, self.be_n)

    # -- client -> server ---------------------------------------------------------------

    def frontend(self, buf: bytes, n: int) -> int:
        """Scan ``buf[:n]`` from the client; return how many bytes may be forwarded.

        Bytes after the returned offset are an incomplete header (fewer than five bytes)
        unless :attr:`terminate_at` is set, in which case the client sent Terminate there,
        or :attr:`named_at` is set (while watching): a message that names a statement.
        """
        pos: i64 = self.fe_remaining
        end: i64 = n
        if pos >= end:
            self.fe_remaining = pos - end
            return n
        self.terminate_at = -1
        self.named_at = -1
        expected: i64 = self.expected
        syncs: i64 = self.syncs_since_exec
        extended = self.extended
        kinds = self.fe_kinds if self.watch else None
        kn: i64 = self.fe_n
        pack: i64 = self.fe_pack
        inspect = self.inspect
        last = end - HEADER
        # i64: C integers in the compiled build (pooler/hotpath.py), where an int is a tagged
        # value checked on every operation; plain ints in plain Python.
        msg_type: i64 = 0
        length: i64 = 0
        b1: i64
        b2: i64
        b3: i64
        b4: i64
        # Per message this loop is the relay's hottest code: every bytecode counts (see
        # bench.micro's relay cases). A length over MAX_MESSAGE_LENGTH cannot end inside
        # this read, so it is refused after the loop, where the read ends mid-message.
        try:
            while pos <= last:
                msg_type = buf[pos]  # the header, read byte by byte: C array reads when
                b1 = buf[pos + 1]  # compiled (no struct call, no tuple, no boxed ints)
                b2 = buf[pos + 2]
                b3 = buf[pos + 3]
                b4 = buf[pos + 4]
                length = b1 << 24 | b2 << 16 | b3 << 8 | b4
                if length < 4:
                    raise _bad_length("frontend", msg_type, length)
                # The extended-query messages first: five of them per pgbench transaction.
                if IS_EXTENDED_OR_EXECUTE[msg_type]:
                    if kinds is not None and IS_NAMEABLE[msg_type]:  # names_statement(), inlined
                        body = pos + HEADER
                        if end - body < 2:
                            named = True
                        elif msg_type == F_PARSE:
                            named = buf[body] != 0
                        elif msg_type == F_BIND:
                            named = buf[body] != 0 or buf[body + 1] != 0
                        else:
                            named = buf[body] == _S_KIND and buf[body + 1] != 0
                        if named:
                            self.named_at = pos
                            self.fe_remaining = 0
                            return pos
                    extended = True
                    if msg_type == F_EXECUTE:
                        syncs = 0
                    elif msg_type == F_PARSE and inspect and pos + length < end:
                        self.record_sql(msg_type, pos, length)
                elif msg_type == F_SYNC:
                    expected += 1
                    syncs += 1
                    extended = False
                elif msg_type == F_QUERY:
                    expected += 1
                    syncs = 0
                    if inspect and pos + length < end:
                        self.record_sql(msg_type, pos, length)
                elif msg_type == F_COPY_DATA:
                    pass
                elif msg_type == F_TERMINATE:
                    self.terminate_at = pos
                    self.fe_remaining = 0
                    return pos
                else:
                    if msg_type == F_COPY_DONE or msg_type == F_COPY_FAIL:
                        expected -= syncs
                        syncs = 0
                    elif msg_type == F_FUNCTION_CALL:
                        expected += 1
                    else:
                        raise unknown_frontend(msg_type)
                if kinds is not None and msg_type != F_COPY_DATA:
                    # _pack(), its usual case inlined: a byte of the i64 while they fit
                    if kn < PACKED:
                        pack = msg_type if kn == 0 else pack | msg_type << (kn << 3)
                    else:
                        pack = _pack(pack, kinds, kn, msg_type)
                    kn += 1
                pos += length + 1
        finally:
            self.fe_n = kn
            self.fe_pack = pack
            self.expected = expected
            self.syncs_since_exec = syncs
            self.extended = extended
        if pos > end:
            if length > MAX_MESSAGE_LENGTH:
                raise _bad_length("frontend", msg_type, length)
            self.fe_remaining = pos - end
            return n
        self.fe_remaining = 0
        return pos

    def record_sql(self, msg_type: i64, pos: i64, length: i64) -> None:
        """Note the whole Query/Parse at ``pos`` (``length`` from its header) for the
        session-state check: see :attr:`sql_type`, then :attr:`sql_at`."""
        if self.sql_type == 0:
            self.sql_type = msg_type
            self.sql_start = pos + HEADER
            self.sql_end = pos + 1 + length
            return
        if self.sql_at is None:
            self.sql_at = []
        self.sql_at.append((msg_type, pos + HEADER, pos + 1 + length))

    # -- server -> client ---------------------------------------------------------------

    def backend(self, buf: bytes, n: int) -> int:
        """Scan ``buf[:n]`` from the server; return how many bytes may be forwarded.

        Bytes after the returned offset are an incomplete header, or a ReadyForQuery whose
        status byte has not arrived yet; the caller keeps them for the next read.
        """
        pos: i64 = self.be_remaining
        end: i64 = n
        if pos >= end:
            self.be_remaining = pos - end
            return n
        kinds = self.be_kinds if self.watch else None
        kn: i64 = self.be_n
        pack: i64 = self.be_pack
        last = end - HEADER
        msg_type: i64 = 0  # as in frontend()
        length: i64 = 0
        expected: i64
        b1: i64
        b2: i64
        b3: i64
        b4: i64
        while pos <= last:  # as in frontend(): the hottest loop, oversize refused after it
            msg_type = buf[pos]  # as in frontend()
            b1 = buf[pos + 1]
            b2 = buf[pos + 2]
            b3 = buf[pos + 3]
            b4 = buf[pos + 4]
            length = b1 << 24 | b2 << 16 | b3 << 8 | b4
            if length < 4:
                raise _bad_length("backend", msg_type, length)
            if IS_BULK[msg_type]:
                pass  # the bulk of a big result: nothing to note
            elif msg_type == B_READY_FOR_QUERY:
                if pos == last:
                    break  # the status byte has not arrived yet
                if length != 5:
                    raise _bad_length("backend", msg_type, length)
                self.tx_status = buf[pos + 5]
                self.ready_count += 1
                expected = self.expected
                if expected > 0:
                    self.expected = expected = expected - 1
                if kinds is not None:
                    if expected == 0 and not self.extended and self.fe_remaining == 0:
                        kn = 0  # at rest: nothing before this can matter any more
                        self.fe_n = 0
                    else:
                        pack = _pack(pack, kinds, kn, msg_type)
                        kn += 1
            else:
                if msg_type == B_PARAMETER_STATUS and length <= MAX_TRACKED_STATUS:
                    if pos + length >= end:
                        break  # read it whole
                    if self.statuses is None:
                        self.statuses = []
                    self.statuses.append((pos + HEADER, pos + 1 + length))
                elif msg_type == B_ERROR_RESPONSE and is_fatal(buf, pos, end):
                    self.server_fatal = True
                if kinds is not None:  # as in frontend()
                    if kn < PACKED:
                        pack = msg_type if kn == 0 else pack | msg_type << (kn << 3)
                    else:
                        pack = _pack(pack, kinds, kn, msg_type)
                    kn += 1
            pos += length + 1
        self.be_n = kn
        self.be_pack = pack
        if pos > end:
            if length > MAX_MESSAGE_LENGTH:
                raise _bad_length("backend", msg_type, length)
            self.be_remaining = pos - end
            return n
        self.be_remaining = 0
        return pos

    # -- release rule -------------------------------------------------------------------

    def at_rest(self) -> bool:
        """True when the server owes nothing and both streams sit at a message boundary."""
        return (
            self.expected == 0
            and not self.extended
            and self.fe_remaining == 0
            and self.be_remaining == 0
        )

    def releasable(self) -> bool:
        """True when the server may serve another client (transaction pooling)."""
        return self.tx_status == TX_IDLE and self.at_rest()

    def reset(self) -> None:
        """Forget everything: a new server is linked to this client."""
        self.expected = 0
        self.extended = False
        self.syncs_since_exec = 0
        self.fe_remaining = 0
        self.be_remaining = 0
        self.tx_status = TX_IDLE
        self.terminate_at = -1
        self.named_at = -1
        self.fe_n = self.be_n = 0
