"""PgBouncer parity: Debian's real PgBouncer and Greenvisor (``runpooler --pgbouncer-ini``),
both from the same pgbouncer.ini and userlist.txt written here (only ``listen_port``
differs, so both can run at once), against the shared ``pg`` cluster.

PgBouncer's half proves that what pooler.admin and pooler.pgbouncer declare is what
PgBouncer does: each SHOW's RowDescription byte for byte, SHOW CONFIG (keys, defaults,
values) for the same file, the console's error messages, and that every auth_file format
our code writes is one PgBouncer accepts. Greenvisor's half runs the very same client
scenarios (psql, psycopg2, pgbench in each pool mode) and console probes against the
running Greenvisor and compares what each observed.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from pooler.admin import (
    COLUMNS,
    LISTS,
    AdminConsole,
    ConfigItem,
    DatabaseRow,
    PoolRow,
    SocketRow,
    StatsRow,
    UserRow,
)
from pooler.auth.md5 import md5_secret
from pooler.auth.scram import make_secret
from pooler.pgbouncer.authfile import MD5, PLAIN, SCRAM, load_auth_file
from pooler.pgbouncer.ini import load
from tests.conftest import PASSWORDS
from tests.support.net import WireClient, free_port, parse_error_fields, tcp_state, wait_port
from tests.support.pg import PgCluster
from tests.support.pgbouncer import IniPoolerProcess

pytestmark = pytest.mark.integration

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
HOST = "127.0.0.1"
ADMIN, ADMIN_PASSWORD = "pgb_admin", "adminPw4tests"
STATS, STATS_PASSWORD = "pgb_stats", "statsPw4tests"
#: Database name -> its pool mode in the ini below.
MODES = {"app1": "session", "app1_tx": "transaction", "app1_stmt": "statement"}


def write_files(directory: Path, pg_port: int, listen_port: int) -> tuple[Path, Path]:
    """pgbouncer.ini and userlist.txt: a plain, an md5 and a SCRAM entry, three pool modes."""
    userlist = directory / "userlist.txt"
    userlist.write_text(
        "; written by tests/integration/test_pgbouncer_parity.py\n"
        f'"app1user" "{PASSWORDS["app1user"]}"\n'
        f'"md5user" "{md5_secret("md5user", PASSWORDS["md5user"])}"\n'
        f'"{ADMIN}" "{md5_secret(ADMIN, ADMIN_PASSWORD)}"\n'
        f'"{STATS}" "{make_secret(STATS_PASSWORD).to_string()}"\n'
    )
    upstream = f"host={HOST} port={pg_port} dbname=app1"
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"app1 = {upstream}\n"
        f"app1_tx = {upstream} pool_mode=transaction\n"
        f"app1_stmt = {upstream} user=app1user pool_mode=statement\n"
        "\n[pgbouncer]\n"
        f"listen_addr = {HOST}\n"
        f"listen_port = {listen_port}\n"
        "unix_socket_dir =\n"
        "auth_type = md5\n"
        f"auth_file = {userlist}\n"
        f"admin_users = {ADMIN}\n"
        f"stats_users = {STATS}\n"
        "pool_mode = session\n"
        "default_pool_size = 4\n"
        "max_client_conn = 50\n"
        "server_lifetime = 1800.5\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    return ini, userlist


class PgBouncerProcess:
    """/usr/sbin/pgbouncer on a free port (as the ``postgres`` OS user when we are root)."""

    def __init__(self, pg_port: int) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="greenvisor-pgbouncer-"))
        self.ini, self.userlist = write_files(self.dir, pg_port, self.port)
        self.log_path = self.dir / "pgbouncer.log"
        self.os_user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.os_user is not None:
            for path in (self.dir, self.ini, self.userlist):
                os.chown(path, self.os_user.pw_uid, self.os_user.pw_gid)
            kwargs.update(user=self.os_user.pw_uid, group=self.os_user.pw_gid, extra_groups=[])
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [PGBOUNCER, str(self.ini)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.dir, **kwargs,
            )  # fmt: skip
        try:
            wait_port(HOST, self.port, timeout=15)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"PgBouncer did not start:\n{self.log_tail()}") from None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="module")
def pgbouncer(pg: PgCluster) -> Iterator[PgBouncerProcess]:
    if not Path(PGBOUNCER).is_file():
        pytest.skip(f"PgBouncer is not installed ({PGBOUNCER})")
    process = PgBouncerProcess(pg.port)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def greenvisor(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[IniPoolerProcess]:
    """Greenvisor from the same two files (written by the same function, another port)."""
    workdir = tmp_path_factory.mktemp("greenvisor-ini")
    port = free_port()
    ini, _userlist = write_files(workdir, pg.port, port)
    process = IniPoolerProcess(workdir, ini, port, sqlite_template=sqlite_template)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def pgbouncer_seen(pgbouncer: PgBouncerProcess, pg: PgCluster) -> dict[str, Any]:
    """What the client scenarios observed through PgBouncer (run once per module)."""
    for program in ("psql", "pgbench"):
        if not (pg.bindir / program).is_file():
            pytest.skip(f"{program} is not installed in {pg.bindir}")
    return client_scenarios(pgbouncer.port, pg.bindir)


# -- probes that take a port (usable against Greenvisor too) ----------------------------------


@dataclass
class Reply:
    """Everything one simple Query got back, ReadyForQuery excluded."""

    messages: list[tuple[bytes, bytes]]

    def first(self, kind: bytes) -> bytes:
        return next(body for k, body in self.messages if k == kind)

    def raw(self, kind: bytes) -> bytes:
        body = self.first(kind)
        return kind + (len(body) + 4).to_bytes(4, "big") + body

    def rows(self) -> list[list[str | None]]:
        return [_data_row(body) for kind, body in self.messages if kind == b"D"]

    def error(self) -> dict[str, str]:
        return parse_error_fields(self.first(b"E"))


def _data_row(body: bytes) -> list[str | None]:
    count, pos, row = int.from_bytes(body[:2], "big"), 2, []
    for _ in range(count):
        size = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        row.append(None if size < 0 else body[pos : pos + size].decode())
        pos += max(size, 0)
    return row


def console(port: int, user: str, password: str, queries: Iterable[str]) -> dict[str, Reply]:
    """Log in to the ``pgbouncer`` console and run each query; its reply by query."""
    replies: dict[str, Reply] = {}
    with WireClient(HOST, port) as client:
        assert client.login(user, password, "pgbouncer") == {}
        for sql in queries:
            client.send(b"Q", sql.encode() + b"\0")
            messages = []
            while True:
                kind, body = client.read_message()
                if kind == b"Z":
                    break
                messages.append((kind, body))
            replies[sql] = Reply(messages)
    return replies


def client_scenarios(port: int, bindir: Path) -> dict[str, Any]:
    """psycopg2, psql and pgbench through a pooler on ``port``: what each observed."""
    seen: dict[str, Any] = {}
    for database in MODES:
        for user in ("app1user", "md5user"):
            seen[f"psycopg2 {database} {user}"] = _whoami(port, database, user)
    seen["statement mode transaction"] = _transaction_in_statement_mode(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = PASSWORDS["app1user"]
    psql = [str(bindir / "psql"), "-X", "-At", "-h", HOST, "-p", str(port), "-U", "app1user"]
    out = subprocess.run(
        [*psql, "-d", "app1_tx", "-c", "select current_database()"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    seen["psql"] = (out.returncode, out.stdout.strip())
    for database in MODES:
        seen[f"pgbench {database}"] = _pgbench(bindir, port, database, env)
    return seen


def _whoami(port: int, database: str, user: str) -> tuple[str, str]:
    dsn = f"host={HOST} port={port} dbname={database} user={user} password={PASSWORDS[user]}"
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select current_user, current_database()")
            row = cur.fetchone()
            assert row is not None
            return row[0], row[1]
    finally:
        conn.close()


def _transaction_in_statement_mode(port: int) -> dict[str, str]:
    """The ErrorResponse fields a BEGIN gets in statement mode (the pooler then hangs up)."""
    with WireClient(HOST, port) as client:
        assert client.login("app1user", PASSWORDS["app1user"], "app1_stmt") == {}
        client.send(b"Q", b"BEGIN\0")
        while True:
            kind, body = client.read_message()
            if kind == b"E":
                return parse_error_fields(body)
            if kind == b"Z":
                return {}


def _pgbench(bindir: Path, port: int, database: str, env: Mapping[str, str]) -> tuple[int, str]:
    script = Path(tempfile.mkdtemp(prefix="greenvisor-pgbench-")) / "select.sql"
    try:
        script.write_text("\\set n random(1, 1000)\nSELECT :n::int + :client_id::int;\n")
        out = subprocess.run(
            [str(bindir / "pgbench"), "-n", "-M", "extended", "-c", "4", "-t", "25",
             "-f", str(script), "-h", HOST, "-p", str(port), "-U", "app1user", database],
            env=dict(env), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(script.parent, ignore_errors=True)
    processed = re.search(r"number of transactions actually processed: (\d+/\d+)", out.stdout)
    if out.returncode != 0 or processed is None:
        return out.returncode, out.stdout + out.stderr
    return out.returncode, processed.group(1)


# -- Greenvisor's console with nothing to report -----------------------------------------------


class EmptyNode:
    """A NodeView with no pools, clients or settings: only the RowDescriptions matter."""

    def list_pools(self) -> list[PoolRow]:
        return []

    def list_stats(self) -> list[StatsRow]:
        return []

    def list_clients(self) -> list[SocketRow]:
        return []

    def list_servers(self) -> list[SocketRow]:
        return []

    def list_databases(self) -> list[DatabaseRow]:
        return []

    def list_users(self) -> list[UserRow]:
        return []

    def config_items(self) -> list[ConfigItem]:
        return []

    def list_counts(self) -> dict[str, int]:
        return {}

    def __getattr__(self, name: str) -> Any:  # the commands: accept and do nothing
        return lambda *args, **kwargs: None


def ours(sql: str, role: str = "admin") -> Reply:
    data = AdminConsole(EmptyNode(), version="PgBouncer 1.18.0").execute(sql, role)  # type: ignore[arg-type]
    messages, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        messages.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return Reply(messages)


# -- the tests --------------------------------------------------------------------------------


def test_greenvisor_reads_the_same_files_without_a_warning(pgbouncer: PgBouncerProcess) -> None:
    config = load(pgbouncer.ini)
    assert config.warnings == ()
    assert {name: config.pool_mode_for(name, "app1user") for name in MODES} == MODES
    assert config.pool_user("app1_stmt", STATS) == "app1user"
    authfile = load_auth_file(pgbouncer.userlist)
    kinds = {user: authfile.get(user).kind for user in authfile.users()}  # type: ignore[union-attr]
    assert kinds == {"app1user": PLAIN, "md5user": MD5, ADMIN: MD5, STATS: SCRAM}
    snapshot = config.to_snapshot(authfile)
    assert sorted(snapshot.tenants) == sorted(MODES)


def test_every_show_row_description_is_pgbouncers_byte_for_byte(
    pgbouncer: PgBouncerProcess,
) -> None:
    queries = [f"SHOW {word.upper()}" for word in COLUMNS]
    replies = console(pgbouncer.port, ADMIN, ADMIN_PASSWORD, queries)
    for sql in queries:
        assert replies[sql].raw(b"T") == ours(sql).raw(b"T"), sql
        assert replies[sql].messages[-1] == (b"C", b"SHOW\0"), sql


def test_show_lists_and_version_rows(pgbouncer: PgBouncerProcess) -> None:
    replies = console(pgbouncer.port, STATS, STATS_PASSWORD, ["SHOW LISTS", "SHOW VERSION"])
    assert [row[0] for row in replies["SHOW LISTS"].rows()] == list(LISTS)
    assert replies["SHOW VERSION"].rows() == [["PgBouncer 1.18.0"]]
    assert ours("SHOW VERSION").rows() == [["PgBouncer 1.18.0"]]


def test_show_config_is_the_same_for_the_same_file(pgbouncer: PgBouncerProcess) -> None:
    reply = console(pgbouncer.port, ADMIN, ADMIN_PASSWORD, ["SHOW CONFIG"])["SHOW CONFIG"]
    theirs = {str(row[0]): tuple(row[1:]) for row in reply.rows()}
    mine = {
        key: (value, default, "yes" if changeable else "no")
        for key, value, default, changeable in load(pgbouncer.ini).config_items()
    }
    assert len(theirs) == 84 and set(theirs) <= set(mine)
    for key, row in theirs.items():
        assert mine[key] == row, key


def test_console_errors_say_what_pgbouncer_says(pgbouncer: PgBouncerProcess) -> None:
    bad = [
        ";;;;", "", "show", "SHOW POOLS; SHOW STATS", "show pools extra", "show foo", "foo",
        "SELECT 1", "shutdown now", "reload now", "PAUSE " + "x" * 70, "abcdefghijklmnop",
        "KILL", "DISABLE", "PAUSE pgbouncer", "KILL pgbouncer", "RECONNECT pgbouncer",
        "WAIT_CLOSE pgbouncer", "DISABLE pgbouncer",
    ]  # fmt: skip
    replies = console(pgbouncer.port, ADMIN, ADMIN_PASSWORD, bad)
    for sql in bad:
        theirs, mine = replies[sql].error(), ours(sql).error()
        assert (theirs["S"], theirs["C"], theirs["M"]) == (mine["S"], mine["C"], mine["M"]), sql


def test_stats_users_may_only_show(pgbouncer: PgBouncerProcess) -> None:
    commands = ["PAUSE", "RELOAD", "RESUME", "KILL app1", "SUSPEND", "SHUTDOWN"]
    replies = console(pgbouncer.port, STATS, STATS_PASSWORD, [*commands, "SHOW POOLS"])
    for sql in commands:
        theirs, mine = replies[sql].error(), ours(sql, role="stats").error()
        assert theirs["M"] == mine["M"] == "admin access needed", sql
        # A deliberate difference: PgBouncer sends 08P01 for every console error.
        assert (theirs["C"], mine["C"]) == ("08P01", "42501")
    assert replies["SHOW POOLS"].first(b"T")


def test_fake_show_and_set_answer_like_pgbouncer(pgbouncer: PgBouncerProcess) -> None:
    queries = ["SHOW client_encoding", "SHOW TimeZone", "SET client_encoding = 'UTF8'", "SHOW HELP"]
    replies = console(pgbouncer.port, STATS, STATS_PASSWORD, queries)
    for sql in queries[:3]:
        assert replies[sql].messages == ours(sql, role="stats").messages, sql
    theirs, mine = replies["SHOW HELP"], ours("SHOW HELP", role="stats")
    assert [k for k, _ in theirs.messages] == [k for k, _ in mine.messages] == [b"N", b"C"]
    assert parse_error_fields(theirs.first(b"N"))["M"] == "Console usage"


def test_client_scenarios_through_pgbouncer(pgbouncer_seen: dict[str, Any]) -> None:
    seen = pgbouncer_seen
    for database in ("app1", "app1_tx"):
        assert seen[f"psycopg2 {database} app1user"] == ("app1user", "app1")
        assert seen[f"psycopg2 {database} md5user"] == ("md5user", "app1")  # md5 secret upstream
    assert seen["psycopg2 app1_stmt md5user"] == ("app1user", "app1")  # the forced user
    # PgBouncer's refusal of a transaction block in statement mode (issue 9, item 3).
    assert seen["statement mode transaction"] == {
        "S": "FATAL",
        "C": "08P01",
        "M": "transaction blocks not allowed in statement pooling mode",
    }
    assert seen["psql"] == (0, "app1")
    for database in MODES:
        assert seen[f"pgbench {database}"] == (0, "100/100"), database


def test_show_pools_after_the_scenarios(pgbouncer: PgBouncerProcess, pg: PgCluster) -> None:
    for database in MODES:
        _whoami(pgbouncer.port, database, "app1user")
    reply = console(pgbouncer.port, STATS, STATS_PASSWORD, ["SHOW POOLS"])["SHOW POOLS"]
    names = [name for name, _ in COLUMNS["pools"]]
    pools = {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in reply.rows()}
    assert {key: pool["pool_mode"] for key, pool in pools.items()}.items() >= {
        ("app1", "app1user"): "session",
        ("app1_tx", "app1user"): "transaction",
        ("app1_stmt", "app1user"): "statement",
        ("pgbouncer", "pgbouncer"): "statement",
    }.items()


# -- Greenvisor's half: the same files, the same scenarios ------------------------------------


def test_the_two_poolers_read_the_same_files(
    pgbouncer: PgBouncerProcess, greenvisor: IniPoolerProcess
) -> None:
    def without_port(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if "listen_port" not in line]

    theirs, mine = pgbouncer.ini, greenvisor.ini
    assert without_port(theirs) == [
        line.replace(str(mine.parent), str(theirs.parent)) for line in without_port(mine)
    ]
    assert (theirs.parent / "userlist.txt").read_text().splitlines()[1:3] == (
        mine.parent / "userlist.txt"
    ).read_text().splitlines()[1:3]


def test_both_hold_a_silent_connection_in_the_kernel(
    pgbouncer: PgBouncerProcess, greenvisor: IniPoolerProcess
) -> None:
    """tcp_defer_accept (default 1): neither pooler accepts a connection before the client
    has sent something; it waits in the kernel (SYN_RECV on the listener's side)."""
    seen = {}
    for name, port in (("pgbouncer", pgbouncer.port), ("greenvisor", greenvisor.listen_port)):
        with socket.create_connection((HOST, port), 10) as sock:
            time.sleep(0.3)
            seen[name] = tcp_state(port, sock.getsockname()[1])
    assert seen == {"pgbouncer": "03", "greenvisor": "03"}


def test_client_scenarios_through_greenvisor_match_pgbouncer(
    pgbouncer_seen: dict[str, Any], greenvisor: IniPoolerProcess, pg: PgCluster
) -> None:
    seen = client_scenarios(greenvisor.listen_port, pg.bindir)
    error = seen.pop("statement mode transaction")
    theirs = dict(pgbouncer_seen)
    their_error = theirs.pop("statement mode transaction")
    assert seen == theirs
    assert {k: error.get(k) for k in "SCM"} == their_error
    assert seen["psycopg2 app1_stmt md5user"] == ("app1user", "app1")
    assert seen["pgbench app1_stmt"] == (0, "100/100")


def test_every_show_row_description_matches_pgbouncer(
    pgbouncer: PgBouncerProcess, greenvisor: IniPoolerProcess
) -> None:
    queries = [f"SHOW {word.upper()}" for word in COLUMNS]
    theirs = console(pgbouncer.port, ADMIN, ADMIN_PASSWORD, queries)
    mine = console(greenvisor.listen_port, ADMIN, ADMIN_PASSWORD, queries)
    for sql in queries:
        assert mine[sql].raw(b"T") == theirs[sql].raw(b"T"), sql
        assert mine[sql].messages[-1] == (b"C", b"SHOW\0"), sql


def test_show_config_and_databases_match_pgbouncer(
    pgbouncer: PgBouncerProcess, greenvisor: IniPoolerProcess
) -> None:
    queries = ["SHOW CONFIG", "SHOW DATABASES", "SHOW LISTS"]
    theirs = console(pgbouncer.port, ADMIN, ADMIN_PASSWORD, queries)
    mine = console(greenvisor.listen_port, ADMIN, ADMIN_PASSWORD, queries)
    their_config = {row[0]: row[1:] for row in theirs["SHOW CONFIG"].rows()}
    my_config = {row[0]: row[1:] for row in mine["SHOW CONFIG"].rows()}
    for key in set(their_config) - {"conffile", "listen_port", "auth_file"}:
        assert my_config[key] == their_config[key], key
    names = [name for name, _ in COLUMNS["databases"]]
    skip = {"port", "current_connections"}  # listen_port; servers open right now

    def databases(reply: Reply) -> dict[str | None, dict[str, str | None]]:
        rows = [dict(zip(names, row, strict=True)) for row in reply.rows()]
        return {r["name"]: {k: v for k, v in r.items() if k not in skip} for r in rows}

    assert databases(mine["SHOW DATABASES"]) == databases(theirs["SHOW DATABASES"])
    assert [r[0] for r in mine["SHOW LISTS"].rows()] == [r[0] for r in theirs["SHOW LISTS"].rows()]


def test_console_errors_through_greenvisor_match_pgbouncer(
    pgbouncer: PgBouncerProcess, greenvisor: IniPoolerProcess
) -> None:
    bad = [
        ";;;;", "", "show", "SHOW POOLS; SHOW STATS", "show pools extra", "show foo", "foo",
        "SELECT 1", "shutdown now", "reload now", "PAUSE " + "x" * 70, "KILL", "DISABLE",
        "PAUSE pgbouncer", "KILL pgbouncer",
    ]  # fmt: skip
    theirs = console(pgbouncer.port, ADMIN, ADMIN_PASSWORD, bad)
    mine = console(greenvisor.listen_port, ADMIN, ADMIN_PASSWORD, bad)
    for sql in bad:
        t, m = theirs[sql].error(), mine[sql].error()
        assert (t["S"], t["C"], t["M"]) == (m["S"], m["C"], m["M"]), sql


def test_stats_users_may_only_show_in_greenvisor_too(
    pgbouncer: PgBouncerProcess, greenvisor: IniPoolerProcess
) -> None:
    commands = ["PAUSE", "RELOAD", "RESUME", "KILL app1", "SUSPEND", "SHUTDOWN"]
    theirs = console(pgbouncer.port, STATS, STATS_PASSWORD, [*commands, "SHOW POOLS"])
    mine = console(greenvisor.listen_port, STATS, STATS_PASSWORD, [*commands, "SHOW POOLS"])
    for sql in commands:
        assert mine[sql].error()["M"] == theirs[sql].error()["M"] == "admin access needed", sql
    assert mine["SHOW POOLS"].raw(b"T") == theirs["SHOW POOLS"].raw(b"T")


def test_show_pools_in_greenvisor_after_the_scenarios(greenvisor: IniPoolerProcess) -> None:
    for database in MODES:
        _whoami(greenvisor.listen_port, database, "app1user")
    reply = console(greenvisor.listen_port, STATS, STATS_PASSWORD, ["SHOW POOLS"])["SHOW POOLS"]
    names = [name for name, _ in COLUMNS["pools"]]
    pools = {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in reply.rows()}
    assert {key: pool["pool_mode"] for key, pool in pools.items()}.items() >= {
        ("app1", "app1user"): "session",
        ("app1_tx", "app1user"): "transaction",
        ("app1_stmt", "app1user"): "statement",
        ("pgbouncer", "pgbouncer"): "statement",
    }.items()
