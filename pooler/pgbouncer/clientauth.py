"""Client authentication against a PgBouncer auth_file, following ``auth_type``.

Theory of operation
-------------------
:func:`authenticate` runs one exchange on the login socket and returns on success, or
raises :class:`pooler.login.LoginFailed` (28P01, the same text whatever went wrong, as the
tenant logins do). What each ``auth_type`` asks for, as PgBouncer does:

* ``trust``: nothing; the user must still be in the auth_file.
* ``plain``: a cleartext password, checked against any kind of secret.
* ``md5``: an MD5 challenge for plain and md5 entries; SCRAM for users whose secret is a
  SCRAM verifier (PgBouncer switches to SCRAM there too).
* ``scram-sha-256``: SCRAM; md5 entries cannot log in.

Users missing from the auth_file (or with an empty secret) get the same challenge as
everyone else (a mock SCRAM verifier, stable per name) and then the same refusal, so the
exchange does not tell which names exist.

SCRAM pass-through: when the entry is a SCRAM verifier, the client's proof yields its
ClientKey (``ScramServer.client_key``); with the verifier's ServerKey that is everything a
:class:`pooler.auth.scram.ScramClient` needs to log in upstream to a Postgres that stores
the same verifier, never knowing the password (PgBouncer's src/scram.c does the same). The
keys are returned to the caller, which hands them to the pool's upstream target.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pooler.auth.md5 import verify_md5_response
from pooler.auth.scram import ScramSecret, ScramServer
from pooler.pgbouncer.authfile import EMPTY, MD5, PLAIN, SCRAM, AuthEntry
from pooler.protocol import builders, parsers
from pooler.protocol.errors import AuthError

if TYPE_CHECKING:
    from pooler.node import Node

ScramKeys = tuple[bytes, bytes]  # (ClientKey, ServerKey)


def authenticate(
    gsock: Any,
    node: Node,
    auth_type: str,
    name: str,
    entry: AuthEntry | None,
    iterations: int,
) -> ScramKeys | None:
    """Authenticate ``name``; the SCRAM keys for pass-through when the entry is a verifier."""
    from pooler.login import auth_failed

    if entry is not None and entry.kind == EMPTY:
        entry = None
    if auth_type == "trust":
        if entry is None and name not in _known(node):
            raise auth_failed(name)
        return None
    if auth_type == "plain":
        gsock.sendall(builders.authentication_cleartext_password())
        password = parsers.parse_password_message(_read_password(gsock))
        text = password.decode("utf-8", "surrogateescape")
        if entry is None or not entry.check_password(text):
            raise auth_failed(name)
        return None
    if auth_type == "md5" and (entry is None or entry.kind in (PLAIN, MD5)):
        _md5(gsock, name, entry)
        return None
    usable = entry if entry is not None and entry.kind in (PLAIN, SCRAM) else None
    return _scram(gsock, node, name, usable, iterations)


def _known(node: Node) -> set[str]:
    dropin = node.pgbouncer
    return set(dropin.authfile.users()) if dropin is not None else set()


def _read_password(gsock: Any) -> bytes:
    from pooler.login import _read_password_message

    return _read_password_message(gsock)


def _md5(gsock: Any, name: str, entry: AuthEntry | None) -> None:
    from pooler.login import auth_failed

    salt = os.urandom(4)
    gsock.sendall(builders.authentication_md5_password(salt))
    response = parsers.parse_password_message(_read_password(gsock))
    if entry is None or not verify_md5_response(entry.md5_secret(name), salt, response):
        raise auth_failed(name)


def _scram(
    gsock: Any, node: Node, name: str, entry: AuthEntry | None, iterations: int
) -> ScramKeys | None:
    from pooler.login import LoginFailed, _mock_secret, auth_failed

    secret: ScramSecret = (
        entry.scram_secret(iterations) if entry is not None else _mock_secret(node, name)
    )
    server = ScramServer(secret)
    gsock.sendall(builders.authentication_sasl(["SCRAM-SHA-256"]))
    try:
        mechanism, data = parsers.parse_sasl_initial_response(_read_password(gsock))
        if mechanism != "SCRAM-SHA-256":
            raise LoginFailed(
                "28000", f"unsupported SASL mechanism {mechanism!r}: use SCRAM-SHA-256"
            )
        gsock.sendall(builders.authentication_sasl_continue(server.client_first(data)))
        final = parsers.parse_sasl_response(_read_password(gsock))
        server_final = server.client_final(final)
    except AuthError:
        raise auth_failed(name) from None
    if entry is None:
        raise auth_failed(name)
    gsock.sendall(builders.authentication_sasl_final(server_final))
    if entry.kind == SCRAM and server.client_key is not None:
        return server.client_key, secret.server_key
    return None
