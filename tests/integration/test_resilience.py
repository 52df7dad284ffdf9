"""Resilience: connection buffering across a database restart, timeouts, graceful shutdown.

These tests stop and start Postgres, so they use a cluster of their own, not the shared one.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg2
import pytest

from tests.support.pg import PgCluster, find_bindir
from tests.support.pooler import PoolerProcess, tenant_doc, user_doc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PW = "resilPw4tests"


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgCluster]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    cluster = PgCluster("superPw4resil", bindir)
    try:
        cluster.start()
        cluster.create_role("resil", PW)
        cluster.create_database("resil", owner="resil")
        cluster.execute("CREATE TABLE runs (id serial primary key, tag text)", dbname="resil")
        cluster.execute("ALTER TABLE runs OWNER TO resil", dbname="resil")
        yield cluster
    finally:
        cluster.destroy()


def doc(cluster: PgCluster, role: str = "resil", **tenant_fields: Any) -> dict[str, Any]:
    """Tenant 'rs' on database ``role`` as role ``role`` (tests that count backends use a
    role of their own: the other poolers of this module stay connected as 'resil')."""
    return {
        "tenants": [
            tenant_doc(
                "rs",
                role,
                cluster.port,
                [
                    user_doc(role, PW, "transaction", pool_size=2),
                    user_doc(role, PW, "session", pool_size=2),
                ],
                **tenant_fields,
            )
        ]
    }


def own_role(cluster: PgCluster, role: str) -> str:
    """A role with a database of its own, so its backends can be counted alone."""
    cluster.create_role(role, PW)
    cluster.create_database(role, owner=role)
    return role


@pytest.fixture(scope="module")
def rs(pooler_factory: Any, own_pg: PgCluster) -> PoolerProcess:
    return pooler_factory(doc(own_pg), extra_args=["--query-wait-timeout", "20"])


def dsn(pooler: PoolerProcess, mode: str = "transaction", role: str = "resil") -> str:
    return pooler.dsn(f"{role}.rs", PW, role, mode)


def test_transaction_waits_out_a_restart_and_runs_once(
    rs: PoolerProcess, own_pg: PgCluster
) -> None:
    with psycopg.connect(dsn(rs), autocommit=True) as warm:
        warm.execute("SELECT 1")  # the pool has servers, which the restart will kill
    own_pg.stop("fast")
    outcome: dict[str, Any] = {}

    def client() -> None:
        started = time.monotonic()
        try:
            with psycopg.connect(dsn(rs), autocommit=True) as conn:
                conn.execute("INSERT INTO runs (tag) VALUES ('buffered')")
            outcome["ok"] = time.monotonic() - started
        except psycopg.Error as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(2.0)
    assert thread.is_alive(), f"the query did not wait for the database: {outcome}"
    own_pg.start()
    back = time.monotonic()
    thread.join(20)
    assert "error" not in outcome, outcome.get("error")
    assert "ok" in outcome
    assert time.monotonic() - back < 3.0  # serving again promptly once Postgres accepts
    rows = own_pg.execute("SELECT count(*) FROM runs WHERE tag = 'buffered'", dbname="resil")
    assert rows == [(1,)]  # exactly once


def test_database_down_past_the_wait_gives_a_clear_error(
    pooler_factory: Any, own_pg: PgCluster
) -> None:
    short = pooler_factory(doc(own_pg), extra_args=["--query-wait-timeout", "1.5"])
    own_pg.stop("fast")
    try:
        started = time.monotonic()
        with (
            pytest.raises(psycopg.OperationalError) as info,
            psycopg.connect(dsn(short), autocommit=True) as conn,
        ):
            conn.execute("SELECT 1")
        waited = time.monotonic() - started
        assert waited < 6, f"took {waited:.1f} s: a hang, not an error"
        message = str(info.value)
        assert "did not accept connections" in message or "could not connect" in message
    finally:
        own_pg.start()


def test_graceful_shutdown_lets_transactions_finish(pooler_factory: Any, own_pg: PgCluster) -> None:
    pooler = pooler_factory(doc(own_pg), extra_args=["--shutdown-timeout", "10"])
    idle = psycopg2.connect(dsn(pooler))
    idle.autocommit = True
    idle.cursor().execute("SELECT 1")
    busy = psycopg2.connect(dsn(pooler))
    cur = busy.cursor()
    cur.execute("INSERT INTO runs (tag) VALUES ('during-shutdown')")  # transaction open
    assert pooler.proc is not None
    pooler.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert pooler.alive(), "exited before the running transaction finished"
    busy.commit()  # the transaction completes through the stopping pooler
    rows = own_pg.execute("SELECT count(*) FROM runs WHERE tag = 'during-shutdown'", dbname="resil")
    assert rows == [(1,)]
    with pytest.raises(psycopg2.Error):
        idle.cursor().execute("SELECT 1")  # idle clients were told 57P01 and closed
    assert pooler.proc.wait(10) == 0
    # Both were told why: the idle one at once, the busy one when its transaction ended.
    told = [line for line in pooler.log_text().splitlines() if "closing client" in line]
    assert len(told) == 2 and all("57P01" in line for line in told), told
    idle.close()
    busy.close()


def test_second_signal_exits_at_once(pooler_factory: Any, own_pg: PgCluster) -> None:
    pooler = pooler_factory(doc(own_pg), extra_args=["--shutdown-timeout", "30"])
    busy = psycopg2.connect(dsn(pooler))
    busy.cursor().execute("SELECT 1")  # in a transaction: shutdown would wait 30 s for it
    assert pooler.proc is not None
    pooler.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    pooler.proc.send_signal(signal.SIGTERM)
    pooler.proc.wait(5)
    assert time.monotonic() - started < 5
    busy.close()


def test_idle_transaction_timeout_rolls_back(pooler_factory: Any, own_pg: PgCluster) -> None:
    pooler = pooler_factory(doc(own_pg), extra_args=["--idle-transaction-timeout", "1"])
    conn = psycopg2.connect(dsn(pooler))
    cur = conn.cursor()
    cur.execute("INSERT INTO runs (tag) VALUES ('abandoned')")
    time.sleep(2.5)
    with pytest.raises(psycopg2.Error):
        cur.execute("SELECT 1")
    conn.close()
    rows = own_pg.execute("SELECT count(*) FROM runs WHERE tag = 'abandoned'", dbname="resil")
    assert rows == [(0,)]
    assert "idle_transaction_timeout" in pooler.log_text()


def test_client_idle_timeout(pooler_factory: Any, own_pg: PgCluster) -> None:
    pooler = pooler_factory(doc(own_pg, client_idle_timeout=1))
    conn = psycopg2.connect(dsn(pooler))
    conn.autocommit = True
    conn.cursor().execute("SELECT 1")
    time.sleep(2.5)
    with pytest.raises(psycopg2.Error):
        conn.cursor().execute("SELECT 1")
    conn.close()
    with psycopg2.connect(dsn(pooler)) as fresh:
        cur = fresh.cursor()
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)


def test_switching_db_host_under_load_loses_no_transaction(
    pooler_factory: Any, own_pg: PgCluster
) -> None:
    """Change the tenant's upstream address while pgbench runs: old server connections drain
    as they are released, new transactions use the new address, none fails. (The "new"
    address is the same server under another name, which is enough to exercise the drain.)"""
    role = own_role(own_pg, "resil_switch")
    env = {"PGPASSWORD": PW, "PATH": "/usr/bin:/bin"}
    subprocess.run([str(own_pg.bindir / "pgbench"), "-i", "-s", "1", "-q", "-h", own_pg.host,
                    "-p", str(own_pg.port), "-U", role, role], check=True, env=env,
                   capture_output=True, timeout=120)  # fmt: skip
    pooler = pooler_factory(doc(own_pg, role))
    bench = subprocess.Popen(
        [str(own_pg.bindir / "pgbench"), "-n", "-M", "extended", "-c", "20", "-j", "2",
         "-T", "6", "-h", pooler.host, "-p", str(pooler.transaction_port), "-U", f"{role}.rs",
         role],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2)
        before = _backends(own_pg, role)
        assert before, "pgbench should be running through the pooler by now"
        moved = doc(own_pg, role)["tenants"][0] | {"db_host": "localhost", "ip_version": "v4"}
        pooler.apply({"tenants": [moved]})
        out, err = bench.communicate(timeout=60)
        after = _backends(own_pg, role)
    finally:
        if bench.poll() is None:
            bench.kill()
        pooler.stop()
    assert bench.returncode == 0, err[-2000:]
    assert "number of failed transactions: 0 " in out, out
    assert after, "the pool keeps its new server connections"
    assert not (before & after), "a server connection of the old address was reused"


def _backends(cluster: PgCluster, role: str) -> set[int]:
    rows = cluster.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,))
    return {row[0] for row in rows}


def test_server_idle_timeout_and_lifetime(pooler_factory: Any, own_pg: PgCluster) -> None:
    role = own_role(own_pg, "resil_life")
    pooler = pooler_factory(
        doc(own_pg, role), extra_args=["--server-idle-timeout", "1", "--server-lifetime", "2"]
    )
    with psycopg.connect(dsn(pooler, role=role), autocommit=True) as conn:
        (first,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert _backends(own_pg, role) == {first}
        deadline = time.monotonic() + 5
        while _backends(own_pg, role) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _backends(own_pg, role), "an idle server outlived server_idle_timeout"
        # server_lifetime: a busy server is replaced once it is older than 2 s.
        (second,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        for _ in range(25):
            conn.execute("SELECT pg_sleep(0.1)")
        (third,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert second != first and third != second


def test_server_connect_timeout(pooler_factory: Any, own_pg: PgCluster) -> None:
    """An upstream that accepts TCP but never answers: the client gets a clear error in
    about server_connect_timeout (x the retries allowed by query_wait_timeout), no hang."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        tenant = doc(own_pg)["tenants"][0] | {"db_port": port}
        pooler = pooler_factory(
            {"tenants": [tenant]},
            extra_args=["--server-connect-timeout", "0.5", "--query-wait-timeout", "2"],
        )
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn(pooler), autocommit=True).execute("SELECT 1")
        assert time.monotonic() - started < 8
        assert "timed out logging in to the tenant database" in str(info.value)
    finally:
        silent.close()
