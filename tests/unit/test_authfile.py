"""auth_file: PgBouncer's quoting, plain / md5 / SCRAM entries, what each lets a client do."""

from __future__ import annotations

from pathlib import Path

import pytest

from pooler.auth.md5 import Md5Server, md5_response, md5_secret
from pooler.auth.scram import ScramClient, ScramSecret, ScramServer, make_secret
from pooler.pgbouncer.authfile import (
    EMPTY,
    MD5,
    PLAIN,
    SCRAM,
    AuthEntry,
    AuthFileError,
    load_auth_file,
    parse_auth_file,
)
from pooler.protocol.errors import AuthError

pytestmark = pytest.mark.unit

# PgBouncer's doc/config.md: 'user `admin` with password `1234` will have MD5-hashed password
# `md545f2603610af569b6155c45067268c6b`', in the auth_file format it documents.
DOC_MD5_LINE = '"admin" "md545f2603610af569b6155c45067268c6b"'
# Made by libpq's PQencryptPasswordConn for the password "pencil" (Postgres's own format).
LIBPQ_SCRAM = (
    "SCRAM-SHA-256$4096:TfNm9XwM3bLOQYS1Spdnyg==$"
    "2hckFbOklvReeR+M/xdyjHojWqmsMgvLXAt3qZ6hnvo=:UYSyIEjgZuCEQlx8/4wkRlBKZPGbs24SJT6slXg7cc0="
)


def scram_login(secret: ScramSecret, password: str) -> bool:
    """A full in-memory SCRAM exchange of a client knowing ``password`` against ``secret``."""
    client, server = ScramClient(password), ScramServer(secret)
    try:
        server_first = server.client_first(client.client_first())
        client.server_final(server.client_final(client.server_first(server_first)))
    except AuthError:
        return False
    return True


def md5_login(entry: AuthEntry, user: str, password: str) -> bool:
    server = Md5Server(entry.md5_secret(user))
    try:
        server.verify(md5_response(user, password, server.salt))
    except AuthError:
        return False
    return True


def one(text: str) -> AuthEntry:
    authfile = parse_auth_file(text)
    assert len(authfile) == 1
    entry = authfile.get(next(authfile.users()))
    assert entry is not None
    return entry


def test_the_md5_line_from_pgbouncer_docs() -> None:
    entry = one(DOC_MD5_LINE)
    assert (entry.user, entry.kind) == ("admin", MD5)
    assert md5_secret("admin", "1234") == "md545f2603610af569b6155c45067268c6b"
    assert entry.md5_secret() == "md545f2603610af569b6155c45067268c6b"
    assert entry.can_md5_client() and not entry.can_scram_client()
    assert md5_login(entry, "admin", "1234") and not md5_login(entry, "admin", "12345")
    assert entry.check_password("1234") and not entry.check_password("123")
    assert entry.upstream_password() == "md545f2603610af569b6155c45067268c6b"
    with pytest.raises(ValueError, match="no SCRAM secret"):
        entry.scram_secret()


def test_the_libpq_scram_secret() -> None:
    entry = one(f'"pencil_user" "{LIBPQ_SCRAM}"')
    assert entry.kind == SCRAM
    assert entry.can_scram_client() and not entry.can_md5_client()
    assert entry.scram_secret() == ScramSecret.parse(LIBPQ_SCRAM)
    assert scram_login(entry.scram_secret(), "pencil")
    assert not scram_login(entry.scram_secret(), "pen")
    assert entry.check_password("pencil") and not entry.check_password("Pencil")
    assert entry.upstream_password() is None
    with pytest.raises(ValueError, match="no md5 secret"):
        entry.md5_secret()


def test_secrets_made_by_our_own_md5_and_scram_code() -> None:
    scram = make_secret("s3cret", salt=b"0123456789abcdef").to_string()
    authfile = parse_auth_file(f'"m" "{md5_secret("m", "md5pw")}"\n"s" "{scram}"\n"p" "plain pw"\n')
    assert [authfile.get(u).kind for u in ("m", "s", "p")] == [MD5, SCRAM, PLAIN]  # type: ignore[union-attr]
    m, s, p = (authfile.get(u) for u in ("m", "s", "p"))
    assert m is not None and s is not None and p is not None
    assert md5_login(m, "m", "md5pw")
    assert scram_login(s.scram_secret(), "s3cret")
    assert scram_login(p.scram_secret(), "plain pw") and not scram_login(p.scram_secret(), "x")
    assert md5_login(p, "p", "plain pw")
    assert p.md5_secret() == md5_secret("p", "plain pw")
    assert p.upstream_password() == "plain pw"
    assert p.check_password("plain pw") and not p.check_password("plain")


def test_a_plain_password_makes_one_scram_secret_per_iteration_count() -> None:
    entry = one('"u" "pw"')
    assert entry.scram_secret() is entry.scram_secret()
    faster = entry.scram_secret(iterations=1000)
    assert faster.iterations == 1000 and scram_login(faster, "pw")


def test_pgbouncer_quoting_comments_and_extra_fields() -> None:
    authfile = parse_auth_file(
        '; a comment\n'
        '# also a comment here\n'
        '\n'
        '   "username1" "password" ...\n'
        '"a""b" "p""q"\r\n'
        '"tab"\t"x"   trailing words\n'
    )  # fmt: skip
    assert sorted(authfile.users()) == ['a"b', "tab", "username1"]
    assert authfile.get("username1").check_password("password")  # type: ignore[union-attr]
    assert authfile.get('a"b').check_password('p"q')  # type: ignore[union-attr]
    assert authfile.get("nobody") is None and "nobody" not in authfile and "tab" in authfile


def test_an_empty_password_lets_nobody_in() -> None:
    entry = one('"locked" ""')
    assert entry.kind == EMPTY
    assert not entry.can_md5_client() and not entry.can_scram_client()
    assert not entry.check_password("") and entry.upstream_password() is None
    with pytest.raises(ValueError):
        entry.scram_secret()


def test_a_later_line_wins_with_a_warning() -> None:
    authfile = parse_auth_file('"u" "one"\n"u" "two"\n', "users.txt")
    assert authfile.get("u").check_password("two")  # type: ignore[union-attr]
    assert authfile.warnings == ("users.txt:2: user 'u' also on users.txt:1; this wins",)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ('"ok" "pw"\nuser "pw"\n', 2, 'expected "user" "password"'),
        ('"unterminated "pw"\n', 1, "expected the password in quotes"),
        ('"open\n', 1, "closing double quote is missing"),
        ('"u"\n', 1, 'user "u": expected the password in quotes'),
        ('"u" "secret-pw\n', 1, 'user "u": unterminated password field'),
        ('"u" junk "pw"\n', 1, "expected the password in quotes"),
        ('"u" "SCRAM-SHA-256$4096:c2FsdA==$secret-pw"\n', 1, "malformed SCRAM secret"),
        ('"" "pw"\n', 1, "user name must be 1 to 127 bytes"),
        (f'"{"x" * 128}" "pw"\n', 1, "user name must be 1 to 127 bytes"),
        (f'"u" "{"x" * 65531}"\n', 1, "password longer than PgBouncer allows"),
    ],
)
def test_errors_name_file_and_line_never_the_secret(text: str, line: int, problem: str) -> None:
    with pytest.raises(AuthFileError) as info:
        parse_auth_file(text, "/etc/pgbouncer/userlist.txt")
    error = info.value
    assert (error.file, error.line) == ("/etc/pgbouncer/userlist.txt", line)
    assert str(error).startswith(f"/etc/pgbouncer/userlist.txt:{line}: ")
    assert problem in error.problem
    assert "secret-pw" not in str(error)


def test_reprs_show_no_secret() -> None:
    authfile = parse_auth_file(f'"p" "hunter2"\n"s" "{LIBPQ_SCRAM}"\n', "f")
    text = repr(authfile) + repr(list(authfile.entries.values()))
    assert "hunter2" not in text and "TfNm9X" not in text
    assert repr(authfile) == "AuthFile('f', 2 users)"


def test_load_auth_file(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_text('"alice" "pw"\n')
    authfile = load_auth_file(path)
    assert authfile.path == str(path) and authfile.get("alice").source == f"{path}:1"  # type: ignore[union-attr]
    path.write_bytes(b'"alice" "pw"\n"b\xffb" "pw"\n')
    with pytest.raises(AuthFileError) as info:
        load_auth_file(path)
    assert info.value.line == 2 and "UTF-8" in info.value.problem
    with pytest.raises(AuthFileError, match="cannot read"):
        load_auth_file(tmp_path / "missing.txt")
