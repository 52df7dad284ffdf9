"""`runpooler --pgbouncer-ini`: auth_file formats and auth types, SCRAM pass-through, statement
mode, SIGHUP reload, the console's permissions and commands, metadata-DB tenants on the same
port, start-up errors. One Greenvisor for the module (real Postgres, real clients)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from pooler.auth.md5 import md5_secret
from pooler.auth.scram import make_secret
from tests.conftest import PASSWORDS
from tests.integration.test_pgbouncer_parity import console
from tests.support.certs import TestCA
from tests.support.net import (
    WireClient,
    free_port,
    login_error,
    parse_error_fields,
    port_open,
    tcp_state,
)
from tests.support.pg import PgCluster
from tests.support.pgbouncer import IniPoolerProcess
from tests.support.pooler import REPO_ROOT, both_modes, manage_env, tenant_doc

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
ADMIN, ADMIN_PW = "gv_admin", "gvAdminPw1"
STATS, STATS_PW = "gv_stats", "gvStatsPw1"
SCRAM_USER, SCRAM_PW = "gv_scram", "gvScramPw1"  # only a SCRAM verifier, here and in Postgres
REFUSAL = "transaction blocks not allowed in statement pooling mode"
BAN_FAILURES = 25


def userlist(scram_secret: str) -> str:
    return (
        f'"app1user" "{PASSWORDS["app1user"]}"\n'
        f'"app2user" "{PASSWORDS["app2user"]}"\n'
        f'"md5user" "{md5_secret("md5user", PASSWORDS["md5user"])}"\n'
        f'"{SCRAM_USER}" "{scram_secret}"\n'
        f'"{ADMIN}" "{ADMIN_PW}"\n'
        f'"{STATS}" "{make_secret(STATS_PW).to_string()}"\n'
        '"nobody" ""\n'
        f'"postgres" "{PASSWORDS["postgres"]}"\n'  # the auth_user of database aq
    )


def ini_text(pg_port: int, port: int, workdir: Path, **overrides: str) -> str:
    upstream = f"host={HOST} port={pg_port}"
    settings = {
        "listen_addr": HOST,
        "listen_port": str(port),
        "auth_type": "md5",
        "auth_file": "userlist.txt",
        "admin_users": ADMIN,
        "stats_users": STATS,
        "pool_mode": "transaction",
        "default_pool_size": "3",
        "logfile": str(workdir / "gv.log"),
        "pidfile": str(workdir / "gv.pid"),
        "greenvisor_unknown_key": "1",
    }
    settings.update(overrides)
    extra = settings.pop("extra_databases", "")
    return (
        "[databases]\n"
        f"app1 = {upstream} dbname=app1\n"
        f"app1_stmt = {upstream} dbname=app1 pool_mode=statement pool_size=1\n"
        f"forced = {upstream} dbname=app1 user=app1user\n"
        f"{extra}"
        f"* = {upstream}\n"
        "\n[pgbouncer]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
    )


@pytest.fixture(scope="module")
def scram_secret(pg: PgCluster) -> str:
    secret = make_secret(SCRAM_PW).to_string()
    pg.create_role(SCRAM_USER, secret)  # Postgres stores a verifier given as the password
    pg.grant_connect("app1", SCRAM_USER)
    return secret


@pytest.fixture(scope="module")
def gv(
    pg: PgCluster,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    scram_secret: str,
) -> Iterator[IniPoolerProcess]:
    workdir = tmp_path_factory.mktemp("gv-ini")
    port = free_port()
    (workdir / "userlist.txt").write_text(userlist(scram_secret))
    ini = workdir / "pgbouncer.ini"
    ini.write_text(ini_text(pg.port, port, workdir))
    tenants = {
        "tenants": [
            tenant_doc("t1", "app1", pg.port, both_modes("app1user", PASSWORDS["app1user"]))
        ]
    }
    # More failures than the other tests make per database before a ban (see the last test).
    args = ["--ban-failures", str(BAN_FAILURES), "--auth-failure-delay", "0.05"]
    process = IniPoolerProcess(
        workdir, ini, port, tenants, sqlite_template=sqlite_template, extra_args=args
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def connect(gv: IniPoolerProcess, user: str, password: str, database: str) -> Any:
    conn = psycopg2.connect(
        host=HOST, port=gv.listen_port, user=user, password=password, dbname=database,
        connect_timeout=10,
    )  # fmt: skip
    conn.autocommit = True
    return conn


def one(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def whoami(gv: IniPoolerProcess, user: str, password: str, database: str = "app1") -> Any:
    conn = connect(gv, user, password, database)
    try:
        return one(conn, "select current_user, current_database()")
    finally:
        conn.close()


def refused(gv: IniPoolerProcess, user: str, password: str, database: str = "app1") -> str:
    return login_error(HOST, gv.listen_port, user, password, database).get("C", "")


# -- start-up -----------------------------------------------------------------------------------


def test_start_up_writes_the_pidfile_and_logfile_and_warns_unknown_keys(
    gv: IniPoolerProcess,
) -> None:
    assert gv.proc is not None
    assert (gv.ini.parent / "gv.pid").read_text().strip() == str(gv.proc.pid)
    deadline = time.monotonic() + 5
    while "serving pgbouncer.ini" not in (gv.ini.parent / "gv.log").read_text():
        assert time.monotonic() < deadline, "the logfile never showed the start-up line"
        time.sleep(0.05)
    log = (gv.ini.parent / "gv.log").read_text()
    assert "greenvisor_unknown_key: unknown key" in log
    assert "not applied" not in log  # every other key of this file is applied


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"default_pool_size": "lots"}, "pgbouncer.ini:{line}: default_pool_size:"),
        ({"auth_type": "cert"}, "pgbouncer.ini:{line}: auth_type: 'cert': auth_type cert is not"),
        ({"auth_type": "hba"}, "pgbouncer.ini: auth_hba_file: not set; auth_type hba needs"),
        ({"auth_file": "missing.txt"}, "missing.txt: cannot read the auth_file"),
    ],
)
def test_an_unusable_file_stops_start_up_naming_file_line_and_key(
    tmp_path: Path, sqlite_template: Path, override: dict[str, str], expected: str
) -> None:
    (tmp_path / "userlist.txt").write_text(userlist(make_secret("x").to_string()))
    ini = tmp_path / "pgbouncer.ini"
    text = ini_text(5432, free_port(), tmp_path, **override)
    ini.write_text(text)
    key = next(iter(override))
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(key))
    db = tmp_path / "meta.sqlite3"
    db.write_bytes(sqlite_template.read_bytes())
    out = subprocess.run(
        [sys.executable, "manage.py", "runpooler", "--no-migrate", "--pgbouncer-ini", str(ini),
         "--http-port", str(free_port())],
        cwd=REPO_ROOT, env=manage_env(f"sqlite:///{db}"), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected.format(line=line) in out.stderr
    assert PASSWORDS["app1user"] not in out.stderr


# -- auth_file and auth_type ------------------------------------------------------------------


def test_every_auth_file_format_logs_in_and_upstream(gv: IniPoolerProcess) -> None:
    assert whoami(gv, "app1user", PASSWORDS["app1user"]) == ("app1user", "app1")  # plain
    assert whoami(gv, "md5user", PASSWORDS["md5user"]) == ("md5user", "app1")  # md5 secret
    # SCRAM verifier: the client logs in with SCRAM; Greenvisor logs in upstream as that
    # user with the ClientKey recovered from the client's proof (no plaintext anywhere).
    assert whoami(gv, SCRAM_USER, SCRAM_PW) == (SCRAM_USER, "app1")
    files = (gv.ini.parent / "userlist.txt").read_text() + gv.ini.read_text()
    assert SCRAM_PW not in files


def test_wrong_unknown_and_empty_passwords_are_refused(gv: IniPoolerProcess) -> None:
    assert refused(gv, "app1user", "wrong") == "28P01"
    assert refused(gv, SCRAM_USER, "wrong") == "28P01"
    assert refused(gv, "nosuchuser", "whatever") == "28P01"
    assert refused(gv, "nobody", "") == "28P01"
    error = login_error(HOST, gv.listen_port, "app1user", PASSWORDS["app1user"], "nosuchdb_x")
    # The * entry sends any other database upstream, where it does not exist.
    assert error["C"] == "3D000"


def test_the_forced_user_pool_and_the_autodb_entry(gv: IniPoolerProcess) -> None:
    assert whoami(gv, "md5user", PASSWORDS["md5user"], "forced") == ("app1user", "app1")
    assert whoami(gv, "app2user", PASSWORDS["app2user"], "app2") == ("app2user", "app2")


def _rewrite(gv: IniPoolerProcess, pg: PgCluster, **overrides: str) -> None:
    gv.ini.write_text(ini_text(pg.port, gv.listen_port, gv.ini.parent, **overrides))
    gv.reload()


def test_each_auth_type_after_a_reload(gv: IniPoolerProcess, pg: PgCluster) -> None:
    try:
        _rewrite(gv, pg, auth_type="scram-sha-256")
        assert whoami(gv, "app1user", PASSWORDS["app1user"]) == ("app1user", "app1")
        assert whoami(gv, SCRAM_USER, SCRAM_PW)[0] == SCRAM_USER
        assert refused(gv, "md5user", PASSWORDS["md5user"]) == "28P01"  # md5 cannot do SCRAM
        _rewrite(gv, pg, auth_type="plain")
        for user, password in [("app1user", PASSWORDS["app1user"]), ("md5user",
                               PASSWORDS["md5user"]), (SCRAM_USER, SCRAM_PW)]:  # fmt: skip
            with WireClient(HOST, gv.listen_port) as client:
                assert client.login(user, password, "app1") == {}, user
        assert refused(gv, "app1user", "wrong") == "28P01"
        _rewrite(gv, pg, auth_type="trust")
        assert whoami(gv, "app1user", "anything") == ("app1user", "app1")
        assert refused(gv, "nosuchuser", "x") == "28P01"
    finally:
        _rewrite(gv, pg)
    assert refused(gv, "app1user", "anything") == "28P01"


def test_tcp_defer_accept_after_a_reload(gv: IniPoolerProcess, pg: PgCluster) -> None:
    """tcp_defer_accept = 0 and a reload: the next silent connection is accepted at once;
    back to the default (1): held by the kernel until the client speaks."""

    def silent_state() -> str | None:
        with socket.create_connection((HOST, gv.listen_port), 10) as sock:
            time.sleep(0.3)
            return tcp_state(gv.listen_port, sock.getsockname()[1])

    assert silent_state() == "03"  # SYN_RECV: not accepted yet
    try:
        _rewrite(gv, pg, tcp_defer_accept="0")
        assert silent_state() == "01"  # ESTABLISHED: accepted
    finally:
        _rewrite(gv, pg)
    assert silent_state() == "03"


def test_auth_query_for_users_missing_from_the_auth_file(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    pg.create_role("gv_aq", make_secret("gvAqPw1").to_string())
    pg.grant_connect("app2", "gv_aq")
    aq = f"aq = host={HOST} port={pg.port} dbname=app2 auth_user=postgres\n"
    try:
        _rewrite(gv, pg, extra_databases=aq)
        # The SCRAM verifier comes from pg_authid; the upstream login is a pass-through.
        assert whoami(gv, "gv_aq", "gvAqPw1", "aq") == ("gv_aq", "app2")
        assert refused(gv, "gv_aq", "wrong", "aq") == "28P01"
        assert refused(gv, "gv_aq", "gvAqPw1", "app1") == "28P01"  # app1 has no auth_user
        assert refused(gv, "no_such_role", "x", "aq") == "28P01"
        conn = connect(gv, "gv_aq", "gvAqPw1", "aq")
        try:
            gv.reload()  # the auth_query user's pool survives a reload
            assert one(conn, "select current_user")[0] == "gv_aq"
        finally:
            conn.close()
    finally:
        _rewrite(gv, pg)


# -- statement mode ---------------------------------------------------------------------------


def test_statement_mode_shares_one_server_between_statements(gv: IniPoolerProcess) -> None:
    first = connect(gv, "app1user", PASSWORDS["app1user"], "app1_stmt")
    second = connect(gv, "app1user", PASSWORDS["app1user"], "app1_stmt")
    try:
        pids = [one(c, "select pg_backend_pid()")[0] for c in (first, second, first, second)]
        assert len(set(pids)) == 1  # pool_size=1: the server went back after each statement
        assert one(first, "begin; commit; select 42")[0] == 42  # one Query: one statement
    finally:
        first.close()
        second.close()


def test_statement_mode_refuses_transaction_blocks(gv: IniPoolerProcess) -> None:
    with WireClient(HOST, gv.listen_port) as client:
        assert client.login("app1user", PASSWORDS["app1user"], "app1_stmt") == {}
        client.send(b"Q", b"BEGIN\0")
        kinds = []
        while True:
            kind, body = client.read_message()
            kinds.append(kind)
            if kind == b"E":
                fields = parse_error_fields(body)
                break
        assert kinds == [b"C", b"E"]  # BEGIN's CommandComplete, never its ReadyForQuery
        assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", REFUSAL)
    conn = psycopg2.connect(
        host=HOST, port=gv.listen_port, user="app1user", password=PASSWORDS["app1user"],
        dbname="app1_stmt", connect_timeout=10,
    )  # fmt: skip
    try:
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("select 1")  # psycopg2 opens a transaction first: the client is cut
    finally:
        conn.close()
    # The server inside that transaction was closed; the pool serves the next client.
    assert whoami(gv, "app1user", PASSWORDS["app1user"], "app1_stmt") == ("app1user", "app1")


# -- reload -----------------------------------------------------------------------------------


def test_sighup_applies_changes_without_dropping_clients(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    conn = connect(gv, "app1user", PASSWORDS["app1user"], "app1")
    try:
        pid = one(conn, "select pg_backend_pid()")[0]
        new_db = f"app2again = host={HOST} port={pg.port} dbname=app2\n"
        _rewrite(gv, pg, extra_databases=new_db, default_pool_size="4")
        assert one(conn, "select 1")[0] == 1  # the connected client carries on
        assert whoami(gv, "app2user", PASSWORDS["app2user"], "app2again") == ("app2user", "app2")
        reply = console(gv.listen_port, ADMIN, ADMIN_PW, ["SHOW DATABASES"])["SHOW DATABASES"]
        rows = {row[0]: row for row in reply.rows()}
        assert "app2again" in rows and rows["app1"][5] == "4"
        # A file that does not load: logged, the running configuration stays.
        text = gv.ini.read_text().replace("default_pool_size = 4", "default_pool_size = -1")
        gv.ini.write_text(text)
        gv.reload()
        assert "reload failed" in gv.log_text() and "default_pool_size" in gv.log_text()
        assert whoami(gv, "app2user", PASSWORDS["app2user"], "app2again")[0] == "app2user"
        assert one(conn, "select pg_backend_pid()")[0] == pid  # same server all along
    finally:
        conn.close()
        _rewrite(gv, pg)


def test_query_timeout_and_min_pool_size_after_a_reload(
    gv: IniPoolerProcess, pg: PgCluster
) -> None:
    minpool = f"minpool = host={HOST} port={pg.port} dbname=app1 min_pool_size=2\n"
    try:
        _rewrite(gv, pg, query_timeout="1", extra_databases=minpool)
        conn = connect(gv, "app1user", PASSWORDS["app1user"], "app1")
        try:
            with pytest.raises(psycopg2.OperationalError):
                one(conn, "select pg_sleep(5)")
        finally:
            conn.close()
        assert "08P01 query_timeout: no answer within 1 s" in gv.log_text()
        with WireClient(HOST, gv.listen_port) as client:
            assert client.login("app1user", PASSWORDS["app1user"], "app1") == {}
            client.send(b"Q", b"select pg_sleep(5)\0")
            kind, body = client.read_message()
            while kind != b"E":
                kind, body = client.read_message()
            fields = parse_error_fields(body)
            assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
            assert fields["M"].startswith("query_timeout: no answer within 1 s")
        assert whoami(gv, "app1user", PASSWORDS["app1user"], "app1")[0] == "app1user"
        whoami(gv, "app1user", PASSWORDS["app1user"], "minpool")
        deadline = time.monotonic() + 10
        while True:
            reply = console(gv.listen_port, ADMIN, ADMIN_PW, ["SHOW POOLS"])["SHOW POOLS"]
            row = next(r for r in reply.rows() if r[0] == "minpool")
            if int(row[6] or 0) + int(row[9] or 0) >= 2:  # sv_active + sv_idle
                break
            assert time.monotonic() < deadline, row
            time.sleep(0.2)
    finally:
        _rewrite(gv, pg)


# -- the admin console ------------------------------------------------------------------------


def test_console_logins_admin_stats_and_everyone_else(gv: IniPoolerProcess) -> None:
    assert console(gv.listen_port, ADMIN, ADMIN_PW, ["SHOW VERSION"])["SHOW VERSION"].rows()
    error = login_error(HOST, gv.listen_port, "app1user", PASSWORDS["app1user"], "pgbouncer")
    assert error["C"] == "28000" and "admin_users" in error["M"]
    assert refused(gv, ADMIN, "wrong", "pgbouncer") == "28P01"
    replies = console(gv.listen_port, STATS, STATS_PW, ["SHOW POOLS", "PAUSE", "KILL app1"])
    assert replies["SHOW POOLS"].rows()
    assert replies["PAUSE"].error()["M"] == "admin access needed"
    assert replies["KILL app1"].error()["M"] == "admin access needed"


def test_psql_on_the_console(gv: IniPoolerProcess, pg: PgCluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = ADMIN_PW
    psql = [str(pg.bindir / "psql"), "-X", "-At", "-h", HOST, "-p", str(gv.listen_port)]
    out = subprocess.run(
        [*psql, "-U", ADMIN, "-d", "pgbouncer", "-c", "SHOW VERSION", "-c", "SHOW USERS"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("PgBouncer 1.18.0") and "gv_scram|" in out.stdout


def test_malformed_console_commands_get_errors(gv: IniPoolerProcess) -> None:
    bad = ["SHOW POOLS; SHOW STATS", "", "PAUSE nosuchdb", "SET a = 'b'", "\x01\x02", "é" * 300]
    replies = console(gv.listen_port, ADMIN, ADMIN_PW, [*bad, "SHOW LISTS"])
    for sql in bad:
        assert replies[sql].error()["S"] == "ERROR", sql
    assert replies["SHOW LISTS"].rows()
    with WireClient(HOST, gv.listen_port) as client:  # the extended protocol is refused
        assert client.login(ADMIN, ADMIN_PW, "pgbouncer") == {}
        client.send(b"P", b"\0select 1\0\0\0")
        kind, body = client.read_message()
        assert kind == b"E" and parse_error_fields(body)["C"] == "08P01"
    assert gv.alive()


def _query_in_thread(conn: Any, sql: str) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(one(conn, sql))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_pause_resume_reconnect_kill_disable(gv: IniPoolerProcess) -> None:
    conn = connect(gv, "app1user", PASSWORDS["app1user"], "app1")
    try:
        pid = one(conn, "select pg_backend_pid()")[0]
        assert console(gv.listen_port, ADMIN, ADMIN_PW, ["PAUSE app1"])["PAUSE app1"].messages
        thread, out = _query_in_thread(conn, "select 7")
        thread.join(0.7)
        assert thread.is_alive() and not out  # held while paused
        reply = console(gv.listen_port, ADMIN, ADMIN_PW, ["RESUME app1"])["RESUME app1"]
        assert reply.messages == [(b"C", b"RESUME\0")]
        thread.join(10)
        assert out == [(7,)]
        assert one(conn, "select pg_backend_pid()")[0] != pid  # PAUSE closed the old server
        pid = one(conn, "select pg_backend_pid()")[0]
        console(gv.listen_port, ADMIN, ADMIN_PW, ["RECONNECT app1", "WAIT_CLOSE app1"])
        assert one(conn, "select pg_backend_pid()")[0] != pid
        replies = console(gv.listen_port, ADMIN, ADMIN_PW, ["DISABLE app1"])
        assert replies["DISABLE app1"].messages == [(b"C", b"DISABLE\0")]
        assert refused(gv, "app1user", PASSWORDS["app1user"]) == "55000"
        console(gv.listen_port, ADMIN, ADMIN_PW, ["ENABLE app1", "KILL app1"])
        with pytest.raises(psycopg2.OperationalError):
            one(conn, "select 1")  # KILL dropped the client
    finally:
        conn.close()
    later = connect(gv, "app1user", PASSWORDS["app1user"], "app1")  # paused after KILL
    try:
        thread, out = _query_in_thread(later, "select 8")
        thread.join(0.5)
        assert not out
        console(gv.listen_port, ADMIN, ADMIN_PW, ["RESUME app1"])
        thread.join(10)
        assert out == [(8,)]
    finally:
        later.close()


def test_console_reload_and_show_config(gv: IniPoolerProcess) -> None:
    replies = console(gv.listen_port, ADMIN, ADMIN_PW, ["RELOAD", "SHOW CONFIG", "SHOW USERS"])
    assert replies["RELOAD"].messages == [(b"C", b"RELOAD\0")]
    config = {row[0]: row[1] for row in replies["SHOW CONFIG"].rows()}
    assert config["pool_mode"] == "transaction" and config["default_pool_size"] == "3"
    assert {row[0] for row in replies["SHOW USERS"].rows()} >= {"app1user", SCRAM_USER}


# -- metadata-DB tenants on the same port --------------------------------------------------------


def test_metadata_db_tenants_and_ini_databases_in_one_process(gv: IniPoolerProcess) -> None:
    assert whoami(gv, "app1user.t1", PASSWORDS["app1user"], "app1") == ("app1user", "app1")
    assert whoami(gv, "app1user", PASSWORDS["app1user"], "app1") == ("app1user", "app1")
    reply = console(gv.listen_port, ADMIN, ADMIN_PW, ["SHOW POOLS"])["SHOW POOLS"]
    databases = {row[0] for row in reply.rows()}
    assert {"t1", "app1"} <= databases
    # An ini database is never reached through the tenant syntax.
    assert refused(gv, "app1user.app1", PASSWORDS["app1user"], "app1") == "28P01"


# -- SHUTDOWN ---------------------------------------------------------------------------------


def test_shutdown_wait_for_clients(
    pg: PgCluster, tmp_path: Path, sqlite_template: Path, scram_secret: str
) -> None:
    (tmp_path / "userlist.txt").write_text(userlist(scram_secret))
    port = free_port()
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(ini_text(pg.port, port, tmp_path))
    with IniPoolerProcess(tmp_path, ini, port, sqlite_template=sqlite_template) as process:
        conn = connect(process, "app1user", PASSWORDS["app1user"], "app1")
        try:
            reply = console(port, ADMIN, ADMIN_PW, ["SHUTDOWN WAIT_FOR_CLIENTS"])
            assert reply["SHUTDOWN WAIT_FOR_CLIENTS"].messages == [(b"C", b"SHUTDOWN\0")]
            assert not port_open(HOST, port)  # no new clients
            assert one(conn, "select 5")[0] == 5  # the connected client is still served
            time.sleep(0.3)
            assert process.alive()
        finally:
            conn.close()
        deadline = time.monotonic() + 15
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process.alive()
        assert process.stop() == 0
    assert not (tmp_path / "gv.pid").exists()


def test_tls_clients_and_console(
    pg: PgCluster, tmp_path: Path, sqlite_template: Path, scram_secret: str
) -> None:
    ca = TestCA(tmp_path / "ca")
    cert = ca.issue("greenvisor", ("localhost",))
    (tmp_path / "userlist.txt").write_text(userlist(scram_secret))
    port = free_port()
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(ini_text(pg.port, port, tmp_path))
    args = ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    base = [str(pg.bindir / "psql"), "-X", "-At", "-h", HOST, "-p", str(port)]
    with IniPoolerProcess(tmp_path, ini, port, sqlite_template=sqlite_template, extra_args=args):
        for user, password, database, sql, expected in [
            ("app1user", PASSWORDS["app1user"], "app1", "select current_user", "app1user"),
            (ADMIN, ADMIN_PW, "pgbouncer", "SHOW VERSION", "PgBouncer 1.18.0"),
        ]:
            env["PGPASSWORD"] = password
            env["PGSSLMODE"] = "require"
            out = subprocess.run(
                [*base, "-U", user, "-d", database, "-c", sql, "-c", sql],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith(expected), out.stdout


def test_failed_logins_ban_the_client_per_database(gv: IniPoolerProcess) -> None:
    """Last in the module: database app2 (the * entry) stays banned for 127.0.0.1."""
    codes = [refused(gv, "app2user", "wrong", "app2") for _ in range(BAN_FAILURES + 2)]
    assert codes[0] == "28P01" and codes[-1] == "28000"  # --ban-failures reached
    error = login_error(HOST, gv.listen_port, "app2user", PASSWORDS["app2user"], "app2")
    assert "too many failed logins" in error["M"]  # even the right password, for now
    assert whoami(gv, "app1user", PASSWORDS["app1user"], "app1")[0] == "app1user"
