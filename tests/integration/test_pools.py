"""Pool sizes, client limits, checkout timeouts, server reuse rules and dead-client cleanup."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg2
import pytest
import requests

from tests.conftest import PoolerFactory
from tests.support.net import WireClient, login_error
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, tenant_doc, user_doc

pytestmark = pytest.mark.integration

#: Dedicated roles, so pg_stat_activity counts only what one test's pool opened.
ROLES = {
    "poolbig": "poolbigPw4tests",
    "poolcap": "poolcapPw4tests",
    "poolwait": "poolwaitPw4tests",
    "poolsess": "poolsessPw4tests",
    "pooltx": "pooltxPw4tests",
    "poolkill": "poolkillPw4tests",
    "poolfull": "poolfullPw4tests",
}
DB = "app1"


def pool_users() -> list[dict[str, Any]]:
    return [
        user_doc("poolbig", ROLES["poolbig"], pool_size=5),
        user_doc("poolcap", ROLES["poolcap"], pool_size=2, max_clients=3),
        user_doc("poolwait", ROLES["poolwait"], pool_size=1, pool_checkout_timeout=500),
        user_doc("poolsess", ROLES["poolsess"], "session", pool_size=1),
        user_doc("pooltx", ROLES["pooltx"], pool_size=1),
        user_doc("poolkill", ROLES["poolkill"], pool_size=1),
        user_doc("poolfull", ROLES["poolfull"], pool_size=6),
    ]


@pytest.fixture(scope="module")
def pools(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    existing = {row[0] for row in pg.execute("SELECT rolname FROM pg_roles")}
    for role, password in ROLES.items():
        if role not in existing:
            pg.create_role(role, password)
    # Postgres lets this role have 2 connections: a pool of 6 meets "too many connections"
    pg.execute("ALTER ROLE poolfull CONNECTION LIMIT 2")
    doc = {"tenants": [tenant_doc("pools", DB, pg.port, pool_users())]}
    return pooler_factory(doc)


def connect(pools: PoolerProcess, role: str, mode: str = "transaction", **kwargs: Any) -> Any:
    return pools.connect(f"{role}.pools", ROLES[role], DB, mode, **kwargs)


def backends(pg: PgCluster, role: str, where: str = "") -> list[tuple[Any, ...]]:
    """(pid, state) of every backend of ``role`` on the test database."""
    return pg.execute(
        "SELECT pid, state FROM pg_stat_activity WHERE usename = %s AND datname = %s "
        f"AND pid <> pg_backend_pid() {where}",
        (role, DB),
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 50 ms; return the seconds it took, fail after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not true within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def scalar(conn: Any, query: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


# -- pool size ---------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Counts the role's backends straight from Postgres every 50 ms."""

    def __init__(self, pg: PgCluster, role: str) -> None:
        super().__init__(daemon=True)
        self.pg, self.role = pg, role
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        conn = self.pg.connect()
        try:
            with conn.cursor() as cur:
                while not self.halt.is_set() and len(self.samples) < 10_000:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                        "AND datname = %s AND pid <> pg_backend_pid()",
                        (self.role, DB),
                    )
                    self.samples.append(cur.fetchone()[0])
                    self.halt.wait(0.05)
        finally:
            conn.close()


@pytest.mark.slow
def test_200_clients_share_5_servers(pools: PoolerProcess, pg: PgCluster) -> None:
    clients, rounds = 200, 5
    errors: list[str] = []
    done: list[int] = []
    barrier = threading.Barrier(clients, timeout=60)

    def client(n: int) -> None:
        try:
            conn = connect(pools, "poolbig")
            try:
                barrier.wait()  # every client logged in before the load starts
                for i in range(rounds):
                    with conn.cursor() as cur:
                        cur.execute("SELECT pg_sleep(0.01), %s", (n * 100 + i,))
                        assert cur.fetchone()[1] == n * 100 + i
                    conn.commit()
                done.append(n)
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"client {n}: {exc.__class__.__name__}: {exc}")
            barrier.abort()

    sampler = Sampler(pg, "poolbig")
    sampler.start()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    sampler.halt.set()
    sampler.join(10)
    assert not any(thread.is_alive() for thread in threads), "clients still running after 120 s"
    assert errors == [], errors[:5]
    assert len(done) == clients
    assert len(sampler.samples) >= 5, "the sampler barely ran"
    assert max(sampler.samples) <= 5, sampler.samples
    assert max(sampler.samples) == 5, "200 clients never filled the pool of 5"


def _connect_failures(pools: PoolerProcess) -> float:
    text = requests.get(f"http://{pools.host}:{pools.http_port}/metrics", timeout=10).text
    found = re.search(
        r'^greenvisor_server_connect_failures_total\{[^}]*user="poolfull"[^}]*\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_a_database_at_its_connection_limit_gets_one_login_at_a_time(
    pools: PoolerProcess, pg: PgCluster
) -> None:
    """Six clients, a pool of 6, and Postgres refusing all but 2 of the role's connections
    (53300): the clients are served by the 2 servers, and while the others are refused the
    pool tries one login per retry interval (0.25 s), not one per waiting client."""
    errors: list[str] = []
    barrier = threading.Barrier(6, timeout=30)

    def client(n: int) -> None:
        try:
            conn = connect(pools, "poolfull")
            try:
                barrier.wait()
                for i in range(8):
                    assert scalar(conn, "SELECT %s::int FROM pg_sleep(0.05)", (n + i,)) == n + i
                    conn.commit()
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"client {n}: {exc.__class__.__name__}: {exc}")
            barrier.abort()

    before = _connect_failures(pools)
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [], errors[:3]
    assert len(backends(pg, "poolfull")) <= 2
    failures = _connect_failures(pools) - before
    assert failures >= 1, "Postgres never refused: the test did not reach the limit"
    # The first wave (up to 5 logins before any failure), then at most one per interval.
    allowed = 5 + elapsed / 0.25 + 2
    assert failures <= allowed, f"{failures} refused logins in {elapsed:.1f} s"


def test_max_clients_refuses_with_53300(pools: PoolerProcess) -> None:
    held = [connect(pools, "poolcap") for _ in range(3)]
    try:
        fields = login_error(
            pools.host, pools.transaction_port, "poolcap.pools", ROLES["poolcap"], DB
        )
        assert fields.get("C") == "53300", fields
        with pytest.raises(psycopg2.OperationalError, match="max_clients|too many"):
            connect(pools, "poolcap")
        held.pop().close()

        def another_fits() -> bool:
            login = login_error(
                pools.host, pools.transaction_port, "poolcap.pools", ROLES["poolcap"], DB
            )
            return login == {}

        wait_until(another_fits, 2, "a client fits again once one left")
    finally:
        for conn in held:
            conn.close()


def test_checkout_timeout_then_recovery(pools: PoolerProcess) -> None:
    """pool_size 1, pool_checkout_timeout 500 ms: a second client gives up with class 53.

    The SQLSTATE is read with psycopg 3: psycopg2 on libpq 17 reports only "server closed
    the connection unexpectedly" for any FATAL that ends a query, even from Postgres itself.
    """
    holder = connect(pools, "poolwait")
    try:
        assert scalar(holder, "SELECT 1") == 1  # in a transaction now: the only server is held
        with psycopg.connect(pools.dsn("poolwait.pools", ROLES["poolwait"], DB)) as waiter:
            started = time.monotonic()
            with pytest.raises(psycopg.Error) as excinfo:
                waiter.execute("SELECT 2")
            elapsed = time.monotonic() - started
        assert 0.4 <= elapsed < 2.0, elapsed
        assert (excinfo.value.sqlstate or "").startswith("53"), repr(excinfo.value)
        assert "timeout" in str(excinfo.value).lower()
        waiter2 = connect(pools, "poolwait")  # the psycopg2 view: the query fails, promptly
        try:
            started = time.monotonic()
            with pytest.raises(psycopg2.OperationalError):
                scalar(waiter2, "SELECT 2")
            assert time.monotonic() - started < 2.0
        finally:
            waiter2.close()
        holder.commit()
        again = connect(pools, "poolwait")
        try:
            assert scalar(again, "SELECT 3") == 3
            again.commit()
        finally:
            again.close()
    finally:
        holder.close()


# -- server reuse ------------------------------------------------------------------------------


def test_transaction_mode_keeps_the_server_until_the_transaction_ends(
    pools: PoolerProcess,
) -> None:
    """pool_size 1: a second client only runs once the first one's transaction is over."""
    first = connect(pools, "pooltx")
    second = connect(pools, "pooltx")
    try:
        pid = scalar(first, "SELECT pg_backend_pid()")
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(scalar(second, "SELECT 42")))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), "the second client ran while the first was in a transaction"
        assert scalar(first, "SELECT pg_backend_pid()") == pid
        first.commit()
        thread.join(5)
        assert result == [42]
        assert scalar(second, "SELECT pg_backend_pid()") == pid  # the same, reused server
        second.commit()
    finally:
        first.close()
        second.close()


def test_session_mode_resets_the_server_before_reuse(pools: PoolerProcess, pg: PgCluster) -> None:
    default_work_mem = pg.execute("SELECT reset_val FROM pg_settings WHERE name = 'work_mem'")
    conn = connect(pools, "poolsess", "session")
    conn.autocommit = True
    try:
        pid = scalar(conn, "SELECT pg_backend_pid()")
        with conn.cursor() as cur:
            cur.execute("SET work_mem = '7777kB'")
            cur.execute("PREPARE gv_plan AS SELECT 1")
            cur.execute("CREATE TEMP TABLE gv_temp (x int)")
            cur.execute("SELECT pg_advisory_lock(4141)")
        assert scalar(conn, "SHOW work_mem") == "7777kB"
    finally:
        conn.close()
    conn = connect(pools, "poolsess", "session")
    conn.autocommit = True
    try:
        assert scalar(conn, "SELECT pg_backend_pid()") == pid, "pool_size 1 but a new server"
        setting = scalar(conn, "SELECT setting FROM pg_settings WHERE name = 'work_mem'")
        assert [(setting,)] == default_work_mem
        assert scalar(conn, "SELECT count(*) FROM pg_prepared_statements") == 0
        assert scalar(conn, "SELECT to_regclass('pg_temp.gv_temp')") is None
        locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s"
        assert scalar(conn, locks, (pid,)) == 0
    finally:
        conn.close()


# -- clients that vanish -----------------------------------------------------------------------

LOCKER = textwrap.dedent(
    """
    import sys, time, psycopg2
    conn = psycopg2.connect(sys.argv[1])
    cur = conn.cursor()
    cur.execute("SELECT pg_advisory_xact_lock(%s), pg_backend_pid()", (int(sys.argv[2]),))
    print("locked", cur.fetchone()[1], flush=True)
    time.sleep(60)
    """
)


def advisory_holders(pg: PgCluster, key: int) -> list[tuple[Any, ...]]:
    return pg.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted", (key,)
    )


def assert_left_clean(pools: PoolerProcess, pg: PgCluster, key: int) -> None:
    """No idle-in-transaction backend, no held lock within 2 s; the next client gets it."""
    wait_until(lambda: not advisory_holders(pg, key), 2, f"advisory lock {key} released")
    wait_until(
        lambda: not backends(pg, "poolkill", "AND state LIKE 'idle in transaction%%'"),
        2,
        "no idle-in-transaction backend",
    )
    conn = connect(pools, "poolkill")
    try:
        started = time.monotonic()
        assert scalar(conn, "SELECT pg_try_advisory_xact_lock(%s)", (key,)) is True
        assert time.monotonic() - started < 1.0
        conn.commit()
    finally:
        conn.close()


def test_sigkilled_client_mid_transaction_leaves_nothing_behind(
    pools: PoolerProcess, pg: PgCluster
) -> None:
    key = 5151
    dsn = pools.dsn("poolkill.pools", ROLES["poolkill"], DB)
    child = subprocess.Popen(
        [sys.executable, "-c", LOCKER, dsn, str(key)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.startswith("locked"), line
        server_pid = int(line.split()[1])
        assert advisory_holders(pg, key) == [(server_pid,)]
        child.kill()
        child.wait(10)
        assert_left_clean(pools, pg, key)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_socket_closed_mid_transaction_leaves_nothing_behind(
    pools: PoolerProcess, pg: PgCluster
) -> None:
    key = 5252
    client = WireClient(pools.host, pools.transaction_port)
    try:
        assert client.login("poolkill.pools", ROLES["poolkill"], DB) == {}
        query = f"BEGIN; SELECT pg_advisory_xact_lock({key});".encode()
        client.send(b"Q", query + b"\0")
        status = b""
        for _ in range(20):
            kind, body = client.read_message()
            assert kind != b"E", body
            if kind == b"Z":
                status = body
                break
        assert status == b"T"
        assert len(advisory_holders(pg, key)) == 1
    finally:
        client.close()
    assert_left_clean(pools, pg, key)


def test_client_gone_while_its_query_runs(pools: PoolerProcess, pg: PgCluster) -> None:
    """The busy server of a vanished client never hands its late results to the next one."""
    client = WireClient(pools.host, pools.transaction_port)
    try:
        assert client.login("poolkill.pools", ROLES["poolkill"], DB) == {}
        client.send(b"Q", b"SELECT pg_sleep(0.5), 'stale'\0")
    finally:
        client.close()
    conn = connect(pools, "poolkill")
    conn.autocommit = True
    try:
        for n in range(3):
            assert scalar(conn, "SELECT %s::text", (f"fresh {n}",)) == f"fresh {n}"
    finally:
        conn.close()
    wait_until(
        lambda: not backends(pg, "poolkill", "AND query LIKE '%%stale%%' AND state = 'active'"),
        3,
        "the vanished client's query is no longer running",
    )


@pytest.fixture(autouse=True)
def _pooler_still_alive(pools: PoolerProcess) -> Iterator[None]:
    yield
    assert pools.alive(), f"the pooler died:\n{pools.log_tail()}"
