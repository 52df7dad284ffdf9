"""Microbenchmarks of the relay's hot functions, so a regression shows without a full bench run.

Theory of operation: each case feeds a realistic, pre-built byte stream to one sans-IO hot
function exactly as the relay does (pooler/client.py): pgbench's select-only and TPC-B
transactions as the client sends them (one transaction per read, as pgbench writes them),
the server's replies, and the same streams cut into small chunks so the header-carry path
runs (the caller keeps the unconsumed tail and offers it again with the next read, as the
relay's ``carry`` does). Cases:

* ``framing.*``: :class:`pooler.protocol.framing.Exchange` header scan, frontend and backend,
  whole reads and 64-byte chunks, and many transactions pipelined in one read;
* ``prepared.*``: :class:`pooler.protocol.prepared.PreparedSession` rewriting, both
  directions together: unnamed statements (-M extended through the rewriter), a named
  statement prepared for the first time (Parse renamed and forwarded), cached (Bind of a
  statement the server has; the client's Parse is answered by the pooler), and a client
  whose statement is new to the server (Parse injected, its reply swallowed);
* ``builders.*`` / ``parsers.*``: the message builders and parsers the relay calls per query;
* ``relay.*``: the whole relay path of a round trip, real Client/ServerConn/Pool objects over
  Unix socket pairs (:mod:`bench.relay`): a hand-off to a waiting client, and a linked client.

Timing is timeit's: each case runs in a loop sized to ~0.025 s, best of ``--repeat`` (5), and
is reported as ns per call, ns per protocol message and MB/s of protocol bytes. The clock is
this process's CPU time (CLOCK_PROCESS_CPUTIME_ID), not wall time, so other work on a shared
machine disturbs the figures less (it still costs caches). The whole run takes about 4 s of
CPU, so well under 30 s unless the machine is very busy. ``--json FILE`` saves the figures;
``--compare OLD.json`` prints the change against a saved run (negative = faster).

    python -m bench.micro [--filter framing] [--json new.json] [--compare old.json]

``--bytecodes`` counts instead of timing: bytecodes per call of each case and the functions
that run them (:mod:`bench.bytecodes`), a figure that does not drift with the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/micro.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pooler import hotpath  # noqa: E402
from pooler.protocol import builders, parsers  # noqa: E402
from pooler.protocol.framing import Exchange  # noqa: E402
from pooler.protocol.prepared import (  # noqa: E402
    PreparedSession,
    ServerStatements,
    StatementNames,
)

# --- pgbench-like message streams -------------------------------------------------------------


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def parse(name: bytes, sql: bytes, ntypes: int = 0) -> bytes:
    return msg(b"P", name + b"\0" + sql + b"\0" + struct.pack("!h", ntypes) + b"\0\0\0\0" * ntypes)


def bind(stmt: bytes, *params: bytes) -> bytes:
    body = b"\0" + stmt + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p
    return msg(b"B", body + struct.pack("!h", 0))


DESCRIBE_PORTAL = msg(b"D", b"P\0")
EXECUTE = msg(b"E", b"\0" + struct.pack("!i", 0))
SYNC = msg(b"S")
PARSE_COMPLETE = msg(b"1")
BIND_COMPLETE = msg(b"2")
READY_IDLE = msg(b"Z", b"I")
NO_DATA = msg(b"n")

SELECT = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
ROW_DESCRIPTION = msg(
    b"T",
    struct.pack("!h", 1) + b"abalance\0" + struct.pack("!IhIhih", 16396, 3, 23, 4, -1, 0),
)
ONE_ROW = msg(b"D", struct.pack("!h", 1) + struct.pack("!i", 4) + b"1234")


def complete(tag: bytes) -> bytes:
    return msg(b"C", tag + b"\0")


def select_extended() -> tuple[bytes, bytes]:
    """pgbench -S -M extended: one transaction, client bytes and server bytes."""
    fe = parse(b"", SELECT, 1) + bind(b"", b"421337") + DESCRIBE_PORTAL + EXECUTE + SYNC
    be = PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + ONE_ROW + complete(b"SELECT 1")
    return fe, be + READY_IDLE


_UPDATE = b"UPDATE pgbench_%s SET %sbalance = %sbalance + $1 WHERE %sid = $2;"
TPCB = (
    (b"BEGIN;", (), b"BEGIN", False),
    (_UPDATE % (b"accounts", b"a", b"a", b"a"), (b"-1234", b"5678"), b"UPDATE 1", False),
    (b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;", (b"5678",), b"SELECT 1", True),
    (_UPDATE % (b"tellers", b"t", b"t", b"t"), (b"-1234", b"42"), b"UPDATE 1", False),
    (_UPDATE % (b"branches", b"b", b"b", b"b"), (b"-1234", b"7"), b"UPDATE 1", False),
    (
        b"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        b"VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        (b"42", b"7", b"5678", b"-1234"),
        b"INSERT 0 1",
        False,
    ),
    (b"END;", (), b"COMMIT", False),
)


def tpcb_extended() -> tuple[list[bytes], list[bytes]]:
    """pgbench TPC-B -M extended: seven round trips per transaction (one Sync each)."""
    fe, be = [], []
    for sql, params, tag, row in TPCB:
        fe.append(
            parse(b"", sql, len(params)) + bind(b"", *params) + DESCRIBE_PORTAL + EXECUTE + SYNC
        )
        reply = PARSE_COMPLETE + BIND_COMPLETE
        reply += (ROW_DESCRIPTION + ONE_ROW) if row else NO_DATA
        status = b"I" if tag == b"COMMIT" else b"T"
        be.append(reply + complete(tag) + msg(b"Z", status))
    return fe, be


def count_messages(data: bytes) -> int:
    pos = n = 0
    while pos < len(data):
        pos += 1 + struct.unpack_from("!I", data, pos + 1)[0]
        n += 1
    return n


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- drivers: what the relay does with each read ----------------------------------------------


def scan(step: Callable[[bytes, int], int], reads: list[bytes]) -> None:
    """Offer each read, keeping the unconsumed tail as the relay's carry does."""
    carry = b""
    for data in reads:
        if carry:
            data = carry + data
        end = step(data, len(data))
        carry = data[end:]
    assert not carry


def exchange_pair(fe_reads: list[list[bytes]], be_reads: list[list[bytes]]) -> Callable[[], None]:
    """One round trip per element: client reads, then server reads (the Exchange state)."""
    ex = Exchange()
    pairs = list(zip(fe_reads, be_reads, strict=True))

    def run() -> None:
        for fe, be in pairs:
            scan(ex.frontend, fe)
            scan(ex.backend, be)

    return run


def exchange_one(direction: str, reads: list[list[bytes]]) -> Callable[[], None]:
    """One direction only; the other side's state is reset so every call does the same."""
    ex = Exchange()

    def run() -> None:
        step = ex.frontend if direction == "fe" else ex.backend
        for r in reads:
            ex.expected = 1
            scan(step, r)

    return run


class Link:
    """A PreparedSession linked to a server cache, driven like the relay drives it."""

    def __init__(self) -> None:
        self.names = StatementNames()
        self.server = ServerStatements(200)
        self.session = PreparedSession(self.names)
        self.session.link(self.server)
        self.ex = Exchange()

    def round_trip(self, fe: list[bytes], be: list[bytes]) -> list:
        """Client reads then server reads; returns what was sent to the server."""
        sent: list = []
        ex, ps = self.ex, self.session
        carry = b""
        for data in fe:
            data = carry + data if carry else data
            to_server: list = []
            to_client: list = []
            end = ps.frontend(data, len(data), ex, to_server, to_client)
            sent += to_server
            carry = data[end:]
        assert not carry
        for data in be:
            data = carry + data if carry else data
            out: list = []
            end = ps.backend(data, len(data), ex, out)
            carry = data[end:]
        assert not carry and not ps.queue, ps.queue
        return sent


def named_streams(name: bytes, with_parse: bool) -> tuple[bytes, bytes]:
    """pgbench -S -M prepared: (Parse,) Bind, Describe portal, Execute, Sync; the replies the
    server sends when it runs all of it (the pooler fakes or swallows what it must)."""
    fe = parse(name, SELECT, 1) if with_parse else b""
    fe += bind(name, b"421337") + DESCRIBE_PORTAL + EXECUTE + SYNC
    be = PARSE_COMPLETE if with_parse else b""
    be += BIND_COMPLETE + ROW_DESCRIPTION + ONE_ROW + complete(b"SELECT 1") + READY_IDLE
    return fe, be


def prepared_cases() -> dict[str, tuple[Callable[[], object], bytes]]:
    fe_x, be_x = select_extended()
    unnamed = Link()

    def run_unnamed() -> None:
        unnamed.round_trip([fe_x], [be_x])

    # First time: a new client names a statement the server has never seen.
    fe_p, be_p = named_streams(b"P_1", with_parse=True)
    first = Link()

    def run_first() -> None:
        first.session.statements.clear()
        first.server.clear()
        first.round_trip([fe_p], [be_p])

    # Cached: the statement is prepared on this server; the client only binds it.
    fe_c, be_c = named_streams(b"P_1", with_parse=False)
    cached = Link()
    cached.round_trip([fe_p], [be_p])

    def run_cached() -> None:
        cached.round_trip([fe_c], [be_c])

    # Client knows it, this server does not (another server prepared it): Parse injected,
    # ParseComplete swallowed.
    moved = Link()
    moved.round_trip([fe_p], [be_p])

    def run_moved() -> None:
        moved.server.clear()
        moved.round_trip([fe_c], [PARSE_COMPLETE + be_c])

    # Parse answered by the pooler: a second client parses a statement the server has.
    fake = Link()
    fake.round_trip([fe_p], [be_p])

    def run_fake_parse() -> None:
        fake.session.statements.clear()
        fake.round_trip([fe_p], [be_c])

    # Check once, untimed, that each case takes the path it is named for.
    def first_message(sent: list) -> bytes:
        return bytes(sent[0])[:1] if sent else b""

    assert b"".join(bytes(p) for p in unnamed.round_trip([fe_x], [be_x])) == fe_x
    first.session.statements.clear()
    first.server.clear()
    assert first_message(first.round_trip([fe_p], [be_p])) == b"P", "first time: Parse sent"
    assert first_message(cached.round_trip([fe_c], [be_c])) == b"B", "cached: Bind only"
    fake.session.statements.clear()
    assert first_message(fake.round_trip([fe_p], [be_c])) == b"B", "faked: Parse not sent"
    moved.server.clear()
    assert first_message(moved.round_trip([fe_c], [PARSE_COMPLETE + be_c])) == b"P", "injected"

    return {
        "prepared.unnamed_select": (run_unnamed, fe_x + be_x),
        "prepared.named_first_time": (run_first, fe_p + be_p),
        "prepared.named_cached_bind": (run_cached, fe_c + be_c),
        "prepared.named_parse_faked": (run_fake_parse, fe_p + be_c),
        "prepared.named_new_server": (run_moved, fe_c + PARSE_COMPLETE + be_c),
    }


def framing_cases() -> dict[str, tuple[Callable[[], object], bytes]]:
    fe, be = select_extended()
    tfe, tbe = tpcb_extended()
    tpcb_fe, tpcb_be = b"".join(tfe), b"".join(tbe)
    pipelined_fe, pipelined_be = fe * 100, be * 100
    return {
        "framing.select_fe_whole": (exchange_one("fe", [[fe]]), fe),
        "framing.select_be_whole": (exchange_one("be", [[be]]), be),
        "framing.select_fe_chunked64": (exchange_one("fe", [chunks(fe, 64)]), fe),
        "framing.select_be_chunked64": (exchange_one("be", [chunks(be, 64)]), be),
        "framing.select_round_trip": (exchange_pair([[fe]], [[be]]), fe + be),
        "framing.tpcb_round_trips": (
            exchange_pair([[x] for x in tfe], [[x] for x in tbe]),
            tpcb_fe + tpcb_be,
        ),
        "framing.tpcb_chunked16": (
            exchange_pair([chunks(x, 16) for x in tfe], [chunks(x, 16) for x in tbe]),
            tpcb_fe + tpcb_be,
        ),
        "framing.pipelined_100_fe": (exchange_one("fe", [[pipelined_fe]]), pipelined_fe),
        "framing.pipelined_100_be": (exchange_one("be", [[pipelined_be]]), pipelined_be),
    }


def builder_cases() -> dict[str, tuple[Callable[[], object], bytes]]:
    status = msg(b"S", b"application_name\0pgbench\0")
    error = builders.error_response("ERROR", "42P05", 'prepared statement "P_1" already exists')
    sql = "SET search_path = a, b"
    status_body = memoryview(status)[5:]
    error_body = memoryview(error)[5:]
    ready_body = memoryview(READY_IDLE)[5:]
    missing = ("ERROR", "26000", 'prepared statement "P_1" does not exist')
    return {
        "builders.query": (lambda: builders.query(sql), builders.query(sql)),
        "builders.ready_for_query": (lambda: builders.ready_for_query(), READY_IDLE),
        "builders.error_response": (
            lambda: builders.error_response(*missing),
            builders.error_response(*missing),
        ),
        "parsers.parameter_status": (
            lambda: parsers.parse_parameter_status(status_body),
            status,
        ),
        "parsers.error_fields": (lambda: parsers.parse_error_fields(error_body), error),
        "parsers.ready_for_query": (
            lambda: parsers.parse_ready_for_query(ready_body),
            READY_IDLE,
        ),
    }


# --- timing ----------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    ns_per_call: float
    messages: int
    nbytes: int

    @property
    def ns_per_message(self) -> float:
        return self.ns_per_call / self.messages

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.ns_per_call * 1e3  # bytes/ns * 1e9 / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "ns_per_call": round(self.ns_per_call, 1),
            "ns_per_message": round(self.ns_per_message, 1),
            "mb_per_s": round(self.mb_per_s, 1),
            "messages": self.messages,
            "bytes": self.nbytes,
        }


def time_case(fn: Callable[[], object], repeat: int, budget_s: float) -> float:
    """Best ns per call over ``repeat`` loops of a size that takes about ``budget_s``."""
    loops = 1
    while True:
        start = time.process_time_ns()
        for _ in range(loops):
            fn()
        elapsed = time.process_time_ns() - start
        if elapsed >= budget_s * 1e9 / 4 or loops >= 1 << 24:
            break
        loops *= 4
    loops = max(1, int(loops * budget_s * 1e9 / max(elapsed, 1)))
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time_ns()
        for _ in range(loops):
            fn()
        best = min(best, (time.process_time_ns() - start) / loops)
    return best


def relay_cases() -> dict[str, tuple[Callable[[], object], bytes]]:
    from bench import relay  # imports the relay (and gevent) only when these cases run

    fe, be = select_extended()
    fe_p, be_p = named_streams(b"P_1", with_parse=True)
    fe_c, be_c = named_streams(b"P_1", with_parse=False)
    cases = {
        "relay.handoff": (relay.handoff_case(fe, be), fe + be),
        "relay.prepared_handoff": (
            relay.handoff_case(fe_c, be_c, first=(fe_p, be_p)),
            fe_c + be_c,
        ),
        "relay.linked": (relay.linked_case(fe, be, msg(b"Z", b"T")), fe + be),
        "relay.idle_pool": (relay.idle_pool_case(fe, be), fe + be),
    }
    if hotpath.compiled:
        cases["relay.linked_native"] = (
            relay.linked_case(fe, be, msg(b"Z", b"T"), native=True),
            fe + be,
        )
    return cases


def all_cases() -> dict[str, tuple[Callable[[], object], bytes]]:
    return {**framing_cases(), **prepared_cases(), **builder_cases(), **relay_cases()}


def run(filter_text: str, repeat: int, budget_s: float) -> list[Figure]:
    figures = []
    for name, (fn, stream) in all_cases().items():
        if filter_text and filter_text not in name:
            continue
        fn()  # warm up, and fail loudly before timing if the case is wrong
        ns = time_case(fn, repeat, budget_s)
        figures.append(Figure(name, ns, count_messages(stream), len(stream)))
        print(f"  {name:<30} {ns:>10.0f} ns/call", file=sys.stderr, flush=True)
    return figures


def table(figures: list[Figure], old: dict[str, Any] | None) -> str:
    head = ["case", "ns/call", "msgs", "ns/msg", "MB/s"]
    if old is not None:
        head.append("ns/msg vs old")
    lines = [head]
    for f in figures:
        cells = [
            f.name,
            f"{f.ns_per_call:.0f}",
            str(f.messages),
            f"{f.ns_per_message:.0f}",
            f"{f.mb_per_s:.1f}",
        ]
        if old is not None:
            before = old.get(f.name, {}).get("ns_per_message")
            cells.append(f"{100 * (f.ns_per_message / before - 1):+.1f}%" if before else "new")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.splitlines()[0])
    p.add_argument("--filter", default="", help="only cases whose name contains this")
    p.add_argument("--repeat", type=int, default=5, help="timed loops per case, best kept (5)")
    p.add_argument("--budget", type=float, default=0.025, help="CPU s per timed loop (0.025)")
    p.add_argument("--json", metavar="FILE", help="save the figures as JSON")
    p.add_argument("--compare", metavar="OLD", help="a saved --json run to compare with")
    p.add_argument(
        "--bytecodes",
        action="store_true",
        help="count bytecodes per call and per function instead of timing (bench/bytecodes.py)",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.bytecodes:
        from bench import bytecodes
        from pooler import hotpath

        if hotpath.compiled:
            print(
                "--bytecodes counts the plain-Python hot path, and this process runs the "
                "compiled one: run it again with GREENVISOR_PURE_PYTHON=1",
                file=sys.stderr,
            )
            return 2

        cases = {k: fn for k, (fn, _s) in all_cases().items() if args.filter in k}
        print(bytecodes.report(cases))
        return 0
    old = None
    if args.compare:
        old = json.loads(Path(args.compare).read_text())["cases"]
    started = time.monotonic()
    figures = run(args.filter, max(1, args.repeat), max(0.001, args.budget))
    print(table(figures, old))
    print(f"\n{len(figures)} cases in {time.monotonic() - started:.1f} s (best of {args.repeat})")
    if args.json:
        doc = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cases": {f.name: f.as_dict() for f in figures},
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
