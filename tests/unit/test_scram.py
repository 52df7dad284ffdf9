"""SCRAM-SHA-256: the RFC 7677 vector, libpq-made secrets, paired client/server, hostile input."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooler.auth.scram import (
    MAX_MESSAGE,
    InvalidSecret,
    ScramClient,
    ScramSecret,
    ScramServer,
    make_secret,
    salted_password,
    saslprep,
)
from pooler.protocol.errors import AuthError

pytestmark = pytest.mark.unit

# RFC 7677, section 3.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_NONCE = RFC_CLIENT_NONCE + RFC_SERVER_NONCE
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = f"r={RFC_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode()
RFC_CLIENT_FINAL = f"c=biws,r={RFC_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".encode()
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# Made by libpq's PQencryptPasswordConn(conn, password, "user", "scram-sha-256"): the same
# code (src/common/scram-common.c, saslprep.c) as the PostgreSQL 15 server's CREATE ROLE.
LIBPQ_SECRETS = {
    "pencil": "SCRAM-SHA-256$4096:TfNm9XwM3bLOQYS1Spdnyg==$"
    "2hckFbOklvReeR+M/xdyjHojWqmsMgvLXAt3qZ6hnvo=:UYSyIEjgZuCEQlx8/4wkRlBKZPGbs24SJT6slXg7cc0=",
    # non-ASCII space, mapped to " "
    "pass\u00a0word": "SCRAM-SHA-256$4096:tRkO3t3hTLNI1PTl++P4YA==$"
    "4TygwrEBYry4dPoRNOvKfWyiBpDhLDkCIs8s7qzuvFw=:S2k34QgU5nkwBJphI5gyEyM348h+cpmazfZUT6aPcVM=",
    # soft hyphen, mapped to nothing
    "I\u00adX": "SCRAM-SHA-256$4096:ktGnX+Kvrl+F6OKsi/gz4g==$"
    "w4tLrqpn+H5lMKMEXbH7SCUcBPdqM4AXvOkHE/CpHQ0=:Ee6HnfRHD+S/q1nteWsYSLbC9Ozw97obWdxNOcasJ4M=",
    # ligature, NFKC-normalised to "file"
    "\ufb01le": "SCRAM-SHA-256$4096:c2+EMZx70TNMlGmcoMA0zw==$"
    "Ls6QwyMNeXpgqezXKFchyd2rQ8pURfJPKh5fjnFesnA=:3RHzWe9co6WS6VAlJLhhG22sBBQFVHDm+ogA+hdhZio=",
    # roman numeral four, NFKC-normalised to "IV"
    "\u2163x": "SCRAM-SHA-256$4096:U1jcSQXB8uT3iVXEz+ebvQ==$"
    "H4tNr76GIsNxGq7MrIkZVjVu5GN9BRtLP8xpZTdjZ8o=:uusMkD9dyvnHVvJUpKDtHzCk+Z92NZHxMLjJl+u9c3M=",
    # a control character makes SASLprep fail: the raw bytes are used
    "a\u0007b\u00e9": "SCRAM-SHA-256$4096:QX2MP8ZCX0hNswdDVdDdBg==$"
    "OPmssG+u4vWWmRQwRnbgKMVfA2RAZu85cY4ZApylPz4=:ei3HjzceoM3ftX5c4aS6YmLebl4rO5wYH8IWeEJMKc4=",
    # right-to-left then a digit breaks the bidi rule: raw bytes
    "\u06271": "SCRAM-SHA-256$4096:TWskRe0uIdj7se/6t1c/Cw==$"
    "+kc+XHuv1vkj9gaiS07Llrg+WMc987sQAfMvzQxrjjE=:pT1Iq9ujzCg7cL63/q5m5+UdUMEAmIkuE9KSKrGSYhM=",
    # only a mapped-to-nothing character: empty after mapping, raw bytes
    "\u00ad": "SCRAM-SHA-256$4096:awvvyGtBc2XOkXzPSLhahQ==$"
    "+QOg2Gr2hd/GIG51bBVTcdCRr3V1l0nOlVDY489b+Z0=:WQ1JZOlC2SyLfVMLA9im8tHg6O2N4gCqME7qUguw+t4=",
}


def rfc_secret() -> ScramSecret:
    return make_secret("pencil", RFC_SALT, 4096)


def exchange(client: ScramClient, server: ScramServer) -> None:
    client.server_final(server.client_final(client.server_first(server.client_first(
        client.client_first()))))  # fmt: skip


def failing(call, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(AuthError) as info:
        call(*args)
    return info.value


# -- RFC 7677 --------------------------------------------------------------------------------


def test_rfc7677_vector_client_side() -> None:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE, username="user")
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.server_final(RFC_SERVER_FINAL)
    assert client.done


def test_rfc7677_vector_server_side() -> None:
    server = ScramServer(rfc_secret(), nonce=RFC_SERVER_NONCE)
    assert server.client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.done
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    assert server.client_key == hmac.new(salted, b"Client Key", "sha256").digest()


def test_rfc7677_wrong_signature_refused() -> None:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE, username="user")
    client.client_first()
    client.server_first(RFC_SERVER_FIRST)
    error = failing(client.server_final, b"v=" + base64.b64encode(b"\x00" * 32))
    assert "signature mismatch" in error.message
    assert not client.done


def test_postgres_flavour_client_first() -> None:
    client = ScramClient("pw")
    first = client.client_first()
    assert first.startswith(b"n,,n=,r=")
    nonce = first[len(b"n,,n=,r=") :]
    assert len(base64.b64decode(nonce, validate=True)) == 18
    assert ScramClient("pw").client_first() != first


def test_username_is_escaped() -> None:
    assert ScramClient("pw", nonce="abc", username="a=b,c").client_first() == (
        b"n,,n=a=3Db=2Cc,r=abc"
    )


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("password", list(LIBPQ_SECRETS))
def test_make_secret_reproduces_libpq(password: str) -> None:
    text = LIBPQ_SECRETS[password]
    secret = ScramSecret.parse(text)
    assert secret.iterations == 4096 and len(secret.salt) == 16
    assert make_secret(password, secret.salt, secret.iterations) == secret
    assert secret.to_string() == text


def test_saslprep_like_postgres() -> None:
    assert saslprep("pencil") == b"pencil"
    assert saslprep("a\u0007b") == b"a\x07b"  # ASCII passes untouched, controls included
    assert saslprep("pass\u00a0word") == b"pass word"
    assert saslprep("I\u00adX") == b"IX"
    assert saslprep("\ufb01le") == b"file"
    assert saslprep("a\u0007b\u00e9") == "a\u0007b\u00e9".encode()  # prohibited: raw bytes
    assert saslprep("\u00ad") == b"\xc2\xad"  # empty after mapping: raw bytes
    assert saslprep("\u05d0\u05d1") == "\u05d0\u05d1".encode()  # valid right-to-left
    assert saslprep("x\udcff") == b"x\xff"  # surrogate-escaped raw byte comes back out


def test_make_secret_defaults() -> None:
    first, second = make_secret("pw"), make_secret("pw")
    assert first.iterations == 4096 and len(first.salt) == 16
    assert first.salt != second.salt and first.stored_key != second.stored_key


def test_secret_repr_redacts_keys() -> None:
    secret = ScramSecret.parse(LIBPQ_SECRETS["pencil"])
    text = repr(secret) + str(secret)
    for part in (secret.stored_key, secret.server_key, secret.salt):
        assert base64.b64encode(part).decode() not in text
        assert repr(part) not in text
    assert "4096" in text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "md5abc",
        "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5",  # keys not 32 bytes
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$10000000:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$\u00b2:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:!!!!$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=$extra",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "\u00e9" * 44,
    ],
)
def test_secret_parse_malformed(text: str) -> None:
    with pytest.raises(InvalidSecret) as info:
        ScramSecret.parse(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AuthError)
    assert "A" * 20 not in info.value.message  # the secret is never echoed


def test_secret_constructor_validates() -> None:
    with pytest.raises(InvalidSecret):
        ScramSecret(4096, b"salt", b"short", b"k" * 32)
    with pytest.raises(InvalidSecret):
        ScramSecret(0, b"salt", b"k" * 32, b"k" * 32)


def test_salted_password_is_cached_and_bounded() -> None:
    salt = b"cache-test-salt"
    before = salted_password.cache_info().hits
    first = salted_password("pw", salt, 4096)
    assert salted_password("pw", salt, 4096) == first
    assert salted_password.cache_info().hits == before + 1
    assert first == hashlib.pbkdf2_hmac("sha256", b"pw", salt, 4096)
    for iterations in (0, -1, 1_000_001):
        assert failing(salted_password, "pw", salt, iterations).sqlstate == "08P01"


# -- paired in memory ------------------------------------------------------------------------


def test_pair_succeeds_with_right_password() -> None:
    secret = make_secret("correct horse", iterations=64)
    client, server = ScramClient("correct horse"), ScramServer(secret)
    exchange(client, server)
    assert client.done and server.done and server.client_key is not None


def test_pair_fails_with_wrong_password() -> None:
    server = ScramServer(make_secret("correct horse", iterations=64))
    client = ScramClient("battery staple")
    final = client.server_first(server.client_first(client.client_first()))
    error = failing(server.client_final, final)
    assert error.sqlstate == "28P01"
    assert "password authentication failed" in error.message
    assert server.client_key is None and not server.done
    assert failing(server.client_final, final).sqlstate == "08P01"  # no second try


def test_pair_succeeds_with_non_ascii_password() -> None:
    secret = ScramSecret.parse(LIBPQ_SECRETS["\ufb01le"])
    exchange(ScramClient("\ufb01le"), ScramServer(secret))
    exchange(ScramClient("file"), ScramServer(secret))  # same after SASLprep


def test_pass_through_login() -> None:
    secret = make_secret("s3cret", iterations=64)
    front = ScramServer(secret)
    exchange(ScramClient("s3cret"), front)
    assert front.client_key is not None
    upstream = ScramClient(client_key=front.client_key, server_key=secret.server_key)
    exchange(upstream, ScramServer(secret))
    assert upstream.done


def test_pass_through_detects_an_impostor_server() -> None:
    secret = make_secret("s3cret", iterations=64)
    client = ScramClient(client_key=b"\x01" * 32, server_key=b"\x02" * 32)
    server = ScramServer(secret)
    final = client.server_first(server.client_first(client.client_first()))
    failing(server.client_final, final)  # wrong client key
    impostor = ScramServer(make_secret("other", iterations=64))
    client = ScramClient(client_key=b"\x01" * 32, server_key=secret.server_key)
    # an impostor who does not know the ServerKey cannot sign: even if it accepted the proof
    client.server_first(impostor.client_first(client.client_first()))
    assert "signature mismatch" in failing(client.server_final, b"v=" + b"A" * 43 + b"=").message


def test_client_constructor_needs_one_credential() -> None:
    for kwargs in ({}, {"client_key": b"k" * 32}, {"server_key": b"k" * 32}):
        with pytest.raises(ValueError):
            ScramClient(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ScramClient("pw", client_key=b"k" * 32, server_key=b"k" * 32)
    with pytest.raises(ValueError):
        ScramClient("pw", nonce="has,comma")


# -- client against a hostile server ---------------------------------------------------------


def started_client() -> ScramClient:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
    client.client_first()
    return client


@pytest.mark.parametrize(
    "server_first",
    [
        b"",
        b"r=rOprNGfwEbeRWgbNEkqOxyz",
        b"r=someoneelse123456789,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # nothing appended
        b"r=rOprNGfwEbeRWgbNEkqOx,y,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOx y,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=not base64!,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1000001",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=\xc2\xb2",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=",
        b"r=rOprNGfwEbeRWgbNEkqOx,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        b"r=rOprNGfwEbeRWgbNEkqO\xff,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,garbage",
    ],
)
def test_client_refuses_bad_server_first(server_first: bytes) -> None:
    failing(started_client().server_first, server_first)


def test_client_refuses_huge_server_nonce() -> None:
    # CVE-2026-6665: a malicious server's huge nonce.
    nonce = RFC_CLIENT_NONCE + "x" * 1100
    error = failing(started_client().server_first, f"r={nonce},s=c2FsdA==,i=1".encode())
    assert "1024" in error.message


def test_client_refuses_huge_message() -> None:
    message = b"r=" + RFC_CLIENT_NONCE.encode() + b"x,s=c2FsdA==,i=1," + b"x=" * MAX_MESSAGE
    assert str(MAX_MESSAGE) in failing(started_client().server_first, message).message


def test_client_reports_server_error() -> None:
    client = started_client()
    client.server_first(RFC_SERVER_FIRST)
    error = failing(client.server_final, b"e=invalid-proof")
    assert "invalid-proof" in error.message


@pytest.mark.parametrize(
    "final", [b"", b"x=1", b"v=!!!", b"v=" + b"A" * 44, b"\xff", RFC_SERVER_FINAL + b",junk"]
)
def test_client_refuses_bad_server_final(final: bytes) -> None:
    client = started_client()
    client.server_first(RFC_SERVER_FIRST)
    failing(client.server_final, final)


def test_client_out_of_order() -> None:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
    failing(client.server_first, RFC_SERVER_FIRST)
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
    failing(client.server_final, RFC_SERVER_FINAL)
    client.client_first()
    failing(client.client_first)
    failing(client.server_final, RFC_SERVER_FINAL)
    client = started_client()
    client.server_first(RFC_SERVER_FIRST)
    failing(client.server_first, RFC_SERVER_FIRST)


def test_client_dead_after_failure() -> None:
    client = started_client()
    failing(client.server_first, b"garbage")
    failing(client.server_first, RFC_SERVER_FIRST)


# -- server against a hostile client ---------------------------------------------------------


def rfc_server() -> ScramServer:
    return ScramServer(rfc_secret(), nonce=RFC_SERVER_NONCE)


def test_server_refuses_channel_binding() -> None:
    error = failing(rfc_server().client_first, b"p=tls-server-end-point,,n=,r=abc")
    assert "channel binding is not supported" in error.message


def test_server_accepts_y_flag_and_checks_binding_data() -> None:
    first_bare = b"n=,r=" + RFC_CLIENT_NONCE.encode()
    server = rfc_server()
    server_first = server.client_first(b"y,," + first_bare)
    # c= must carry the GS2 header of the first message: base64("y,,") is "eSws", not "biws"
    assert "channel binding" in failing(server.client_final, RFC_CLIENT_FINAL).message
    server = rfc_server()
    assert server.client_first(b"y,," + first_bare) == server_first
    without_proof = b"c=eSws,r=" + RFC_NONCE.encode()
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    auth_message = first_bare + b"," + server_first + b"," + without_proof
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_final = server.client_final(without_proof + b",p=" + base64.b64encode(proof))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    expected = hmac.new(server_key, auth_message, "sha256").digest()
    assert server_final == b"v=" + base64.b64encode(expected)
    assert server.client_key == client_key


@pytest.mark.parametrize(
    "first",
    [
        b"",
        b"n",
        b"n,",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,",
        b"n,,n=",
        b"n,,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=a,b",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,x=abc",
        b"n,,n=,r=" + b"a" * 1025,
        b"n,,n=\xff,r=abc",
        b"n,,n=,r=\x01bc",
        b"n,,n=,r=abc" + b"," * MAX_MESSAGE,
    ],
)
def test_server_refuses_bad_client_first(first: bytes) -> None:
    failing(rfc_server().client_first, first)


def test_server_ignores_extensions_after_nonce() -> None:
    assert rfc_server().client_first(b"n,,n=,r=abc,x=ext").startswith(b"r=abc" + b"%hvY")


@pytest.mark.parametrize(
    "final",
    [
        b"",
        b"c=biws",
        b"c=biws,r=" + RFC_NONCE.encode(),  # no proof
        b"c=biws,r=" + RFC_NONCE.encode() + b",p=",
        b"c=biws,r=" + RFC_NONCE.encode() + b",p=!!!",
        b"c=biws,r=" + RFC_NONCE.encode() + b",p=" + base64.b64encode(b"x" * 31),
        b"c=biws,r=wrongnonce,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=eSws,r=" + RFC_NONCE.encode() + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=!!,r=" + RFC_NONCE.encode() + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"r=" + RFC_NONCE.encode() + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        RFC_CLIENT_FINAL + b"," * MAX_MESSAGE,
        RFC_CLIENT_FINAL[:-2] + b"\xff=",
        RFC_CLIENT_FINAL.replace(b",p=", b",junk,p="),
    ],
)
def test_server_refuses_bad_client_final(final: bytes) -> None:
    server = rfc_server()
    server.client_first(RFC_CLIENT_FIRST)
    failing(server.client_final, final)
    assert server.client_key is None


def test_server_out_of_order() -> None:
    failing(rfc_server().client_final, RFC_CLIENT_FINAL)
    server = rfc_server()
    server.client_first(RFC_CLIENT_FIRST)
    failing(server.client_first, RFC_CLIENT_FIRST)
    server = rfc_server()
    server.client_first(RFC_CLIENT_FIRST)
    server.client_final(RFC_CLIENT_FINAL)
    failing(server.client_final, RFC_CLIENT_FINAL)


def test_server_nonce_is_random_by_default() -> None:
    first = ScramServer(rfc_secret()).client_first(RFC_CLIENT_FIRST)
    second = ScramServer(rfc_secret()).client_first(RFC_CLIENT_FIRST)
    assert first != second
    nonce = first.split(b",")[0][2:]
    assert nonce.startswith(RFC_CLIENT_NONCE.encode())
    assert len(base64.b64decode(nonce[len(RFC_CLIENT_NONCE) :], validate=True)) == 18


# -- fuzz ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_server_arbitrary_input_raises_only_auth_error(data: bytes) -> None:
    for step in ("first", "final"):
        server = rfc_server()
        try:
            if step == "final":
                server.client_first(RFC_CLIENT_FIRST)
                server.client_final(data)
            else:
                server.client_first(data)
        except AuthError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["r=" + RFC_NONCE, "r=" + RFC_CLIENT_NONCE, "s=W22ZaJ0SNY7soEsUEjb6gQ==", "s=",
             "i=4096", "i=0", "i=1", "m=x", "e=no", "v=", "c=biws", "", "=", "r=", "s=!"]
        ) | st.text(max_size=12),
        max_size=5,
    ),
    st.binary(max_size=50),
)  # fmt: skip
def test_client_arbitrary_input_raises_only_auth_error(parts: list[str], raw: bytes) -> None:
    for data in (",".join(parts).encode("utf-8", "surrogatepass"), raw):
        client = started_client()
        try:
            client.server_first(data)
            client.server_final(data)
        except AuthError:
            pass
