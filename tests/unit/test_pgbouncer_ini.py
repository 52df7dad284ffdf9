"""pgbouncer.ini: PgBouncer's syntax, %include, connection strings, typed keys, errors, diff."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from pooler.auth.md5 import md5_secret
from pooler.auth.scram import make_secret
from pooler.pgbouncer.authfile import parse_auth_file
from pooler.pgbouncer.ini import (
    KEYS,
    KEYS_BY_NAME,
    NO_TIMEOUT_MS,
    UNUSABLE_PASSWORD,
    IniError,
    PgBouncerConfig,
    PgBouncerSettings,
    diff,
    load,
    parse_connstr,
)

pytestmark = pytest.mark.unit


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_text(tmp_path: Path, text: str) -> PgBouncerConfig:
    return load(write(tmp_path, "pgbouncer.ini", text))


def ini_error(tmp_path: Path, text: str) -> IniError:
    with pytest.raises(IniError) as info:
        load_text(tmp_path, text)
    return info.value


# -- syntax -----------------------------------------------------------------------------------


def test_an_empty_pgbouncer_section_gives_pgbouncer_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[pgbouncer]\n")
    s = config.settings
    assert (s.listen_port, s.listen_addr, s.auth_type, s.pool_mode) == (6432, (), "md5", "session")
    assert (s.default_pool_size, s.max_client_conn, s.min_pool_size) == (20, 100, 0)
    assert (s.server_lifetime, s.server_idle_timeout, s.query_wait_timeout) == (3600, 600, 120)
    assert (s.client_login_timeout, s.server_connect_timeout, s.server_login_retry) == (60, 15, 15)
    assert s.server_reset_query == "DISCARD ALL" and s.server_check_query == "select 1"
    assert s.auth_file is None and s.unix_socket_dir == "/tmp" and s.max_prepared_statements == 200
    assert config.databases == {} and config.autodb is None and config.users == {}
    assert config.warnings == ()


def test_every_settings_field_is_a_known_key_with_a_parsable_default() -> None:
    names = [key.name for key in KEYS]
    assert len(names) == len(set(names))
    for f in dataclasses.fields(PgBouncerSettings):
        assert f.name in KEYS_BY_NAME, f.name


def test_comments_whitespace_case_and_later_keys_win(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        ; a comment
          # another one, indented
        [PgBouncer]
        LISTEN_PORT = 7000
        Pool_Mode   =   Transaction
        listen_port=7001
        server_reset_query = DISCARD ALL   
        """,  # noqa: W291 - trailing spaces are part of the test
    )
    assert config.settings.listen_port == 7001
    assert config.settings.pool_mode == "transaction"
    assert config.settings.server_reset_query == "DISCARD ALL"


def test_comments_are_not_recognised_later_in_a_line(tmp_path: Path) -> None:
    error = ini_error(tmp_path, "[pgbouncer]\nlisten_port = 6432 ; the port\n")
    assert (error.line, error.key) == (2, "listen_port")
    assert str(error).startswith(f"{tmp_path / 'pgbouncer.ini'}:2: listen_port: ")


def test_numbers_times_and_lists_are_typed_like_pgbouncer(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [pgbouncer]
        server_lifetime = 1.5
        client_idle_timeout = 1e2
        listen_backlog = 0x10
        unix_socket_mode = 0700
        admin_users = alice, bob ,,carol
        listen_addr = *
        log_connections = 0
        """,
    )
    assert config.settings.server_lifetime == 1.5
    assert config.settings.client_idle_timeout == 100.0
    assert config.values["listen_backlog"] == 16
    assert config.values["unix_socket_mode"] == 0o700
    assert config.settings.admin_users == ("alice", "bob", "carol")
    assert config.settings.listen_addr == ("*",)
    assert config.settings.log_connections is False


def test_relative_auth_file_is_taken_from_the_config_directory(tmp_path: Path) -> None:
    config = load(write(tmp_path, "etc/pgbouncer.ini", "[pgbouncer]\nauth_file = users.txt\n"))
    assert config.settings.auth_file == str(tmp_path / "etc" / "users.txt")
    assert config.texts["auth_file"] == "users.txt"


def test_a_second_pgbouncer_section_resets_to_defaults_as_pgbouncer_does(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [pgbouncer]
        default_pool_size = 7
        auth_file = /etc/users.txt
        [databases]
        [pgbouncer]
        max_client_conn = 9
        """,
    )
    assert config.settings.default_pool_size == 20
    assert config.settings.max_client_conn == 9
    assert config.settings.auth_file == "/etc/users.txt"  # no default: PgBouncer keeps it
    assert any("second [pgbouncer] section" in w for w in config.warnings)


def test_text_after_a_section_header_is_read_as_a_line(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[databases] app = host=db1\n[pgbouncer]\n")
    assert config.databases["app"].host == "db1"


# -- %include ---------------------------------------------------------------------------------


def test_include_is_relative_to_the_including_file_and_keeps_the_section(tmp_path: Path) -> None:
    write(tmp_path, "conf.d/dbs.ini", "app2 = host=db2\n%include more/users.ini\n")
    write(tmp_path, "conf.d/more/users.ini", "[users]\nalice = pool_mode=statement\n")
    main = write(
        tmp_path,
        "pgbouncer.ini",
        """
        [databases]
        app1 = host=db1
        %include conf.d/dbs.ini
        [pgbouncer]
        listen_port = 7777
        """,
    )
    config = load(main)
    assert sorted(config.databases) == ["app1", "app2"]
    assert config.users["alice"].pool_mode == "statement"
    assert config.settings.listen_port == 7777
    assert config.files == (
        str(main.resolve()),
        str((tmp_path / "conf.d/dbs.ini").resolve()),
        str((tmp_path / "conf.d/more/users.ini").resolve()),
    )


def test_include_cycle_is_an_error_naming_the_line(tmp_path: Path) -> None:
    write(tmp_path, "b.ini", "; b.ini\n%include pgbouncer.ini\n")
    error = ini_error(tmp_path, "[pgbouncer]\n%include b.ini\n")
    assert error.file == str((tmp_path / "b.ini").resolve()) and error.line == 2
    assert "%include cycle" in str(error)


def test_include_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    error = ini_error(tmp_path, "[pgbouncer]\n\n%include nowhere.ini\n")
    assert error.line == 3 and "nowhere.ini" in error.problem


def test_include_nesting_is_limited(tmp_path: Path) -> None:
    for level in range(12):
        write(tmp_path, f"level{level}.ini", f"%include level{level + 1}.ini\n")
    write(tmp_path, "level12.ini", "[pgbouncer]\n")
    error = ini_error(tmp_path, "%include level0.ini\n")
    assert "nested deeper than 10" in error.problem


# -- [databases] ------------------------------------------------------------------------------


def test_connection_strings(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [databases]
        app1 = host=db.example port=5433 pool_size=5 reserve_pool=2 pool_mode=transaction
        forced = host=db password='a b''c d' user=svc  dbname=realdb max_db_connections=9
        'odd name' = host=h application_name=x client_encoding=UTF8 datestyle=ISO timezone=UTC
        [pgbouncer]
        """,
    )
    app1 = config.databases["app1"]
    assert (app1.host, app1.port, app1.dbname, app1.user) == ("db.example", 5433, "app1", None)
    assert (app1.pool_size, app1.reserve_pool, app1.pool_mode) == (5, 2, "transaction")
    forced = config.databases["forced"]
    assert (forced.user, forced.password, forced.dbname) == ("svc", "a b'c d", "realdb")
    assert forced.max_db_connections == 9
    assert "a b'c d" not in repr(forced)
    odd = config.databases["odd name"]
    assert (odd.application_name, odd.client_encoding, odd.timezone) == ("x", "UTF8", "UTC")
    assert app1.source == f"{tmp_path.resolve() / 'pgbouncer.ini'}:2"
    path = tmp_path.resolve() / "pgbouncer.ini"
    assert not [w for w in config.warnings if "reserve_pool" in w]  # applied (PoolLimits)
    assert f"{path}:4: odd name: timezone is accepted but not applied yet" in config.warnings


def test_parse_connstr_quoting() -> None:
    assert parse_connstr("  a=1   b = 2 c='x y' d='it''s'  ") == [
        ("a", "1"),
        ("b", "2"),
        ("c", "x y"),
        ("d", "it's"),
    ]
    assert parse_connstr("") == []
    for bad in ("a", "=1", "a=", "a='x", "a='x'y", "a=''"):
        with pytest.raises(ValueError):
            parse_connstr(bad)


def test_star_is_the_fallback_for_any_database(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [databases]
        app1 = host=db1
        * = host=db2 port=5444
        [pgbouncer]
        """,
    )
    assert config.database("app1") == config.databases["app1"]
    other = config.database("whatever")
    assert other is not None and config.autodb is not None
    assert (other.name, other.dbname, other.host, other.port) == (
        "whatever",
        "whatever",
        "db2",
        5444,
    )
    assert config.autodb.dbname is None
    assert load_text(tmp_path, "[pgbouncer]\n").database("whatever") is None


def test_star_with_dbname_sends_every_client_to_that_database(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[databases]\n* = host=db dbname=shared\n[pgbouncer]\n")
    entry = config.database("anything")
    assert entry is not None and entry.dbname == "shared"


def test_a_database_without_host_warns_about_the_unix_socket(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[databases]\nlocal =\n[pgbouncer]\n")
    assert config.databases["local"].host is None
    assert any(w.endswith("local: no TCP host: PgBouncer would use a Unix socket; Greenvisor "
                          "connects to 127.0.0.1 over TCP (set host= to choose)")
               for w in config.warnings)  # fmt: skip


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("app = host=h foo=bar", "unknown connection parameter foo"),
        ("app = host=h port=0", "a port is 1 to 65535"),
        ("app = host=h port=x", "not an integer"),
        ("app = host=h pool_size=-1", "must not be negative"),
        ("app = host=h pool_mode=bogus", "invalid pool_mode"),
        ("app = host=h password='oops", "unterminated quoted value for password"),
        ("app = host=", "empty value for host"),
        ("app = host=h connect_query='SET x=1'", "connect_query is not supported"),
        ("app = host=a,b", "several hosts are not supported"),
        ("pgbouncer = host=h", "the name pgbouncer is reserved"),
    ],
)
def test_database_errors_name_file_line_and_key(tmp_path: Path, line: str, problem: str) -> None:
    error = ini_error(tmp_path, f"[pgbouncer]\n[databases]\n{line}\n")
    name = line.split(" = ")[0]
    assert (error.line, error.key) == (3, name)
    assert str(error).startswith(f"{tmp_path.resolve() / 'pgbouncer.ini'}:3: {name}: ")
    assert problem in error.problem
    assert "oops" not in str(error)


def test_newer_database_keys_are_accepted_with_a_warning(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[databases]\napp = host=h server_lifetime=60\n[pgbouncer]\n")
    assert config.databases["app"].extra == {"server_lifetime": "60"}
    path = tmp_path.resolve() / "pgbouncer.ini"
    assert config.warnings == (f"{path}:2: app: server_lifetime is accepted but not applied yet",)


# -- [users] and pool modes -------------------------------------------------------------------


def test_users_and_pool_mode_precedence(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [databases]
        txdb = host=h pool_mode=transaction
        plain = host=h
        [users]
        alice = pool_mode=statement max_user_connections=3
        [pgbouncer]
        pool_mode = session
        """,
    )
    assert config.users["alice"].max_user_connections == 3
    assert any("alice: max_user_connections is accepted but not applied" in w
               for w in config.warnings)  # fmt: skip
    assert config.pool_mode_for("txdb", "alice") == "statement"
    assert config.pool_mode_for("txdb", "bob") == "transaction"
    assert config.pool_mode_for("plain", "bob") == "session"


def test_unknown_user_key_is_an_error(tmp_path: Path) -> None:
    error = ini_error(tmp_path, "[pgbouncer]\n[users]\nalice = pool_size=3 colour=red\n")
    assert (error.line, error.key) == (3, "alice") and "unknown user parameter colour" in str(error)


# -- [pgbouncer] errors and warnings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("listen_port = 0", "a port is 1 to 65535"),
        ("listen_port = 64k", "not an integer"),
        ("default_pool_size = -1", "must not be negative"),
        ("query_wait_timeout = 10s", "no units"),
        ("query_wait_timeout = -1", "no units"),
        ("pool_mode = fast", "must be one of session, transaction, statement"),
        ("auth_type = cert", "auth_type cert is not supported by Greenvisor"),
        ("auth_type = any", "auth_type any is not supported by Greenvisor"),
        ("auth_type = bogus", "must be one of"),
        ("client_tls_sslmode = require", "needs TLS"),
        ("server_tls_sslmode = verify-full", "needs TLS"),
        ("disable_pqexec = 1", "cannot turn the simple query protocol off"),
        ("max_client_conn = 99999999999", "out of range"),
    ],
)
def test_invalid_values_stop_start_up(tmp_path: Path, line: str, problem: str) -> None:
    error = ini_error(tmp_path, f"[pgbouncer]\n\n{line}\n")
    key = line.split(" = ")[0]
    assert (error.line, error.key) == (3, key)
    assert str(error).startswith(f"{tmp_path.resolve() / 'pgbouncer.ini'}:3: {key}: ")
    assert problem in error.problem


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("[databases]\n", 0, "the [pgbouncer] section is missing"),
        ("[pgbouncer]\n[bouncers]\n", 2, "unknown section [bouncers]"),
        ("listen_port = 1\n[pgbouncer]\n", 1, "key outside of any [section]"),
        ("[pgbouncer]\nlisten_port 6432\n", 2, "expected key = value"),
        ("[pgbouncer\n", 1, "section header without ']'"),
        ("[pgbouncer]\n'' = 1\n", 2, "unterminated or empty quoted key"),
        ("[pgbouncer]\n%include\n", 2, "%include needs a file name"),
    ],
)
def test_syntax_errors(tmp_path: Path, text: str, line: int, problem: str) -> None:
    error = ini_error(tmp_path, text)
    assert error.line == line and problem in error.problem


def test_non_utf8_file_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    path.write_bytes(b"[pgbouncer]\nlisten_addr = \xff\n")
    with pytest.raises(IniError) as info:
        load(path)
    assert info.value.line == 2 and "UTF-8" in info.value.problem


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(IniError, match="cannot read"):
        load(tmp_path / "nope.ini")


def test_unknown_keys_are_warnings_never_silent(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[pgbouncer]\nlisten_port = 7000\nfrobnicate = yes\n")
    path = tmp_path.resolve() / "pgbouncer.ini"
    assert config.warnings == (f"{path}:3: frobnicate: unknown key, ignored",)


def test_keys_greenvisor_does_not_apply_warn_only_when_changed(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [pgbouncer]
        stats_period = 60
        tcp_keepalive = 1
        unix_socket_dir =
        stats_period = 30
        syslog = 1
        unix_socket_dir = /var/run/postgresql
        default_pool_size = 50
        """,
    )
    path = tmp_path.resolve() / "pgbouncer.ini"
    assert sorted(config.warnings) == [
        f"{path}:5: stats_period: not applied yet by Greenvisor (SHOW STATS averages period)",
        f"{path}:6: syslog: ignored by Greenvisor (Python logging decides)",
        f"{path}:7: unix_socket_dir: Greenvisor listens on TCP only, not on a Unix socket",
    ]


def test_tcp_defer_accept_is_applied(tmp_path: Path) -> None:
    assert load_text(tmp_path, "[pgbouncer]\n").settings.tcp_defer_accept == 1
    config = load_text(tmp_path, "[pgbouncer]\ntcp_defer_accept = 0\n")
    assert config.settings.tcp_defer_accept == 0 and config.warnings == ()


def test_peers_section_is_ignored_with_a_warning(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[pgbouncer]\n[peers]\n1 = host=other\n")
    assert len(config.warnings) == 1 and "[peers] is not supported" in config.warnings[0]


def test_show_config_rows_print_values_as_pgbouncer_does(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[pgbouncer]\nlisten_port = 6499\nserver_lifetime = 2.5\n")
    rows = {row[0]: row for row in config.config_items()}
    # Copied from PgBouncer 1.18's SHOW CONFIG with the same settings.
    assert rows["listen_port"] == ("listen_port", "6499", "6432", False)
    assert rows["server_lifetime"] == ("server_lifetime", "2.5", "3600", True)
    assert rows["unix_socket_mode"] == ("unix_socket_mode", "511", "0777", False)
    assert rows["auth_file"] == ("auth_file", None, None, True)
    assert rows["conffile"][1] == str(tmp_path.resolve() / "pgbouncer.ini")
    assert rows["server_reset_query"] == ("server_reset_query", "DISCARD ALL", "DISCARD ALL", True)
    assert [row[0] for row in config.config_items()] == sorted(rows)


def test_pgbouncer_documentation_examples_load(tmp_path: Path) -> None:
    # The "Examples" section of PgBouncer's doc/config.md, as written there.
    config = load_text(
        tmp_path,
        """
        [databases]
        template1 = host=localhost dbname=template1 auth_user=someuser

        ; foodb over Unix socket
        foodb =

        ; redirect bardb to bazdb on localhost
        bardb = host=localhost dbname=bazdb

        ; access to destination database will go with single user
        forcedb = host=localhost port=300 user=baz password=foo client_encoding=UNICODE datestyle=ISO

        [pgbouncer]
        pool_mode = session
        listen_port = 6432
        listen_addr = localhost
        auth_type = md5
        auth_file = users.txt
        logfile = pgbouncer.log
        pidfile = pgbouncer.pid
        admin_users = someuser
        stats_users = stat_collector
        """,  # noqa: E501
    )
    assert sorted(config.databases) == ["bardb", "foodb", "forcedb", "template1"]
    assert config.databases["template1"].auth_user == "someuser"
    assert config.databases["forcedb"].port == 300
    assert config.settings.stats_users == ("stat_collector",)


# -- to_snapshot ------------------------------------------------------------------------------


AUTHFILE = "\n".join(
    [
        '"alice" "alicepw"',
        f'"bob" "{md5_secret("bob", "bobpw")}"',
        f'"carol" "{make_secret("carolpw").to_string()}"',
        '"svc" "svcpw"',
    ]
)


def test_to_snapshot_makes_one_tenant_per_database(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [databases]
        app1 = host=db1 port=5433 pool_size=5
        forced = host=db2 dbname=real user=svc password=forcedpw
        forced_af = host=db2 user=svc
        * = host=db3
        nohost =
        [users]
        alice = pool_mode=transaction
        [pgbouncer]
        default_pool_size = 11
        max_client_conn = 500
        client_idle_timeout = 2.5
        query_wait_timeout = 0
        """,
    )
    snapshot = config.to_snapshot(parse_auth_file(AUTHFILE), version=3)
    assert snapshot.version == 3
    assert sorted(snapshot.tenants) == ["*", "app1", "forced", "forced_af", "nohost"]
    app1 = snapshot.tenants["app1"]
    assert (app1.db_host, app1.db_port, app1.db_database) == ("db1", 5433, "app1")
    assert (app1.default_pool_size, app1.default_max_clients, app1.client_idle_timeout) == (
        5,
        500,
        3,
    )
    users = {u.db_user_alias: u for u in app1.users}
    assert sorted(users) == ["alice", "bob", "carol", "svc"]
    assert users["alice"].db_password == "alicepw" and users["alice"].mode_type == "transaction"
    assert users["bob"].db_password == md5_secret("bob", "bobpw")
    assert users["bob"].mode_type == "session"
    assert users["carol"].db_password == UNUSABLE_PASSWORD
    assert users["alice"].pool_checkout_timeout == NO_TIMEOUT_MS
    forced = snapshot.tenants["forced"]
    assert forced.db_database == "real" and forced.default_pool_size == 11
    assert [(u.db_user_alias, u.db_user, u.db_password) for u in forced.users] == [
        ("svc", "svc", "forcedpw")
    ]
    assert [u.db_password for u in snapshot.tenants["forced_af"].users] == ["svcpw"]
    assert snapshot.tenants["*"].db_database == "*"
    assert snapshot.tenants["nohost"].db_host == "127.0.0.1"
    assert config.pool_user("forced", "alice") == "svc"
    assert config.pool_user("app1", "alice") == "alice"


def test_to_snapshot_converts_query_wait_timeout_to_milliseconds(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[databases]\na = host=h\n[pgbouncer]\nquery_wait_timeout = 1.5\n")
    tenant = config.to_snapshot(parse_auth_file('"u" "p"')).tenants["a"]
    assert [u.pool_checkout_timeout for u in tenant.users] == [1500]


# -- diff -------------------------------------------------------------------------------------


BASE = """
[databases]
app1 = host=db1
app2 = host=db2
[users]
alice = pool_mode=session
[pgbouncer]
listen_port = 6432
default_pool_size = 20
"""


def test_diff_of_identical_files_is_empty_even_if_lines_moved(tmp_path: Path) -> None:
    old = load(write(tmp_path, "old.ini", BASE))
    new = load(write(tmp_path, "new.ini", "; a comment moves every line\n" + BASE))
    assert diff(old, new).empty


def test_diff_reports_databases_users_settings_and_restarts(tmp_path: Path) -> None:
    old = load(write(tmp_path, "old.ini", BASE))
    changed = (
        BASE.replace("app2 = host=db2", "app3 = host=db3")
        .replace("app1 = host=db1", "app1 = host=db1b")
        .replace("alice = pool_mode=session", "bob = pool_mode=session")
        .replace("listen_port = 6432", "listen_port = 6433")
        .replace("default_pool_size = 20", "default_pool_size = 30")
    )
    result = diff(old, load(write(tmp_path, "new.ini", changed)))
    assert (result.databases_added, result.databases_removed) == (("app3",), ("app2",))
    assert result.databases_changed == ("app1",)
    assert (result.users_added, result.users_removed) == (("bob",), ("alice",))
    assert result.settings_changed == ("default_pool_size", "listen_port")
    assert result.restart_required == ("listen_port",)
    assert not result.empty


# -- the migration guide ----------------------------------------------------------------------


def test_the_migration_guide_lists_every_key_with_its_status() -> None:
    guide = Path(__file__).resolve().parents[2] / "docs" / "PGBOUNCER.md"
    listed = {}
    for line in guide.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if (
            len(cells) == 4
            and cells[0].startswith("`")
            and cells[2].split(",")[0]
            in (
                "supported",
                "planned",
                "ignored",
            )
        ):
            listed[cells[0].strip("`")] = cells[2]
    assert listed == {key.name: key.support + ("" if key.reload else ", restart") for key in KEYS}
