"""Named prepared statements under transaction pooling: name mapping, rewriting, reply queue.

Theory of operation
-------------------
A client's named statement lives on whatever server it happened to be prepared on; in
transaction mode the next transaction may run on another server. So (as PgBouncer does):

* every distinct (query text, parameter types) gets ONE server-side name, ``gv_<n>``, for the
  whole node (:class:`StatementNames`); each server remembers which of those it has
  prepared, least recently used first, up to ``max_prepared_statements``
  (:class:`ServerStatements`; evicted ones are closed on the server);
* each client keeps its own name -> statement map (:class:`PreparedSession`); Parse, Bind,
  Describe and Close that name a statement are rewritten to the server-side name; a Parse
  the server already has is not sent and its ParseComplete is faked; a Bind/Describe of a
  statement the server lacks is preceded by an injected Parse whose reply is swallowed;
  Close only drops the client's mapping and its CloseComplete is faked;
* every request that gets a reply is queued, so each reply is matched to its request: that
  is how fakes are emitted exactly where the client expects them, how injected replies are
  swallowed, and how a failed Parse is forgotten. After an error the server skips to the
  next Sync, and so does the queue (PgBouncer's outstanding-request queue, same rules).
* a duplicate name, or a Bind/Describe of an unknown name, gets the error Postgres gives
  with the same SQLSTATE and text: a request that is certain to fail is sent instead, so the
  server itself aborts the transaction and skips to Sync, and its error is replaced by ours.

Messages that must be rewritten are handled whole; everything else (rows, COPY data, large
Bind parameters) streams through as in :mod:`pooler.protocol.framing`. The caller keeps the
bytes after the returned offset and offers them again with the next read.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Final

from mypy_extensions import i64

from pooler.listdeque import ListDeque
from pooler.protocol.builders import error_response
from pooler.protocol.errors import ProtocolError
from pooler.protocol.framing import (
    HEADER,
    MAX_MESSAGE_LENGTH,
    TX_IDLE,
    Exchange,
    _bad_length,
    is_fatal,
    unknown_frontend,
)

_pack_len: Final = struct.Struct("!I").pack

FORWARD: Final = 0  # a client request: its replies go to the client
SKIP: Final = 1  # injected by us: success replies are swallowed (errors still reach the client)
FAKE: Final = 2  # never sent: ``payload`` is emitted when this entry reaches the head
REPLACE: Final = 3  # sent to fail on purpose: the ErrorResponse is replaced by ``payload``

PARSE_COMPLETE = b"1\x00\x00\x00\x04"
READY_IDLE = b"Z\x00\x00\x00\x05I"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"

# Message types as ints.
_P: Final = 80  # ord("P")
_B: Final = 66  # ord("B")
_D: Final = 68  # ord("D")
_C: Final = 67  # ord("C")
_E: Final = 69  # ord("E")
_S: Final = 83  # ord("S")
_Q: Final = 81  # ord("Q")
_F: Final = 70  # ord("F")
_H: Final = 72  # ord("H")
_X: Final = 88  # ord("X")
_COPY_DATA: Final = 100  # ord("d")
_COPY_DONE: Final = 99  # ord("c")
_COPY_FAIL: Final = 102  # ord("f")
_PARSE_COMPLETE: Final = 49  # ord("1")
_BIND_COMPLETE: Final = 50  # ord("2")
_CLOSE_COMPLETE: Final = 51  # ord("3")
_NO_DATA: Final = 110  # ord("n")
_ROW_DESCRIPTION: Final = 84  # ord("T")
_PARAM_DESCRIPTION: Final = 116  # ord("t")
_COMMAND_COMPLETE: Final = 67  # ord("C")
_EMPTY_QUERY: Final = 73  # ord("I")
_PORTAL_SUSPENDED: Final = 115  # ord("s")
_ERROR: Final = 69  # ord("E")
_READY: Final = 90  # ord("Z")
_DATA_ROW: Final = 68  # ord("D")
_COPY_IN: Final = 71  # ord("G")
_COPY_BOTH: Final = 87  # ord("W")
_PARAMETER_STATUS: Final = 83  # ord("S")
_S_KIND: Final = 83  # ord("S")
_P_KIND: Final = 80  # ord("P"); Describe/Close: statement or portal
#: Replies that simply answer a plain (int) request at the head of the queue.
_PLAIN_REPLY = {
    _PARSE_COMPLETE: _P,
    _BIND_COMPLETE: _B,
    _ROW_DESCRIPTION: _D,
    _NO_DATA: _D,
    _COMMAND_COMPLETE: _E,
    _EMPTY_QUERY: _E,
    _PORTAL_SUSPENDED: _E,
    _CLOSE_COMPLETE: _C,
}

#: _PLAIN_REPLY as a 256-byte table (0: none): a C array index in the compiled build.
_PLAIN_REPLY_TO: Final = bytes(_PLAIN_REPLY.get(i, 0) for i in range(256))

_REWRITTEN: Final = frozenset((_P, _B, _D, _C))
#: Requests that :meth:`PreparedSession.frontend` queues (all but Flush, CopyData, Terminate).
_QUEUED: Final = frozenset((_P, _B, _D, _C, _E, _S, _Q, _F, _COPY_DONE, _COPY_FAIL))
#: Replies whose body matters when replayed (the rest replay as empty bodies).
_STUB_REPLIES = {_READY: b"Z\x00\x00\x00\x05I", _COMMAND_COMPLETE: b"C\x00\x00\x00\x05\x00"}
#: Sizes of CommandComplete "DEALLOCATE ALL" and "DISCARD ALL" messages.
_DEALLOCATE_ALL_SIZE: Final = 1 + 4 + 15
_DISCARD_ALL_SIZE: Final = 1 + 4 + 12
_RESET_TAG_SIZES = (_DEALLOCATE_ALL_SIZE, _DISCARD_ALL_SIZE)
#: Backend messages that may be streamed instead of being handled whole.
_STREAMED_BACKEND: Final = frozenset((_DATA_ROW, _COPY_DATA))
# _REWRITTEN and _STREAMED_BACKEND as 256-byte tables indexed by message type: a C array
# index in the compiled build, where set membership hashes a boxed int (as in framing).
IS_REWRITTEN: Final = bytes(1 if i in _REWRITTEN else 0 for i in range(256))
IS_STREAMED_BACKEND: Final = bytes(1 if i in _STREAMED_BACKEND else 0 for i in range(256))
#: A whole message the client sends that we must rewrite may not exceed this.
MAX_REWRITE: Final = 64 * 1024 * 1024
#: Statement names up to this long are found byte by byte in a Bind (see _bind).
SHORT_NAME: Final = 64

_POISON_NAME = b"gv_poison"
_MISSING_NAME = b"gv_missing_statement"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _pack_len(len(body) + 4) + body


def parse_message(name: bytes, query_and_types: bytes) -> bytes:
    """A Parse of ``query_and_types`` (query NUL, int16 count, oids) under ``name``."""
    return _message(b"P", name + b"\0" + query_and_types)


def close_statement_message(name: bytes) -> bytes:
    return _message(b"C", b"S" + name + b"\0")


#: A Parse the server rejects with a syntax error, aborting like the real failure would.
POISON_PARSE = parse_message(_POISON_NAME, b"greenvisor rejected this statement\0\0\0")


def _duplicate_error(name: bytes) -> bytes:
    shown = name.decode("utf-8", "replace")
    return error_response("ERROR", "42P05", f'prepared statement "{shown}" already exists')


def _missing_error(name: bytes) -> bytes:
    shown = name.decode("utf-8", "replace")
    return error_response("ERROR", "26000", f'prepared statement "{shown}" does not exist')


class StatementNames:
    """Node-wide: one server-side name per distinct (query, parameter types)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._names: dict[bytes, bytes] = {}
        self._counter = 0
        self._limit = limit
        self.confirmed: set[bytes] = set()  # names some server accepted a Parse for

    def name_for(self, key: bytes) -> bytes:
        name = self._names.get(key)
        if name is None:
            if len(self._names) >= self._limit:
                self._names.clear()  # old names only cost a re-prepare
                self.confirmed.clear()
            self._counter += 1
            name = self._names[key] = b"gv_%d" % self._counter
        return name

    def __len__(self) -> int:
        return len(self._names)


class ServerStatements:
    """Statements prepared on one server connection, least recently used first."""

    __slots__ = ("names", "capacity")

    def __init__(self, capacity: int) -> None:
        self.names: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity

    def has(self, name: bytes) -> bool:
        if name in self.names:
            self.names.move_to_end(name)
            return True
        return False

    def add(self, name: bytes) -> list[bytes]:
        """Remember ``name``; return the names evicted to stay within capacity."""
        self.names[name] = None
        self.names.move_to_end(name)
        evicted = []
        while len(self.names) > self.capacity:
            evicted.append(self.names.popitem(last=False)[0])
        return evicted

    def discard(self, name: bytes) -> None:
        self.names.pop(name, None)

    def clear(self) -> None:
        self.names.clear()


class Request:
    """One request that owes (or pretends to owe) the client a reply."""

    __slots__ = ("kind", "action", "payload", "registered", "client_name", "client_key")

    def __init__(
        self,
        kind: int,
        action: int = FORWARD,
        payload: bytes = b"",
        registered: bytes = b"",
        client_name: bytes = b"",
        client_key: bytes | None = None,
    ) -> None:
        self.kind = kind
        self.action = action
        self.payload = payload
        self.registered = registered  # server-side name added to the server's cache
        self.client_name = client_name  # client mapping created (Parse) or dropped (Close)
        self.client_key = client_key  # for a faked Close: the mapping to restore if skipped

    def __repr__(self) -> str:
        return f"<Request {chr(self.kind)} action={self.action}>"

    def __eq__(self, other: object) -> bool:
        """Compares like its kind, so a queue can mix plain kinds (ints) and requests."""
        if isinstance(other, int):
            return self.kind == other
        return self is other

    def __hash__(self) -> int:  # by identity, as __eq__ is for other requests
        return object.__hash__(self)


class PreparedSession:
    """One client's statements and the request queue of its current server link."""

    __slots__ = ("names", "statements", "queue", "server", "copy_mode", "failed")

    def __init__(self, names: StatementNames) -> None:
        self.names = names
        self.statements: dict[bytes, bytes] = {}  # client name -> query_and_types
        # Plain forwarded requests are queued as their type (an int); the ones that need
        # special handling as Request objects. A ListDeque: native appends, pops and
        # head reads when compiled (a deque's are calls by name, ~2,500 instructions per
        # -M prepared transaction).
        self.queue = ListDeque()
        self.server: ServerStatements | None = None
        self.copy_mode = False
        self.failed = False

    def take_over(self, fe_kinds: bytes | bytearray, be_kinds: bytes | bytearray) -> None:
        """Start in the middle of a conversation that used no named statement so far.

        ``fe_kinds``/``be_kinds`` are the request and reply types since the exchange was
        last at rest (kept by a watching :class:`Exchange`): every request was one this class
        would have queued as a plain kind, so the queue is rebuilt by queuing them and
        matching the replies that already went by, exactly as :meth:`frontend` and
        :meth:`backend` would have done.
        """
        queue = self.queue
        for kind in fe_kinds:
            if kind in _QUEUED:
                queue.append(kind)
        if be_kinds:
            stubs = b"".join(
                _STUB_REPLIES.get(kind) or bytes((kind, 0, 0, 0, 4)) for kind in be_kinds
            )
            self.backend(stubs, len(stubs), Exchange(), [])

    def link(self, server: ServerStatements) -> None:
        self.server = server
        self.queue.clear()
        self.copy_mode = False
        self.failed = False

    # -- client -> server -----------------------------------------------------------------

    def frontend(self, view: bytes, n: int, ex: Exchange, to_server: list, to_client: list) -> int:
        """Rewrite ``view[:n]`` from the client; append what to send to each side.

        Returns the offset up to which the input was consumed; the rest (an incomplete
        message that must be handled whole) is offered again with more bytes. Sets
        ``ex.terminate_at`` when the client sent Terminate.
        """
        # i64: C integers in the compiled build, as in framing's scanners.
        pos: i64 = 0
        ex.terminate_at = -1
        remaining = ex.fe_remaining
        if remaining:
            if remaining >= n:
                ex.fe_remaining = remaining - n
                to_server.append(_part(view, 0, n))
                return n
            pos = remaining
            ex.fe_remaining = 0
        run: i64 = 0  # start of bytes to pass through unchanged
        queue = self.queue
        last: i64 = n - HEADER
        msg_type: i64
        length: i64
        end: i64
        try:
            while pos <= last:
                msg_type = view[pos]  # the header byte by byte, as in framing
                length = (
                    view[pos + 1] << 24 | view[pos + 2] << 16 | view[pos + 3] << 8 | view[pos + 4]
                )
                if length < 4:
                    raise _bad_length("frontend", msg_type, length)
                end = pos + 1 + length
                if end > n and length > MAX_MESSAGE_LENGTH:
                    raise _bad_length("frontend", msg_type, length)
                if IS_REWRITTEN[msg_type]:
                    ex.extended = True
                    if msg_type == _P and ex.inspect and end <= n:
                        ex.record_sql(_P, pos, length)
                    if end <= n and length >= 6:
                        # Unnamed statements and portals (most drivers, most of the time)
                        # only need a queue entry: no call, no copy.
                        first = view[pos + HEADER]
                        if (
                            (msg_type == _P and first == 0)
                            or (msg_type == _B and first == 0 and view[pos + HEADER + 1] == 0)
                            or (msg_type == _D and (first == _P_KIND or view[pos + 6] == 0))
                        ):
                            queue.append(msg_type)
                            pos = end
                            continue
                    if msg_type == _B and end <= n and length >= 6:
                        # A whole Bind of a named statement: _rewrite's case, minus its checks.
                        replacement = self._bind(view, pos + HEADER, end, length)
                    else:
                        if end > n:
                            if length > MAX_REWRITE:
                                raise ProtocolError(
                                    f"a {chr(msg_type)} message of {length} bytes is too large "
                                    "to rewrite; use an unnamed statement for queries this big"
                                )
                            if msg_type == _P and n > pos + HEADER and view[pos + HEADER] == 0:
                                pass  # an unnamed Parse streams like any other message
                            elif msg_type == _B and self._bind_prefix_streamable(view, pos, n):
                                pass  # the names are here: rewrite them, stream the rest
                            else:
                                break
                        replacement = self._rewrite(
                            msg_type, view, pos + HEADER, min(end, n), length, to_client
                        )
                    if replacement is not None:
                        if run < pos:
                            to_server.append(_part(view, run, pos))
                        to_server.extend(replacement)
                        run = min(end, n)
                    if end > n:
                        ex.fe_remaining = end - n
                        pos = n
                        break
                    pos = end
                    continue
                if msg_type == _S:
                    queue.append(_S)
                    ex.extended = False
                elif msg_type == _E:
                    queue.append(_E)
                    ex.extended = True
                elif msg_type == _Q:
                    queue.append(_Q)
                    if ex.inspect and end <= n:
                        ex.record_sql(_Q, pos, length)
                elif msg_type == _H:
                    ex.extended = True
                elif msg_type == _COPY_DONE or msg_type == _COPY_FAIL:
                    queue.append(msg_type)
                elif msg_type == _F:
                    queue.append(_F)
                elif msg_type == _X:
                    ex.terminate_at = pos
                    n = pos
                    break
                elif msg_type != _COPY_DATA:
                    raise unknown_frontend(msg_type)
                if end > n:
                    ex.fe_remaining = end - n
                    pos = n
                    break
                pos = end
        finally:
            ex.expected = len(queue)
        if run < pos:
            to_server.append(_part(view, run, pos))
        return pos

    def _bind_prefix_streamable(self, view: bytes, pos: int, n: int) -> bool:
        """A huge Bind whose names are already in the buffer can be rewritten and streamed."""
        first = view.find(b"\0", pos + HEADER, n)
        return first >= 0 and view.find(b"\0", first + 1, n) >= 0

    def _rewrite(
        self, msg_type: int, view: bytes, start: int, stop: int, length: int, to_client: list
    ) -> list | None:
        """Handle one P/B/D/C message (body at ``view[start:stop]``, maybe cut short for a
        streamed Bind); None means: pass it through unchanged."""
        # The common case first: unnamed statements and portals only need a queue entry.
        if stop - start >= 2:
            first, second = view[start], view[start + 1]
            if msg_type == _P and first == 0:
                self.queue.append(_P)
                return None
            if msg_type == _B and first == 0 and second == 0:
                self.queue.append(_B)
                return None
            if msg_type == _D and (first == _P_KIND or second == 0):
                self.queue.append(_D)
                return None
        if msg_type == _B:
            return self._bind(view, start, stop, length)
        body = bytes(view[start:stop])
        if msg_type == _P:
            return self._parse(body, to_client)
        if msg_type == _D:
            return self._describe(body)
        return self._close(body, to_client)

    def _parse(self, raw: bytes, to_client: list) -> list[bytes] | None:
        cut = raw.find(b"\0")
        if cut < 0:
            raise ProtocolError("malformed Parse message: the statement name is not terminated")
        name = raw[:cut]
        if not name:
            self.queue.append(_P)
            return None
        if name in self.statements:
            self.queue.append(Request(_P, REPLACE, _duplicate_error(name)))
            return [POISON_PARSE]
        key = raw[cut + 1 :]
        self.statements[name] = key
        server_name = self.names.name_for(key)
        server = self.server
        assert server is not None
        if server.has(server_name):
            self._fake(Request(_P, FAKE, PARSE_COMPLETE, client_name=name), to_client)
            return []
        out = [parse_message(server_name, key)]
        self.queue.append(Request(_P, FORWARD, registered=server_name, client_name=name))
        self._register(server_name, out)
        return out

    def _register(self, server_name: bytes, out: list[bytes]) -> None:
        assert self.server is not None
        for evicted in self.server.add(server_name):
            out.append(close_statement_message(evicted))
            self.queue.append(Request(_C, SKIP))

    def _ensure(self, server_name: bytes, key: bytes, out: list[bytes]) -> None:
        assert self.server is not None
        if self.server.has(server_name):
            return
        out.append(parse_message(server_name, key))
        self.queue.append(Request(_P, SKIP, registered=server_name))
        self._register(server_name, out)

    def _bind(self, view: bytes, start: int, stop: int, length: int) -> list | None:
        # Both names, found in the read itself, nothing copied until the name. The usual
        # unnamed portal is its first byte, a short statement name a loop over a few bytes:
        # bytes.find is a generic method call from compiled code (~850 instructions each).
        portal_end: i64 = start
        if start >= stop or view[start] != 0:
            portal_end = view.find(b"\0", start, stop)
            if portal_end < 0:
                raise ProtocolError("malformed Bind message: the portal name is not terminated")
        name_end: i64 = portal_end + 1
        limit: i64 = min(stop, name_end + SHORT_NAME)
        while name_end < limit and view[name_end] != 0:
            name_end += 1
        if name_end == limit:  # no end within SHORT_NAME bytes: search the rest
            name_end = view.find(b"\0", name_end, stop)
        if name_end < 0:
            raise ProtocolError("malformed Bind message: the statement name is not terminated")
        if name_end == portal_end + 1:
            self.queue.append(_B)
            return None
        name = view[portal_end + 1 : name_end]
        out: list = []
        key = self.statements.get(name)
        if key is None:
            server_name = _MISSING_NAME
            self.queue.append(Request(_B, REPLACE, _missing_error(name)))
        else:
            server_name = self.names.name_for(key)
            self._ensure(server_name, key, out)
            self.queue.append(_B)
        new_length = length - len(name) + len(server_name)
        out.append(
            b"B" + _pack_len(new_length) + view[start : portal_end + 1] + server_name + b"\0"
        )
        out.append(view[name_end + 1 : stop])
        return out

    def _describe(self, raw: bytes) -> list[bytes] | None:
        if len(raw) < 2 or raw[-1] != 0 or raw[:1] not in (b"S", b"P"):
            raise ProtocolError("malformed Describe message: expected 'S' or 'P' and a name")
        name = raw[1:-1]
        if raw[:1] == b"P" or not name:
            self.queue.append(_D)
            return None
        out: list[bytes] = []
        key = self.statements.get(name)
        if key is None:
            server_name = _MISSING_NAME
            self.queue.append(Request(_D, REPLACE, _missing_error(name)))
        else:
            server_name = self.names.name_for(key)
            self._ensure(server_name, key, out)
            self.queue.append(_D)
        out.append(_message(b"D", b"S" + server_name + b"\0"))
        return out

    def _close(self, raw: bytes, to_client: list) -> list[bytes] | None:
        if len(raw) < 2 or raw[-1] != 0 or raw[:1] not in (b"S", b"P"):
            raise ProtocolError("malformed Close message: expected 'S' or 'P' and a name")
        name = raw[1:-1]
        if raw[:1] == b"P" or not name:
            self.queue.append(_C)
            return None
        key = self.statements.pop(name, None)
        self._fake(Request(_C, FAKE, CLOSE_COMPLETE, client_name=name, client_key=key), to_client)
        return []

    def _fake(self, request: Request, to_client: list) -> None:
        if self.queue:
            self.queue.append(request)
        else:
            to_client.append(request.payload)

    # -- server -> client -----------------------------------------------------------------

    def backend(self, view: bytes, n: int, ex: Exchange, to_client: list) -> int:
        """Match ``view[:n]`` from the server to the queue; append what the client gets.

        Replies that pass unchanged are sent as one run (one slice of the buffer); only a
        swallowed, replaced or faked reply breaks the run. Returns the offset consumed; the
        rest is an incomplete message to offer again.
        """
        pos: i64 = 0  # as in frontend()
        remaining = ex.be_remaining
        if remaining:
            if remaining >= n:
                ex.be_remaining = remaining - n
                to_client.append(_part(view, 0, n))
                return n
            pos = remaining
            ex.be_remaining = 0
        run: i64 = 0
        queue = self.queue
        last: i64 = n - HEADER
        msg_type: i64
        length: i64
        end: i64
        size: i64
        try:
            while pos <= last:
                msg_type = view[pos]
                length = (
                    view[pos + 1] << 24 | view[pos + 2] << 16 | view[pos + 3] << 8 | view[pos + 4]
                )
                if length < 4:
                    raise _bad_length("backend", msg_type, length)
                end = pos + 1 + length
                if end > n:
                    if length > MAX_MESSAGE_LENGTH:
                        raise _bad_length("backend", msg_type, length)
                    if IS_STREAMED_BACKEND[msg_type] or length > MAX_REWRITE:
                        ex.be_remaining = end - n
                        pos = n
                    break
                if msg_type == _DATA_ROW:
                    pos = end
                    continue
                if queue:
                    # The common replies to plain requests: pop and pass on, no call.
                    head = queue.first()
                    if (
                        isinstance(head, int)  # then compared as C ints when compiled
                        and _PLAIN_REPLY_TO[msg_type] == head
                        and (
                            msg_type != _COMMAND_COMPLETE
                            or (
                                not self.copy_mode
                                and (size := end - pos) != _DEALLOCATE_ALL_SIZE
                                and size != _DISCARD_ALL_SIZE
                            )
                        )
                    ):
                        queue.popleft()
                        if not queue or type(queue.first()) is int:
                            pos = end
                            continue
                        # A Request is next (perhaps a fake that is due now).
                        due = self._due(view[pos:end])
                        if run < pos:
                            to_client.append(_part(view, run, pos))
                        to_client.extend(due)
                        run = end
                        pos = end
                        continue
                special = self._reply(msg_type, view, pos, end, ex)
                if special is not None:
                    if run < pos:
                        to_client.append(_part(view, run, pos))
                    to_client.extend(special)
                    run = end
                pos = end
        finally:
            ex.expected = len(self.queue)
        if run < pos:
            to_client.append(_part(view, run, pos))
        return pos

    def _reply(self, msg_type: int, view: bytes, pos: int, end: int, ex: Exchange) -> list | None:
        """Account for one whole reply. None: pass it on unchanged; otherwise what to send
        in its place (empty to swallow it; the reply plus fakes that come due after it)."""
        forward = True
        replacement = None
        if msg_type == _PARSE_COMPLETE:
            forward = self._pop(_P)
        elif msg_type == _BIND_COMPLETE:
            forward = self._pop(_B)
        elif msg_type == _COMMAND_COMPLETE:
            if self.copy_mode:
                self.copy_mode = False
                self._clear_until((_COPY_DONE,))
            if end - pos in _RESET_TAG_SIZES:
                self._command_complete(view, pos, end)
            self._pop(_E)
        elif msg_type == _READY:
            if not self._pop_ready() and self.failed:
                self._clear_until((_S,))
            self.failed = False
            ex.tx_status = view[pos + 5] if end - pos == 6 else TX_IDLE
            ex.ready_count += 1
        elif msg_type == _NO_DATA or msg_type == _ROW_DESCRIPTION:
            self._pop(_D)
        elif msg_type == _CLOSE_COMPLETE:
            forward = self._pop(_C)
        elif msg_type == _EMPTY_QUERY or msg_type == _PORTAL_SUSPENDED:
            self._pop(_E)
        elif msg_type == _ERROR:
            if is_fatal(view, pos, end):
                ex.server_fatal = True
            if self.copy_mode:
                self.copy_mode = False
                self._clear_until((_COPY_DONE, _COPY_FAIL))
            head = self.queue.first() if self.queue else None
            if head is not None and head != _Q:
                self.failed = True
                if type(head) is Request and head.action == REPLACE:
                    replacement = head.payload
                    forward = False
        elif msg_type == _COPY_IN or msg_type == _COPY_BOTH:
            self.copy_mode = True
        elif msg_type == _PARAMETER_STATUS:
            if ex.statuses is None:
                ex.statuses = []
            ex.statuses.append((pos + HEADER, end))
        queue = self.queue
        if forward and not (queue and type(queue.first()) is Request):
            return None  # the common case: no fake due, nothing swallowed
        out: list = [view[pos:end]] if forward else []
        if replacement is not None:
            out.append(replacement)
        return self._due(*out)

    def _due(self, *first: memoryview | bytes) -> list:
        """``first``, then every faked reply now at the head of the queue."""
        out = list(first)
        queue = self.queue
        while queue:
            head = queue.first()
            if not isinstance(head, Request) or head.action != FAKE:
                break
            out.append(head.payload)
            queue.popleft()
        return out

    def _pop(self, kind: int) -> bool:
        """Pop the head if it is a ``kind`` request; return whether its reply is forwarded."""
        queue = self.queue
        if not queue:
            return True
        head = queue.first()
        if isinstance(head, int):
            if head == kind:
                queue.popleft()
            return True
        if head.kind == kind:
            queue.popleft()
            if head.registered:
                self.names.confirmed.add(head.registered)
            return head.action != SKIP
        return True

    def _pop_ready(self) -> bool:
        queue = self.queue
        if queue:
            head = queue.first()
            if isinstance(head, int) and (head == _S or head == _Q or head == _F):
                queue.popleft()
                return True
        return False

    def _clear_until(self, kinds: tuple[int, ...]) -> None:
        """Drop requests the server skipped, up to and including one of ``kinds``."""
        queue = self.queue
        while queue:
            request = queue.popleft()
            if not isinstance(request, Request):
                if request in kinds:
                    return
                continue
            self._skipped(request)
            if request.kind in kinds:
                return

    def _skipped(self, request: Request) -> None:
        """The server never ran ``request``: undo what sending it assumed."""
        if request.registered and self.server is not None:
            self.server.discard(request.registered)
        if request.kind == _P and request.client_name and request.action != REPLACE:
            self.statements.pop(request.client_name, None)
        elif request.kind == _C and request.client_key is not None:
            self.statements[request.client_name] = request.client_key

    def _command_complete(self, view: bytes, pos: int, end: int) -> None:
        """DEALLOCATE ALL / DISCARD ALL drop every statement of the session."""
        if end - pos in _RESET_TAG_SIZES:
            tag = bytes(view[pos + HEADER : end - 1])
            if tag in (b"DEALLOCATE ALL", b"DISCARD ALL"):
                self.statements.clear()
                if self.server is not None:
                    self.server.clear()

    def at_rest(self) -> bool:
        return not self.queue

    def answer_without_server(self, view: bytes, n: int) -> bytes | None:
        """Replies for a client that is not linked to a server and only prepares statements
        some server already accepted (or closes statements), then syncs: exactly what
        Postgres would answer an idle session, with no server needed. This is what keeps
        drivers that prepare synchronously (pgbench -M prepared) from waiting for a server
        that their own pending transactions hold. None: a server is needed."""
        if view[0] not in _ANSWERABLE:
            return None  # e.g. a Bind, as in every pgbench -M prepared transaction
        pos = 0
        replies = []
        changes: list[tuple[bytes, bytes | None]] = []
        while n - pos >= HEADER:
            msg_type = view[pos]
            length = view[pos + 1] << 24 | view[pos + 2] << 16 | view[pos + 3] << 8 | view[pos + 4]
            end = pos + 1 + length
            if length < 4 or end > n:
                return None
            if msg_type == _P:
                raw = bytes(view[pos + HEADER : end])
                cut = raw.find(b"\0")
                name, key = raw[:cut], raw[cut + 1 :]
                if cut <= 0 or name in self.statements:
                    return None
                if self.names.name_for(key) not in self.names.confirmed:
                    return None
                changes.append((name, key))
                replies.append(PARSE_COMPLETE)
            elif msg_type == _C and view[pos + HEADER] == ord("S") and length > 6:
                changes.append((bytes(view[pos + HEADER + 1 : end - 1]), None))
                replies.append(CLOSE_COMPLETE)
            elif msg_type == _S and end == n:
                for name, value in changes:
                    if value is None:
                        self.statements.pop(name, None)
                    else:
                        self.statements[name] = value
                replies.append(READY_IDLE)
                return b"".join(replies)
            elif msg_type != _H:
                return None
            pos = end
        return None


#: The first message of a conversation answer_without_server() may answer.
_ANSWERABLE: Final = frozenset((_P, _C, _S, _H))


def _part(view: bytes, start: int, stop: int) -> bytes:
    """``view[start:stop]``, without a copy when that is all of it (the usual case: a read
    forwarded whole)."""
    if start == 0 and stop == len(view):
        return view
    return view[start:stop]
