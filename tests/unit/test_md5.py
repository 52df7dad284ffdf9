"""MD5 authentication against libpq's own secrets and an independent computation."""

from __future__ import annotations

import hashlib

import pytest

from pooler.auth.md5 import (
    Md5Server,
    is_md5_secret,
    md5_response,
    md5_secret,
    verify_md5_response,
)
from pooler.protocol.errors import AuthError

pytestmark = pytest.mark.unit

# Produced by libpq's PQencryptPasswordConn(conn, password, user, "md5").
LIBPQ_SECRETS = [
    ("postgres", "secret", "md553f48b7c4b76a86ce72276c5755f217d"),
    ("user", "pencil", "md520c46e3762c864548e296b33c3406aa9"),
]

SALT = b"\x93\x1f\x00\xff"


def independent_response(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.new("md5")
    inner.update(password.encode())
    inner.update(user.encode())
    outer = hashlib.new("md5")
    outer.update(inner.hexdigest().encode())
    outer.update(salt)
    return b"md5" + outer.hexdigest().encode()


@pytest.mark.parametrize(("user", "password", "secret"), LIBPQ_SECRETS)
def test_md5_secret_matches_libpq(user: str, password: str, secret: str) -> None:
    assert md5_secret(user, password) == secret
    assert is_md5_secret(secret)


def test_md5_secret_non_ascii_is_utf8() -> None:
    expected = "md5" + hashlib.md5("pässwörd".encode() + "ü".encode()).hexdigest()
    assert md5_secret("ü", "pässwörd") == expected


@pytest.mark.parametrize(("user", "password", "secret"), LIBPQ_SECRETS)
def test_md5_response_from_password_or_secret(user: str, password: str, secret: str) -> None:
    expected = independent_response(user, password, SALT)
    assert md5_response(user, password, SALT) == expected
    assert md5_response(user, secret, SALT) == expected
    assert len(expected) == 35 and b"\x00" not in expected


def test_verify_md5_response() -> None:
    secret = md5_secret("app.t1", "secret")
    good = independent_response("app.t1", "secret", SALT)
    assert verify_md5_response(secret, SALT, good)
    assert not verify_md5_response(secret, SALT, independent_response("app.t1", "Secret", SALT))
    assert not verify_md5_response(secret, SALT, independent_response("app", "secret", SALT))
    assert not verify_md5_response(secret, b"\x00\x00\x00\x00", good)
    assert not verify_md5_response(secret, SALT, good + b"\x00")
    assert not verify_md5_response(secret, SALT, b"")
    assert not verify_md5_response("secret", SALT, good)  # not an MD5 secret: never verifies
    assert not verify_md5_response(secret, b"abc", good)


def test_is_md5_secret_like_postgres() -> None:
    assert not is_md5_secret("md5" + "A" * 32)  # Postgres's isMD5 wants lowercase hex
    assert not is_md5_secret("md5" + "0" * 31)
    assert not is_md5_secret("MD5" + "0" * 32)
    assert not is_md5_secret("md5" + "g" * 32)
    assert is_md5_secret("md5" + "0123456789abcdef" * 2)


def test_md5_response_refuses_bad_salt() -> None:
    with pytest.raises(AuthError) as info:
        md5_response("u", "p", b"\x01\x02\x03")
    assert info.value.sqlstate == "08P01"


def test_md5_server() -> None:
    server = Md5Server(md5_secret("u.t", "pw"))
    assert len(server.salt) == 4
    assert "pw" not in repr(server) and md5_secret("u.t", "pw") not in repr(server)
    server.verify(md5_response("u.t", "pw", server.salt))
    with pytest.raises(AuthError):
        server.verify(md5_response("u.t", "pw", server.salt))  # one exchange only


def test_md5_server_wrong_password() -> None:
    server = Md5Server(md5_secret("u.t", "pw"), salt=SALT)
    with pytest.raises(AuthError) as info:
        server.verify(md5_response("u.t", "wrong", SALT))
    assert info.value.sqlstate == "28P01"


def test_md5_server_salts_differ() -> None:
    salts = {Md5Server("md5" + "0" * 32).salt for _ in range(20)}
    assert len(salts) > 1
