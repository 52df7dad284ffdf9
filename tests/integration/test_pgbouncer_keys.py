"""pgbouncer.ini's reserve pool, server_reset_query(_always) and server_check_query/_delay,
against real Postgres: one Greenvisor for the module, reconfigured by SIGHUP between tests.
Backends are counted and identified in pg_stat_activity by their own databases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import PASSWORDS
from tests.support.net import free_port
from tests.support.pg import PgCluster
from tests.support.pgbouncer import IniPoolerProcess

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
USER = "app1user"
RES_DB, KEYS_DB = "gv_keys_res", "gv_keys"  # the reserve pool's backends are alone in RES_DB
SEQ = "gv_check_seq"
RESET_TIMEOUT = 1.0  # --server-reset-timeout: a reset query that hangs loses its server


def ini_text(
    pg_port: int, port: int, workdir: Path, without: tuple[str, ...] = (), **overrides: str
) -> str:
    upstream = f"host={HOST} port={pg_port}"
    settings = {
        "listen_addr": HOST,
        "listen_port": str(port),
        "auth_type": "md5",
        "auth_file": "userlist.txt",
        "pool_mode": "transaction",
        "default_pool_size": "1",
        "reserve_pool_size": "0",
        "reserve_pool_timeout": "1",
        "server_check_delay": "30",
        "logfile": str(workdir / "gv.log"),
    }
    settings.update(overrides)
    databases = {
        "res": f"{upstream} dbname={RES_DB} pool_mode=session reserve_pool=1",
        "sess": f"{upstream} dbname={KEYS_DB} pool_mode=session",
        "tx": f"{upstream} dbname={KEYS_DB}",
    }
    return (
        "[databases]\n"
        + "".join(f"{name} = {line}\n" for name, line in databases.items() if name not in without)
        + "\n[pgbouncer]\n"
        + "".join(f"{key} = {value}\n" for key, value in settings.items())
    )


@pytest.fixture(scope="module")
def gv(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[IniPoolerProcess]:
    for database in (RES_DB, KEYS_DB):
        if not pg.execute("select 1 from pg_database where datname = %s", [database]):
            pg.create_database(database)
        pg.grant_connect(database, USER)
    pg.execute(f"create sequence if not exists {SEQ}", dbname=KEYS_DB)
    pg.execute(f"select setval('{SEQ}', 1, true)", dbname=KEYS_DB)  # last_value counts calls
    pg.execute(f"grant usage, select on sequence {SEQ} to {USER}", dbname=KEYS_DB)
    workdir = tmp_path_factory.mktemp("gv-keys")
    port = free_port()
    (workdir / "userlist.txt").write_text(f'"{USER}" "{PASSWORDS[USER]}"\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(ini_text(pg.port, port, workdir))
    process = IniPoolerProcess(
        workdir,
        ini,
        port,
        sqlite_template=sqlite_template,
        extra_args=["--server-reset-timeout", str(RESET_TIMEOUT)],
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def configure(gv: IniPoolerProcess, without: tuple[str, ...] = (), **overrides: str) -> None:
    """Rewrite pgbouncer.ini with ``overrides`` (and the databases ``without`` left out) and
    SIGHUP; returns once it was re-read."""
    pg_port = gv.ini.read_text().split(" port=", 1)[1].split()[0]
    gv.ini.write_text(ini_text(int(pg_port), gv.listen_port, gv.workdir, without, **overrides))
    gv.reload()


def connect(gv: IniPoolerProcess, database: str) -> Any:
    conn = psycopg2.connect(
        host=HOST, port=gv.listen_port, user=USER, password=PASSWORDS[USER], dbname=database,
        connect_timeout=10,
    )  # fmt: skip
    conn.autocommit = True
    return conn


def one(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def backends(pg: PgCluster, database: str) -> list[int]:
    rows = pg.execute(
        "select pid from pg_stat_activity where datname = %s and usename = %s", [database, USER]
    )
    return sorted(row[0] for row in rows)


def test_reserve_pool_opens_one_more_server_after_the_timeout_never_two(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    configure(gv)
    holder = connect(gv, "res")  # session mode, pool_size 1: holds the only server
    first = one(holder, "select pg_backend_pid()")
    results: dict[str, Any] = {}

    def waiting(name: str) -> None:
        started = time.monotonic()  # session mode: the login may already wait
        conn = connect(gv, "res")
        try:
            results[name] = (one(conn, "select pg_backend_pid()"), time.monotonic() - started)
        finally:
            results[name + "_conn"] = conn

    second = threading.Thread(target=waiting, args=("second",))
    second.start()
    second.join(10)
    assert "second" in results, "the reserve server never came"
    pid, waited = results["second"]
    assert pid != first and waited >= 0.9  # only after reserve_pool_timeout (1 s)
    assert backends(pg, RES_DB) == sorted([first, pid])
    third = threading.Thread(target=waiting, args=("third",))
    third.start()
    for _ in range(25):  # 2.5 s: well past the reserve timeout, still two servers
        time.sleep(0.1)
        assert len(backends(pg, RES_DB)) == 2
        assert "third" not in results
    holder.close()  # its server goes to the third client after the reset
    third.join(10)
    assert results["third"][0] == first
    assert len(backends(pg, RES_DB)) == 2
    for name in ("second_conn", "third_conn"):
        results[name].close()


def test_session_reset_query_runs_when_the_client_leaves_unless_empty(
    gv: IniPoolerProcess,
) -> None:
    def leave_a_setting() -> int:
        conn = connect(gv, "sess")
        try:
            one(conn, "select set_config('gvkeys.flag', 'left', false)")
            return one(conn, "select pg_backend_pid()")
        finally:
            conn.close()

    def next_client() -> tuple[int, str]:
        conn = connect(gv, "sess")
        try:
            pid = one(conn, "select pg_backend_pid()")
            return pid, one(conn, "select coalesce(current_setting('gvkeys.flag', true), '')")
        finally:
            conn.close()

    configure(gv)  # server_reset_query = DISCARD ALL (PgBouncer's default)
    pid = leave_a_setting()
    assert next_client() == (pid, "")
    configure(gv, server_reset_query="")
    pid = leave_a_setting()
    assert next_client() == (pid, "left")  # no reset: the session carries over, as PgBouncer
    configure(gv, server_reset_query="RESET gvkeys.flag")
    pid = leave_a_setting()
    assert next_client() == (pid, "")


def test_reset_query_always_runs_after_each_transaction_mode_release(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    """A reset query with a visible effect (a sequence) counts the resets."""
    counter = f"select nextval('{SEQ}')"

    def resets_around_three_transactions() -> tuple[int, set[int]]:
        before = checks(pg)
        conn = connect(gv, "tx")
        try:
            pids = {one(conn, "select pg_backend_pid()") for _ in range(3)}
        finally:
            conn.close()
        for _ in range(40):  # the last release's reset runs after the client saw its answer
            if checks(pg) - before >= 3:
                break
            time.sleep(0.05)
        return checks(pg) - before, pids

    configure(gv, server_reset_query=counter, server_reset_query_always="0")
    assert resets_around_three_transactions()[0] == 0  # transaction mode: no reset
    configure(gv, server_reset_query=counter, server_reset_query_always="1")
    count, pids = resets_around_three_transactions()
    assert count == 3 and len(pids) == 1  # one after each transaction, the server kept


def checks(pg: PgCluster) -> int:
    return pg.execute(f"select last_value from {SEQ}", dbname=KEYS_DB)[0][0]


def test_check_query_runs_on_servers_idle_past_the_delay(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    check = f"select nextval('{SEQ}')"
    configure(gv, server_check_query=check, server_check_delay="30")
    conn = connect(gv, "tx")
    try:
        before = checks(pg)
        pids = {one(conn, "select pg_backend_pid()") for _ in range(3)}
        assert checks(pg) == before and len(pids) == 1  # reused within the delay: no check
        configure(gv, server_check_query=check, server_check_delay="0")
        again = {one(conn, "select pg_backend_pid()") for _ in range(3)}
        assert checks(pg) >= before + 3 and again == pids  # checked at every checkout, kept
        configure(gv, server_check_query="select 1/0", server_check_delay="0")
        failing = [one(conn, "select pg_backend_pid()") for _ in range(3)]
        assert len(set(failing)) == 3 and not set(failing) & pids  # a failed check: replaced
    finally:
        conn.close()


def test_a_server_killed_while_idle_is_never_handed_out(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    configure(gv, server_check_delay="0")  # select 1 at every checkout, on top of the EOF watch
    conn = connect(gv, "tx")
    try:
        pid = one(conn, "select pg_backend_pid()")
        pg.execute("select pg_terminate_backend(%s)", [pid])
        for _ in range(50):
            if pid not in backends(pg, KEYS_DB):
                break
            time.sleep(0.05)
        after = [one(conn, "select pg_backend_pid()") for _ in range(3)]
        assert pid not in after and len(set(after)) == 1
    finally:
        conn.close()


def start_hung_reset(gv: IniPoolerProcess, pg: PgCluster) -> int:
    """A session-mode client leaves; its server's reset query (pg_sleep(60)) is running.
    Returns that backend's pid."""
    first = connect(gv, "sess")
    stuck = int(one(first, "select pg_backend_pid()"))
    first.close()
    for _ in range(50):
        rows = pg.execute(
            "select query from pg_stat_activity where pid = %s", [stuck], dbname=KEYS_DB
        )
        if rows and "pg_sleep" in rows[0][0]:
            return stuck
        time.sleep(0.05)
    pytest.fail("the reset query never started")


def wait_gone(pg: PgCluster, pid: int, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        if pid not in backends(pg, KEYS_DB):
            return
        time.sleep(0.1)
    pytest.fail(f"backend {pid} still runs the abandoned reset query after {seconds} s")


def test_a_reset_query_that_hangs_loses_its_server_not_the_pool_slot(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    """Session mode, pool_size 1, a reset query that would run for a minute: after
    --server-reset-timeout the server is closed and its query cancelled, so the next client
    gets a new server in seconds instead of waiting for (or never getting) the slot."""
    configure(gv, server_reset_query="select pg_sleep(60)")
    try:
        stuck = start_hung_reset(gv, pg)
        started = time.monotonic()
        second = connect(gv, "sess")
        try:
            fresh = one(second, "select pg_backend_pid()")
        finally:
            second.close()  # its own reset hangs too; the timeout frees that one as well
        waited = time.monotonic() - started
        assert fresh != stuck
        assert waited < 30, f"the next client waited {waited:.1f} s for the pool slot"
        wait_gone(pg, stuck, 10)  # cancelled, then gone: the backend does not sleep on
        assert "did not answer its reset or check query" in gv.log_text()
    finally:
        configure(gv)
        for _ in range(100):  # the second client's server: closed by the timeout as well
            if not pg.execute(
                "select 1 from pg_stat_activity where query like 'select pg_sleep(60)%%' "
                "and state = 'active'",
                dbname=KEYS_DB,
            ):
                break
            time.sleep(0.1)


def test_a_hung_reset_in_a_pool_that_is_dropped_is_still_cancelled(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    """The database is removed from pgbouncer.ini while its server's reset hangs: the pool
    is gone from the janitor's view, and the server is still closed after the timeout."""
    configure(gv, server_reset_query="select pg_sleep(60)")
    try:
        stuck = start_hung_reset(gv, pg)
        configure(gv, without=("sess",), server_reset_query="select pg_sleep(60)")
        wait_gone(pg, stuck, RESET_TIMEOUT + 10)
    finally:
        configure(gv)
