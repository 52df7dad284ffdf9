"""`auth_type = hba` (auth_hba_file) and process-wide max_client_conn, against real Postgres:
one Greenvisor for the module, real clients (psycopg2) and raw sockets from another
loopback address (127.0.0.2) to tell the address rules apart. The HBA file is rewritten and
SIGHUPed where a test needs other rules."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import PASSWORDS
from tests.support.net import WireClient, free_port, parse_error_fields
from tests.support.pg import PgCluster
from tests.support.pgbouncer import IniPoolerProcess

pytestmark = pytest.mark.integration

HOST, OTHER = "127.0.0.1", "127.0.0.2"
APP1, APP2 = "app1user", "app2user"
MAX_CLIENTS = 3
RULES = f"""\
# TYPE    DATABASE  USER      ADDRESS                  METHOD
hostssl   all       all       all                      trust
host      all       {APP2}    127.0.0.1/32             reject
host      all       {APP1}    127.0.0.1/32             scram-sha-256
host      db1,pgbouncer {APP1} {OTHER} 255.255.255.255 md5
host      sameuser  all       127.0.0.2/32             password
host      db2       {APP2}    127.0.0.2/32             trust
"""


@pytest.fixture(scope="module")
def gv(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[IniPoolerProcess]:
    workdir = tmp_path_factory.mktemp("gv-hba")
    port = free_port()
    (workdir / "userlist.txt").write_text(
        "".join(f'"{user}" "{PASSWORDS[user]}"\n' for user in (APP1, APP2))
    )
    (workdir / "hba.conf").write_text(RULES)
    upstream = f"host={HOST} port={pg.port}"
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"db1 = {upstream} dbname=app1\n"
        f"db2 = {upstream} dbname=app2\n"
        f"{APP2} = {upstream} dbname=app2\n"  # sameuser
        "\n[pgbouncer]\n"
        f"listen_addr = {HOST}\nlisten_port = {port}\n"
        "auth_type = hba\nauth_hba_file = hba.conf\nauth_file = userlist.txt\n"
        f"admin_users = {APP1}\nmax_client_conn = {MAX_CLIENTS}\n"
        f"logfile = {workdir / 'gv.log'}\n"
    )
    process = IniPoolerProcess(workdir, ini, port, sqlite_template=sqlite_template)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def rules(gv: IniPoolerProcess, text: str) -> None:
    (gv.workdir / "hba.conf").write_text(text)
    gv.reload()


def connect(gv: IniPoolerProcess, user: str, database: str) -> Any:
    conn = psycopg2.connect(
        host=HOST, port=gv.listen_port, user=user, password=PASSWORDS[user], dbname=database,
        connect_timeout=10,
    )  # fmt: skip
    conn.autocommit = True
    return conn


def connect_when_room(gv: IniPoolerProcess, user: str, database: str) -> Any:
    """connect(), retried for up to 5 s while a closed client is still counted."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return connect(gv, user, database)
        except psycopg2.OperationalError as exc:
            if "max_client_conn" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def first_answer(gv: IniPoolerProcess, source: str, user: str, database: str) -> Any:
    """The authentication request code the pooler opens with, or the error fields."""
    with WireClient(HOST, gv.listen_port, source=source) as client:
        client.send_startup({"user": user, "database": database})
        kind, body = client.read_message()
        if kind == b"E":
            return parse_error_fields(body)
        assert kind == b"R"
        return struct.unpack("!i", body[:4])[0]


def login(gv: IniPoolerProcess, source: str, user: str, database: str) -> dict[str, str]:
    with WireClient(HOST, gv.listen_port, source=source) as client:
        return client.login(user, PASSWORDS[user], database)


def test_the_first_matching_line_picks_the_method_by_address(gv: IniPoolerProcess) -> None:
    assert first_answer(gv, HOST, APP1, "db1") == 10  # SASL: scram-sha-256 line
    with connect(gv, APP1, "db1") as conn, conn.cursor() as cur:  # psycopg2 does SCRAM
        cur.execute("select current_user, current_database()")
        assert cur.fetchone() == (APP1, "app1")
    conn.close()
    assert first_answer(gv, OTHER, APP1, "db1") == 5  # MD5: addr + mask line
    assert login(gv, OTHER, APP1, "db1") == {}
    assert first_answer(gv, OTHER, APP2, APP2) == 3  # sameuser: password = cleartext
    assert login(gv, OTHER, APP2, APP2) == {}
    assert first_answer(gv, OTHER, APP2, "db2") == 0  # trust: AuthenticationOk at once


def test_reject_and_no_line_refuse_with_postgres_words(gv: IniPoolerProcess) -> None:
    error = first_answer(gv, HOST, APP2, "db2")
    assert (error["C"], error["M"]) == (
        "28000",
        f'pg_hba.conf rejects connection for host "{HOST}", user "{APP2}", database "db2", '
        "no encryption",
    )
    error = first_answer(gv, OTHER, APP1, "db2")  # md5 line is for db1 only
    assert (error["C"], error["M"]) == (
        "28000",
        f'no pg_hba.conf entry for host "{OTHER}", user "{APP1}", database "db2", no encryption',
    )
    with pytest.raises(psycopg2.OperationalError, match="pg_hba.conf rejects connection"):
        connect(gv, APP2, "db2")
    # a wrong password on an allowed line is still a password failure
    with WireClient(HOST, gv.listen_port, source=OTHER) as client:
        error = client.login(APP1, "wrong", "db1")
    assert error["C"] == "28P01"


def test_sighup_rereads_the_hba_file_and_a_bad_file_keeps_the_old_rules(
    gv: IniPoolerProcess,
) -> None:
    try:
        rules(gv, f"host all all 127.0.0.1/32 trust\n{RULES}")
        assert first_answer(gv, HOST, APP2, "db2") == 0
        rules(gv, "host all all 127.0.0.1/32 cert\n")  # refused: the running rules stay
        assert first_answer(gv, HOST, APP2, "db2") == 0
        assert "hba.conf:1: method cert is not supported" in gv.log_text()
    finally:
        rules(gv, RULES)
    assert first_answer(gv, HOST, APP2, "db2")["C"] == "28000"


def test_max_client_conn_counts_every_database_and_the_console(gv: IniPoolerProcess) -> None:
    with ExitStack() as stack:
        first = connect(gv, APP1, "db1")
        stack.callback(first.close)
        for _ in range(MAX_CLIENTS - 1):  # another database: the same process-wide count
            held = WireClient(HOST, gv.listen_port, source=OTHER)
            stack.callback(held.close)
            assert held.login(APP2, PASSWORDS[APP2], "db2") == {}
        for database in ("db1", "db2", "pgbouncer"):
            with pytest.raises(psycopg2.OperationalError) as info:
                connect(gv, APP1, database)
            assert "no more connections allowed (max_client_conn)" in str(info.value)
        error = first_answer(gv, OTHER, APP2, "db2")
        assert (error["C"], error["M"]) == (
            "53300",
            "no more connections allowed (max_client_conn)",
        )
        first.close()
        console = connect_when_room(gv, APP1, "pgbouncer")  # a freed slot; the console takes it
        stack.callback(console.close)
        with pytest.raises(psycopg2.OperationalError, match=r"\(max_client_conn\)"):
            connect(gv, APP1, "db1")
    with connect_when_room(gv, APP1, "db1") as conn:  # everyone left: room again
        assert conn.closed == 0
    conn.close()
