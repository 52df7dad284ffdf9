"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it: secrets, client and server.

Theory of operation
-------------------
Both sides are sans-IO state machines over the SASL payloads (the bytes inside
AuthenticationSASLContinue/Final and SASLInitialResponse/SASLResponse)::

    client.client_first()          -> "n,,n=,r=<cnonce>"                 (SASLInitialResponse)
    server.client_first(data)      -> "r=<cnonce><snonce>,s=<salt>,i=<n>" (SASLContinue)
    client.server_first(data)      -> "c=biws,r=<nonce>,p=<proof>"       (SASLResponse)
    server.client_final(data)      -> "v=<server signature>"             (SASLFinal)
    client.server_final(data)      -> None, or AuthError

Postgres ignores the SCRAM user name (libpq sends ``n=``). Calls out of order, a malformed or
oversized message, and a wrong proof or signature raise :class:`AuthError`.

Channel binding (SCRAM-SHA-256-PLUS, RFC 5802 section 6 with RFC 5929 tls-server-end-point):
on a TLS connection the server is given the hash of its own certificate
(``ScramServer(secret, channel_binding=...)``) and the login offers both mechanisms. A client
that picks -PLUS sends the GS2 header ``p=tls-server-end-point,,`` and then proves, inside
``c=``, that it saw the same certificate (``base64(gs2 header + hash)``), so a man in the
middle terminating TLS cannot relay the exchange. Without TLS the server has no binding data
and refuses ``p=``; with TLS it refuses ``y,,`` (the client supports binding but was told the
server does not: somebody removed -PLUS from the offer). These refusals are
:class:`ChannelBindingError`.
A successful :class:`ScramServer` exposes the client's ClientKey, which lets the pooler log
in upstream with the same verifier without ever knowing the password (pass-through).

Passwords are normalised with SASLprep exactly as Postgres's ``pg_saslprep`` does (see
:func:`saslprep`), so secrets made here and by Postgres/libpq agree.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pooler.protocol.errors import INVALID_PASSWORD, PROTOCOL_VIOLATION, AuthError

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
MAX_ITERATIONS = 1_000_000
SALT_LENGTH = 16  # Postgres's SCRAM_DEFAULT_SALT_LEN
NONCE_BYTES = 18  # Postgres's SCRAM_RAW_NONCE_LEN
MAX_MESSAGE = 8192
MAX_NONCE = 1024
KEY_LENGTH = 32
GS2_HEADER = "n,,"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CBIND_TYPE = "tls-server-end-point"


class ChannelBindingError(AuthError):
    """The client's channel-binding choice does not fit this connection (not a bad password)."""


class InvalidSecret(AuthError, ValueError):
    """A stored SCRAM secret is malformed (a configuration problem, not a client's fault)."""


# -- SASLprep --------------------------------------------------------------------------------


def _raw(password: str) -> bytes:
    try:
        return password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return password.encode("utf-8", "surrogatepass")


def _prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def _bidi_ok(chars: list[str]) -> bool:
    if not any(stringprep.in_table_d1(ch) for ch in chars):
        return True
    if any(stringprep.in_table_d2(ch) for ch in chars):
        return False
    return stringprep.in_table_d1(chars[0]) and stringprep.in_table_d1(chars[-1])


def saslprep(password: str) -> bytes:
    """The password bytes SCRAM hashes, following Postgres's ``pg_saslprep``.

    ASCII passes unchanged. Otherwise: non-ASCII spaces become spaces, "commonly mapped to
    nothing" characters are dropped, the result is NFKC-normalised; if the mapped string is
    empty, holds a prohibited or unassigned (Unicode 3.2) character, or breaks the bidi
    rules, Postgres falls back to the raw password bytes, and so does this. (Like Postgres,
    the checks look at the mapped string before normalisation.)
    """
    if password.isascii():
        return password.encode("ascii")
    mapped = [
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    ]
    if not mapped or any(_prohibited(ch) for ch in mapped) or not _bidi_ok(mapped):
        return _raw(password)
    return unicodedata.normalize("NFKC", "".join(mapped)).encode("utf-8")


# -- keys and secrets ------------------------------------------------------------------------


def _check_iterations(iterations: int) -> None:
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise AuthError(
            f"SCRAM iteration count {iterations} out of range: must be 1 to {MAX_ITERATIONS}",
            PROTOCOL_VIOLATION,
        )


@lru_cache(maxsize=1024)
def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """SaltedPassword = PBKDF2-HMAC-SHA256(SASLprep(password), salt, iterations), cached."""
    _check_iterations(iterations)
    return hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)


try:  # what hmac.digest() and hmac.new() call, without their Python-level dispatch
    from _hashlib import hmac_digest as _hmac_digest
    from _hashlib import hmac_new as _hmac_new
except ImportError:  # pragma: no cover - CPython without OpenSSL
    _hmac_digest = hmac.digest  # type: ignore[assignment]
    _hmac_new = hmac.new  # type: ignore[assignment]


def _hmac(key: bytes, text: bytes) -> bytes:
    return _hmac_digest(key, text, "sha256")


def _keyed(key: bytes) -> Any:
    """HMAC-SHA-256 with ``key`` absorbed: :func:`_mac` of a copy skips the two key blocks
    and the digest lookup that :func:`_hmac` pays on every call (a third of its cost)."""
    return _hmac_new(key, digestmod="sha256")


def _mac(keyed: Any, text: bytes) -> bytes:
    """``_hmac(key, text)`` from ``_keyed(key)``."""
    mac = keyed.copy()
    mac.update(text)
    digest: bytes = mac.digest()
    return digest


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def client_key_of(salted: bytes) -> bytes:
    return _hmac(salted, b"Client Key")


def server_key_of(salted: bytes) -> bytes:
    return _hmac(salted, b"Server Key")


def _is_number(text: str) -> bool:
    """1 to 7 ASCII digits (str.isdigit alone also accepts digits int() refuses)."""
    return 0 < len(text) <= 7 and text.isascii() and text.isdigit()


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")  # base64.b64encode


def _unb64(text: str, what: str) -> bytes:
    try:  # base64.b64decode(validate=True), without its Python-level wrapper
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise AuthError(
            f"malformed SCRAM message: {what} is not valid base64", PROTOCOL_VIOLATION
        ) from None


@dataclass(frozen=True)
class ScramSecret:
    """A SCRAM-SHA-256 verifier as Postgres stores it in pg_authid.rolpassword."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes
    #: ",s=<salt>,i=<iterations>": the server-first-message after the nonce (derived, not
    #: compared or shown: set by __post_init__, once per secret instead of once per login).
    first_suffix: str = field(init=False, repr=False, compare=False)
    #: StoredKey and ServerKey as HMAC states (_keyed): every login computes an HMAC with each.
    stored_mac: Any = field(init=False, repr=False, compare=False)
    server_mac: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= MAX_ITERATIONS or not self.salt:
            raise InvalidSecret(
                "invalid SCRAM secret: bad iteration count or empty salt", PROTOCOL_VIOLATION
            )
        if len(self.stored_key) != KEY_LENGTH or len(self.server_key) != KEY_LENGTH:
            raise InvalidSecret("invalid SCRAM secret: keys must be 32 bytes", PROTOCOL_VIOLATION)
        object.__setattr__(self, "first_suffix", f",s={_b64(self.salt)},i={self.iterations}")
        object.__setattr__(self, "stored_mac", _keyed(self.stored_key))
        object.__setattr__(self, "server_mac", _keyed(self.server_key))

    def __repr__(self) -> str:
        salt = f"<{len(self.salt)} bytes>"
        return f"ScramSecret(iterations={self.iterations}, salt={salt}, keys=<redacted>)"

    def to_string(self) -> str:
        """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts)."""
        return (
            f"{MECHANISM}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )

    @classmethod
    def parse(cls, text: str) -> ScramSecret:
        """Read a stored secret; :class:`InvalidSecret` (never echoing it) when malformed."""
        try:
            mechanism, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored_key, server_key = keys.split(":")
            if mechanism != MECHANISM or not _is_number(iterations):
                raise ValueError
            return cls(
                int(iterations),
                _unb64(salt, "salt"),
                _unb64(stored_key, "StoredKey"),
                _unb64(server_key, "ServerKey"),
            )
        except (ValueError, AuthError):
            raise InvalidSecret(
                "invalid SCRAM secret: expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
                PROTOCOL_VIOLATION,
            ) from None


def is_scram_secret(text: str) -> bool:
    try:
        ScramSecret.parse(text)
    except InvalidSecret:
        return False
    return True


def make_secret(
    password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramSecret:
    """The verifier Postgres would store for ``password`` (random 16-byte salt by default)."""
    salt = os.urandom(SALT_LENGTH) if salt is None else bytes(salt)
    salted = salted_password(password, salt, iterations)
    return ScramSecret(
        iterations, salt, hashlib.sha256(client_key_of(salted)).digest(), server_key_of(salted)
    )


# -- message parsing -------------------------------------------------------------------------


def _malformed(what: str) -> AuthError:
    return AuthError(f"malformed SCRAM message: {what}", PROTOCOL_VIOLATION)


def _text(data: bytes, what: str) -> str:
    if len(data) > MAX_MESSAGE:
        raise _malformed(f"{what} is {len(data)} bytes, more than {MAX_MESSAGE}")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"{what} is not valid UTF-8") from None


def _attribute(part: str, name: str, what: str) -> str:
    if not part.startswith(name + "="):
        raise _malformed(f'expected attribute "{name}" in {what}')
    return part[2:]


def _check_extensions(parts: list[str], what: str) -> None:
    """Optional extension attributes: each must look like ``x=value``."""
    for part in parts:
        if len(part) < 2 or part[1] != "=" or not (part[0].isascii() and part[0].isalpha()):
            raise _malformed(f"invalid attribute {part[:20]!r} in {what}")


#: Printable ASCII (0x21-0x7E) except ',' (0x2C), 1 to MAX_NONCE characters.
_NONCE = re.compile(rf"[\x21-\x2b\x2d-\x7e]{{1,{MAX_NONCE}}}")
#: The client-first-message nearly every client sends (libpq: no channel binding, no
#: extensions, any user name): its nonce, checked in the same pass.
_PLAIN_FIRST = re.compile(rf"n,,n=[^,]*,r=([\x21-\x2b\x2d-\x7e]{{1,{MAX_NONCE}}})")


def _nonce_ok(nonce: str) -> bool:
    """A printable-ASCII nonce without commas, within bounds (RFC 5802 "printable")."""
    return _NONCE.fullmatch(nonce) is not None


def _escape_name(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _new_nonce() -> str:
    return _b64(os.urandom(NONCE_BYTES))


# -- client ----------------------------------------------------------------------------------


class ScramClient:
    """Client side, for logging in upstream with a password or a (ClientKey, ServerKey) pair."""

    def __init__(
        self,
        password: str | None = None,
        *,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
        nonce: str | None = None,
        username: str = "",
    ) -> None:
        if (password is None) == (client_key is None or server_key is None):
            raise ValueError("give either a password or both client_key and server_key")
        self._password = password
        self._client_key = client_key
        self._server_key = server_key
        self._nonce = nonce or _new_nonce()
        if not _nonce_ok(self._nonce):
            raise ValueError("a SCRAM nonce is 1 to 1024 printable characters without ','")
        self._first_bare = f"n={_escape_name(username)},r={self._nonce}"
        self._server_signature = b""
        self._state = "start"

    def __repr__(self) -> str:
        return f"ScramClient(state={self._state!r})"

    def _step(self, expected: str, following: str) -> None:
        if self._state != expected:
            raise AuthError(
                f"SCRAM exchange out of order (state {self._state})", PROTOCOL_VIOLATION
            )
        self._state = following

    def client_first(self) -> bytes:
        self._step("start", "first-sent")
        return (GS2_HEADER + self._first_bare).encode()

    def server_first(self, data: bytes) -> bytes:
        """Answer the server-first-message with the client-final-message (the proof)."""
        self._step("first-sent", "failed")
        server_first = _text(data, "server-first-message")
        nonce, salt, iterations = self._parse_server_first(server_first)
        client_key, server_key = self._keys(salt, iterations)
        without_proof = f"c={_b64(GS2_HEADER.encode())},r={nonce}"
        auth_message = f"{self._first_bare},{server_first},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        self._server_signature = _hmac(server_key, auth_message)
        self._state = "final-sent"
        return f"{without_proof},p={_b64(_xor(client_key, signature))}".encode()

    def _parse_server_first(self, text: str) -> tuple[str, bytes, int]:
        parts = text.split(",")
        if len(parts) < 3:
            raise _malformed("server-first-message needs r=, s= and i=")
        if parts[0].startswith("m="):
            raise _malformed("the server requires an unsupported SCRAM extension")
        nonce = _attribute(parts[0], "r", "server-first-message")
        if not _nonce_ok(nonce) or len(nonce) <= len(self._nonce):
            raise _malformed(
                f"server nonce must be {len(self._nonce) + 1} to {MAX_NONCE} printable characters"
            )
        if not hmac.compare_digest(nonce[: len(self._nonce)], self._nonce):
            raise _malformed("the server nonce does not start with the client nonce")
        salt = _unb64(_attribute(parts[1], "s", "server-first-message"), "salt")
        raw_iterations = _attribute(parts[2], "i", "server-first-message")
        if not salt:
            raise _malformed("empty salt")
        if not _is_number(raw_iterations):
            raise _malformed("iteration count is not a number from 1 to 1000000")
        iterations = int(raw_iterations)
        _check_iterations(iterations)
        _check_extensions(parts[3:], "server-first-message")
        return nonce, salt, iterations

    def _keys(self, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        if self._password is None:
            assert self._client_key is not None and self._server_key is not None
            return self._client_key, self._server_key
        salted = salted_password(self._password, salt, iterations)
        return client_key_of(salted), server_key_of(salted)

    def server_final(self, data: bytes) -> None:
        """Check the server's signature; AuthError if it is wrong or the server said e=."""
        self._step("final-sent", "failed")
        text = _text(data, "server-final-message")
        if text.startswith("e="):
            reason = "".join(c for c in text[2:200] if c.isprintable())
            raise AuthError(f"the server rejected the SCRAM exchange: {reason}")
        parts = text.split(",")
        signature = _unb64(_attribute(parts[0], "v", "server-final-message"), "server signature")
        _check_extensions(parts[1:], "server-final-message")
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthError(
                "SCRAM server signature mismatch: the server does not know the "
                "password (wrong secret, or a man in the middle)"
            )
        self._state = "done"

    @property
    def done(self) -> bool:
        return self._state == "done"


# -- server ----------------------------------------------------------------------------------


class ScramServer:
    """Server side, checking a client against a stored :class:`ScramSecret`."""

    def __init__(
        self, secret: ScramSecret, nonce: str | None = None, *, channel_binding: bytes | None = None
    ) -> None:
        self._secret = secret
        #: tls-server-end-point data of this connection (None: not TLS, -PLUS not offered).
        self._binding = channel_binding
        self._expected_c = b""
        if not nonce:
            self._suffix = _new_nonce()  # base64: always a valid nonce
        elif _nonce_ok(nonce):
            self._suffix = nonce
        else:
            raise ValueError("a SCRAM nonce is 1 to 1024 printable characters without ','")
        self._gs2_header = ""
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._final_prefix = ""  # the client-final-message up to the proof, as expected
        self._state = "start"
        #: The client's ClientKey, set after a successful exchange (for pass-through logins).
        self.client_key: bytes | None = None

    def __repr__(self) -> str:
        return f"ScramServer(state={self._state!r})"

    def _step(self, expected: str) -> None:
        if self._state != expected:
            raise AuthError(
                f"SCRAM exchange out of order (state {self._state})", PROTOCOL_VIOLATION
            )
        self._state = "failed"

    def client_first(self, data: bytes, plus: bool = False) -> bytes:
        """Answer the client-first-message with the server-first-message; ``plus`` is True
        when the client chose SCRAM-SHA-256-PLUS."""
        self._step("start")
        text = _text(data, "client-first-message")
        plain = None if plus else _PLAIN_FIRST.fullmatch(text)
        if plain is not None:  # what the general path below concludes, in one regex
            self._gs2_header, self._first_bare = GS2_HEADER, text[3:]
            self._expected_c = b"n,,"
            self._nonce = plain.group(1) + self._suffix
            self._final_prefix = f"c=biws,r={self._nonce},p="  # biws: base64 of n,,
        else:
            self._gs2_header, self._first_bare = _split_gs2(text)
            bound = _check_binding(self._gs2_header, self._binding, plus)
            binding = self._binding if bound and self._binding is not None else b""
            self._expected_c = self._gs2_header.encode() + binding
            self._nonce = _parse_first_bare(self._first_bare) + self._suffix
            self._final_prefix = f"c={_b64(self._expected_c)},r={self._nonce},p="
        self._server_first = f"r={self._nonce}{self._secret.first_suffix}"
        self._state = "first-sent"
        return self._server_first.encode()

    def client_final(self, data: bytes) -> bytes:
        """Check the client's proof; return the server-final-message ("v=...")."""
        self._step("first-sent")
        text = _text(data, "client-final-message")
        prefix = self._final_prefix
        if text.startswith(prefix) and "," not in text[len(prefix) :]:
            # The expected binding and nonce, no extension: all the checks below would pass.
            without_proof, raw_proof = prefix[:-3], text[len(prefix) :]
        else:
            without_proof, raw_proof = self._parse_final(text)
        proof = _unb64(raw_proof, "proof")
        if len(proof) != KEY_LENGTH:
            raise _malformed(f"proof is {len(proof)} bytes instead of {KEY_LENGTH}")
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        secret = self._secret
        client_key = _xor(proof, _mac(secret.stored_mac, auth_message))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), secret.stored_key):
            raise AuthError(
                "password authentication failed: the SCRAM proof does not match the stored secret",
                INVALID_PASSWORD,
            )
        self.client_key = client_key
        self._state = "done"
        return f"v={_b64(_mac(secret.server_mac, auth_message))}".encode()

    def _parse_final(self, text: str) -> tuple[str, str]:
        """(client-final-message without proof, base64 proof), checking the channel binding,
        the nonce and any extensions."""
        without_proof, sep, raw_proof = text.rpartition(",p=")
        if not sep:
            raise _malformed("client-final-message has no proof (p=)")
        parts = without_proof.split(",")
        binding = _unb64(_attribute(parts[0], "c", "client-final-message"), "channel binding")
        if not hmac.compare_digest(binding, self._expected_c):
            if self._gs2_header.startswith("p="):
                raise ChannelBindingError(
                    "SCRAM channel binding check failed: the client saw a different server "
                    "certificate (a man in the middle?)",
                    PROTOCOL_VIOLATION,
                )
            raise _malformed("channel binding data does not match the GS2 header")
        if len(parts) < 2 or _attribute(parts[1], "r", "client-final-message") != self._nonce:
            raise _malformed("nonce does not match the one the server sent")
        _check_extensions(parts[2:], "client-final-message")
        return without_proof, raw_proof

    @property
    def done(self) -> bool:
        return self._state == "done"


def _split_gs2(text: str) -> tuple[str, str]:
    """(gs2 header, client-first-message-bare): ``n,,``, ``y,,`` or ``p=<type>,,``; refuse
    an authzid."""
    flag = text[:1]
    if flag == "p" and text[1:2] == "=":
        start = text.find(",")
        if start < 0:
            raise _malformed("client-first-message GS2 header is not terminated")
    elif flag in ("n", "y") and text[1:2] == ",":
        start = 1
    else:
        raise _malformed("client-first-message must start with a GS2 header like n,,")
    authzid_end = text.find(",", start + 1)
    if authzid_end < 0:
        raise _malformed("client-first-message GS2 header is not terminated")
    if authzid_end != start + 1:
        raise AuthError(
            "SCRAM authorization identity (a=) is not supported: leave it empty", PROTOCOL_VIOLATION
        )
    return text[: authzid_end + 1], text[authzid_end + 1 :]


def _check_binding(gs2_header: str, binding: bytes | None, plus: bool) -> bool:
    """Whether the client binds to the channel; ChannelBindingError when its choice does not
    fit the mechanism it picked or this connection (rules of Postgres's auth-scram.c)."""
    flag = gs2_header[:1]
    if flag == "p":
        if binding is None:
            raise ChannelBindingError(
                "SCRAM channel binding is not supported on this connection (it is not TLS): "
                "connect with sslmode=require, or without channel binding "
                "(libpq: channel_binding=disable or prefer)",
                PROTOCOL_VIOLATION,
            )
        if not plus:
            raise ChannelBindingError(
                "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM "
                "message includes channel binding data",
                PROTOCOL_VIOLATION,
            )
        cbind_type = gs2_header[2:-2]
        if cbind_type != CBIND_TYPE:
            raise ChannelBindingError(
                f"unsupported SCRAM channel-binding type {cbind_type[:40]!r}: use {CBIND_TYPE}",
                PROTOCOL_VIOLATION,
            )
        return True
    if plus:
        raise ChannelBindingError(
            "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include "
            "channel binding data",
            PROTOCOL_VIOLATION,
        )
    if flag == "y" and binding is not None:
        raise ChannelBindingError(
            "SCRAM channel binding negotiation error: the client supports channel binding "
            "but thinks the server does not; it does here (was SCRAM-SHA-256-PLUS removed "
            "from the offer on the way?)",
            PROTOCOL_VIOLATION,
        )
    return False


def _parse_first_bare(bare: str) -> str:
    """The client nonce of a client-first-message-bare (the user name is ignored)."""
    parts = bare.split(",")
    if parts[0].startswith("m="):
        raise _malformed("the client requires an unsupported SCRAM extension")
    _attribute(parts[0], "n", "client-first-message")
    if len(parts) < 2:
        raise _malformed("client-first-message has no nonce (r=)")
    nonce = _attribute(parts[1], "r", "client-first-message")
    if not _nonce_ok(nonce):
        raise _malformed(f"client nonce must be 1 to {MAX_NONCE} printable characters")
    _check_extensions(parts[2:], "client-first-message")
    return nonce
