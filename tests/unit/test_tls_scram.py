"""SCRAM-SHA-256-PLUS (tls-server-end-point channel binding), byte for byte, and its refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pooler.auth.scram import ChannelBindingError, ScramServer, make_secret
from pooler.protocol.errors import AuthError

pytestmark = pytest.mark.unit

PASSWORD = "pencil"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
NONCE = CLIENT_NONCE + SERVER_NONCE
#: Channel-binding data: what SHA-256 of a (made-up) DER certificate would be.
CBIND = hashlib.sha256(b"a DER certificate").digest()
GS2_PLUS = b"p=tls-server-end-point,,"
CLIENT_FIRST_PLUS = GS2_PLUS + b"n=,r=" + CLIENT_NONCE.encode()
SERVER_FIRST = f"r={NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode()
# c= is base64(gs2 header + binding data); spelled out so a change in either shows up.
C_PLUS = b"c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsD0oiixOFkNYTkM8FaUtf43QA6452k7GVOlfcpQZXg7M="


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _client_final(c_attr: bytes, password: str = PASSWORD) -> tuple[bytes, bytes]:
    """(client-final-message, expected server-final-message), computed from RFC 5802 alone."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, 4096)
    client_key = _hmac(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = c_attr + b",r=" + NONCE.encode()
    auth_message = CLIENT_FIRST_PLUS[len(GS2_PLUS) :] + b"," + SERVER_FIRST + b"," + without_proof
    signature = _hmac(stored_key, auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
    return (
        without_proof + b",p=" + base64.b64encode(proof),
        b"v=" + base64.b64encode(server_signature),
    )


def _server(binding: bytes | None = CBIND) -> ScramServer:
    return ScramServer(make_secret(PASSWORD, SALT), SERVER_NONCE, channel_binding=binding)


def test_c_attribute_is_gs2_header_plus_binding_data() -> None:
    assert base64.b64decode(C_PLUS[2:]) == GS2_PLUS + CBIND


def test_plus_exchange_byte_for_byte() -> None:
    server = _server()
    assert server.client_first(CLIENT_FIRST_PLUS, plus=True) == SERVER_FIRST
    client_final, server_final = _client_final(C_PLUS)
    assert server.client_final(client_final) == server_final
    assert server.done


def test_plus_with_another_certificate_hash_fails() -> None:
    server = _server()
    server.client_first(CLIENT_FIRST_PLUS, plus=True)
    other = b"c=" + base64.b64encode(GS2_PLUS + hashlib.sha256(b"other cert").digest())
    client_final, _ = _client_final(other)
    with pytest.raises(ChannelBindingError, match="different server certificate"):
        server.client_final(client_final)


def test_plus_with_the_plain_c_attribute_fails() -> None:
    server = _server()
    server.client_first(CLIENT_FIRST_PLUS, plus=True)
    client_final, _ = _client_final(b"c=" + base64.b64encode(GS2_PLUS))
    with pytest.raises(ChannelBindingError):
        server.client_final(client_final)


def test_no_binding_over_tls_still_works() -> None:
    """channel_binding=disable (n,,) or an old client: plain SCRAM on a TLS connection."""
    server = _server()
    first = b"n,,n=,r=" + CLIENT_NONCE.encode()
    assert server.client_first(first) == SERVER_FIRST
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), SALT, 4096)
    client_key = _hmac(salted, b"Client Key")
    without_proof = b"c=biws,r=" + NONCE.encode()
    auth = first[3:] + b"," + SERVER_FIRST + b"," + without_proof
    proof = bytes(
        a ^ b
        for a, b in zip(client_key, _hmac(hashlib.sha256(client_key).digest(), auth), strict=True)
    )
    final = server.client_final(without_proof + b",p=" + base64.b64encode(proof))
    assert final == b"v=" + base64.b64encode(_hmac(_hmac(salted, b"Server Key"), auth))


@pytest.mark.parametrize(
    ("binding", "first", "plus", "message"),
    [
        (None, CLIENT_FIRST_PLUS, True, "not supported on this connection"),
        (None, CLIENT_FIRST_PLUS, False, "not supported on this connection"),
        (CBIND, CLIENT_FIRST_PLUS, False, "without channel binding, but"),
        (CBIND, b"n,,n=,r=abc", True, "does not include channel binding data"),
        (CBIND, b"y,,n=,r=abc", True, "does not include channel binding data"),
        (CBIND, b"y,,n=,r=abc", False, "negotiation error"),
        (CBIND, b"p=tls-unique,,n=,r=abc", True, "unsupported SCRAM channel-binding type"),
    ],
    ids=["plus-plaintext", "p-plaintext", "p-without-plus", "n-with-plus", "y-with-plus",
         "y-over-tls", "tls-unique"],
)  # fmt: skip
def test_binding_choices_that_do_not_fit(
    binding: bytes | None, first: bytes, plus: bool, message: str
) -> None:
    with pytest.raises(ChannelBindingError, match=message) as info:
        _server(binding).client_first(first, plus=plus)
    assert info.value.sqlstate == "08P01"


def test_y_without_tls_is_fine() -> None:
    """The client supports binding and the server (no TLS) does not: no downgrade."""
    assert _server(None).client_first(b"y,,n=,r=" + CLIENT_NONCE.encode()) == SERVER_FIRST


@pytest.mark.parametrize(
    "first", [b"p=,n=,r=abc", b"p=tls-server-end-point", b"p=tls-server-end-point,a=x,n=,r=abc"]
)
def test_malformed_gs2_headers(first: bytes) -> None:
    with pytest.raises(AuthError):
        _server().client_first(first, plus=True)
