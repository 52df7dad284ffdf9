"""Transaction pooling without surprises: prepared statements, pipelines, COPY, cancel,
session parameters and session state, against real Postgres through the pooler.

Every tenant here has fewer server connections than clients, so statements, parameters and
state really do move between server connections.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg2
import pytest
from psycopg import pq

from tests.conftest import PASSWORDS
from tests.support.net import WireClient, WireError, parse_error_fields
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, tenant_doc, user_doc

pytestmark = pytest.mark.integration

PW = PASSWORDS["app1user"]
DB = "tpdb"


@pytest.fixture(scope="module")
def tp(pooler_factory: Any, pg: PgCluster) -> PoolerProcess:
    """Tenants on their own database: 'tp' (transaction pool 2, session pool 3) and
    'one' (transaction pool 1: every client shares a single server connection)."""
    pg.create_database(DB, owner="app1user")
    pg.execute("CREATE TABLE items (id int primary key, body text)", dbname=DB)
    pg.execute("ALTER TABLE items OWNER TO app1user", dbname=DB)
    pg.execute("CREATE ROLE tp_other NOLOGIN")
    pg.execute("GRANT tp_other TO app1user")
    doc = {
        "tenants": [
            tenant_doc(
                "tp",
                DB,
                pg.port,
                [
                    user_doc("app1user", PW, "transaction", pool_size=2),
                    user_doc("app1user", PW, "session", pool_size=3),
                ],
            ),
            tenant_doc(
                "one",
                DB,
                pg.port,
                [
                    user_doc("app1user", PW, "transaction", pool_size=1),
                ],
            ),
            *(
                tenant_doc(
                    name,
                    DB,
                    pg.port,
                    [user_doc("app1user", PW, "transaction", pool_size=1)],
                    session_state_policy=policy,
                )
                for name, policy in (("warnp", "warn"), ("errp", "error"))
            ),
        ]
    }
    return pooler_factory(doc)


def p3(
    pooler: PoolerProcess, tenant: str = "tp", mode: str = "transaction", **kwargs: Any
) -> psycopg.Connection:
    return psycopg.connect(pooler.dsn(f"app1user.{tenant}", PW, DB, mode), **kwargs)


def server_pids(pg: PgCluster) -> set[int]:
    rows = pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = 'app1user'", (DB,)
    )
    return {row[0] for row in rows}


# -- prepared statements -------------------------------------------------------------------


def test_psycopg3_prepared_statements_across_servers(tp: PoolerProcess) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with p3(tp, prepare_threshold=0) as conn:
                for i in range(10):
                    with conn.transaction():
                        row = conn.execute("SELECT %s::int * 2, %s::text", (i, f"c{n}")).fetchone()
                        assert row == (i * 2, f"c{n}")
                        row = conn.execute("SELECT %s::int + 1", (n,)).fetchone()
                        assert row == (n + 1,)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]


def test_pgbench_prepared_50_clients_on_pool_5(
    pooler_factory: Any, pg: PgCluster, tmp_path: Any
) -> None:
    database = "tpbench"
    pg.create_database(database, owner="app1user")
    bindir = pg.bindir
    env = {**os.environ, "PGPASSWORD": PW}
    subprocess.run(
        [
            str(bindir / "pgbench"),
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            pg.host,
            "-p",
            str(pg.port),
            "-U",
            "app1user",
            database,
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    pooler = pooler_factory(
        {
            "tenants": [
                tenant_doc(
                    "pb", database, pg.port, [user_doc("app1user", PW, "transaction", pool_size=5)]
                )
            ]
        }
    )
    out = subprocess.run(
        [
            str(bindir / "pgbench"),
            "-M",
            "prepared",
            "-c",
            "50",
            "-j",
            "2",
            "-t",
            "40",
            "-n",
            "-h",
            pooler.host,
            "-p",
            str(pooler.transaction_port),
            "-U",
            "app1user.pb",
            database,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "number of failed transactions: 0 " in out.stdout
    assert "number of transactions actually processed: 2000/2000" in out.stdout
    rows = pg.execute("SELECT count(*) FROM pgbench_history", dbname=database)
    assert rows[0][0] == 2000  # every transaction ran exactly once
    # The pool's role only: the superuser connection that just counted pgbench_history may
    # still be listed while its backend exits.
    backends = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = 'app1user'",
        (database,),
    )
    assert backends[0][0] <= 5


def test_duplicate_name_gets_postgres_error_and_connection_survives(tp: PoolerProcess) -> None:
    with p3(tp, autocommit=True) as conn:
        pgconn = conn.pgconn
        assert pgconn.prepare(b"dup", b"SELECT 1").status == pq.ExecStatus.COMMAND_OK
        again = pgconn.prepare(b"dup", b"SELECT 2")
        assert again.status == pq.ExecStatus.FATAL_ERROR
        assert again.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
        assert b'prepared statement "dup" already exists' in again.error_message
        result = pgconn.exec_prepared(b"dup", [])
        assert result.status == pq.ExecStatus.TUPLES_OK and result.get_value(0, 0) == b"1"
        missing = pgconn.exec_prepared(b"nope", [])
        assert missing.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        assert b'prepared statement "nope" does not exist' in missing.error_message
        # Close then reuse the name for another query, as on Postgres.
        conn.execute("DEALLOCATE ALL")
        assert pgconn.prepare(b"dup", b"SELECT 3").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.exec_prepared(b"dup", []).get_value(0, 0) == b"3"


def test_statement_reset_by_a_client_without_statements_is_followed(tp: PoolerProcess) -> None:
    """Tenant 'one' has a single server. A client that never named a statement (so the
    rewriter is not on for it) runs DEALLOCATE ALL / DISCARD ALL on that server: the
    statements the pooler prepared there for another client are gone, and that client's
    next execution must still work (the pooler re-prepares, never uses a stale list)."""
    with p3(tp, "one", autocommit=True) as owner:
        pgconn = owner.pgconn
        assert pgconn.prepare(b"keep", b"SELECT 42").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.exec_prepared(b"keep", []).get_value(0, 0) == b"42"
        for reset in ("DEALLOCATE ALL", "DISCARD ALL", "deallocate all"):
            with p3(tp, "one", autocommit=True) as plain:
                plain.execute(reset)
            result = pgconn.exec_prepared(b"keep", [])
            assert result.status == pq.ExecStatus.TUPLES_OK, result.error_message
            assert result.get_value(0, 0) == b"42"


def test_failed_parse_is_forgotten(tp: PoolerProcess) -> None:
    with p3(tp, autocommit=True) as conn:
        bad = conn.pgconn.prepare(b"broken", b"SELEC 1")
        assert bad.error_field(pq.DiagnosticField.SQLSTATE) == b"42601"
        assert conn.pgconn.prepare(b"broken", b"SELECT 5").status == pq.ExecStatus.COMMAND_OK
        assert conn.pgconn.exec_prepared(b"broken", []).get_value(0, 0) == b"5"


# -- pipelines -----------------------------------------------------------------------------


def run_pipeline(conn: psycopg.Connection) -> list[Any]:
    """A pipeline of three queries, then a pipeline that fails in its middle, then more."""
    outcome: list[Any] = []
    with conn.pipeline():
        cursors = [conn.execute("SELECT %s::int", (i,)) for i in range(3)]
    outcome.extend(cur.fetchone() for cur in cursors)
    # Leaving the block syncs and raises the pipeline's first error, deterministically.
    with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
        conn.execute("SELECT 1/0")
        conn.execute("SELECT 42")
    outcome.append("division_by_zero")
    with conn.pipeline():
        later = conn.execute("SELECT 'after'")
    outcome.append(later.fetchone())
    return outcome


def test_pipeline_with_error_behaves_as_on_postgres(tp: PoolerProcess, pg: PgCluster) -> None:
    direct = psycopg.connect(pg.dsn("app1user", PW, DB), autocommit=True)
    with direct, p3(tp, autocommit=True) as pooled:
        expected = run_pipeline(direct)
        assert run_pipeline(pooled) == expected
        assert expected[-1] == ("after",)


# -- COPY ----------------------------------------------------------------------------------


def test_copy_in_and_out_with_failures(tp: PoolerProcess) -> None:
    with p3(tp) as conn:
        conn.execute("DELETE FROM items")
        with conn.cursor().copy("COPY items (id, body) FROM STDIN") as copy:
            for i in range(5000):
                copy.write_row((i, f"row {i}"))
        conn.commit()
        out = bytearray()
        with conn.cursor().copy("COPY items TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
        assert out.count(b"\n") == 5000
        # A duplicate key fails the COPY after CopyDone; the connection stays usable.
        with (
            pytest.raises(psycopg.errors.UniqueViolation),
            conn.cursor().copy("COPY items (id, body) FROM STDIN") as copy,
        ):
            copy.write_row((1, "dup"))
        conn.rollback()
        # CopyFail from the client (an exception inside the block).
        with (
            pytest.raises(ZeroDivisionError),
            conn.cursor().copy("COPY items (id, body) FROM STDIN") as copy,
        ):
            copy.write_row((99999, "x"))
            raise ZeroDivisionError
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (5000,)


def test_large_row_streams_with_flat_memory(tp: PoolerProcess) -> None:
    big = "x" * (50 * 1024 * 1024)
    rss_before = _rss(tp)
    with p3(tp) as conn:
        conn.execute(
            "INSERT INTO items VALUES (-1, %s) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            (big,),
        )
        conn.commit()
        for _ in range(3):
            (length,) = conn.execute("SELECT length(body) FROM items WHERE id = -1").fetchone()
            assert length == len(big)
            (body,) = conn.execute("SELECT body FROM items WHERE id = -1").fetchone()
            assert len(body) == len(big)
        conn.execute("DELETE FROM items WHERE id = -1")
        conn.commit()
    grown = _rss(tp) - rss_before
    assert grown < 48 * 1024 * 1024, f"pooler RSS grew by {grown >> 20} MiB for 50 MiB rows"


def _rss(pooler: PoolerProcess) -> int:
    assert pooler.proc is not None
    with open(f"/proc/{pooler.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_client_killed_mid_copy_leaves_nothing_behind(tp: PoolerProcess, pg: PgCluster) -> None:
    script = (
        "import psycopg, os, signal\n"
        f"conn = psycopg.connect({tp.dsn('app1user.tp', PW, DB)!r})\n"
        "with conn.cursor().copy('COPY items (id, body) FROM STDIN') as copy:\n"
        "    copy.write_row((777777, 'half'))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([os.sys.executable, "-c", script], timeout=30)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
            "query ILIKE 'COPY items%%' AND state <> 'idle'",
            (DB,),
        )
        if rows[0][0] == 0:
            break
        time.sleep(0.1)
    assert rows[0][0] == 0
    with p3(tp) as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE id = 777777").fetchone() == (0,)


# -- cancel --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_cancel_reaches_the_running_query(tp: PoolerProcess, mode: str) -> None:
    conn = psycopg2.connect(tp.dsn("app1user.tp", PW, DB, mode))
    try:
        timer = threading.Timer(0.3, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            conn.cursor().execute("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5
        conn.rollback()
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_late_cancel_never_hits_another_client(tp: PoolerProcess) -> None:
    """Pool size 1: A and B share one server. A's cancels arrive after A's query finished,
    while B keeps the server busy; B must never see 57014."""
    a = psycopg2.connect(tp.dsn("app1user.one", PW, DB))
    a.autocommit = True
    stop = threading.Event()
    b_errors: list[str] = []
    b_done = [0]

    def client_b() -> None:
        b = psycopg2.connect(tp.dsn("app1user.one", PW, DB))
        b.autocommit = True
        cur = b.cursor()
        while not stop.is_set():
            try:
                cur.execute("SELECT pg_sleep(0.005)")
                b_done[0] += 1
            except psycopg2.Error as exc:
                b_errors.append(f"{exc.pgcode}: {exc}")
        b.close()

    thread = threading.Thread(target=client_b)
    thread.start()
    try:
        cur = a.cursor()
        for _ in range(40):
            cur.execute("SELECT 1")
            a.cancel()  # late: A's query is already done
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
        a.close()
    assert b_done[0] > 0
    assert not b_errors, b_errors[:3]


# -- session parameters --------------------------------------------------------------------


def test_session_parameters_follow_each_client(tp: PoolerProcess) -> None:
    """Two clients with different settings share ONE server connection (pool size 1)."""
    tokyo = psycopg2.connect(
        tp.dsn("app1user.one", PW, DB)
        + " options='-c TimeZone=Asia/Tokyo -c search_path=tokyo,public'"
        + " application_name=tokyo-app"
    )
    paris = psycopg2.connect(tp.dsn("app1user.one", PW, DB) + " options='-c TimeZone=Europe/Paris'")
    try:
        for _ in range(3):
            for conn, zone, path, app in (
                (tokyo, "Asia/Tokyo", "tokyo,public", "tokyo-app"),  # as Postgres shows it
                (paris, "Europe/Paris", '"$user", public', ""),
            ):
                cur = conn.cursor()
                cur.execute(
                    "SELECT current_setting('TimeZone'), current_setting('search_path'),"
                    " current_setting('application_name'), pg_backend_pid()"
                )
                got = cur.fetchone()
                conn.commit()
                assert got[:2] == (zone, path)
                if app:
                    assert got[2] == app
        assert tokyo.get_parameter_status("TimeZone") == "Asia/Tokyo"
        # A client's own SET of a reported parameter is followed, too.
        cur = paris.cursor()
        cur.execute("SET DateStyle = 'German, DMY'")
        paris.commit()
        cur.execute("SELECT current_setting('DateStyle')")
        assert cur.fetchone() == ("German, DMY",)
        paris.commit()
        tcur = tokyo.cursor()
        tcur.execute("SELECT current_setting('DateStyle')")
        assert tcur.fetchone() == ("ISO, MDY",)
        tokyo.commit()
    finally:
        tokyo.close()
        paris.close()


def test_a_new_client_is_not_greeted_with_an_earlier_clients_settings(tp: PoolerProcess) -> None:
    """The pool's greeting (ParameterStatus at login, and the settings a client without its
    own value expects) is the server's defaults, not the session of the client that last
    used the first server: that one SET application_name and TimeZone on it."""
    a = psycopg2.connect(
        tp.dsn("app1user.one", PW, DB)
        + " application_name=leaky-app options='-c TimeZone=Pacific/Auckland'"
    )
    try:
        cur = a.cursor()
        cur.execute("SELECT current_setting('application_name'), current_setting('TimeZone')")
        assert cur.fetchone() == ("leaky-app", "Pacific/Auckland")
        a.commit()  # the one server of the pool now carries a's settings
        b = psycopg2.connect(tp.dsn("app1user.one", PW, DB))
        try:
            assert b.get_parameter_status("application_name") != "leaky-app"
            assert b.get_parameter_status("TimeZone") != "Pacific/Auckland"
            bcur = b.cursor()
            bcur.execute("SELECT current_setting('application_name'), current_setting('TimeZone')")
            got = bcur.fetchone()
            b.commit()
            assert got == (
                b.get_parameter_status("application_name"),
                b.get_parameter_status("TimeZone"),
            )
        finally:
            b.close()
    finally:
        a.close()


def test_a_reported_change_is_undone_for_clients_with_the_same_settings(tp: PoolerProcess) -> None:
    """Two clients with identical settings on ONE server: once the server satisfies their
    settings the relay remembers it (ServerConn.fits); a ParameterStatus from one client's
    SET must make it check again, or the other client would inherit the change."""
    a = psycopg2.connect(tp.dsn("app1user.one", PW, DB))
    b = psycopg2.connect(tp.dsn("app1user.one", PW, DB))
    a.autocommit = b.autocommit = True
    try:
        ca, cb = a.cursor(), b.cursor()
        for _ in range(2):  # both linked to the server at least once: it fits them now
            for cur in (ca, cb):
                cur.execute("SELECT current_setting('DateStyle'), pg_backend_pid()")
                assert cur.fetchone()[0] == "ISO, MDY"
        ca.execute("SET DateStyle = 'German, DMY'")
        for _ in range(2):
            cb.execute("SELECT current_setting('DateStyle')")
            assert cb.fetchone() == ("ISO, MDY",)
            ca.execute("SELECT current_setting('DateStyle')")
            assert ca.fetchone() == ("German, DMY",)
    finally:
        a.close()
        b.close()


# -- session state in transaction mode ------------------------------------------------------


def test_session_state_never_reaches_another_client(tp: PoolerProcess, pg: PgCluster) -> None:
    a = psycopg2.connect(tp.dsn("app1user.one", PW, DB))
    b = psycopg2.connect(tp.dsn("app1user.one", PW, DB))
    b.autocommit = True
    try:
        ca, cb = a.cursor(), b.cursor()
        # One transaction of A: its session-level state is real while it lasts.
        ca.execute("SET search_path = nowhere")
        ca.execute("SELECT pg_advisory_lock(4242)")
        ca.execute("SET ROLE tp_other")
        ca.execute("SELECT pg_backend_pid(), current_user")
        pid_a, role_a = ca.fetchone()
        assert role_a == "tp_other"
        a.commit()
        cb.execute("SELECT pg_backend_pid(), current_setting('search_path'), current_user")
        pid_b, path, current = cb.fetchone()
        assert pid_b == pid_a  # the same server connection ...
        assert path == '"$user", public'  # ... but none of A's session state
        assert current == "app1user"
        held = pg.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid_b,)
        )
        assert held == [(0,)]
    finally:
        a.close()
        b.close()


def test_warn_policy_tells_the_client_and_still_isolates(tp: PoolerProcess) -> None:
    a = psycopg2.connect(tp.dsn("app1user.warnp", PW, DB))
    b = psycopg2.connect(tp.dsn("app1user.warnp", PW, DB))
    a.autocommit = b.autocommit = True
    try:
        a.cursor().execute("SET search_path = nowhere")
        assert any("leaves session state" in notice for notice in a.notices)
        cur = b.cursor()
        cur.execute("SELECT current_setting('search_path')")
        assert cur.fetchone() == ('"$user", public',)
    finally:
        a.close()
        b.close()


def test_error_policy_refuses_session_state(tp: PoolerProcess) -> None:
    conn = psycopg2.connect(tp.dsn("app1user.errp", PW, DB))
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        with pytest.raises(psycopg2.errors.FeatureNotSupported) as info:
            cur.execute("SELECT pg_advisory_lock(7)")
        assert "not allowed in transaction pooling mode" in str(info.value)
        conn.rollback()  # the transaction was aborted exactly as by any failed statement
        cur.execute("SET LOCAL statement_timeout = 1000")  # transaction-scoped: allowed
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
        conn.commit()
    finally:
        conn.close()


def test_listen_notify_in_session_mode(tp: PoolerProcess) -> None:
    listener = psycopg2.connect(tp.dsn("app1user.tp", PW, DB, "session"))
    listener.autocommit = True
    try:
        listener.cursor().execute("LISTEN jobs")
        with psycopg2.connect(tp.dsn("app1user.tp", PW, DB, "session")) as sender:
            sender.autocommit = True
            sender.cursor().execute("NOTIFY jobs, 'hello'")
        deadline = time.monotonic() + 5
        while not listener.notifies and time.monotonic() < deadline:
            listener.poll()
            time.sleep(0.05)
        assert [n.payload for n in listener.notifies] == ["hello"]
    finally:
        listener.close()


# -- failures ------------------------------------------------------------------------------


def test_terminated_server_gives_its_error_and_pool_recovers(
    tp: PoolerProcess, pg: PgCluster
) -> None:
    conn = psycopg2.connect(tp.dsn("app1user.tp", PW, DB))
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()  # in a transaction: linked to this server
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg2.OperationalError) as info:
            cur.execute("SELECT 1")
        assert re.search(r"terminat", str(info.value))
    finally:
        conn.close()
    with p3(tp) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_terminated_server_error_reaches_the_client_once(
    tp: PoolerProcess, pg: PgCluster, mode: str
) -> None:
    """The server's own FATAL (57P01 here) is what the client gets, and only it: a second
    FATAL from the pooler would make drivers report "received 2 results"."""
    with WireClient(tp.host, tp.port(mode)) as client:
        assert client.login("app1user.tp", PW, DB) == {}
        client.send(b"Q", b"BEGIN; SELECT pg_backend_pid()\0")
        pid = None
        while True:
            kind, body = client.read_message()
            if kind == b"D":
                pid = int(body[6:])
            if kind == b"Z":
                break
        assert pid is not None
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        errors = []
        try:
            while True:
                kind, body = client.read_message()
                if kind == b"E":
                    errors.append(parse_error_fields(body))
        except (WireError, OSError):
            pass  # the pooler closed the connection
        assert [e["C"] for e in errors] == ["57P01"], errors


@pytest.fixture(autouse=True)
def _no_leftover_locks(pg: PgCluster) -> Iterator[None]:
    yield
    rows = pg.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND a.datname = %s",
        (DB,),
    )
    assert rows[0][0] == 0, "an advisory lock outlived its client"
