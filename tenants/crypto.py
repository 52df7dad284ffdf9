"""Secrets at rest: AES-256-GCM under the VAULT_ENC_KEY environment variable.

Stored form: ``gcm1:`` + base64(12-byte random nonce + ciphertext + 16-byte tag), with the
column's purpose as associated data, so a value copied to another column does not decrypt.
VAULT_ENC_KEY must be exactly 32 bytes, given as one of:

- 32 characters used as they are (Supavisor's convention),
- 64 hex digits (``openssl rand -hex 32``),
- base64 of 32 bytes, 44 characters (``openssl rand -base64 32``).

Missing, malformed or wrong keys raise :class:`VaultKeyError` with a message naming
VAULT_ENC_KEY; nothing here ever logs or returns a plaintext secret in an error.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.exceptions import ImproperlyConfigured

ENV_VAR = "VAULT_ENC_KEY"
PREFIX = "gcm1:"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
#: Associated data: binds every ciphertext to the column it belongs in.
ASSOCIATED_DATA = b"greenvisor:tenants_user.db_password"

KEY_FORMS = (
    "32 characters used as they are (as Supavisor), 64 hex digits (`openssl rand -hex 32`) "
    "or base64 of 32 bytes (`openssl rand -base64 32`)"
)
WRONG_KEY_MESSAGE = (
    f"{ENV_VAR} does not decrypt the stored passwords: it is not the key they were "
    f"written with; start with the original {ENV_VAR}"
)


class VaultKeyError(ImproperlyConfigured):
    """VAULT_ENC_KEY is missing, malformed or not the key the stored secrets were written with."""


def parse_key(value: str | None) -> bytes:
    """The 32 key bytes of a VAULT_ENC_KEY value; raise :class:`VaultKeyError` otherwise."""
    if value is None or value == "":
        raise VaultKeyError(
            f"{ENV_VAR} is not set: passwords are stored encrypted (AES-256-GCM) and need a "
            f"32-byte key: {KEY_FORMS}. Set the same key on every node and keep it safe"
        )
    raw = value.encode("utf-8", errors="surrogatepass")
    if len(raw) == KEY_BYTES:
        return raw
    if len(value) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    if len(value) == 44:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) == KEY_BYTES:
            return decoded
    raise VaultKeyError(
        f"{ENV_VAR} must be exactly 32 bytes: {KEY_FORMS}; the value set is "
        f"{len(value)} characters and is none of these"
    )


@functools.lru_cache(maxsize=4)
def _cipher(value: str | None) -> AESGCM:
    return AESGCM(parse_key(value))


def current_cipher() -> AESGCM:
    """The cipher for the VAULT_ENC_KEY in the environment now."""
    return _cipher(os.environ.get(ENV_VAR))


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


def encrypt(plaintext: str) -> str:
    """The stored form of ``plaintext`` (a fresh random nonce every time)."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = current_cipher().encrypt(nonce, plaintext.encode("utf-8"), ASSOCIATED_DATA)
    return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def decrypt(stored: str) -> str:
    """Inverse of :func:`encrypt`; raise :class:`VaultKeyError` if it cannot be decrypted."""
    if not is_encrypted(stored):
        raise VaultKeyError(
            "a stored password is not encrypted: run `python manage.py migrate` (it encrypts "
            f"them under {ENV_VAR}) before starting Greenvisor"
        )
    try:
        blob = base64.b64decode(stored[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        blob = b""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise VaultKeyError("a stored password is corrupt: it is not gcm1 ciphertext")
    cipher = current_cipher()
    try:
        plain = cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ASSOCIATED_DATA)
    except InvalidTag:
        raise VaultKeyError(WRONG_KEY_MESSAGE) from None
    return plain.decode("utf-8")


def check_key() -> int:
    """Fail fast at start-up: the key is valid and decrypts every stored password.

    Returns how many stored passwords were checked. Call it after migrations have run.
    """
    from tenants.models import TenantUser  # the models import this module

    current_cipher()
    passwords = TenantUser.objects.values_list("db_password", flat=True)
    return sum(1 for _ in passwords.iterator())  # each row is decrypted as it is read
