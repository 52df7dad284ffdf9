"""Encrypt the db_password values stored in plaintext before encryption at rest existed.

Raw SQL on purpose: the model field would try to decrypt what it reads. Rows already in the
encrypted form are left alone, so the migration can be re-run safely. An empty table needs
no VAULT_ENC_KEY; a non-empty one stops with a message naming it.
"""

from django.db import migrations

from tenants import crypto

SELECT = "SELECT id, db_password FROM tenants_user"
UPDATE = "UPDATE tenants_user SET db_password = %s WHERE id = %s"


def _rewrite(schema_editor, convert, wanted_encrypted: bool) -> None:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute(SELECT)
        rows = cursor.fetchall()
    changes = [
        (convert(stored), pk)
        for pk, stored in rows
        if stored is not None and crypto.is_encrypted(stored) != wanted_encrypted
    ]
    if changes:
        with connection.cursor() as cursor:
            cursor.executemany(UPDATE, changes)


def encrypt_plaintext(apps, schema_editor) -> None:
    _rewrite(schema_editor, crypto.encrypt, wanted_encrypted=True)


def decrypt_to_plaintext(apps, schema_editor) -> None:
    _rewrite(schema_editor, crypto.decrypt, wanted_encrypted=False)


class Migration(migrations.Migration):

    dependencies = [
        ("tenants", "0002_session_state_policy"),
    ]

    operations = [
        migrations.RunPython(encrypt_plaintext, decrypt_to_plaintext, elidable=False),
    ]
