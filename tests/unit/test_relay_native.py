"""pooler/_sysio.c's relay (relay_server, relay_client) against the Python relay it stands
in for (Client._on_server_readable, Client._on_client_readable), event for event.

With the compiled hot path, a read watcher's event on a server linked to a client is
relayed in C (a reply that ends the transaction then goes to Client._transaction_done, the
pool's work), and handed to the Python code when it needs it (a ParameterStatus, an error,
end of file); a client's request while it holds its server likewise (unless it is a
statement not judged clean before, a named statement, Terminate, end of file). Every case
here runs the same conversation twice over real Client/ServerConn/Pool objects and socket
pairs (bench.relay): once as gevent's watchers would call it (the callbacks), once as
pooler/_sysio.c's watchers do (Watcher.fire(), the same code as a readiness event), and
requires the same bytes on every socket and the same state after each step; in the native
run it also checks which path took each event (relay_counts). Without the compiled build
only the Python run exists, and its own expectations are checked.
"""

from __future__ import annotations

import importlib
import socket
import struct
from typing import Any

import pytest

from bench.relay import native_watcher, relay_objects
from pooler import client as client_module
from pooler import hotpath

pytestmark = pytest.mark.unit

MODES = ["python"] + (["native"] if hotpath.compiled else [])


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def query(sql: bytes) -> bytes:
    return message(b"Q", sql + b"\0")


def ready(status: bytes) -> bytes:
    return message(b"Z", status)


def done(tag: bytes) -> bytes:
    return message(b"C", tag + b"\0")


def extended(sql: bytes) -> bytes:
    """pgbench -M extended's unnamed Parse/Bind/Describe/Execute/Sync."""
    return (
        message(b"P", b"\0" + sql + b"\0\0\0")
        + message(b"B", b"\0\0\0\0\0\0\0\0")
        + message(b"D", b"P\0")
        + message(b"E", b"\0\0\0\0\0")
        + message(b"S")
    )


ROW = message(b"D", b"\x00\x01\x00\x00\x00\x011")
IN_BLOCK = done(b"SELECT 1") + ready(b"T")


def drain(sock: socket.socket) -> bytes:
    if sock.fileno() == -1:
        return b""  # closed by the test
    sock.setblocking(False)
    out = b""
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            out += chunk
    except BlockingIOError:
        pass
    except ConnectionResetError:
        pass
    return out


class Rig:
    """Client a linked to the pool's one server inside a transaction block (BEGIN done);
    client b logged in beside it. ``event()`` is one readiness event on the server."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server_got = b""
        pool, (a, b), (peer_a, peer_b), server, server_peer = relay_objects(2)
        if mode == "native":  # as under runpooler's hub: pooler._sysio's watchers
            for conn in (server, a, b):
                native_watcher(conn)
        self.pool, self.a, self.b, self.server = pool, a, b, server
        self.peer_a, self.peer_b, self.server_peer = peer_a, peer_b, server_peer
        self.client_says(a, peer_a, query(b"begin"))
        self.server_says(done(b"BEGIN") + ready(b"T"))
        assert a.server is server and a.ex.tx_status == ord("T")
        self.a_got = drain(peer_a)

    def client_says(self, client: Any, peer: socket.socket, data: bytes) -> None:
        peer.sendall(data)
        self.client_event(client)
        self.server_got += drain(self.server_peer)

    def client_event(self, client: Any) -> None:
        if self.mode == "native":
            client.rw.fire()
        else:
            client._on_client_readable()  # what gevent's watcher calls

    def event(self) -> None:
        if self.mode == "native":
            self.server.rw.fire()
        else:
            self.server._on_readable()  # what gevent's watcher calls

    def server_says(self, data: bytes) -> None:
        self.server_peer.sendall(data)
        self.event()

    def state(self) -> dict[str, Any]:
        a, ex, server = self.a, self.a.ex, self.server
        self.a_got += drain(self.peer_a)
        self.server_got += drain(self.server_peer)
        return {
            "a_got": self.a_got,
            "server_got": self.server_got,
            "linked": a.server is server,
            "b_linked": self.b.server is server,
            "expected": ex.expected,
            "tx_status": chr(ex.tx_status),
            "ready_count": ex.ready_count,
            "be_remaining": ex.be_remaining,
            "kinds": ex.kinds(),
            "fe_n": ex.fe_n,
            "bytes_out": a.bytes_out,
            "transactions": a.transactions,
            "carry": server.carry,
            "kept": bytes(a.outbuf) if a.outbuf is not None else None,
            "server_reading": server.reading is not None,
            "a_closed": a.closed,
            "server_closed": server.closed,
            "idle": len(self.pool.idle),
            "settings": dict(a.settings),
            "server_params": dict(server.params),
            "bytes_in": a.bytes_in,
            "syncs": ex.syncs_since_exec,
            "extended": ex.extended,
            "fe_remaining": ex.fe_remaining,
            "a_carry": a.carry,
            "a_reading": a.reading is not None,
            "kept_for_server": bytes(server.outbuf) if server.outbuf is not None else None,
            "parse_last": a.parse_last,
            "parse_verdict": a.parse_verdict,
            "recent_sql": list(a.recent_sql or []),
            "recent_hit": a.recent_hit,
            "dirty": server.dirty,
            "rewriting": a.ps is not None,
        }


def counts() -> tuple[int, int]:
    """pooler._sysio's (events relayed in C, events handed to Python), ever."""
    if not hotpath.compiled:
        return (0, 0)
    fast, handed = importlib.import_module("pooler._sysio").relay_counts()
    return (fast, handed)


def both(conversation: Any) -> list[dict[str, Any]]:
    """Run ``conversation(rig)`` (a list of states, one per step) in every mode; the native
    run must see exactly what the Python run saw. Returns the Python run's states."""
    runs = {}
    for mode in MODES:
        runs[mode] = conversation(Rig(mode))
    for mode, states in runs.items():
        for step, (got, want) in enumerate(zip(states, runs["python"], strict=True)):
            assert got == want, f"{mode} differs from python at step {step}"
    return runs["python"]


def native_counts(conversation: Any) -> tuple[int, int]:
    """(events relayed in C, events handed to Python) by the native run of ``conversation``."""
    if not hotpath.compiled:
        return (0, 0)
    before = counts()
    conversation(Rig("native"))
    after = counts()
    return (after[0] - before[0], after[1] - before[1])


def test_a_reply_inside_a_transaction_block_is_relayed_in_c() -> None:
    reply = ROW + IN_BLOCK

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"select 1"))
        rig.server_says(reply)
        return [rig.state()]

    (state,) = both(talk)
    assert state["a_got"].endswith(reply) and state["linked"]
    assert state["tx_status"] == "T" and state["carry"] == b"" and state["kept"] is None
    assert state["bytes_out"] == len(done(b"BEGIN") + ready(b"T")) + len(reply)
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        # In C: BEGIN's reply and this one. To Python: the simple-protocol query (BEGIN,
        # with no server yet, goes to the pool's checkout through the callback, uncounted).
        assert native_counts(talk) == (2, 1)


def test_the_reply_that_ends_the_transaction_hands_the_server_on() -> None:
    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.b, rig.peer_b, query(b"select 2"))  # b waits for the server
        assert rig.b.server is None and list(rig.pool.waiters) == [rig.b]
        rig.client_says(rig.a, rig.peer_a, query(b"commit"))
        rig.server_says(done(b"COMMIT") + ready(b"I"))
        return [rig.state()]

    (state,) = both(talk)
    assert state["a_got"].endswith(done(b"COMMIT") + ready(b"I"))
    assert not state["linked"] and state["b_linked"] and state["transactions"] == 1
    assert state["server_got"].endswith(query(b"commit") + query(b"select 2"))
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        # BEGIN's reply and COMMIT's in C (then Client._transaction_done); COMMIT itself, a
        # simple-protocol query, in Python; so is b's, read in C when it finds the pool
        # full (see relay_queue) and handed over (BEGIN, with no server yet, goes to the
        # pool's checkout through the callback, uncounted).
        assert native_counts(talk) == (2, 2)


def test_the_last_reply_goes_back_to_the_pool_even_when_the_client_is_slow() -> None:
    """The client's socket is full when the reply that ends its transaction arrives: the
    reply waits in the client's outbuf, and the server goes back to the pool at once."""
    commit = done(b"COMMIT") + ready(b"I")

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"commit"))
        filler = b"N" * 65536  # stands for earlier replies the client has not read yet
        sent = 0
        for _ in range(1000):
            try:
                sent += rig.a.sock.send(filler)
            except BlockingIOError:
                break
        rig.server_says(commit)
        state = rig.state()
        state["a_got"] = state["a_got"][-len(commit) :]
        return [state, {"filler": sent > 0}]

    state, filled = both(talk)
    assert filled["filler"] and state["kept"] == commit and not state["linked"]
    assert state["idle"] == 1 and state["transactions"] == 1


def test_in_session_mode_a_slow_client_stops_its_server_at_the_transaction_s_end() -> None:
    """Session mode keeps the server after the transaction: if the client's socket did not
    take the last reply whole, the server is not read until it drains."""
    commit = done(b"COMMIT") + ready(b"I")

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.a.session_mode = True  # as a session-mode pool's client
        rig.client_says(rig.a, rig.peer_a, query(b"commit"))
        for _ in range(1000):
            try:
                rig.a.sock.send(b"N" * 65536)  # earlier replies the client has not read
            except BlockingIOError:
                break
        rig.server_says(commit)
        stopped = rig.state()
        stopped["a_got"] = b""
        for _ in range(100):
            drain(rig.peer_a)
            rig.a._on_writable()  # what the client's write watcher calls
            if rig.a.outbuf is None:
                break
        final = rig.state()
        final["a_got"] = final["a_got"][-len(commit) :]
        return [stopped, final]

    stopped, final = both(talk)
    assert stopped["linked"] and stopped["kept"] == commit and not stopped["server_reading"]
    assert final["linked"] and final["kept"] is None and final["server_reading"]
    assert final["a_got"] == commit and final["transactions"] == 1


def test_a_client_told_to_go_gets_its_last_reply_first() -> None:
    """Shutting down (Node.begin_shutdown sets closing): the transaction's last reply goes
    out, then 57P01."""

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"commit"))
        rig.a.closing = True
        rig.server_says(done(b"COMMIT") + ready(b"I"))
        return [rig.state()]

    (state,) = both(talk)
    got = state["a_got"]
    assert got.index(ready(b"I")) < got.index(b"57P01") and state["a_closed"]
    assert state["idle"] == 1


def test_a_parameter_status_is_noted_by_python() -> None:
    status = message(b"S", b"application_name\0renamed\0")

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"set application_name = renamed"))
        rig.server_says(done(b"SET") + status + ready(b"T"))
        return [rig.state()]

    (state,) = both(talk)
    assert state["settings"]["application_name"] == "renamed"
    assert state["server_params"]["application_name"] == "renamed"
    assert state["a_got"].endswith(done(b"SET") + status + ready(b"T"))
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (1, 2)  # the query and the status reply: Python


def test_an_error_inside_a_block_is_relayed_by_python() -> None:
    error = message(b"E", b"SERROR\0VERROR\0C42P01\0Mno such table\0\0")

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"select * from nowhere"))
        rig.server_says(error + ready(b"E"))
        return [rig.state()]

    (state,) = both(talk)
    assert state["tx_status"] == "E" and state["linked"]
    assert state["a_got"].endswith(error + ready(b"E"))
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (1, 2)  # the query and the error: Python


def test_a_header_split_across_reads_is_carried() -> None:
    reply = ROW + IN_BLOCK
    z_at = len(reply) - 6  # where ReadyForQuery starts
    cut = z_at + 3  # three bytes of its header arrive first

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"select 1"))
        rig.server_says(reply[:cut])
        first = rig.state()
        rig.server_says(reply[cut:])
        return [first, rig.state()]

    first, second = both(talk)
    assert first["carry"] == reply[z_at:cut] and first["a_got"].endswith(reply[:z_at])
    assert second["carry"] == b"" and second["a_got"].endswith(reply)
    assert second["ready_count"] == first["ready_count"] + 1
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        # The second read starts with carried bytes: the Python relay joins them (not
        # counted: nothing was read in C). The two queries: Python.
        assert native_counts(talk) == (2, 1)


def test_a_row_bigger_than_a_read_streams_through() -> None:
    big = message(b"D", b"\x00\x01" + struct.pack("!I", 300_000) + b"x" * 300_000)
    reply = big + IN_BLOCK

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"select big"))
        rig.server_peer.setblocking(False)
        sent = 0
        got = b""
        for _ in range(400):  # bounded: a few dozen events carry it
            if sent < len(reply):
                try:
                    sent += rig.server_peer.send(reply[sent : sent + 100_000])
                except BlockingIOError:
                    pass
            rig.event()
            got += drain(rig.peer_a)
            if got.endswith(IN_BLOCK):
                break
        rig.a_got += got
        return [rig.state()]

    (state,) = both(talk)
    assert state["a_got"].endswith(reply) and state["be_remaining"] == 0
    assert state["linked"] and state["tx_status"] == "T"


def test_a_client_that_does_not_read_stops_the_server_until_it_drains() -> None:
    row = message(b"D", b"\x00\x01" + struct.pack("!I", 60_000) + b"y" * 60_000)
    reply = row * 40 + IN_BLOCK  # 2.4 MB: more than the socket pair holds

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"select lots"))
        rig.server_peer.setblocking(False)
        sent = 0
        for _ in range(400):
            try:
                sent += rig.server_peer.send(reply[sent : sent + 200_000])
            except BlockingIOError:
                pass
            rig.event()
            if rig.server.reading is None:
                break
        stopped = rig.state()  # the client's socket is full: bytes kept, the server unread
        got = stopped["a_got"]
        for _ in range(400):
            got += drain(rig.peer_a)
            if rig.a.outbuf is not None:
                rig.a._on_writable()  # what the client's write watcher calls
            if sent < len(reply):
                try:
                    sent += rig.server_peer.send(reply[sent : sent + 200_000])
                except BlockingIOError:
                    pass
            if rig.server.reading is not None:
                rig.event()
            if got.endswith(IN_BLOCK):
                break
        rig.a_got = got
        stopped["a_got"] = len(stopped["a_got"])  # how much got through varies: compared below
        return [stopped, rig.state()]

    runs = {mode: talk(Rig(mode)) for mode in MODES}
    for stopped, final in runs.values():
        assert stopped["kept"] and not stopped["server_reading"]
        assert final["a_got"].endswith(reply) and final["server_reading"]
        assert final["kept"] is None and final["linked"]
    finals = [final for _, final in runs.values()]
    assert all(final == finals[0] for final in finals)


def test_the_server_hanging_up_loses_it_with_an_error_for_the_client() -> None:
    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"select pg_terminate_backend(pg_backend_pid())"))
        rig.server_peer.close()
        rig.event()
        state = rig.state()
        state.pop("server_got")
        return [state]

    (state,) = both(talk)
    assert state["a_closed"] and state["server_closed"] and not state["linked"]
    assert b"08006" in state["a_got"] and b"the server closed the connection" in state["a_got"]
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (1, 2)  # end of file: Python says why


def test_a_client_that_went_away_loses_the_server_mid_transaction() -> None:
    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, query(b"select 1"))
        rig.peer_a.close()
        rig.server_says(ROW + IN_BLOCK)
        state = rig.state()
        state.pop("a_got")
        return [state]

    (state,) = both(talk)
    # A server inside a transaction block cannot serve anyone else: closed, never reused.
    assert state["a_closed"] and state["server_closed"] and state["idle"] == 0
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (2, 1)  # the write failed in C: no hand-over


def test_extended_replies_keep_their_kinds_and_too_many_go_to_python() -> None:
    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, extended(b"select 1"))
        rig.server_says(message(b"1") + message(b"2"))  # the rest still to come
        partial = rig.state()
        rig.server_says(message(b"T", b"\0\0") + ROW + IN_BLOCK)
        at_rest = rig.state()
        # Two statements without a Sync between: eight replies before any ReadyForQuery.
        two = extended(b"select 1")[:-5] + extended(b"select 2")
        rig.client_says(rig.a, rig.peer_a, two)
        eight = (message(b"1") + message(b"2") + message(b"n") + done(b"SELECT 1")) * 2
        rig.server_says(eight)
        many = rig.state()
        rig.server_says(ready(b"T"))
        return [partial, at_rest, many, rig.state()]

    partial, at_rest, many, final = both(talk)
    assert partial["kinds"][1] == b"12" and partial["expected"] == 1
    assert at_rest["kinds"] == (b"", b"") and at_rest["expected"] == 0
    assert many["kinds"][1] == b"12nC12nC"
    assert final["kinds"] == (b"", b"") and final["linked"]
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        # In C: BEGIN's reply, "12", the rest, the last ReadyForQuery. To Python: the first
        # Parse of "select 1", two statements in one read, eight kinds.
        assert native_counts(talk) == (4, 3)


def test_the_start_up_log_says_which_relay_runs() -> None:
    status = client_module.RELAY_STATUS
    if not hotpath.compiled:
        assert status == "in Python (no compiled relay)"
        return
    assert status.startswith("in C") or "GREENVISOR_C_RELAY=0" in status
    from pooler.client import Client
    from pooler.protocol.framing import Exchange

    sysio = importlib.import_module("pooler._sysio")
    with pytest.raises(TypeError, match="not the compiled class of this build"):
        sysio.relay_types(object, Client, Exchange)


# --- client to server -----------------------------------------------------------------------


def reply_to_extended() -> bytes:
    return message(b"1") + message(b"2") + message(b"T", b"\0\0") + ROW + IN_BLOCK


def test_statements_judged_before_go_to_the_server_in_c() -> None:
    def talk(rig: Rig) -> list[dict[str, Any]]:
        states = []
        for sql in (b"select 1", b"select 1", b"select 2", b"select 1", b"select 2"):
            rig.client_says(rig.a, rig.peer_a, extended(sql))
            states.append(rig.state())
            rig.server_says(reply_to_extended())
        return states

    states = both(talk)
    assert [s["server_got"].count(b"select ") for s in states] == [1, 2, 3, 4, 5]
    assert [s["parse_last"] for s in states] == [
        b"\0select 1\0\0\0",
        b"\0select 1\0\0\0",
        b"\0select 2\0\0\0",
        b"\0select 1\0\0\0",
        b"\0select 2\0\0\0",
    ]
    assert states[-1]["recent_hit"] == 1 and not states[-1]["dirty"]
    assert all(s["expected"] == 1 and s["linked"] for s in states)
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        # Requests: each statement's first Parse is judged by Python, its repeats (the last
        # one, or the next of its sequence) in C (BEGIN, with no server yet, goes to the
        # pool through the callback, uncounted). Replies: all six in C.
        assert native_counts(talk) == (6 + 3, 2)


def test_a_statement_that_leaves_session_state_is_always_judged_by_python() -> None:
    def talk(rig: Rig) -> list[dict[str, Any]]:
        states = []
        for _ in range(2):
            rig.client_says(rig.a, rig.peer_a, extended(b"set search_path = elsewhere"))
            states.append(rig.state())
            rig.server_says(reply_to_extended())
        return states

    first, second = both(talk)
    assert first["dirty"] and second["dirty"]  # reset before the server serves anyone else
    assert second["parse_verdict"][0] is not None
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (3, 2)


def test_a_named_statement_starts_the_rewriter_in_python() -> None:
    named = message(b"P", b"s1\0select 1\0\0\0") + message(b"S")

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, named)
        return [rig.state()]

    (state,) = both(talk)
    assert state["rewriting"] and state["linked"]
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (1, 1)  # BEGIN's reply in C


def test_a_request_split_in_its_header_is_carried() -> None:
    request = extended(b"select 1")

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, request)  # judged once, by Python
        rig.server_says(reply_to_extended())
        rig.client_says(rig.a, rig.peer_a, request[:-3])  # Sync's header cut after 2 bytes
        first = rig.state()
        rig.client_says(rig.a, rig.peer_a, request[-3:])
        return [first, rig.state()]

    first, second = both(talk)
    assert first["a_carry"] == request[-5:-3] and first["expected"] == 0
    assert second["a_carry"] == b"" and second["expected"] == 1
    assert second["server_got"].endswith(request + request)
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        # The split request's first part in C; its rest, after a carry, by Python's read.
        assert native_counts(talk) == (3, 1)


@pytest.mark.parametrize("reset", [False, True], ids=["end-of-file", "reset"])
def test_a_client_leaving_mid_transaction_has_its_server_rolled_back(reset: bool) -> None:
    def talk(rig: Rig) -> list[dict[str, Any]]:
        if reset:
            # A Unix socket closed with unread bytes makes its peer's next read fail with
            # ECONNRESET, as a TCP client's RST does.
            rig.a.sock.send(b"unread")
        rig.peer_a.close()
        rig.client_event(rig.a)
        state = rig.state()
        state.pop("a_got")
        return [state]

    (state,) = both(talk)
    # Inside a transaction block: rolled back before anyone else gets it, and kept. A
    # failed read is the client's end too, not the server's (the Python relay closed the
    # server for it, "writing to the server failed: ... reset by peer", before 676705e).
    assert (
        state["a_closed"]
        and not state["linked"]
        and not state["server_closed"]
        and state["server_got"].endswith(query(b"ROLLBACK"))
    )
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (1, 1)  # end of file or error: handed to Python


def test_a_server_gone_when_the_client_writes_is_lost_with_a_reason() -> None:
    request = extended(b"select 1")

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, request)
        rig.server_says(reply_to_extended())
        rig.server_peer.close()
        rig.client_says(rig.a, rig.peer_a, request)  # judged before: relayed in C
        state = rig.state()
        state.pop("server_got")
        return [state]

    (state,) = both(talk)
    assert state["a_closed"] and state["server_closed"]
    assert b"writing to the server failed: [Errno 32] Broken pipe" in state["a_got"]
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (3, 1)  # the failed write in C


def test_terminate_mid_transaction_is_python_s() -> None:
    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.client_says(rig.a, rig.peer_a, message(b"X"))
        return [rig.state()]

    (state,) = both(talk)
    # Not forwarded: the server is rolled back for the next client.
    assert state["a_closed"] and state["server_got"].endswith(query(b"ROLLBACK"))
    if hotpath.compiled and "C_RELAY=0" not in client_module.RELAY_STATUS:
        assert native_counts(talk) == (1, 1)


def test_a_server_that_does_not_read_stops_the_client_until_it_drains() -> None:
    bind = message(b"B", b"\0\0\0\0\0\x01" + struct.pack("!I", 60_000) + b"z" * 60_000 + b"\0\0")
    request = (bind + message(b"E", b"\0\0\0\0\0")) * 40 + message(b"S")  # 2.4 MB

    def talk(rig: Rig) -> list[dict[str, Any]]:
        rig.peer_a.setblocking(False)
        sent = 0
        for _ in range(400):
            try:
                sent += rig.peer_a.send(request[sent : sent + 200_000])
            except BlockingIOError:
                pass
            rig.client_event(rig.a)
            if rig.a.reading is None:
                break
        stopped = rig.state()
        got = stopped["server_got"]
        for _ in range(400):
            got += drain(rig.server_peer)
            if rig.server.outbuf is not None:
                rig.server._on_writable()  # what the server's write watcher calls
            if sent < len(request):
                try:
                    sent += rig.peer_a.send(request[sent : sent + 200_000])
                except BlockingIOError:
                    pass
            if rig.a.reading is not None:
                rig.client_event(rig.a)
            if got.endswith(request):
                break
        rig.server_got = got
        stopped["server_got"] = len(stopped["server_got"])  # varies: compared below
        stopped["bytes_in"] = 0
        return [stopped, rig.state()]

    runs = {mode: talk(Rig(mode)) for mode in MODES}
    for stopped, final in runs.values():
        assert stopped["kept_for_server"] and not stopped["a_reading"]
        assert final["server_got"].endswith(request) and final["a_reading"]
        assert final["kept_for_server"] is None and final["expected"] == 1
    finals = [final for _, final in runs.values()]
    assert all(final == finals[0] for final in finals)


# --- the pool in C: checkout and release, a waiter queued and handed the server ------------


def pool_counts() -> tuple[int, int, int, int]:
    """pooler._sysio's (servers checked out in C, released to the idle list in C, handed
    to a waiter in C, clients queued in C), ever."""
    if not hotpath.compiled:
        return (0, 0, 0, 0)
    counts = importlib.import_module("pooler._sysio").relay_pool_counts()
    checkouts, releases, handoffs, queued = counts
    return (checkouts, releases, handoffs, queued)


C_POOL = hotpath.compiled and "in C" in importlib.import_module("pooler.pool").POOL_STATUS


class QuietRig:
    """Logged-in clients (two unless told) and a pool of one idle server, nobody linked:
    every transaction checks the server out and gives it back (pgbench -c 1), or hands it
    to a client waiting."""

    def __init__(self, mode: str, prepare: Any = None, count: int = 2) -> None:
        pool, clients, peers, server, server_peer = relay_objects(count)
        if prepare is not None:
            prepare(pool, clients, server)
        if mode == "native":
            for conn in (server, *clients):
                native_watcher(conn)
        self.mode, self.pool, self.clients, self.peers = mode, pool, clients, peers
        self.server, self.server_peer = server, server_peer
        self.got = [b""] * len(clients)
        self.server_got = b""

    def fire(self, conn: Any) -> None:
        if self.mode == "native":
            conn.rw.fire()
        elif conn is self.server:
            conn._on_readable()
        else:
            conn._on_client_readable()

    def request(self, i: int, data: bytes) -> None:
        self.peers[i].sendall(data)
        self.fire(self.clients[i])
        self.server_got += drain(self.server_peer)

    def reply(self, data: bytes) -> None:
        self.server_peer.sendall(data)
        self.fire(self.server)

    def state(self) -> dict[str, Any]:
        pool, stats, server = self.pool, self.pool.stats, self.server
        for i, peer in enumerate(self.peers):
            self.got[i] += drain(peer)
        self.server_got += drain(self.server_peer)
        out: dict[str, Any] = {
            "server_got": self.server_got,
            "got": list(self.got),
            "active": pool.active,
            "idle": len(pool.idle),
            "waiters": len(pool.waiters),
            "checkouts": stats.checkouts,
            # Bucket by bucket only when nobody waited: a real wait's bucket depends on
            # how long the run took (the plain-Python run is slower).
            "wait_counts": stats.checkout_wait.counts if not stats.checkout_wait.total else None,
            "wait_counted": sum(stats.checkout_wait.counts),
            "waited": stats.checkout_wait.total > 0,
            "wait_count": stats.checkout_wait.count,
            "xact_count": stats.xact_time.count,
            "xact_counted": sum(stats.xact_time.counts),
            "servers_closed": stats.servers_closed,
            "server_client": None if server.client is None else self.clients.index(server.client),
            "server_closed": server.closed,
            "server_reading": server.reading is not None,
            "server_resetting": server.resetting is not None,
            "fits": sorted(server.fits),
        }
        for i, client in enumerate(self.clients):
            ex = client.ex
            out[f"c{i}"] = {
                "linked": client.server is server,
                "transactions": client.transactions,
                "busy": client.busy_since != 0.0,
                "idle_since_set": client.idle_since != 0.0,
                "bytes_in": client.bytes_in,
                "bytes_out": client.bytes_out,
                "pending": client.pending,
                "expected": ex.expected,
                "extended": ex.extended,
                "syncs": ex.syncs_since_exec,
                "fe_remaining": ex.fe_remaining,
                "be_remaining": ex.be_remaining,
                "tx_status": chr(ex.tx_status),
                "kinds": ex.kinds(),
                "ready_count": ex.ready_count,
                "reading": client.reading is not None,
                "closed": client.closed,
            }
        return out


def quiet_both(
    conversation: Any, prepare: Any = None, count: int = 2
) -> tuple[list[dict[str, Any]], tuple]:
    """Run ``conversation(rig)`` on a QuietRig in every mode and require the same states;
    return the Python run's and the native run's (checkouts, releases, hand-overs, queued)
    done in C."""
    runs, done_in_c = {}, (0, 0, 0, 0)
    for mode in MODES:
        before = pool_counts()
        runs[mode] = conversation(QuietRig(mode, prepare, count))
        after = pool_counts()
        if mode == "native":
            done_in_c = tuple(a - b for a, b in zip(after, before, strict=True))
        else:
            assert after == before  # the Python run never reaches the C paths
    for mode, states in runs.items():
        for step, (got, want) in enumerate(zip(states, runs["python"], strict=True)):
            assert got == want, f"{mode} differs from python at step {step}"
    return runs["python"], done_in_c


SELECT = extended(b"select 1")
SELECT_REPLY = message(b"1") + message(b"2") + message(b"T", b"\0\0") + ROW
SELECT_REPLY += done(b"SELECT 1") + ready(b"I")


def three_transactions(rig: QuietRig) -> list[dict[str, Any]]:
    states = []
    for request in (SELECT, SELECT, query(b"select 1")):
        rig.request(0, request)
        states.append(rig.state())
        rig.reply(SELECT_REPLY if request is SELECT else ROW + done(b"SELECT 1") + ready(b"I"))
        states.append(rig.state())
    return states


def test_a_quiet_pool_checks_out_and_releases_in_c() -> None:
    states, in_c = quiet_both(three_transactions)
    linked = [s["c0"]["linked"] for s in states]
    assert linked == [True, False] * 3
    final = states[-1]
    assert (final["active"], final["idle"], final["checkouts"]) == (0, 1, 3)
    assert final["wait_counts"][0] == final["wait_count"] == 3  # no wait, three times
    assert final["xact_count"] == final["xact_counted"] == 3
    assert final["c0"]["transactions"] == 3 and not final["c0"]["busy"]
    assert final["server_client"] is None and final["server_reading"]
    assert states[1]["fits"] == final["fits"] != []
    if C_POOL:
        # The first checkout is Python's (it learns the client's settings fit this server);
        # the second in C; the third, a simple-protocol query, is judged by Python. Every
        # release in C.
        assert in_c == (1, 3, 0, 0)


def test_the_second_client_of_a_quiet_pool_is_served_in_c_too() -> None:
    def talk(rig: QuietRig) -> list[dict[str, Any]]:
        states = []
        for i in (0, 1, 0, 1):
            rig.request(i, SELECT)
            states.append(rig.state())
            rig.reply(SELECT_REPLY)
            states.append(rig.state())
        return states

    states, in_c = quiet_both(talk)
    assert [s["server_client"] for s in states[::2]] == [0, 1, 0, 1]
    assert states[-1]["got"][0] == states[-1]["got"][1] == SELECT_REPLY * 2
    assert states[-1]["checkouts"] == 4 and states[-1]["idle"] == 1
    if C_POOL:
        # Each client's first request is Python's (its statement is judged for session
        # state once per client); the repeats check the server out in C, for either client:
        # their settings fit the server since the first checkout. Every release in C.
        assert in_c == (2, 4, 0, 0)


def one_waits(rig: QuietRig) -> list[dict[str, Any]]:
    """Client 0 takes the server, 1 waits for it and gets it when 0's transaction ends; the
    states with 1 waiting, once handed the server, and once done."""
    rig.request(0, SELECT)
    rig.request(1, SELECT)  # waits
    states = [rig.state()]
    rig.reply(SELECT_REPLY)  # 0's transaction ends: 1 gets the server
    states.append(rig.state())
    rig.reply(SELECT_REPLY)
    states.append(rig.state())
    return states


def test_a_waiting_client_gets_the_server_from_python() -> None:
    """A waiter whose statement was never judged: the release hands the server over in
    Python (FIFO, the wait's histogram)."""

    def talk(rig: QuietRig) -> list[dict[str, Any]]:
        rig.request(0, SELECT)
        rig.reply(SELECT_REPLY)  # the settings now fit: the next checkouts could be C's
        return one_waits(rig)

    states, in_c = quiet_both(talk)
    assert states[0]["waiters"] == 1 and states[1]["server_client"] == 1
    assert states[1]["wait_count"] == 3 and states[2]["idle"] == 1
    if C_POOL:
        # 0's second checkout in C; the release with a waiter and 1's checkout in Python.
        assert in_c == (1, 2, 0, 0)


def _limits(**changes: Any) -> Any:
    def prepare(pool: Any, clients: Any, server: Any) -> None:
        for name, value in changes.items():
            setattr(pool.limits, name, value)

    return prepare


def judged(rig: QuietRig, *which: int) -> None:
    """A transaction each, alone: the clients' statement is judged for session state (once
    per client), and their settings are seen to fit the server."""
    for i in which:
        rig.request(i, SELECT)
        rig.reply(SELECT_REPLY)


def test_a_waiting_client_gets_the_server_in_c() -> None:
    """A waiter whose statement is known: the release hands the server to it in C, with
    the states Python's hand-over leaves (the wait counted, its request sent on)."""

    def talk(rig: QuietRig) -> list[dict[str, Any]]:
        judged(rig, 0, 1)
        return one_waits(rig) + one_waits(rig)

    states, in_c = quiet_both(talk)
    waiting, handed, done_ = states[:3]
    assert waiting["waiters"] == 1 and waiting["c1"]["pending"] == SELECT
    assert waiting["server_got"] == SELECT * 3
    assert handed["server_client"] == 1 and handed["waiters"] == 0
    assert handed["c1"]["pending"] is None and handed["c1"]["expected"] == 1
    assert handed["server_got"] == SELECT * 4 and handed["got"][0] == SELECT_REPLY * 2
    assert (handed["active"], handed["checkouts"], handed["wait_count"]) == (1, 4, 4)
    assert handed["wait_counted"] == 4 and handed["waited"] and not waiting["waited"]
    assert (done_["active"], done_["idle"], done_["got"][1]) == (0, 1, SELECT_REPLY * 2)
    assert done_["c0"]["transactions"] == done_["c1"]["transactions"] == 2
    if C_POOL:
        # Per round: 0's checkout in C, 1 queues in Python, the hand-over and 1's release in
        # C; the first transactions' checkouts are Python's (see above).
        assert in_c == (2, 4, 2, 2)


@pytest.mark.parametrize("cut", [3, 12], ids=["header-split", "body-split"])
def test_a_waiter_s_request_in_pieces_is_handed_over_in_c(cut: int) -> None:
    """What a waiter sent while waiting ends inside a message: the whole part goes to the
    server with the hand-over, and an incomplete header is carried (or the message's rest
    expected), as Python's hand-over does."""

    def talk(rig: QuietRig) -> list[dict[str, Any]]:
        judged(rig, 0, 1)
        rig.request(0, SELECT)
        rig.request(1, SELECT + SELECT[:cut])  # waits, with a second request begun
        states = [rig.state()]
        rig.reply(SELECT_REPLY)
        states.append(rig.state())
        rig.request(1, SELECT[cut:])
        states.append(rig.state())
        rig.reply(SELECT_REPLY)
        states.append(rig.state())
        if rig.clients[1].server is not None:
            rig.reply(SELECT_REPLY)
            states.append(rig.state())
        return states

    states, in_c = quiet_both(talk)
    handed = states[1]
    assert handed["c1"]["pending"] is None and handed["waiters"] == 0
    assert handed["server_got"].endswith(SELECT if cut == 3 else SELECT + SELECT[:cut])
    assert states[2]["server_got"].endswith(SELECT * 2)
    final = states[-1]
    assert final["got"][1] == SELECT_REPLY * 3 and final["idle"] == 1
    # The second request was begun (3 bytes carried, or 12 sent): the server stays with
    # the client until it is answered, one transaction for both.
    assert handed["server_client"] == states[2]["server_client"] == 1
    assert final["c1"]["transactions"] == 2
    assert final["c1"]["fe_remaining"] == 0
    if C_POOL:
        assert in_c[2] == 1


def _pending_limit(pool: Any, clients: Any, server: Any) -> None:
    pool.limits.pending_limit = len(SELECT)  # a waiter with one request stops reading


@pytest.mark.parametrize(
    ("prepare", "waiting", "in_c"),
    [
        (None, query(b"select 1"), (0, 0)),
        (_pending_limit, SELECT, (0, 0)),
        # Room for another server: Python's checkout queues it and opens one (the rig's
        # never comes); the hand-over is C's.
        (_limits(size=2), SELECT, (1, 0)),
    ],
    ids=["simple-query", "backpressure", "room-to-grow"],
)
def test_a_waiter_that_needs_python_is_python_s(prepare: Any, waiting: bytes, in_c: tuple) -> None:
    """A waiter's simple Query (judged by Python), a waiter that stopped reading (its
    watcher must start again): Python queues it and hands the server over. A pool with
    room for another server: Python queues the waiter (and opens one)."""

    def talk(rig: QuietRig) -> list[dict[str, Any]]:
        judged(rig, 0, 1)
        rig.request(0, SELECT)
        rig.request(1, waiting)
        states = [rig.state()]
        rig.reply(SELECT_REPLY)
        states.append(rig.state())
        rig.reply(SELECT_REPLY if waiting is SELECT else ROW + done(b"SELECT 1") + ready(b"I"))
        states.append(rig.state())
        return states

    states, done_in_c = quiet_both(talk, prepare)
    assert states[0]["waiters"] == 1
    assert states[0]["c1"]["reading"] is (prepare is not _pending_limit)
    assert states[1]["server_client"] == 1 and states[1]["c1"]["reading"]
    assert states[2]["idle"] == 1 and states[2]["c1"]["transactions"] == 2
    if C_POOL:
        assert done_in_c[2:] == in_c  # (hand-overs, clients queued) in C


def test_the_first_waiter_is_served_first_whoever_hands_over() -> None:
    """FIFO across the two hand-overs: a first waiter that needs Python is never passed
    over by a second one C could serve."""

    def talk(rig: QuietRig) -> list[dict[str, Any]]:
        judged(rig, 0, 2)  # client 1's statement is not judged yet: Python's hand-over
        rig.request(0, SELECT)
        rig.request(1, SELECT)
        rig.request(2, SELECT)
        states = [rig.state()]
        for _ in range(3):
            rig.reply(SELECT_REPLY)
            states.append(rig.state())
        return states

    states, in_c = quiet_both(talk, count=3)
    assert states[0]["waiters"] == 2
    assert [s["server_client"] for s in states[1:]] == [1, 2, None]
    assert states[-1]["got"] == [SELECT_REPLY * 2, SELECT_REPLY, SELECT_REPLY * 2]
    if C_POOL:
        assert in_c[2] == 1  # 1 -> 2 in C, after 0 -> 1 in Python


@pytest.mark.parametrize(
    ("prepare", "in_c"),
    [
        # server_reset_query_always: every release resets the server (Python's release).
        (_limits(reset_always=True, reset_query="DISCARD ALL"), (0, 0, 0, 0)),
        # ... with no query to run it is a plain release.
        (_limits(reset_always=True, reset_query=""), (2, 3, 0, 0)),
        # server_check_query: the checkout may check the server first (Python's).
        (_limits(check_query="select 1", check_delay=3600.0), (0, 3, 0, 0)),
        # A server past its lifetime is closed when it comes back (Python's checkin).
        (_limits(server_lifetime=1e-9), (0, 0, 0, 0)),
    ],
    ids=["reset-always", "reset-always-without-query", "check-query", "lifetime"],
)
def test_what_the_pool_must_decide_stays_in_python(prepare: Any, in_c: tuple) -> None:
    def talk(rig: QuietRig) -> list[dict[str, Any]]:
        states = []
        for _ in range(3):
            rig.request(0, SELECT)
            states.append(rig.state())
            if rig.clients[0].server is not None:  # else it waits: the server was closed
                rig.reply(SELECT_REPLY)
            if rig.server.resetting is not None:  # server_reset_query_always
                rig.reply(done(b"DISCARD ALL") + ready(b"I"))
            states.append(rig.state())
        return states

    states, done_in_c = quiet_both(talk, prepare)
    assert states[-1]["c0"]["closed"] is False
    if C_POOL:
        assert done_in_c == in_c


def test_a_paused_pool_lends_nothing_in_c() -> None:
    def talk(rig: QuietRig) -> list[dict[str, Any]]:
        rig.request(0, SELECT)
        rig.reply(SELECT_REPLY)
        rig.pool.pause()
        rig.request(0, SELECT)  # waits: PAUSE
        states = [rig.state()]
        rig.pool.resume()
        states.append(rig.state())
        rig.reply(SELECT_REPLY)
        states.append(rig.state())
        return states

    states, in_c = quiet_both(talk)
    assert states[0]["waiters"] == 1 and not states[0]["c0"]["linked"]
    assert states[1]["c0"]["linked"] and states[2]["idle"] == 1
    if C_POOL:
        assert in_c == (
            0,
            2,
            0,
            0,
        )  # both releases; neither checkout (the first learns, then PAUSE)
