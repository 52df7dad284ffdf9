"""Three Greenvisor nodes and a real ZooKeeper: one owner per pool, relays, failover, fencing.

One ZooKeeper and one set of nodes (A, B, C; one shared SQLite metadata DB) for the module;
the tests run in order and later ones use what earlier ones left (A is killed by the
kill -9 test). Throughout, a sampler counts the tenant role's backends in pg_stat_activity
and the tests assert it never exceeded pool_size.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
import requests

from tests import conftest
from tests.support import zookeeper
from tests.support.certs import TestCA
from tests.support.net import WireClient, parse_error_fields
from tests.support.pg import PgCluster, find_bindir
from tests.support.pooler import PoolerProcess, run_manage, tenant_doc, user_doc

pytestmark = [pytest.mark.integration, pytest.mark.zk, pytest.mark.slow]

ROLE = "clu"
PW = "cluPw4tests"
TENANT = "ct"
POOL_SIZE = 3
SESSION_TIMEOUT = 4.0
API_SECRET = "cluster-api-jwt-secret-0123456789abcdef"
APP_NAME = re.compile(r"^greenvisor [0-9a-f]{8} e(\d+)$")


def doc(pg: PgCluster) -> dict[str, Any]:
    users = [user_doc(ROLE, PW, "transaction", pool_size=POOL_SIZE)]
    return {"tenants": [tenant_doc(TENANT, ROLE, pg.port, users, default_pool_size=POOL_SIZE)]}


@pytest.fixture(scope="module")
def zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zookeeper.ZooKeeperServer]:
    if not zookeeper.available():
        pytest.skip("java or the zookeeper package is not installed (make apt-deps)")
    server = zookeeper.ZooKeeperServer(tmp_path_factory.mktemp("zk")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def clu_db(pg: PgCluster) -> str:
    pg.create_role(ROLE, PW)
    pg.create_database(ROLE, owner=ROLE)
    pg.execute("CREATE TABLE items (id int, tag text)", dbname=ROLE)
    pg.execute(f"ALTER TABLE items OWNER TO {ROLE}", dbname=ROLE)
    return ROLE


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
    pg: PgCluster,
    clu_db: str,
    zk: zookeeper.ZooKeeperServer,
) -> Iterator[list[PoolerProcess]]:
    base = tmp_path_factory.mktemp("cluster")
    url = f"sqlite:///{base / 'meta.sqlite3'}"
    # With a certificate, libpq's default sslmode=prefer makes every test client use TLS
    # to the node it reaches: relays then carry decrypted bytes from a TLS client.
    cert = TestCA(base / "ca").issue("greenvisor", ("localhost",))
    args = [
        "--tls-cert", str(cert.cert),
        "--tls-key", str(cert.key),
        "--zookeeper", zk.hosts,
        "--zk-root", f"/gv-{uuid.uuid4().hex[:8]}",
        "--zk-session-timeout", str(SESSION_TIMEOUT),
        "--config-poll-interval", "30",  # only the ZooKeeper watch can be that fast
    ]  # fmt: skip
    env = {"API_JWT_SECRET": API_SECRET}
    started = [
        PoolerProcess(
            base / name,
            doc(pg),
            database_url=url,
            extra_args=[*args, "--no-migrate"],
            env=env,
            migrate=name == "a",  # a migrates and loads the tenants; b and c share them
        )
        for name in ("a", "b", "c")
    ]
    try:
        started[0].start(timeout=90)
        others = [threading.Thread(target=n.start, args=(90,)) for n in started[1:]]
        for thread in others:
            thread.start()
        for thread in others:
            thread.join(60)
        for node in started:
            assert node.alive(), node.log_tail()
            node.wait_for_log("greenvisor: serving", timeout=60)  # joined, listeners started
            conftest._live_poolers.append(node)
        yield started
    finally:
        for node in started:
            node.stop()
            if node in conftest._live_poolers:
                conftest._live_poolers.remove(node)


class Sampler:
    """Counts the role's backends every 30 ms in a thread; ``peak`` is the largest count.

    A new owner's short-lived fencing session ("greenvisor <tag> fence e<n>") is not
    counted: it is the one connection a takeover needs before the old backends are gone."""

    SQL = (
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND datname = %s "
        "AND application_name NOT LIKE 'greenvisor %% fence e%%'"
    )

    def __init__(self, pg: PgCluster) -> None:
        self.pg = pg
        self.peak = 0
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = self.pg.connect()
        conn.autocommit = True
        try:
            while True:  # at least one sample, however short the test
                with conn.cursor() as cur:
                    cur.execute(self.SQL, (ROLE, ROLE))
                    count = cur.fetchone()[0]
                self.peak = max(self.peak, count)
                self.samples += 1
                if self.stop.wait(0.03):
                    break
        finally:
            conn.close()

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def sampler(pg: PgCluster) -> Iterator[Sampler]:
    with Sampler(pg) as s:
        yield s
    assert s.samples > 0
    assert s.peak <= POOL_SIZE, f"{s.peak} backends of the tenant at once (pool_size {POOL_SIZE})"


def backends(pg: PgCluster) -> list[tuple[int, str]]:
    rows = pg.execute(
        f"SELECT pid, application_name FROM pg_stat_activity "
        f"WHERE usename = '{ROLE}' AND datname = '{ROLE}'"
    )
    return [(int(r[0]), str(r[1])) for r in rows or []]


def connect(node: PoolerProcess, **kwargs: Any) -> Any:
    return node.connect(f"{ROLE}.{TENANT}", PW, ROLE, **kwargs)


def owner_of(nodes: list[PoolerProcess]) -> PoolerProcess:
    """The live node that took the pool last (by the timestamp of its log line)."""
    latest: dict[str, PoolerProcess] = {}
    for node in nodes:
        if node.alive():
            for line in node.log_text().splitlines():
                if "this node now owns" in line:
                    latest[line[:23] + str(id(node))] = node
    assert latest, "no node took the pool"
    return latest[max(latest)]


def bindir() -> Path:
    found = find_bindir()
    assert found is not None
    return found


def pgbench(node: PoolerProcess, *args: str, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = PW
    cmd = [str(bindir() / "pgbench"), "-h", node.host, "-p", str(node.transaction_port)]
    cmd += ["-U", f"{ROLE}.{TENANT}", *args, ROLE]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


# -- tests, in order ------------------------------------------------------------------------


def test_first_login_takes_the_pool_and_stamps_the_epoch(
    nodes: list[PoolerProcess], pg: PgCluster, sampler: Sampler
) -> None:
    a, b, c = nodes
    conn = connect(a)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.commit()
    finally:
        conn.close()
    assert "this node now owns" in a.log_text()
    names = [name for _, name in backends(pg)]
    assert names and all(APP_NAME.match(n) for n in names), names
    for node in nodes:
        assert "cluster: joined as node" in node.log_text()


def test_pgbench_through_non_owners(
    nodes: list[PoolerProcess], pg: PgCluster, sampler: Sampler
) -> None:
    a, b, c = nodes
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = PW
    init = [str(bindir() / "pgbench"), "-i", "-s", "1", "-q", "-h", "127.0.0.1"]
    init += ["-p", str(pg.port), "-U", ROLE, ROLE]
    out = subprocess.run(init, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = pgbench(b, "-n", "-c", "6", "-j", "2", "-t", "60", "-M", "prepared")
    assert "number of failed transactions: 0" in report or "failed" not in report
    assert "number of transactions actually processed: 360/360" in report
    report = pgbench(c, "-n", "-c", "4", "-j", "2", "-t", "50")
    assert "number of transactions actually processed: 200/200" in report
    for node in (b, c):
        assert "this node now owns" not in node.log_text()


def test_transactions_and_copy_through_a_non_owner(
    nodes: list[PoolerProcess], sampler: Sampler
) -> None:
    import io

    c = nodes[2]
    conn = connect(c)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO items VALUES (1, 'rolled back')")
        conn.rollback()
        cur.copy_expert("COPY items FROM STDIN", io.StringIO("2\ttwo\n3\tthree\n"))
        conn.commit()
        out = io.StringIO()
        cur.copy_expert("COPY (SELECT * FROM items ORDER BY id) TO STDOUT", out)
        conn.commit()
        assert out.getvalue() == "2\ttwo\n3\tthree\n"
    finally:
        conn.close()


def test_tls_clients_are_relayed(nodes: list[PoolerProcess], sampler: Sampler) -> None:
    owner = owner_of(nodes)
    other = next(n for n in nodes if n is not owner)
    conn = connect(other, sslmode="require")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT repeat('x', 300000)")  # larger than one TLS record
            assert len(cur.fetchone()[0]) == 300000
        conn.commit()
        assert conn.info.ssl_in_use
    finally:
        conn.close()


def test_cancel_sent_to_a_non_owner_reaches_the_query(
    nodes: list[PoolerProcess], sampler: Sampler
) -> None:
    b = nodes[1]
    conn = connect(b)
    errors: list[BaseException] = []

    def sleep() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(20)")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=sleep, daemon=True)
    started = time.monotonic()
    thread.start()
    time.sleep(0.5)
    conn.cancel()  # a CancelRequest to b, which issued the key and relays the client
    thread.join(10)
    try:
        assert not thread.is_alive(), "the query was not canceled"
        assert time.monotonic() - started < 5
        assert errors and isinstance(errors[0], psycopg2.errors.QueryCanceled), errors
    finally:
        conn.close()


def _api(node: PoolerProcess, method: str, path: str, **kwargs: Any) -> Any:
    token = run_manage(["minttoken", "--ttl", "600"], node.env).stdout.strip()
    response = requests.request(
        method,
        f"http://{node.host}:{node.http_port}/api/{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        **kwargs,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _client_rows(node: PoolerProcess) -> int:
    return len(_api(node, "GET", f"tenants/{TENANT}/clients")["data"])


def _metric(node: PoolerProcess, name: str) -> float:
    text = requests.get(f"http://{node.host}:{node.http_port}/metrics", timeout=10).text
    found = re.search(rf"^greenvisor_{name} (\S+)$", text, re.M)
    assert found, f"greenvisor_{name} missing from /metrics"
    return float(found.group(1))


def _open_files(node: PoolerProcess) -> int:
    assert node.proc is not None
    return len(os.listdir(f"/proc/{node.proc.pid}/fd"))


def test_idle_clients_on_a_non_owner_are_parked_until_they_query(
    nodes: list[PoolerProcess], sampler: Sampler
) -> None:
    owner = owner_of(nodes)
    other = next(n for n in nodes if n is not owner)
    on_owner = _client_rows(owner)
    files = _open_files(other)
    conns = [connect(other, sslmode=mode) for mode in ("disable", "require") * 5]
    try:
        # Logged in and welcomed (parameters from the owner's servers), but no internal
        # connection yet: one descriptor per client on the node, nothing on the owner.
        assert all(c.info.parameter_status("server_version") for c in conns)
        assert _client_rows(owner) == on_owner
        assert _open_files(other) - files < 15, "parked clients hold more than their socket"
        assert _metric(other, "parked_clients") == len(conns)
        for i, conn in enumerate(conns):
            with conn.cursor() as cur:
                cur.execute("SELECT %s::int", (i,))
                assert cur.fetchone() == (i,)
            conn.commit()
        assert _client_rows(owner) == on_owner + len(conns)
        assert _metric(other, "parked_clients") == 0
        assert _metric(other, "relayed_clients") == len(conns)
    finally:
        for conn in conns:
            conn.close()
    deadline = time.monotonic() + 5
    while _client_rows(owner) != on_owner or _metric(other, "relayed_clients"):
        assert time.monotonic() < deadline, "relayed clients that left are still counted"
        time.sleep(0.1)


def test_client_idle_timeout_closes_parked_clients(
    nodes: list[PoolerProcess], sampler: Sampler
) -> None:
    owner = owner_of(nodes)
    other = next(n for n in nodes if n is not owner)
    applied = other.log_text().count("applied")
    _api(other, "PATCH", f"tenants/{TENANT}", json={"tenant": {"client_idle_timeout": 1}})
    try:
        deadline = time.monotonic() + 5
        while other.log_text().count("applied") == applied:
            assert time.monotonic() < deadline, "the change did not reach the node"
            time.sleep(0.05)
        with WireClient(other.host, other.transaction_port) as wire:
            assert wire.login(f"{ROLE}.{TENANT}", PW, ROLE) == {}
            kind, body = wire.read_message()  # sent by the node within ~2 s, unasked
            assert kind == b"E", (kind, body)
            fields = parse_error_fields(body)
            assert fields["C"] == "57P05" and "client_idle_timeout" in fields["M"], fields
    finally:
        _api(other, "PATCH", f"tenants/{TENANT}", json={"tenant": {"client_idle_timeout": 0}})


def test_cancel_sent_to_a_third_node_reaches_the_query(
    nodes: list[PoolerProcess], sampler: Sampler
) -> None:
    """The key comes from the node the client reached (it parked and relays the client);
    a CancelRequest to yet another node goes to that node, which forwards it with the
    owner's key to the owner."""
    owner = owner_of(nodes)
    relaying, third = (n for n in nodes if n is not owner)
    with WireClient(relaying.host, relaying.transaction_port) as wire:
        assert wire.login(f"{ROLE}.{TENANT}", PW, ROLE) == {}
        pid = struct.unpack("!i", wire.backend_key[:4])[0]
        index = re.findall(r"joined as node \S+ \(index (\d+)", relaying.log_text())[-1]
        assert pid >> 21 == int(index), "the key was not issued by the node the client reached"
        wire.send(b"Q", b"SELECT pg_sleep(20)\0")
        time.sleep(0.5)
        started = time.monotonic()
        with socket.create_connection((third.host, third.transaction_port), 10) as raw:
            raw.sendall(struct.pack("!ii", 16, 80877102) + wire.backend_key)
        kinds = []
        while True:
            kind, body = wire.read_message()
            kinds.append(kind)
            if kind == b"E":
                assert parse_error_fields(body)["C"] == "57014", parse_error_fields(body)
            if kind == b"Z":
                break
        assert b"E" in kinds and time.monotonic() - started < 5, kinds


def test_config_change_through_a_reaches_c_within_a_second(nodes: list[PoolerProcess]) -> None:
    a, b, c = nodes
    token = run_manage(["minttoken", "--ttl", "600"], a.env).stdout.strip()
    before = c.log_text().count("applied")
    response = requests.patch(
        f"http://{a.host}:{a.http_port}/api/tenants/{TENANT}",
        json={"tenant": {"client_idle_timeout": 3600}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    done = time.monotonic()
    assert response.status_code == 200, response.text
    while c.log_text().count("applied") == before:
        assert time.monotonic() - done < 1.0, "node C did not apply the change within 1 s"
        time.sleep(0.02)
    assert "configuration version" in c.log_tail(5)


def _client_loop(node: PoolerProcess, stop: threading.Event, record: dict[str, Any]) -> None:
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = connect(node)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.commit()
            now = time.monotonic()
            record["ok"] += 1
            if record["failed_at"] is not None and record["recovered_at"] is None:
                record["recovered_at"] = now
        except psycopg2.Error:
            if record["failed_at"] is None:
                record["failed_at"] = time.monotonic()
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)
    if conn is not None:
        conn.close()


def _txn_loop(
    nodes: list[PoolerProcess], stop: threading.Event, stats: dict[str, int], seed: int
) -> None:
    """INSERT; INSERT; COMMIT in a loop, reconnecting to the next node on any error. A
    failure after the first statement of a transaction succeeded is a lost transaction."""
    conn = None
    turn = seed
    while not stop.is_set():
        step = 0
        try:
            if conn is None:
                turn += 1
                node = nodes[turn % len(nodes)]
                conn = connect(node, connect_timeout=15)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO items VALUES (%s, 'rolling')", (seed,))
                step = 1
                cur.execute("INSERT INTO items VALUES (%s, 'rolling')", (seed,))
            conn.commit()
            stats["committed"] += 1
        except psycopg2.Error:
            if step:
                stats["lost"] += 1
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)
        time.sleep(0.01)
    if conn is not None:
        conn.close()


def test_rolling_restart_under_load_loses_no_transaction(
    nodes: list[PoolerProcess], pg: PgCluster, sampler: Sampler
) -> None:
    pg.execute("DELETE FROM items WHERE tag = 'rolling'", dbname=ROLE)
    stop = threading.Event()
    stats = [{"committed": 0, "lost": 0} for _ in range(3)]
    threads = [
        threading.Thread(target=_txn_loop, args=(nodes, stop, st, i), daemon=True)
        for i, st in enumerate(stats)
    ]
    for t in threads:
        t.start()
    try:
        for node in nodes:  # the owner (a) first, then the relaying nodes
            time.sleep(1.0)
            assert node.stop(timeout=20) == 0
            node.migrate = False  # same metadata DB, same tenants
            before = node.log_text().count("greenvisor: serving")
            node.start(timeout=90)
            deadline = time.monotonic() + 60
            while node.log_text().count("greenvisor: serving") == before:
                assert time.monotonic() < deadline, node.log_tail()
                time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    committed = sum(st["committed"] for st in stats)
    assert sum(st["lost"] for st in stats) == 0, stats
    assert committed > 10
    rows = pg.execute("SELECT count(*) FROM items WHERE tag = 'rolling'", dbname=ROLE)
    assert rows[0][0] == 2 * committed


def test_kill_9_of_the_owner_clients_recover_by_reconnecting(
    nodes: list[PoolerProcess], sampler: Sampler
) -> None:
    a = owner_of(nodes)
    b, c = (n for n in nodes if n is not a)
    stop = threading.Event()
    records = [{"ok": 0, "failed_at": None, "recovered_at": None} for _ in range(4)]
    threads = [
        threading.Thread(target=_client_loop, args=(n, stop, r), daemon=True)
        for n, r in zip((b, c, b, c), records, strict=True)
    ]
    parked = [connect(b), connect(c)]  # logged in, never queried: parked, not relayed
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert all(r["ok"] > 0 for r in records)
        assert a.proc is not None
        a.proc.kill()
        killed = time.monotonic()
        a.proc.wait(5)
        deadline = killed + SESSION_TIMEOUT + 8
        # Every client's connection runs through the dead owner, so each one fails and must
        # recover; do not stop before that (right after the kill none may have noticed yet).
        while time.monotonic() < deadline and not all(r["recovered_at"] for r in records):
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    budget = SESSION_TIMEOUT + 1.0
    for r in records:
        if r["failed_at"] is not None:
            assert r["recovered_at"] is not None, f"a client never recovered: {r}"
            waited = r["recovered_at"] - killed
            assert waited <= budget + 0.5, f"served again {waited:.2f} s after the kill"
    assert owner_of(nodes) in (b, c)
    for conn in parked:  # a parked client outlives the owner without reconnecting
        with conn.cursor() as cur:
            cur.execute("SELECT 42")
            assert cur.fetchone() == (42,)
        conn.close()


def test_paused_owner_past_its_session_is_fenced(
    nodes: list[PoolerProcess], pg: PgCluster, sampler: Sampler
) -> None:
    live = [n for n in nodes if n.alive()]  # the kill -9 test leaves one node dead
    old = owner_of(live)
    other = next(n for n in live if n is not old)
    holders = [connect(other) for _ in range(POOL_SIZE)]
    for conn in holders:  # every server of the old owner linked, inside a transaction
        conn.cursor().execute("SELECT 1")
    old_epochs = {int(m.group(1)) for _, n in backends(pg) if (m := APP_NAME.match(n))}
    assert old.proc is not None
    expired = old.log_text().count("coordinator session expired")
    old.proc.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        conn, _ = other.connect_eventually(
            f"{ROLE}.{TENANT}", PW, ROLE, timeout=SESSION_TIMEOUT + 8
        )
        served = time.monotonic() - stopped
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('application_name')")
            row = cur.fetchone()
        conn.commit()
        match = APP_NAME.match(row[0])
        assert match, row
        new_epoch = int(match.group(1))
        assert old_epochs and new_epoch > max(old_epochs)
        assert served <= SESSION_TIMEOUT + 1.5, f"served again after {served:.2f} s"
    finally:
        old.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while old.log_text().count("coordinator session expired") == expired:
        assert time.monotonic() < deadline, "the paused owner never noticed its session expired"
        time.sleep(0.05)
    # Fencing: nothing of an older epoch is left, and the old owner opens nothing new.
    later = connect(old)
    try:
        with later.cursor() as cur:
            cur.execute("SELECT 1")
        later.commit()
    finally:
        later.close()
    epochs = {int(m.group(1)) for _, n in backends(pg) if (m := APP_NAME.match(n))}
    assert epochs == {new_epoch}, epochs
    for holder in holders:  # their transactions were on fenced backends
        with pytest.raises(psycopg2.Error):
            holder.cursor().execute("SELECT 1")
        holder.close()
    conn.close()


def test_sigterm_of_the_owner_lets_the_transaction_finish_then_hands_the_pool_over(
    nodes: list[PoolerProcess], pg: PgCluster, sampler: Sampler
) -> None:
    live = [n for n in nodes if n.alive()]
    old = owner_of(live)
    other = next(n for n in live if n is not old)
    conn = connect(other)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (10, 'during sigterm')")
        assert old.proc is not None
        old.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with conn.cursor() as cur:  # still inside its transaction on the stopping owner
            cur.execute("INSERT INTO items VALUES (11, 'during sigterm')")
        conn.commit()
    finally:
        conn.close()
    assert old.proc.wait(15) == 0
    started = time.monotonic()
    again, _ = other.connect_eventually(f"{ROLE}.{TENANT}", PW, ROLE, timeout=10)
    try:
        with again.cursor() as cur:
            cur.execute("SELECT count(*) FROM items WHERE tag = 'during sigterm'")
            assert cur.fetchone() == (2,)
        again.commit()
    finally:
        again.close()
    # The locks went with the clean exit: no wait for a session timeout.
    assert time.monotonic() - started < SESSION_TIMEOUT
    assert owner_of([other]) is other
