"""PgBouncer's auth_file: ``"user" "secret"`` lines holding plain passwords, md5 or SCRAM secrets.

The format, as PgBouncer reads it: one user per line, two double-quoted fields (``""``
inside a field is one quote), the rest of the line ignored; blank lines and lines starting
with ``;`` are skipped (``#`` too, which PgBouncer would refuse). The secret is classified
as PgBouncer does: ``md5`` + 32 hex digits is an md5 secret, ``SCRAM-SHA-256$...`` a SCRAM
verifier, the empty string no password at all, anything else a plain password.

Greenvisor is stricter in two places: a field may not span lines or be followed by junk
before the second field, and a secret that starts like a SCRAM verifier but does not parse
is an error (PgBouncer would take it for a plain password). Errors name the file and line,
never the secret; no repr shows one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pooler.auth.md5 import is_md5_secret, md5_secret
from pooler.auth.scram import (
    DEFAULT_ITERATIONS,
    MECHANISM,
    InvalidSecret,
    ScramSecret,
    client_key_of,
    make_secret,
    salted_password,
    server_key_of,
)

PLAIN = "plain"
MD5 = "md5"
SCRAM = "scram"
EMPTY = "empty"  # "" : nobody can log in with a password as this user

MAX_USERNAME = 128  # bytes, PgBouncer's MAX_USERNAME (its NUL included)
MAX_PASSWORD = 65531  # bytes, PgBouncer's MAX_PASSWORD (its NUL included)
_BLANK = " \t\r\v\f"


class AuthFileError(ValueError):
    """The auth_file cannot be used: ``file:line: problem`` (never the secret)."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        super().__init__(f"{file}:{line}: {problem}" if line else f"{file}: {problem}")
        self.file = file
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class AuthEntry:
    """One user of the auth_file and what its secret allows."""

    user: str
    kind: str  # PLAIN | MD5 | SCRAM | EMPTY
    _secret: str = field(repr=False)
    source: str = field(default="", compare=False)  # "file:line"
    _cache: dict[Any, ScramSecret] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )

    def can_scram_client(self) -> bool:
        """A client can log in with SCRAM-SHA-256 (a plain password or a SCRAM verifier)."""
        return self.kind in (PLAIN, SCRAM)

    def can_md5_client(self) -> bool:
        """A client can log in with MD5 (a plain password or an md5 secret)."""
        return self.kind in (PLAIN, MD5)

    def scram_secret(self, iterations: int = DEFAULT_ITERATIONS) -> ScramSecret:
        """The SCRAM verifier: the stored one, or one made once from the plain password."""
        if self.kind == SCRAM:
            return self._parsed()
        if self.kind != PLAIN:
            raise ValueError(f"auth_file user {self.user!r} has no SCRAM secret ({self.kind})")
        secret = self._cache.get(iterations)
        if secret is None:
            secret = self._cache[iterations] = make_secret(self._secret, iterations=iterations)
        return secret

    def _parsed(self) -> ScramSecret:
        secret = self._cache.get(MECHANISM)
        if secret is None:
            secret = self._cache[MECHANISM] = ScramSecret.parse(self._secret)
        return secret

    def md5_secret(self, user: str | None = None) -> str:
        """``"md5" + md5(password + user)``: the stored one, or made from the plain password."""
        if self.kind == MD5:
            return self._secret
        if self.kind != PLAIN:
            raise ValueError(f"auth_file user {self.user!r} has no md5 secret ({self.kind})")
        return md5_secret(self.user if user is None else user, self._secret)

    def upstream_password(self) -> str | None:
        """What logs in upstream without the client's help: the plain password, or the md5
        secret (md5 upstream logins only); None for SCRAM verifiers (pass-through needed)."""
        return self._secret if self.kind in (PLAIN, MD5) else None

    def check_password(self, password: str) -> bool:
        """auth_type = plain: does this cleartext ``password`` match (constant time)?"""
        if self.kind == PLAIN:
            return hmac.compare_digest(_raw(password), _raw(self._secret))
        if self.kind == MD5:
            return hmac.compare_digest(md5_secret(self.user, password), self._secret)
        if self.kind == SCRAM:
            stored = self._parsed()
            salted = salted_password(password, stored.salt, stored.iterations)
            stored_key = hashlib.sha256(client_key_of(salted)).digest()
            return hmac.compare_digest(stored_key, stored.stored_key) and hmac.compare_digest(
                server_key_of(salted), stored.server_key
            )
        return False


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class AuthFile:
    """Every user of one auth_file; :meth:`get` is the only lookup."""

    path: str
    entries: Mapping[str, AuthEntry] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    hba: Any = None  # pooler.pgbouncer.hba.HbaFile when auth_type = hba

    def __repr__(self) -> str:
        return f"AuthFile({self.path!r}, {len(self.entries)} users)"

    def get(self, user: str) -> AuthEntry | None:
        return self.entries.get(user)

    def users(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, user: object) -> bool:
        return user in self.entries


def classify(secret: str) -> str:
    """PLAIN, MD5, SCRAM or EMPTY; InvalidSecret for a malformed SCRAM verifier."""
    if not secret:
        return EMPTY
    if is_md5_secret(secret):
        return MD5
    if secret.startswith(MECHANISM + "$"):
        ScramSecret.parse(secret)
        return SCRAM
    return PLAIN


def _quoted(text: str, start: int) -> tuple[str, int] | None:
    """The field opened by the quote at ``start`` (``""`` unescaped) and the index after it."""
    chars: list[str] = []
    pos = start + 1
    while pos < len(text):
        ch = text[pos]
        if ch == '"':
            if text[pos + 1 : pos + 2] != '"':
                return "".join(chars), pos + 1
            pos += 1
        chars.append(ch)
        pos += 1
    return None


def _parse_line(text: str, file: str, line: int) -> tuple[str, str] | None:
    """(user, secret) of one line, None for a blank or comment line."""
    text = text.lstrip(_BLANK)
    if not text or text[0] in ";#":
        return None
    if text[0] != '"':
        raise AuthFileError(file, line, 'expected "user" "password" (double quotes)')
    user = _quoted(text, 0)
    if user is None:
        raise AuthFileError(file, line, "the user name's closing double quote is missing")
    rest = text[user[1] :].lstrip(_BLANK)
    if not rest.startswith('"'):
        raise AuthFileError(file, line, f'user "{user[0]}": expected the password in quotes')
    secret = _quoted(rest, 0)
    if secret is None:
        raise AuthFileError(file, line, f'user "{user[0]}": unterminated password field')
    return user[0], secret[0]


def _entry(user: str, secret: str, file: str, line: int) -> AuthEntry:
    if not user or len(_raw(user)) >= MAX_USERNAME:
        raise AuthFileError(file, line, f"user name must be 1 to {MAX_USERNAME - 1} bytes")
    if len(_raw(secret)) >= MAX_PASSWORD:
        raise AuthFileError(file, line, f'user "{user}": password longer than PgBouncer allows')
    try:
        kind = classify(secret)
    except InvalidSecret:
        raise AuthFileError(
            file, line, f'user "{user}": malformed SCRAM secret (expected '
            "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)",
        ) from None  # fmt: skip
    return AuthEntry(user, kind, secret, f"{file}:{line}")


def parse_auth_file(text: str, file: str = "<auth_file>") -> AuthFile:
    """The users of an auth_file's text; AuthFileError naming the line if malformed."""
    entries: dict[str, AuthEntry] = {}
    warnings: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):
        parsed = _parse_line(raw, file, number)
        if parsed is None:
            continue
        entry = _entry(*parsed, file, number)
        if entry.user in entries:
            first = entries[entry.user].source
            warnings.append(f"{file}:{number}: user {entry.user!r} also on {first}; this wins")
        entries[entry.user] = entry
    return AuthFile(file, entries, tuple(warnings))


def load_auth_file(path: str | Path) -> AuthFile:
    """Read and parse ``path`` (UTF-8)."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthFileError(name, 0, f"cannot read the auth_file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AuthFileError(name, line, "not valid UTF-8") from None
    return parse_auth_file(text, name)
