"""Per-tenant TLS to the tenant database: upstream_ssl, upstream_verify, upstream_tls_ca."""

from django.db import migrations, models

import tenants.models


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0003_encrypt_passwords"),
    ]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="upstream_ssl",
            field=models.BooleanField(
                default=False, help_text="Log in to db_host over TLS (SSLRequest first)."
            ),
        ),
        migrations.AddField(
            model_name="tenant",
            name="upstream_verify",
            field=models.CharField(
                choices=[("none", "none"), ("peer", "peer")],
                default="none",
                error_messages={"invalid_choice": "must be one of none, peer"},
                help_text="peer: check db_host's certificate against upstream_tls_ca (or the "
                "system CAs) and its host name, as libpq's verify-full; none: encrypt only.",
                max_length=4,
            ),
        ),
        migrations.AddField(
            model_name="tenant",
            name="upstream_tls_ca",
            field=models.TextField(
                blank=True,
                help_text="PEM CA certificate(s) for upstream_verify peer; empty: the system CAs.",
                null=True,
                validators=[tenants.models.validate_ca_pem],
            ),
        ),
    ]
