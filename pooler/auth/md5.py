"""MD5 password authentication: the stored secret, the client's reply and its check.

Postgres stores ``"md5" + md5(password + user)`` and challenges with a 4-byte salt; the
client answers ``"md5" + md5(md5hex(password + user) + salt)``. Strings are UTF-8 encoded
(``surrogateescape``: a password decoded from raw bytes that way hashes as those bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from pooler.protocol.errors import PROTOCOL_VIOLATION, AuthError

SALT_LENGTH = 4
_SECRET_LENGTH = 35
_HEX = frozenset("0123456789abcdef")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def is_md5_secret(text: str) -> bool:
    """True for what Postgres's isMD5() accepts: "md5" and 32 lowercase hex digits."""
    return len(text) == _SECRET_LENGTH and text.startswith("md5") and set(text[3:]) <= _HEX


def md5_secret(user: str, password: str) -> str:
    """What Postgres stores for ``password`` of ``user`` (``"md5" + md5(password + user)``)."""
    return "md5" + hashlib.md5(_encode(password) + _encode(user)).hexdigest()


def md5_response(user: str, secret_or_password: str, salt: bytes) -> bytes:
    """The client's answer to a salt, from the cleartext password or its "md5..." secret.

    ASCII bytes without the NUL that ends the PasswordMessage.
    """
    if len(salt) != SALT_LENGTH:
        raise AuthError(
            f"invalid MD5 salt: {len(salt)} bytes instead of {SALT_LENGTH}", PROTOCOL_VIOLATION
        )
    if is_md5_secret(secret_or_password):
        secret = secret_or_password
    else:
        secret = md5_secret(user, secret_or_password)
    return b"md5" + hashlib.md5(secret[3:].encode("ascii") + bytes(salt)).hexdigest().encode()


def verify_md5_response(secret: str, salt: bytes, response: bytes) -> bool:
    """True when ``response`` answers ``salt`` for the stored ``secret`` (constant time).

    A ``secret`` that is not an MD5 secret never verifies.
    """
    if not is_md5_secret(secret) or len(salt) != SALT_LENGTH:
        return False
    expected = b"md5" + hashlib.md5(secret[3:].encode("ascii") + bytes(salt)).hexdigest().encode()
    return hmac.compare_digest(expected, bytes(response))


class Md5Server:
    """Server side of one MD5 exchange: send :attr:`salt`, then :meth:`verify` the reply."""

    __slots__ = ("_secret", "salt", "_done")

    def __init__(self, secret: str, salt: bytes | None = None) -> None:
        self._secret = secret
        self.salt = os.urandom(SALT_LENGTH) if salt is None else bytes(salt)
        if len(self.salt) != SALT_LENGTH:
            raise ValueError(f"an MD5 salt is {SALT_LENGTH} bytes")
        self._done = False

    def __repr__(self) -> str:
        return "Md5Server(<secret>)"

    def verify(self, response: bytes) -> None:
        """Check the client's PasswordMessage (NUL removed); raise AuthError if wrong."""
        if self._done:
            raise AuthError("MD5 authentication already finished", PROTOCOL_VIOLATION)
        self._done = True
        if not verify_md5_response(self._secret, self.salt, response):
            raise AuthError("password authentication failed: wrong MD5 password response")
