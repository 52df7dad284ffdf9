"""One logged-in client: the relay between its socket and the server its pool lends it.

Everything here runs as watcher callbacks on the hub (see netio). The flow:

* client bytes arrive -> if no server is linked, check one out of the pool (or queue as a
  waiter, keeping the bytes and no longer reading) -> scan headers -> forward;
* server bytes arrive -> scan headers -> forward -> in transaction mode, when the exchange
  is at rest with ReadyForQuery 'I', hand the server back to the pool, which gives it
  straight to the next waiter;
* the client leaves -> a server at rest goes back (after ROLLBACK or the session reset);
  a server in the middle of anything is closed, never reused.

Policy (modes, timeouts) comes from the pool and the node; framing from protocol.framing.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Final, cast

from mypy_extensions import i64

from pooler import netio
from pooler.config import MODE_SESSION
from pooler.protocol import builders
from pooler.protocol.errors import ProtocolError
from pooler.protocol.framing import F_PARSE, F_TERMINATE, TX_IDLE, Exchange, names_statement
from pooler.protocol.params import REPORTED, Replies, changes_for, set_statement, settings_id
from pooler.protocol.parsers import parse_parameter_status
from pooler.protocol.prepared import PreparedSession
from pooler.protocol.sessionstate import (
    SEEN_BODY,
    classify_message,
    refusal_sql,
    sql_messages,
    stateful_kind,
)

if TYPE_CHECKING:
    from pooler.node import Node
    from pooler.pool import Pool
    from pooler.server import ServerConn

log = logging.getLogger("pooler.client")

SESSION_RESET_QUERY: Final = "DISCARD ALL"
#: What clients are told when the node shuts down (here, not in node.py: the pool module
#: imports this one, and node.py imports the pool).
SHUTDOWN_MESSAGE = (
    "terminating connection due to administrator command: Greenvisor is "
    "shutting down; reconnect to reach another node or this one once restarted"
)
REPORTED_NAMES: Final = frozenset(REPORTED.values())
ROLLBACK_QUERY: Final = "ROLLBACK"
# time.monotonic, looked up once: a module attribute read per call otherwise (a few per
# transaction in the compiled build, pooler/hotpath.py).
_monotonic: Final = time.monotonic
#: The longest Parse body a client keeps to compare its next Parses with (see
#: _note_session_state), and how many it keeps: a client's workload is a handful of
#: statements in turn (pgbench's TPC-B: seven).
PARSE_KEPT: Final = 4096
RECENT_PARSES: Final = 8
#: recent_verdicts until a client's first new statement: shared, never appended to.
_NO_VERDICTS: Final[list[tuple[str | None, bool]]] = []


class Client(netio.Conn):
    """A client after login."""

    __slots__ = (
        "node",
        "pool",
        "session_mode",
        "server",
        "ex",
        "pending",
        "wait_started",
        "connected_at",
        "addr",
        "pid",
        "key",
        "transactions",
        "bytes_in",
        "bytes_out",
        "ps",
        "busy_since",
        "settings",
        "settings_id",
        "syncing",
        "sync_changes",
        "held",
        "state_policy",
        "refuse_state",
        "idle_since",
        "tx_idle_since",
        "watch_idle_tx",
        "closing",
        "client_cb",
        "parse_last",
        "parse_verdict",
        "recent_sql",
        "recent_verdicts",
        "recent_next",
        "recent_hit",
    )

    def __init__(
        self,
        sock: Any,
        node: Node,
        pool: Pool,
        addr: Any,
        pid: int,
        key: bytes,
        settings: dict[str, str] | None = None,
        sid: int = -1,
    ) -> None:
        super().__init__(sock)
        self.node = node
        self.pool = pool
        self.session_mode = pool.key.mode == MODE_SESSION
        self.server: ServerConn | None = None
        self.ex = Exchange()
        self.pending: bytes | None = None  # bytes read while waiting for a server
        self.wait_started = 0.0
        self.connected_at = time.time()
        self.addr = addr
        self.pid = pid
        self.key = key
        self.transactions = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.busy_since = 0.0  # when the current transaction's first bytes arrived
        self.settings = settings or {}  # session parameters this client expects
        # Renewed whenever settings change; given by the login when it knows it (cached).
        self.settings_id = sid if sid >= 0 else settings_id(self.settings)
        self.syncing: Replies | None = None  # our SET on a newly linked server, in flight
        self.sync_changes: list[tuple[str, str | None]] = []
        self.held: bytes | None = None  # client bytes waiting for that SET to finish
        self.state_policy = None if self.session_mode else pool.limits.state_policy
        self.ex.inspect = self.state_policy is not None
        # state_policy == "error", as a bool: a string comparison per read otherwise.
        self.refuse_state = self.state_policy == "error"
        self.idle_since = _monotonic()  # last time it had no transaction running
        self.tx_idle_since = 0.0  # last ReadyForQuery inside a transaction block
        self.watch_idle_tx = node.settings.idle_transaction_timeout > 0
        # Set for every client by Node.begin_shutdown: hang up when the transaction ends.
        # A flag of its own, not node.shutting_down: the relay reads it per transaction, and
        # an attribute of the (interpreted) Node is a dictionary lookup in the compiled build.
        self.closing = node.shutting_down
        # The bound method its watcher calls, made when it starts reading and kept (a bound
        # method is a new object on every attribute read, and netio.Conn.start_reading is
        # no call into gevent when the watcher already runs it); dropped when the socket
        # closes, so that a closed client holds no reference cycle. (A server's watcher has
        # one callback of its own, ServerConn._on_readable, which hands its bytes to us.)
        self.client_cb: Any = None
        # The body of the last Parse looked at for session state, and its verdict: a client
        # often repeats its statement, and comparing bytes is cheaper than hashing them.
        self.parse_last = b""
        self.parse_verdict: tuple[str | None, bool] = (None, False)
        # The bodies of its recent Parses and their verdicts, for a client that takes turns
        # between a few statements (see _recent_index); made at its first new statement, so
        # an idle client holds nothing.
        self.recent_sql: list[bytes] | None = None
        self.recent_verdicts: list[tuple[str | None, bool]] = _NO_VERDICTS  # read-only
        self.recent_next = 0  # the entry the next new statement replaces, once full
        # The entry the last Parse matched or was stored in: the next Parse is looked for
        # in the entry after it first (a client repeating a sequence, see _recent_index).
        self.recent_hit: i64 = -1
        # Named prepared statements in transaction mode: the rewriter is switched on when
        # the client first names a statement (see framing's "watching"), not before.
        self.ps: PreparedSession | None = None
        if not self.session_mode and pool.limits.max_prepared_statements > 0:
            self.ex.start_watching()

    def __repr__(self) -> str:
        return f"<Client {self.addr} {self.pool.key}>"

    def idle_in_transaction_since(self, now: float) -> float:
        """Seconds this client has sat idle inside a transaction (0 when it is not)."""
        ex = self.ex
        if (
            self.server is None
            or not self.tx_idle_since
            or ex.tx_status == TX_IDLE
            or not ex.at_rest()
            or self.syncing is not None
        ):
            return 0.0
        return now - self.tx_idle_since

    @property
    def state(self) -> str:
        """PgBouncer's words: active (linked to a server), waiting, or idle."""
        if self.server is not None:
            return "active"
        return "waiting" if self.pending is not None else "idle"

    def describe(self) -> dict[str, Any]:
        """One row of the per-connection view (no secrets)."""
        addr = self.addr
        host, port = (addr[0], addr[1]) if isinstance(addr, tuple) else (str(addr), 0)
        key = self.pool.key
        return {
            "address": host,
            "port": port,
            "tenant": key.tenant,
            "user": key.user,
            "database": key.database,
            "mode": key.mode,
            "state": self.state,
            "connected_since": self.connected_at,
            "transactions": self.transactions,
            "queries": self.ex.ready_count,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "wait_seconds": (_monotonic() - self.wait_started) if self.pending is not None else 0.0,
        }

    def start(self) -> None:
        self.resume_reading()

    def resume_reading(self) -> None:
        """Read the client's bytes (again): with the one bound method kept for it."""
        callback = self.client_cb
        if callback is None:
            callback = self.client_cb = self._on_client_readable
        self.start_reading(callback)

    # -- client -> server -----------------------------------------------------------------

    def _on_client_readable(self, data: bytes | None = None) -> None:
        """The client's bytes: read here, or ``data`` when pooler/_sysio.c's relay read them
        and left the rest to this code (a request that needs the pool, a statement not
        judged before, a named statement, Terminate, end of file: see relay_client there)."""
        try:
            carried = len(self.carry)  # already counted when it arrived
            if data is None:
                try:
                    data = self.recv()
                except OSError:
                    # Reset by the client (ECONNRESET, or TLS failing): it left, as at end
                    # of file; its server is not at fault (see the except OSError below).
                    data = b""
                if data is None:
                    return
            n = len(data)
            if n == 0:
                self.disconnect()
                return
            self.bytes_in += n - carried
            began = 0.0  # the clock, when read here: a wait for a server starts then too
            if not self.busy_since:
                began = self.busy_since = _monotonic()
            server: ServerConn | None = self.server
            if server is None:
                pending = self.pending
                if pending is not None:
                    # Still waiting for a server: keep what else it sends. Reading goes on
                    # while a client waits (a stop and restart of its watcher would cost a
                    # system call per wait), up to pending_limit bytes (backpressure).
                    self.pending = pending = pending + data
                    if len(pending) >= self.pool.limits.pending_limit:
                        self.stop_reading()
                    return
                if self.ex.fe_remaining == 0 and data[0] == F_TERMINATE:
                    self.disconnect()
                    return
                if (
                    self.ps is None
                    and self.ex.watch
                    # An unnamed Parse, the usual first message, is told at a glance.
                    and not (data[0] == F_PARSE and n > 6 and data[5] == 0)
                    and names_statement(data, 0, n)
                ):
                    self._start_rewriting(None)  # at rest: nothing to take over
                if self.ps is not None:
                    answer = self.ps.answer_without_server(data, n)
                    if answer is not None:
                        self.bytes_out += len(answer)
                        self.busy_since = 0.0
                        self.write(answer)
                        return
                server = cast("ServerConn | None", self.pool.checkout(self))
                if server is None:
                    self.pending = data
                    self.wait_started = began if began else _monotonic()
                    if n >= self.pool.limits.pending_limit:
                        self.stop_reading()
                    return
                if self._link(server):
                    self.held = data
                    self.stop_reading()
                    return
            self._forward_to_server(data, n)
        except ProtocolError as exc:
            self.fatal(exc.sqlstate, exc.message)
        except OSError as err:
            self._server_lost(f"writing to the server failed: {err}")

    def _forward_to_server(self, data: bytes, n: int) -> None:
        """``data`` (``n`` bytes) from the client: scan, then send what is whole."""
        ex = self.ex
        server = self.server
        assert server is not None
        if self.refuse_state:
            data, n = self._refuse_session_state(data, n)
        ps = self.ps
        if ps is None:
            end = ex.frontend(data, n)
            if end and not server.write(data if end == n else memoryview(data)[:end]):
                self.stop_reading()
            if ex.sql_type:  # after the send: the server starts on the query sooner (the
                self._note_session_state(data, server)  # reply comes in a later callback)
            if ex.named_at >= 0:
                ex.named_at = -1
                self._start_rewriting(server)
                if end < n:
                    self._forward_to_server(data[end:], n - end)
                return
        else:
            to_server: list = []
            to_client: list = []
            end = ps.frontend(data, n, ex, to_server, to_client)
            if ex.sql_type:
                self._note_session_state(data, server)
            if to_client:
                self.write_many(to_client)
            if to_server and not server.write_many(to_server):
                self.stop_reading()
        if end < n:
            if ex.terminate_at >= 0:
                self.disconnect()
                return
            self.carry = data[end:]

    def _start_rewriting(self, server: ServerConn | None) -> None:
        """The client named a statement: from this message on, rewrite and queue (the
        requests and replies since the exchange was last at rest rebuild the queue)."""
        ex = self.ex
        ps = self.ps = PreparedSession(self.node.statement_names)
        if server is not None and server.statements is not None:
            ps.link(server.statements)
        ps.take_over(*ex.kinds())
        ex.stop_watching()
        ex.expected = len(ps.queue)

    def _note_session_state(self, data: bytes, server: ServerConn) -> None:
        """Policies reset and warn: statements that leave session state (recorded by the
        scanner: the first in Exchange.sql_type/sql_start/sql_end, any more in sql_at)
        make the server dirty, so it is reset before anyone else gets it."""
        ex = self.ex
        msg_type = ex.sql_type
        more = ex.sql_at
        ex.sql_type = 0
        ex.sql_at = None
        if self.state_policy is None or not msg_type:
            return
        self._judge_statement(data, msg_type, ex.sql_start, ex.sql_end, server)
        if more is not None:
            for msg_type, start, end in more:
                self._judge_statement(data, msg_type, start, end, server)

    def _judge_statement(
        self, data: bytes, msg_type: i64, start: i64, end: i64, server: ServerConn
    ) -> None:
        """The Query/Parse whose body is ``data[start:end]``: does it leave session state?"""
        body = data[start:end]
        if msg_type == F_PARSE and body == self.parse_last:
            verdict = self.parse_verdict  # this client's last Parse again: the usual case
        else:
            keep = msg_type == F_PARSE and end - start <= PARSE_KEPT
            at = self._recent_index(body) if keep else -1
            if at >= 0:
                verdict = self.recent_verdicts[at]  # one of its recent statements
            else:
                # classify_message(), its cache lookup inlined (a statement seen before)
                seen = SEEN_BODY[msg_type].get(body)
                verdict = classify_message(data, msg_type, start, end) if seen is None else seen
                if keep:
                    self._remember_parse(body, verdict)
            if keep:
                self.parse_last = body
                self.parse_verdict = verdict
        kind, drops_statements = verdict
        if drops_statements and server.statements is not None:
            # DISCARD / DEALLOCATE: the pooler's list of what this server has prepared
            # may be wrong now; DISCARD ALL before the next client puts both in step.
            server.dirty = True
        if kind is None:
            return
        server.dirty = True
        if self.state_policy == "warn":
            self.write(
                builders.notice_response(
                    "WARNING",
                    "01000",
                    f"{kind} leaves session state on a pooled server connection: it lasts "
                    "only until this transaction ends (transaction pooling); use session "
                    "mode (port 5432) to keep it",
                )
            )

    def _recent_index(self, body: bytes) -> int:
        """Where ``body`` is among this client's recent Parse bodies, or -1: comparing
        bytes is cheaper than hashing them for SEEN_BODY (~1,500 instructions per statement,
        a fifth of a TPC-B transaction's, when this kept only the last one). An index, not
        the verdict: an optional tuple would be a tuple object made per call when compiled.

        The entry after the last one matched is tried first: a client that runs the same
        sequence of statements again and again (pgbench's TPC-B, an application's request
        handler) finds each in one comparison. Every entry looked at is another client's
        object brought into the cache (the relay goes round all its clients between two
        of one client's statements): scanning from the start cost ~50 cache misses per
        TPC-B transaction, a seventh of the relay's, in callgrind's cache simulation."""
        recent = self.recent_sql
        if recent is None:
            return -1
        size = len(body)
        count = len(recent)
        at: i64 = self.recent_hit + 1
        if at >= count:
            at = 0
        guess = recent[at]
        if len(guess) == size and guess == body:
            self.recent_hit = at
            return at
        for i, prev in enumerate(recent):
            if len(prev) == size and prev == body:
                self.recent_hit = i
                return i
        return -1

    def _remember_parse(self, body: bytes, verdict: tuple[str | None, bool]) -> None:
        recent = self.recent_sql
        if recent is None:
            recent = self.recent_sql = []
            self.recent_verdicts = []
        if len(recent) < RECENT_PARSES:
            self.recent_hit = len(recent)
            recent.append(body)
            self.recent_verdicts.append(verdict)
            return
        at = self.recent_next
        self.recent_hit = at
        recent[at] = body
        self.recent_verdicts[at] = verdict
        self.recent_next = (at + 1) % RECENT_PARSES

    def _refuse_session_state(self, view: bytes, n: int) -> tuple[bytes, int]:
        """Policy error: replace each statement that would leave session state by one the
        server refuses itself (0A000), before anything is forwarded."""
        hits = []
        for msg_type, start, end in sql_messages(view, n, self.ex.fe_remaining):
            kind = stateful_kind(bytes(view[start:end]))
            if kind is not None:
                hits.append((msg_type, start, end, kind))
        if not hits:
            return view, n
        parts: list = []
        last = 0
        for msg_type, start, end, kind in hits:
            if msg_type == ord("Q"):
                header = start - 5
                parts.append(view[last:header])
                parts.append(builders.query(refusal_sql(kind).decode()))
                last = end + 1
            else:
                self.write(
                    builders.notice_response(
                        "WARNING",
                        "0A000",
                        f"{kind} is not allowed in transaction pooling mode "
                        "for this tenant; the statement was refused",
                    )
                )
                parts.append(view[last:start])
                parts.append(b"greenvisor refused this statement")
                last = end
        parts.append(view[last:n])
        data = bytearray()
        for part in parts:
            data += part
        if any(msg_type == ord("P") for msg_type, *_ in hits):
            data = _fix_lengths(data, self.ex.fe_remaining)
        return bytes(data), len(data)

    def _link(self, server: ServerConn) -> bool:
        """Take ``server``; True when it first needs our SET (the caller holds its bytes)."""
        self.server = server
        server.client = self
        self.ex.reset()
        if self.ps is not None and server.statements is not None:
            self.ps.link(server.statements)
        server.resume_reading()  # its callback hands what it reads to server.client: us
        if len(server.extra) == 0:
            fits = server.fits
            if self.settings_id in fits:  # checked before and nothing changed since
                return False
            if self.settings.items() <= server.params.items():
                if len(fits) >= 64:
                    fits.clear()
                fits.add(self.settings_id)
                return False
        changes = changes_for(self.settings, server.params, server.extra)
        if not changes:
            return False
        self.syncing = Replies()
        self.sync_changes = changes
        if not server.write(builders.query(set_statement(changes))):
            self.stop_reading()
        return True

    def _on_sync_reply(self, server: ServerConn) -> None:
        """Replies to our SET: note the values, then let the held client bytes through."""
        replies = self.syncing
        assert replies is not None
        data = server.recv()
        if data is None:
            return
        n = len(data)
        if n == 0:
            self._server_lost("the server closed the connection")
            return
        used = replies.feed(data, n)
        if used < n:
            server.carry = data[used:]
        self._note_statuses(server, replies.statuses)
        replies.statuses.clear()
        if replies.ready is None:
            return
        self.syncing = None
        if replies.error is not None or replies.ready != b"I" or server.carry:
            fields = replies.error or {}
            self.pool.discard(server, "applying the client's parameters failed")
            self.server = None
            self.fatal(
                fields.get("C") or "22023",
                f"cannot apply the connection's parameters: {fields.get('M', 'unknown error')}; "
                "fix the startup parameters or options of this connection",
            )
            return
        for name, value in self.sync_changes:
            if value is None:
                server.params.pop(name, None)
                server.extra.discard(name)
            elif name in REPORTED_NAMES:
                # No ParameterStatus means the server already had the canonical form.
                if name in server.params:
                    self.settings[name] = server.params[name]
                else:
                    server.params[name] = value
            else:
                server.params[name] = value
                server.extra.add(name)
        server.fits.clear()
        self.settings_id = settings_id(self.settings)
        self.sync_changes = []
        data = self.held or b""
        self.held = None
        if data:
            self._forward_to_server(data, len(data))
        if self.server is not None and self.server.outbuf is None and not self.closed:
            self.resume_reading()

    def _note_statuses(self, server: ServerConn, statuses: list[tuple[str, str]]) -> None:
        """ParameterStatus from the server: both sides now have this value."""
        for name, value in statuses:
            server.params[name] = value
            self.settings[name] = value
        server.fits.clear()
        self.settings_id = settings_id(self.settings)

    # -- waiting for a server (pool.Waiter) -------------------------------------------------

    def server_ready(self, server: Any) -> bool:  # pool.Waiter: a ServerConn
        if self.closed:
            return False
        conn: ServerConn = server  # typed: native attribute reads in the compiled build
        pending = self.pending
        # Lengths, not truth tests: a bytes or set in a boolean context is a generic call
        # in the compiled build (here and in _link, a few per transaction).
        data = pending if pending is not None else b""
        self.pending = None
        try:
            if self._link(conn):
                self.held = data
                self.stop_reading()  # until our SET is answered (it was reading while waiting)
                return True
            if len(data):
                self._forward_to_server(data, len(data))
            if conn.outbuf is None:  # else server_drained() starts it again
                self.resume_reading()  # no call into gevent: it read while it waited
        except ProtocolError as exc:
            self.fatal(exc.sqlstate, exc.message)
        except OSError as err:
            self._server_lost(f"writing to the server failed: {err}")
        return True

    def checkout_failed(self, sqlstate: str, message: str) -> None:
        self.pending = None
        self.fatal(sqlstate, message)

    # -- server -> client -----------------------------------------------------------------

    def _on_server_readable(self, data: bytes | None = None) -> None:
        """The server's bytes: read here, or ``data`` when pooler/_sysio.c's relay read them
        and left the rest to this code (a ParameterStatus, an error, end of file: see
        relay_server there)."""
        server = self.server
        if server is None:
            return
        try:
            if self.syncing is not None:
                self._on_sync_reply(server)
                return
            if data is None:
                data = server.recv()
                if data is None:
                    return
            n = len(data)
            if n == 0:
                self._server_lost("the server closed the connection")
                return
            ex = self.ex
            ps = self.ps
            if ps is None:
                end = ex.backend(data, n)
                drained = self.write(data if end == n else memoryview(data)[:end])
            else:
                to_client: list = []
                end = ps.backend(data, n, ex, to_client)
                drained = self.write_many(to_client) if to_client else self.outbuf is None
            if end < n:
                server.carry = data[end:]
            if ex.statuses:
                self._note_statuses(
                    server, [parse_parameter_status(data[a:b]) for a, b in ex.statuses]
                )
                ex.statuses = None
            self.bytes_out += end
            if end == n and ex.releasable():
                self._transaction_done(server, drained)
                return
            if self.watch_idle_tx and end == n and ex.at_rest():
                self.tx_idle_since = _monotonic()
            if not drained:
                server.stop_reading()
        except ProtocolError as exc:
            self._server_lost(exc.message)
        except OSError as err:
            self._server_lost(str(err))

    def _transaction_done(self, server: ServerConn, drained: bool) -> None:
        """The reply that ends a transaction went to the client (``drained``: all of it, else
        the rest waits in outbuf): count it, and in transaction mode give the server back.
        Also called by pooler/_sysio.c's relay_server, which forwards such a reply itself."""
        self.transactions += 1
        now = _monotonic()
        self.idle_since = now
        if self.busy_since:
            self.pool.stats.xact_time.observe(now - self.busy_since)
            self.busy_since = 0.0
        if not self.session_mode:
            self._release(now)
        if self.closing:
            self.fatal("57P01", SHUTDOWN_MESSAGE)
            return
        if self.session_mode and not drained:
            server.stop_reading()

    def _release(self, now: float = 0.0) -> None:
        """Give the server back (``now``: the clock, if the caller just read it)."""
        server = self.server
        assert server is not None
        self.server = None
        # No stop_reading(): whatever the server does next (the next client, the idle list,
        # a reset) its watcher's one callback follows (ServerConn._on_readable), or it is
        # closed (release() stops it while a cancel holds it back).
        server.release(False, now)

    # -- backpressure ---------------------------------------------------------------------

    def on_drained(self) -> None:
        server = self.server
        if server is not None:
            server.resume_reading()

    def on_write_error(self, exc: OSError) -> None:
        self.disconnect()

    def server_drained(self) -> None:
        if self.pending is None:
            self.resume_reading()

    def server_write_failed(self, exc: OSError) -> None:
        self._server_lost(f"writing to the server failed: {exc}")

    # -- endings ----------------------------------------------------------------------------

    def fatal(self, sqlstate: str, message: str) -> None:
        """Tell the client why and hang up."""
        log.info("closing client %s: %s %s", self.addr, sqlstate, message)
        self.disconnect(builders.error_response("FATAL", sqlstate, message))

    def _server_lost(self, why: str) -> None:
        server = self.server
        self.server = None
        if server is not None:
            self.pool.discard(server, why)
        if self.ex.server_fatal and self.ex.be_remaining == 0:
            # The server said why itself (e.g. 57P01 on a restart); a second FATAL would
            # confuse drivers ("received 2 results").
            self.disconnect()
            return
        self.disconnect(
            builders.error_response(
                "FATAL",
                "08006",
                f"the connection to the tenant database was lost ({why}); reconnect to continue",
            )
        )

    def close_socket(self, last_words: bytes = b"") -> None:
        self.client_cb = None
        super().close_socket(last_words)

    def disconnect(self, last_words: bytes = b"") -> None:
        """The client is gone (or sent away): return or close its server, then close."""
        if self.closed:
            return
        self.close_socket(last_words)
        server = self.server
        self.server = None
        if server is not None:
            self._return_server(server)
        elif self.pending is not None:
            self.pending = None
            self.pool.cancel_wait(self)
        stats = self.pool.stats
        stats.bytes_in += self.bytes_in
        stats.bytes_out += self.bytes_out
        stats.transactions += self.transactions
        stats.queries += self.ex.ready_count
        self.pool.client_left()
        self.node.client_closed(self)

    def _return_server(self, server: ServerConn) -> None:
        ex = self.ex
        server.stop_reading()
        if (
            server.outbuf is not None
            or server.carry
            or not ex.at_rest()
            or self.syncing is not None
        ):
            if ex.expected:
                self.node.cancel_server(server)  # do not let the orphaned query run on
            self.pool.discard(server, "client left in the middle of an exchange")
        elif (self.session_mode and self.pool.limits.reset_query) or (
            server.dirty and ex.tx_status == TX_IDLE
        ):
            server.dirty = False
            server.reset(self.pool.limits.reset_query if self.session_mode else SESSION_RESET_QUERY)
        elif server.dirty:
            self.pool.discard(server, "client left a session-state change in a transaction")
        elif ex.tx_status != TX_IDLE:
            server.reset(ROLLBACK_QUERY)
        else:
            server.release()


def _fix_lengths(data: bytearray, start: int) -> bytearray:
    """Recompute each whole Parse's length after its SQL was replaced in place."""
    out = bytearray(data[:start])
    pos = start
    n = len(data)
    while n - pos >= 5:
        msg_type = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        end = pos + 1 + length
        if msg_type == ord("P"):
            # The body's layout is name NUL sql NUL int16 [oids]: find the real end by
            # parsing instead of trusting the old length.
            name_end = data.index(0, pos + 5)
            sql_end = data.index(0, name_end + 1)
            count = int.from_bytes(data[sql_end + 1 : sql_end + 3], "big")
            end = sql_end + 3 + 4 * count
            body = data[pos + 5 : end]
            out += b"P" + (len(body) + 4).to_bytes(4, "big") + body
        else:
            out += data[pos:end]
        pos = end
    out += data[pos:]
    return out


def _relay_in_c() -> str:
    """Let pooler/_sysio.c relay the common case of both directions (its relay_server and
    relay_client) in the compiled build, where these classes are C structs of the layout it
    was compiled with; ``GREENVISOR_C_RELAY=0`` keeps every event on the compiled Python
    path (for an A/B comparison). Returns what was decided, for the start-up log."""
    from pooler import loginio
    from pooler.server import ServerConn

    sysio = loginio._SYSIO
    if sysio is None or not hasattr(sysio, "relay_types"):
        return "in Python (no compiled relay)"
    if os.environ.get("GREENVISOR_C_RELAY", "1") == "0":
        return "in compiled Python (GREENVISOR_C_RELAY=0)"
    sysio.relay_types(ServerConn, Client, Exchange)
    return "in C for the common case (pooler/_sysio.c's read watchers)"


#: Where the relay's common case runs (logged at start-up).
RELAY_STATUS: Final = _relay_in_c()
