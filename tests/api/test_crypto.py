"""db_password at rest: AES-256-GCM under VAULT_ENC_KEY, the key's accepted forms, clear
errors for a missing or wrong key, ciphertext only in the table, and the data migration."""

from __future__ import annotations

import base64

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from tenants import crypto
from tenants.models import Tenant, TenantUser
from tenants.services import build_snapshot
from tests.api.conftest import TEST_VAULT_KEY

pytestmark = [pytest.mark.api]

PASSWORD = "crypto-Pa55word-\u00e9\u00df\u2603"
KEY_BYTES = bytes(range(32))
OTHER_KEY = "another-vault-key-of-32-chars-xx"
MIGRATION = "0003_encrypt_passwords"


def stored_passwords() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT db_password FROM tenants_user ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


def make_user(password: str = PASSWORD) -> TenantUser:
    tenant = Tenant.objects.create(external_id="t1", db_host="127.0.0.1", db_database="app")
    return TenantUser.objects.create(tenant=tenant, db_user="app", db_password=password)


# --- the key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [KEY_BYTES.hex(), KEY_BYTES.hex().upper(), base64.b64encode(KEY_BYTES).decode()],
)
def test_hex_and_base64_forms_decode_to_the_same_32_bytes(value: str) -> None:
    assert crypto.parse_key(value) == KEY_BYTES


def test_a_32_character_key_is_used_as_it_is() -> None:
    assert crypto.parse_key(TEST_VAULT_KEY) == TEST_VAULT_KEY.encode()


@pytest.mark.parametrize("value", ["x" * 31, "x" * 33, "g" * 64, "short", "x" * 44])
def test_a_key_that_is_not_32_bytes_is_refused_by_name(value: str) -> None:
    with pytest.raises(crypto.VaultKeyError, match="VAULT_ENC_KEY must be exactly 32 bytes"):
        crypto.parse_key(value)


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_key_says_to_set_it(value: str | None) -> None:
    with pytest.raises(crypto.VaultKeyError, match="VAULT_ENC_KEY is not set"):
        crypto.parse_key(value)


def test_key_errors_are_configuration_errors() -> None:
    assert issubclass(crypto.VaultKeyError, ImproperlyConfigured)


# --- encrypt / decrypt -----------------------------------------------------------------


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    first, second = crypto.encrypt(PASSWORD), crypto.encrypt(PASSWORD)
    assert first != second
    assert first.startswith("gcm1:") and PASSWORD not in first
    assert crypto.decrypt(first) == crypto.decrypt(second) == PASSWORD


def test_a_wrong_key_cannot_decrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = crypto.encrypt(PASSWORD)
    monkeypatch.setenv("VAULT_ENC_KEY", OTHER_KEY)
    with pytest.raises(crypto.VaultKeyError) as info:
        crypto.decrypt(sealed)
    assert str(info.value).startswith(
        "VAULT_ENC_KEY does not decrypt the stored passwords: it is not the key they were "
        "written with"
    )
    assert PASSWORD not in str(info.value)


def test_tampered_ciphertext_is_refused() -> None:
    raw = bytearray(base64.b64decode(crypto.encrypt(PASSWORD)[5:]))
    raw[-1] ^= 1
    with pytest.raises(crypto.VaultKeyError):
        crypto.decrypt("gcm1:" + base64.b64encode(bytes(raw)).decode())


@pytest.mark.parametrize("stored", ["plain-password", "gcm1:", "gcm1:!!!", "gcm1:AAAA"])
def test_plaintext_or_garbage_is_refused_with_a_hint(stored: str) -> None:
    with pytest.raises(crypto.VaultKeyError, match="migrate|corrupt"):
        crypto.decrypt(stored)


# --- in the database -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_raw_select_shows_only_ciphertext() -> None:
    make_user()
    (stored,) = stored_passwords()
    assert stored.startswith("gcm1:")
    assert PASSWORD not in stored and "Pa55word" not in stored
    assert crypto.decrypt(stored) == PASSWORD
    assert TenantUser.objects.get().db_password == PASSWORD


@pytest.mark.django_db
def test_the_snapshot_carries_the_decrypted_password() -> None:
    make_user()
    tenant = build_snapshot().tenant("t1")
    assert tenant is not None and tenant.users[0].db_password == PASSWORD


@pytest.mark.django_db
def test_check_key_passes_with_the_right_key_and_names_the_wrong_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_user()
    assert crypto.check_key() == 1
    monkeypatch.setenv("VAULT_ENC_KEY", OTHER_KEY)
    with pytest.raises(crypto.VaultKeyError, match="not the key they were written with"):
        crypto.check_key()
    with pytest.raises(crypto.VaultKeyError):
        build_snapshot()
    monkeypatch.delenv("VAULT_ENC_KEY")
    with pytest.raises(crypto.VaultKeyError, match="VAULT_ENC_KEY is not set"):
        crypto.check_key()


@pytest.mark.django_db
def test_check_key_needs_a_key_even_with_no_users(monkeypatch: pytest.MonkeyPatch) -> None:
    assert crypto.check_key() == 0
    monkeypatch.setenv("VAULT_ENC_KEY", "x" * 10)
    with pytest.raises(crypto.VaultKeyError, match="exactly 32 bytes"):
        crypto.check_key()


@pytest.mark.django_db
def test_repr_and_str_show_no_secret() -> None:
    user = make_user()
    for text in (repr(user), str(user), repr(TenantUser.objects.all())):
        assert PASSWORD not in text
        assert "gcm1:" not in text


# --- the data migration ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_encrypts_plaintext_rows_and_reverses() -> None:
    tenant = Tenant.objects.create(external_id="t1", db_host="h", db_database="d")
    TenantUser.objects.create(tenant=tenant, db_user="already", db_password="kept")
    call_command("migrate", "tenants", "0002_session_state_policy", verbosity=0)
    try:
        assert stored_passwords() == ["kept"]  # the reverse decrypted it
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO tenants_user (tenant_id, db_user_alias, db_user, db_password, "
                "mode_type, pool_checkout_timeout, is_manager, inserted_at, updated_at) "
                "VALUES (%s, 'old', 'old', %s, 'session', 60000, false, %s, %s)",
                [tenant.pk, PASSWORD, "2024-01-01 00:00:00", "2024-01-01 00:00:00"],
            )
    finally:
        call_command("migrate", "tenants", verbosity=0)
    stored = stored_passwords()
    assert all(value.startswith("gcm1:") for value in stored)
    assert all("kept" not in value and PASSWORD not in value for value in stored)
    by_user = dict(TenantUser.objects.values_list("db_user", "db_password"))
    assert by_user == {"already": "kept", "old": PASSWORD}


@pytest.mark.django_db(transaction=True)
def test_migration_on_an_empty_table_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    call_command("migrate", "tenants", "0002_session_state_policy", verbosity=0)
    recorder = MigrationRecorder(connection)
    assert ("tenants", MIGRATION) not in recorder.applied_migrations()
    monkeypatch.delenv("VAULT_ENC_KEY")
    call_command("migrate", "tenants", verbosity=0)
    assert ("tenants", MIGRATION) in recorder.applied_migrations()
