"""Fuzzing authentication parsing with Hypothesis: SCRAM messages on both sides, the login
message decoders, and the auth_query result decoding.

Only AuthError (SCRAM) or ProtocolError (messages) may escape. A SCRAM pass-through
login (ClientKey recovered from the client's proof) must agree with a password login.
Budget: the "fuzz-ci" profile; ``HYPOTHESIS_PROFILE=long`` for a long run.
"""

from __future__ import annotations

import base64
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pooler.auth.scram import ScramClient, ScramServer, make_secret
from pooler.authquery import parse_data_row, verifier_of
from pooler.protocol import builders, parsers
from pooler.protocol.errors import AuthError, ProtocolError

pytestmark = pytest.mark.unit

settings.register_profile(
    "fuzz-ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci"))
if FUZZ is settings.get_profile("default"):
    FUZZ = settings.get_profile("fuzz-ci")

SECRET = make_secret("fuzzPw", salt=b"0123456789abcdef", iterations=16)


def scram_text() -> st.SearchStrategy[bytes]:
    """Mostly SCRAM-shaped attribute lists, sometimes raw bytes."""
    attr = st.tuples(
        st.sampled_from(list("nrcpsiemvay")), st.text(max_size=30).map(lambda t: t.replace(",", ""))
    ).map(lambda kv: f"{kv[0]}={kv[1]}")
    shaped = st.lists(attr, max_size=6).map(lambda parts: ",".join(parts).encode())
    gs2 = st.sampled_from(["n,,", "y,,", "p=tls-server-end-point,,", "n,a=x,", ""])
    first = st.tuples(gs2, shaped).map(lambda t: t[0].encode() + t[1])
    return st.one_of(first, shaped, st.binary(max_size=120))


@FUZZ
@given(scram_text(), scram_text())
def test_scram_server_raises_only_auth_error(first: bytes, final: bytes) -> None:
    server = ScramServer(SECRET)
    try:
        server.client_first(first)
        server.client_final(final)
    except AuthError:
        return
    pytest.fail("a random client-final-message passed the proof check")


@FUZZ
@given(scram_text(), scram_text())
def test_scram_client_raises_only_auth_error(first: bytes, final: bytes) -> None:
    client = ScramClient("fuzzPw")
    nonce = client.client_first().decode().split("r=", 1)[1]
    for server_first in (first, f"r={nonce}".encode() + first):
        client = ScramClient("fuzzPw", nonce=nonce)
        client.client_first()
        try:
            client.server_first(server_first)
            client.server_final(final)
        except AuthError:
            continue
        pytest.fail("a random server-final-message passed the signature check")


@FUZZ
@given(st.integers(1, 4096), st.integers(1, 200))
def test_scram_client_rejects_long_or_foreign_server_nonces(extra: int, offset: int) -> None:
    """CVE-2026-6665: a huge server nonce is refused cleanly, whatever its length."""
    client = ScramClient("fuzzPw")
    nonce = client.client_first().decode().split("r=", 1)[1]
    salt = base64.b64encode(b"salt").decode()
    reply = f"r={nonce}{'x' * extra},s={salt},i=16".encode()
    try:
        client.server_first(reply)
    except AuthError:
        assert len(nonce) + extra > 1024
    else:
        assert len(nonce) + extra <= 1024


@FUZZ
@given(st.text(min_size=1, max_size=20).filter(lambda t: "\0" not in t))
def test_scram_pass_through_matches_a_password_login(password: str) -> None:
    """The ClientKey a server recovers from a proof logs in like the password itself."""
    secret = make_secret(password, iterations=16)
    client = ScramClient(password)
    gate = ScramServer(secret)
    gate.client_final(gate_first := client.server_first(gate.client_first(client.client_first())))
    assert gate.client_key is not None and gate_first
    upstream = ScramServer(secret)
    relay = ScramClient(client_key=gate.client_key, server_key=secret.server_key)
    final = upstream.client_final(relay.server_first(upstream.client_first(relay.client_first())))
    relay.server_final(final)
    assert relay.done and upstream.done


@FUZZ
@given(st.binary(max_size=200))
def test_login_message_decoders_raise_only_protocol_error(body: bytes) -> None:
    for decode in (
        parsers.parse_error_fields,
        parsers.parse_authentication,
        parsers.parse_parameter_status,
        parsers.parse_backend_key_data,
        parsers.parse_ready_for_query,
        parsers.parse_password_message,
        parsers.parse_sasl_initial_response,
        parse_data_row,
    ):
        try:
            decode(body)
        except ProtocolError:
            pass


@FUZZ
@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=8))
def test_data_row_round_trip(values: list[str | None]) -> None:
    row = builders.data_row(values)
    decoded = parse_data_row(row[5:])
    assert decoded == [None if v is None else v.encode() for v in values]


@FUZZ
@given(
    st.lists(st.lists(st.one_of(st.none(), st.binary(max_size=120)), max_size=3), max_size=2),
    st.lists(st.lists(st.sampled_from([b"t", b"f", None]), max_size=1), max_size=2),
)
def test_verifier_of_never_crashes(
    rows: list[list[bytes | None]], expiry: list[list[bytes | None]]
) -> None:
    found = verifier_of(rows, expiry)
    if found is not None:
        assert expiry[0][0] == b"f"


def test_verifier_of_reads_postgres_secrets() -> None:
    scram = SECRET.to_string().encode()
    md5 = b"md5" + b"0" * 32
    assert verifier_of([[b"u", scram]], [[b"f"]]).scram == SECRET  # type: ignore[union-attr]
    assert verifier_of([[b"u", md5]], [[b"f"]]).md5 == md5.decode()  # type: ignore[union-attr]
    assert verifier_of([[b"u", scram]], [[b"t"]]) is None  # expired
    assert verifier_of([[b"u", scram]], []) is None  # no such role
    assert verifier_of([], [[b"f"]]) is None  # no row
    assert verifier_of([[b"u", None]], [[b"f"]]) is None  # no password
    assert verifier_of([[b"u", b"plaintext"]], [[b"f"]]) is None  # unusable secret


def test_data_row_refuses_overruns() -> None:
    for body in (
        struct.pack("!h", 1),
        struct.pack("!hi", 1, 10) + b"abc",
        struct.pack("!hi", 1, -2),
        struct.pack("!h", -1),
        struct.pack("!hi", 1, 1) + b"ab",
    ):
        with pytest.raises(ProtocolError):
            parse_data_row(body)
