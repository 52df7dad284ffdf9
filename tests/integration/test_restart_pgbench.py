"""pgbench through the pooler while Postgres restarts: every transaction counted.

The database is restarted with ``pg_ctl restart -m fast`` in the middle of a pgbench run
(transaction mode, 20 clients on a pool of 5, a think time between transactions so most
clients are idle between transactions at any moment). Each pgbench transaction inserts one
row with a random 63-bit id, so the table says how many transactions committed and whether
one ran twice. Only clients in flight at the restart may fail, and there are at most
pool_size of those; the idle probe client must see no error; the pool must serve again
within a second of Postgres accepting connections.

These tests stop and start Postgres, so they use a cluster of their own.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg2
import pytest

from tests.support.pg import PgCluster, find_bindir
from tests.support.pooler import PoolerProcess, tenant_doc, user_doc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLE = "rp"
PW = "restartPw4tests"
POOL_SIZE = 5
CLIENTS = 20

SCRIPT = """\\set id random(1, 9223372036854775806)
BEGIN;
INSERT INTO ledger (id) VALUES (:id);
SELECT pg_sleep(0.002);
COMMIT;
\\sleep 20 ms
"""

#: What a client in flight at the restart may be told (the server's error, or the pooler's
#: report that the server went away).
IN_FLIGHT_ERRORS = (
    "terminating connection due to administrator command",
    "the connection to the tenant database was lost",
    "perhaps the backend died while processing",
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    own = PgCluster("superPw4restart", bindir)
    try:
        own.start()
        own.create_role(ROLE, PW)
        own.create_database(ROLE, owner=ROLE)
        own.execute(
            "CREATE TABLE ledger (id bigint NOT NULL, at timestamptz DEFAULT clock_timestamp())",
            dbname=ROLE,
        )
        own.execute(f"ALTER TABLE ledger OWNER TO {ROLE}", dbname=ROLE)
        yield own
    finally:
        own.destroy()


def tenants(port: int) -> dict[str, Any]:
    users = [user_doc(ROLE, PW, "transaction", pool_size=POOL_SIZE)]
    return {"tenants": [tenant_doc("rp", ROLE, port, users)]}


def dsn(pooler: PoolerProcess) -> str:
    return pooler.dsn(f"{ROLE}.rp", PW, ROLE)


def restart(cluster: PgCluster, mode: str = "fast") -> None:
    cluster._run("pg_ctl", "-D", str(cluster.datadir), "-l", str(cluster.log_path),
                 "-m", mode, "-w", "-t", "60", "restart")  # fmt: skip


def accepts(cluster: PgCluster) -> bool:
    try:
        psycopg2.connect(cluster.dsn(), connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def test_pgbench_across_a_fast_restart_loses_nothing_and_runs_nothing_twice(
    pooler_factory: Any, cluster: PgCluster, tmp_path: Path
) -> None:
    pooler = pooler_factory(tenants(cluster.port))
    script = tmp_path / "ledger.sql"
    script.write_text(SCRIPT)
    probe = psycopg2.connect(dsn(pooler))  # an idle client across the restart
    probe.autocommit = True
    probe.cursor().execute("SELECT 1")
    bench = subprocess.Popen(
        [str(cluster.bindir / "pgbench"), "-n", "-M", "extended", "-c", str(CLIENTS), "-j", "2",
         "-T", "10", "-f", str(script), "-h", pooler.host, "-p", str(pooler.transaction_port),
         "-U", f"{ROLE}.rp", ROLE],
        env={"PGPASSWORD": PW, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(3)
        restarting = threading.Thread(target=restart, args=(cluster,))
        restarting.start()
        deadline = time.monotonic() + 30
        while accepts(cluster) and time.monotonic() < deadline:
            time.sleep(0.01)  # until the shutdown has begun
        while not accepts(cluster) and time.monotonic() < deadline:
            time.sleep(0.01)
        up = time.monotonic()
        (up_wall,) = cluster.execute("SELECT clock_timestamp()")[0]
        with probe.cursor() as cur:
            cur.execute("SELECT 1")  # the idle client: no error, served promptly
            assert cur.fetchone() == (1,)
        serving_after = time.monotonic() - up
        restarting.join(60)
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
        probe.close()
    processed = int(re.search(r"actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    aborted = [line for line in err.splitlines() if re.search(r"client \d+ .*aborted", line)]
    rows, distinct, after = cluster.execute(
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE at > %s) FROM ledger",
        (up_wall,),
        dbname=ROLE,
    )[0]
    assert serving_after < 1.0, f"the pool served {serving_after:.2f} s after Postgres was up"
    assert rows == distinct, f"{rows - distinct} transactions ran twice"
    assert len(aborted) <= POOL_SIZE, f"only in-flight transactions may fail: {aborted}"
    for line in aborted:
        assert any(text in line for text in IN_FLIGHT_ERRORS), line
    # Every transaction pgbench saw commit is there; beyond that at most the in-flight ones
    # whose COMMIT reached the server before the reply was lost.
    assert processed <= rows <= processed + len(aborted), (processed, rows, aborted)
    assert after > 0, "pgbench did not go on after the restart"
    unexplained = [
        line for line in err.splitlines()
        if "error" in line and line not in aborted and "Run was aborted" not in line
    ]  # fmt: skip
    assert not unexplained, unexplained


def test_query_of_an_idle_client_past_query_wait_timeout_gets_08006_or_57P03(
    pooler_factory: Any, cluster: PgCluster
) -> None:
    """The pool is warm and the client logged in; the database goes away and stays away.
    (test_resilience.py covers a login while it is down; this is a query of a client that
    is already in.)"""
    pooler = pooler_factory(tenants(cluster.port), extra_args=["--query-wait-timeout", "1.5"])
    conn = psycopg.connect(dsn(pooler), autocommit=True)
    conn.execute("SELECT 1")
    cluster.stop("fast")
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT 1")
        waited = time.monotonic() - started
        assert waited < 8, f"took {waited:.1f} s: a hang, not an error"
        assert info.value.sqlstate in ("08006", "57P03"), info.value
    finally:
        conn.close()
        cluster.start()
    with psycopg.connect(dsn(pooler), autocommit=True) as again:
        assert again.execute("SELECT 2").fetchone() == (2,)


def test_upstream_closing_during_login_is_a_clean_retryable_error(pooler_factory: Any) -> None:
    """An upstream that accepts and hangs up (Postgres on its way down): the client gets a
    clear error after query_wait_timeout, and the pooler logs no traceback."""
    closer = socket.socket()
    closer.bind(("127.0.0.1", 0))
    closer.listen(64)
    stop = threading.Event()

    def hang_up() -> None:
        closer.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = closer.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        pooler = pooler_factory(
            tenants(closer.getsockname()[1]), extra_args=["--query-wait-timeout", "1.5"]
        )
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn(pooler), autocommit=True).execute("SELECT 1")
        assert time.monotonic() - started < 8
        assert "while logging in" in str(info.value), info.value
        assert "Traceback" not in pooler.log_text()
    finally:
        stop.set()
        thread.join(5)
        closer.close()
