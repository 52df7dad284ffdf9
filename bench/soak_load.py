"""The soak's load generators and fault injectors (used by bench/soak.py).

Every worker is a thread with a ``stop`` event; each client operation is bounded (libpq
connect_timeout, subprocess timeouts) and every worker records what it did in a shared
:class:`Journal`: completed transactions, and errors with the time they happened. An error is
*expected* only if it falls into the window of a fault that can cause it (a database restart
or a killed server connection, from a second before it starts to ``GRACE`` seconds after it
ended); anything else is an unexpected error and fails the soak. Killed clients excuse nobody
else's error: killing one client must not hurt the others.

The ledger table gets one row per committed Python-client transaction, with an id unique to
the soak; the ids of deliberately killed transactions are kept too, so the end check can say:
every committed id is there exactly once, no killed transaction's row is there.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg2

#: Faults that may make an in-flight query fail (the others must not hurt anyone else).
EXCUSING = {"db_restart_fast", "db_restart_immediate", "kill_server"}
FAULT_KINDS = (
    "db_restart_fast",
    "db_restart_immediate",
    "kill_server",
    "kill_client_psql",
    "kill_client_socket",
)
GRACE = 5.0  # seconds after a fault during which its victims may still report errors
HANG = 90.0  # a client operation running longer than this is a hang


@dataclass
class Target:
    """Where the clients go: the pooler's ports and the credentials of the soak role."""

    host: str
    ports: dict[str, int]  # mode -> port
    user: str  # "<role>.<tenant>"
    password: str
    dbname: str
    bindir: Path

    def dsn(self, mode: str) -> str:
        return (
            f"host={self.host} port={self.ports[mode]} user={self.user} "
            f"password={self.password} dbname={self.dbname} connect_timeout=10"
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=self.password, PGCONNECT_TIMEOUT="10")
        return env


@dataclass
class Journal:
    """What happened, shared by all threads (under one lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    transactions: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (time, worker, text)
    faults: list[tuple[str, float, float, str]] = field(default_factory=list)
    committed: list[int] = field(default_factory=list)  # ledger ids whose COMMIT succeeded
    killed: list[int] = field(default_factory=list)  # ledger ids of killed transactions
    busy: dict[str, float] = field(default_factory=dict)  # worker -> start of its current op
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        with self.lock:
            return next(self.ids)

    def done(self, worker: str, n: int = 1) -> None:
        with self.lock:
            self.transactions[worker] += n

    def error(self, worker: str, text: str, at: float | None = None) -> None:
        line = " ".join(text.split())[:300]
        with self.lock:
            self.errors.append((at or time.monotonic(), worker, line))

    def fault(self, kind: str, start: float, end: float, detail: str = "") -> None:
        with self.lock:
            self.faults.append((kind, start, end, detail))

    @contextlib.contextmanager
    def op(self, worker: str) -> Any:
        with self.lock:
            self.busy[worker] = time.monotonic()
        try:
            yield
        finally:
            with self.lock:
                self.busy.pop(worker, None)

    def hung(self, now: float) -> list[str]:
        with self.lock:
            return [w for w, since in self.busy.items() if now - since > HANG]

    def classify(self) -> tuple[list[tuple[float, str, str]], list[tuple[float, str, str]]]:
        """(expected, unexpected) errors."""
        with self.lock:
            windows = [(s - 1.0, e + GRACE) for k, s, e, _ in self.faults if k in EXCUSING]
            errors = list(self.errors)
        expected: list[tuple[float, str, str]] = []
        unexpected: list[tuple[float, str, str]] = []
        for err in errors:
            inside = any(lo <= err[0] <= hi for lo, hi in windows)
            (expected if inside else unexpected).append(err)
        return expected, unexpected


def _text(exc: BaseException) -> str:
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return f"{type(exc).__name__} {code or ''}: {exc}"


class Worker(threading.Thread):
    """A load thread: ``step()`` until stopped; an exception in a step is a client error."""

    def __init__(self, name: str, target: Target, journal: Journal, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.target, self.journal = target, journal
        self.rng = random.Random(seed)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                with self.journal.op(self.name):
                    self.step()
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and judged
                self.journal.error(self.name, _text(exc))
                self.halt.wait(0.2)

    def step(self) -> None:
        raise NotImplementedError


_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")


class Pgbench(Worker):
    """pgbench in rounds of at most 20 s; stderr lines are stamped as they arrive."""

    def __init__(self, name: str, target: Target, journal: Journal, seed: int, mode: str,
                 args: list[str]) -> None:  # fmt: skip
        super().__init__(name, target, journal, seed)
        self.mode, self.args = mode, args
        self.deadline = time.monotonic() + 3600.0  # the load phase's end (set by the soak)

    def step(self) -> None:
        t = self.target
        seconds = int(min(20.0, self.deadline - time.monotonic()))
        if seconds < 1:
            self.halt.wait(0.5)
            return
        argv = [str(t.bindir / "pgbench"), "-n", "-T", str(seconds), *self.args, "-h", t.host,
                "-p", str(t.ports[self.mode]), "-U", t.user, t.dbname]  # fmt: skip
        proc = subprocess.Popen(
            argv, env=t.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout or ()), daemon=True)
        reader.start()
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Run was aborted" in line:  # the summary of "client N aborted" lines
                continue
            if "error" in line or "aborted" in line or "FATAL" in line:
                self.journal.error(self.name, line)
        try:
            proc.wait(HANG)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            self.journal.error(self.name, f"pgbench ran {HANG:.0f} s past its -T: a hang")
        reader.join(10)
        match = _PROCESSED.search("".join(out))
        if match:
            self.journal.done(self.name, int(match.group(1)))


class Psql(Worker):
    """Short-lived psql clients: connect, one query, leave."""

    def step(self) -> None:
        mode = self.rng.choice(["transaction", "session"])
        t = self.target
        done = subprocess.run(
            [str(t.bindir / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", t.host, "-p", str(t.ports[mode]), "-U", t.user, "-d", t.dbname,
             "-c", "SELECT sum(bbalance) FROM pgbench_branches"],
            env=t.env(), capture_output=True, text=True, timeout=HANG, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql ({mode}) exited {done.returncode}: {done.stderr}")
        self.journal.done(self.name)
        self.halt.wait(self.rng.uniform(0.1, 0.5))


class PyClient(Worker):
    """psycopg 3 clients: a few ledger transactions, prepared statements and COPY, then leave."""

    def step(self) -> None:
        mode = self.rng.choice(["transaction", "transaction", "session"])
        with psycopg.connect(self.target.dsn(mode)) as conn:
            for _ in range(self.rng.randint(1, 8)):
                if self.halt.is_set():
                    break
                getattr(self, self.rng.choice(["ledger", "prepared", "copy_in", "copy_out"]))(conn)
                self.journal.done(self.name)

    def ledger(self, conn: Any) -> None:
        ident = self.journal.next_id()
        with conn.transaction():
            conn.execute("INSERT INTO soak_ledger (id, worker) VALUES (%s, %s)", (ident, self.name))
            conn.execute("SELECT pg_sleep(0.01)")
        with self.journal.lock:
            self.journal.committed.append(ident)

    def prepared(self, conn: Any) -> None:
        with conn.transaction():
            for aid in self.rng.sample(range(1, 100001), 3):
                row = conn.execute(
                    "SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,), prepare=True
                ).fetchone()
                assert row is not None, f"account {aid} is missing"

    def copy_in(self, conn: Any) -> None:
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy("COPY soak_copy (worker, n) FROM STDIN") as copy,
        ):
            for n in range(200):
                copy.write_row((self.name, n))

    def copy_out(self, conn: Any) -> None:
        query = "COPY (SELECT aid, abalance FROM pgbench_accounts LIMIT 500) TO STDOUT"
        with conn.transaction(), conn.cursor() as cur, cur.copy(query) as copy:
            rows = sum(1 for _ in copy.rows())
        assert rows == 500, f"COPY TO returned {rows} rows"


class IdleCrowd(Worker):
    """Many logged-in clients that mostly sit idle; a few wake up, some leave and come back."""

    def __init__(self, name: str, target: Target, journal: Journal, seed: int, size: int) -> None:
        super().__init__(name, target, journal, seed)
        self.size = size
        self.conns: list[Any] = []

    def step(self) -> None:
        while len(self.conns) < self.size and not self.halt.is_set():
            conn = psycopg2.connect(self.target.dsn("transaction"))
            conn.autocommit = True
            self.conns.append(conn)
        for _ in range(3 if self.conns else 0):
            conn = self.rng.choice(self.conns)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
            except psycopg2.Error:
                self.conns.remove(conn)
                conn.close()
                raise
            self.journal.done(self.name)
        for _ in range(min(2, len(self.conns))):  # churn: leave; the loop above reconnects
            self.conns.pop(self.rng.randrange(len(self.conns))).close()
        self.halt.wait(1.0)

    def run(self) -> None:
        try:
            super().run()
        finally:
            for conn in self.conns:
                conn.close()


# --- faults --------------------------------------------------------------------------------


class Faults:
    """Injects one fault of each kind in a shuffled round, round after round."""

    def __init__(self, target: Target, journal: Journal, rng: random.Random,
                 restart: Callable[[str], float], terminate: Callable[[], int],
                 probe: Callable[[], float]) -> None:  # fmt: skip
        self.target, self.journal, self.rng = target, journal, rng
        self.restart, self.terminate, self.probe = restart, terminate, probe
        self.queue: list[str] = []
        self.recoveries: list[float] = []

    def inject(self) -> str:
        if not self.queue:
            self.queue = list(FAULT_KINDS)
            self.rng.shuffle(self.queue)
        kind = self.queue.pop()
        start = time.monotonic()
        detail = ""
        if kind.startswith("db_restart"):
            mode = kind.rsplit("_", 1)[1]
            self.restart(mode)  # returns once Postgres accepts connections again
            accepting = time.monotonic()
            recovery = self.probe()
            self.recoveries.append(recovery)
            detail = f"down {accepting - start:.1f} s, pooler served {recovery:.2f} s later"
            end = accepting
        elif kind == "kill_server":
            detail = f"{self.terminate()} backends terminated"
            end = time.monotonic()
        elif kind == "kill_client_psql":
            detail = self._kill_psql()
            end = time.monotonic()
        else:
            detail = self._drop_socket()
            end = time.monotonic()
        self.journal.fault(kind, start, end, detail)
        return f"{kind}: {detail}"

    def _kill_psql(self) -> str:
        """kill -9 a psql client in the middle of a transaction."""
        ident = self.journal.next_id()
        t = self.target
        script = (
            f"BEGIN;\nINSERT INTO soak_ledger (id, worker) VALUES ({ident}, 'killed');\n"
            "SELECT pg_sleep(10);\nCOMMIT;\n"
        )
        mode = self.rng.choice(["transaction", "session"])
        proc = subprocess.Popen(
            [str(t.bindir / "psql"), "-X", "-q", "-h", t.host, "-p", str(t.ports[mode]),
             "-U", t.user, "-d", t.dbname, "-f", "-"],
            env=t.env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(script)
        proc.stdin.flush()
        time.sleep(1.0)
        with self.journal.lock:
            self.journal.killed.append(ident)
        proc.kill()
        proc.wait(10)
        return f"psql pid {proc.pid} ({mode}) killed mid-transaction"

    def _drop_socket(self) -> str:
        """A client that vanishes mid-transaction: its socket is shut down under psycopg2."""
        ident = self.journal.next_id()
        mode = self.rng.choice(["transaction", "session"])
        conn = psycopg2.connect(self.target.dsn(mode))
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO soak_ledger (id, worker) VALUES (%s, 'dropped')", (ident,))
            with self.journal.lock:
                self.journal.killed.append(ident)
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        finally:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
        return f"socket ({mode}) shut down mid-transaction"
