"""Tenant configuration rows (Supavisor's field names) and the config version they bump."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models, transaction
from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from pooler.config import MODE_SESSION, MODE_TRANSACTION
from tenants import crypto

EXTERNAL_ID_PATTERN = r"\A[A-Za-z0-9_-]{1,63}\Z"
EXTERNAL_ID_MESSAGE = (
    "must be 1-63 characters of A-Z, a-z, 0-9, '_' or '-' "
    "(no dots: the tenant is the part after the last dot of the user name)"
)
POSITIVE_MESSAGE = "must be a positive integer"
PORT_MESSAGE = "must be a port number between 1 and 65535"
DEFAULT_ALLOW_LIST = ("0.0.0.0/0", "::/0")
CONFIG_VERSION_PK = 1


def default_allow_list() -> list[str]:
    """Every IPv4 and IPv6 address (Supavisor's default)."""
    return list(DEFAULT_ALLOW_LIST)


def validate_allow_list(value: Any) -> None:
    """A list of CIDR strings, each accepted by ``ipaddress.ip_network`` (strict)."""
    if not isinstance(value, list):
        raise ValidationError("must be a list of CIDR strings")
    errors = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str):
            errors.append(ValidationError(f"entry {index}: must be a CIDR string, got {entry!r}"))
            continue
        try:
            ipaddress.ip_network(entry)
        except ValueError as exc:
            errors.append(ValidationError(f"entry {index}: {exc}"))
    if errors:
        raise ValidationError(errors)


def validate_parameter_status(value: Any) -> None:
    """A flat object of ParameterStatus names to string values (e.g. server_version)."""
    if not isinstance(value, dict):
        raise ValidationError("must be an object of parameter names to strings")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValidationError(f"{key!r}: values must be strings, got {item!r}")


def validate_ca_pem(value: Any) -> None:
    """PEM CA certificate(s) OpenSSL can load (for upstream_verify peer)."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=value)
    except (ssl.SSLError, ValueError, TypeError):
        raise ValidationError(
            "must be PEM CA certificate(s) (-----BEGIN CERTIFICATE----- ...)"
        ) from None


def _encode_secret(plaintext: str) -> str:
    """Stored form of a secret: AES-256-GCM under VAULT_ENC_KEY (see tenants.crypto)."""
    return crypto.encrypt(plaintext)


def _decode_secret(stored: str) -> str:
    """Inverse of :func:`_encode_secret`; raises crypto.VaultKeyError for a wrong key."""
    return crypto.decrypt(stored)


class SecretField(models.TextField):
    """A text column holding a secret; the only place where its stored form is decided.

    Model instances always carry the usable secret; encryption at rest changes only
    ``_encode_secret`` / ``_decode_secret``. Never filter on this field.
    """

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        return None if value is None else _decode_secret(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        return None if value is None else _encode_secret(value)


class Tenant(models.Model):
    """One upstream database reached as ``<user>.<external_id>``."""

    IP_VERSIONS = [("auto", "auto"), ("v4", "IPv4"), ("v6", "IPv6")]

    external_id = models.CharField(
        max_length=63,
        unique=True,
        error_messages={"unique": "a tenant with this external_id already exists"},
        validators=[RegexValidator(EXTERNAL_ID_PATTERN, EXTERNAL_ID_MESSAGE)],
    )
    db_host = models.CharField(max_length=255)
    db_port = models.PositiveIntegerField(
        default=5432,
        validators=[MinValueValidator(1, PORT_MESSAGE), MaxValueValidator(65535, PORT_MESSAGE)],
    )
    db_database = models.CharField(max_length=255)
    default_pool_size = models.PositiveIntegerField(
        default=15, validators=[MinValueValidator(1, POSITIVE_MESSAGE)]
    )
    default_max_clients = models.PositiveIntegerField(
        default=1000, validators=[MinValueValidator(1, POSITIVE_MESSAGE)]
    )
    require_user = models.BooleanField(default=True)
    auth_query = models.TextField(null=True, blank=True)
    enforce_ssl = models.BooleanField(default=False)
    sni_hostname = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        unique=True,
        error_messages={"unique": "is already used by another tenant"},
    )
    ip_version = models.CharField(
        max_length=4,
        choices=IP_VERSIONS,
        default="auto",
        error_messages={"invalid_choice": "must be one of auto, v4, v6"},
    )
    allow_list = models.JSONField(
        default=default_allow_list,
        validators=[validate_allow_list],
        error_messages={
            "blank": "must list at least one CIDR (0.0.0.0/0 and ::/0 allow everyone)",
            "null": "must list at least one CIDR (0.0.0.0/0 and ::/0 allow everyone)",
        },
    )
    client_idle_timeout = models.PositiveIntegerField(
        default=0,
        validators=[MinValueValidator(0, "must be 0 (off) or a number of seconds")],
        help_text="Seconds; 0 turns the timeout off.",
    )
    default_parameter_status = models.JSONField(
        default=dict, blank=True, validators=[validate_parameter_status]
    )
    session_state_policy = models.CharField(
        max_length=8,
        choices=[("reset", "reset"), ("warn", "warn"), ("error", "error")],
        default="reset",
        help_text="Transaction mode: what a statement that leaves session state (SET, LISTEN, "
        "advisory locks...) gets: reset the server afterwards, also warn, or refuse it.",
    )
    upstream_ssl = models.BooleanField(
        default=False, help_text="Log in to db_host over TLS (SSLRequest first)."
    )
    upstream_verify = models.CharField(
        max_length=4,
        choices=[("none", "none"), ("peer", "peer")],
        default="none",
        error_messages={"invalid_choice": "must be one of none, peer"},
        help_text="peer: check db_host's certificate against upstream_tls_ca (or the system "
        "CAs) and its host name, as libpq's verify-full; none: encrypt only.",
    )
    upstream_tls_ca = models.TextField(
        null=True,
        blank=True,
        validators=[validate_ca_pem],
        help_text="PEM CA certificate(s) for upstream_verify peer; empty: the system CAs.",
    )
    inserted_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["external_id"]

    def __str__(self) -> str:
        return self.external_id

    def clean(self) -> None:
        if not self.sni_hostname:
            self.sni_hostname = None  # NULLs never collide in the unique index; "" would
        if not self.auth_query:
            self.auth_query = None
        if not self.upstream_tls_ca:
            self.upstream_tls_ca = None
        if self.upstream_verify == "peer" and not self.upstream_ssl:
            raise ValidationError(
                {"upstream_verify": "peer needs upstream_ssl true (nothing to verify without TLS)"}
            )

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.sni_hostname:
            self.sni_hostname = None
        # One transaction for the row and the config-version bump done by post_save.
        with transaction.atomic(using=kwargs.get("using"), savepoint=False):
            super().save(*args, **kwargs)


class TenantUser(models.Model):
    """A user of a tenant: the alias clients log in as and the upstream role behind it."""

    MODES = [(MODE_TRANSACTION, "transaction"), (MODE_SESSION, "session")]

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="users")
    db_user_alias = models.CharField(
        max_length=63, blank=True, help_text="Name clients log in as; defaults to db_user."
    )
    db_user = models.CharField(max_length=63)
    db_password = SecretField()
    pool_size = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1, POSITIVE_MESSAGE)],
        help_text="Empty: the tenant's default_pool_size.",
    )
    mode_type = models.CharField(
        max_length=11,
        choices=MODES,
        default=MODE_TRANSACTION,
        error_messages={"invalid_choice": "must be one of transaction, session"},
    )
    max_clients = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1, POSITIVE_MESSAGE)],
        help_text="Empty: the tenant's default_max_clients.",
    )
    pool_checkout_timeout = models.PositiveIntegerField(
        default=60000,
        validators=[MinValueValidator(1, POSITIVE_MESSAGE)],
        help_text="Milliseconds a client waits for a server connection.",
    )
    is_manager = models.BooleanField(default=False)
    inserted_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tenants_user"
        verbose_name = "user"
        ordering = ["db_user_alias", "mode_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["db_user_alias", "tenant", "mode_type"],
                name="tenants_user_alias_tenant_mode_uniq",
                violation_error_message="a user with this alias and mode already exists",
            )
        ]

    def __str__(self) -> str:  # never the password
        return f"{self.db_user_alias or self.db_user} ({self.mode_type})"

    def clean(self) -> None:
        if not self.db_user_alias:
            self.db_user_alias = self.db_user

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.db_user_alias:
            self.db_user_alias = self.db_user
        with transaction.atomic(using=kwargs.get("using"), savepoint=False):
            super().save(*args, **kwargs)


class ConfigVersion(models.Model):
    """The single row (id=1) whose ``version`` grows on every tenant or user change."""

    version = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "config version"

    def __str__(self) -> str:
        return f"config version {self.version}"

    @classmethod
    def current(cls) -> int:
        """The version: one SELECT by primary key; the row is created if missing."""
        rows = cls.objects.filter(pk=CONFIG_VERSION_PK).values_list("version", flat=True)
        for version in rows:
            return int(version)
        row, _ = cls.objects.get_or_create(pk=CONFIG_VERSION_PK)
        return int(row.version)

    @classmethod
    def bump(cls, using: str | None = None) -> None:
        """Atomically add one, in the caller's transaction."""
        manager = cls.objects.db_manager(using)
        query = manager.filter(pk=CONFIG_VERSION_PK)
        if query.update(version=F("version") + 1, updated_at=timezone.now()):
            return
        manager.get_or_create(pk=CONFIG_VERSION_PK)  # races resolved by get_or_create
        query.update(version=F("version") + 1, updated_at=timezone.now())


@receiver(post_save, sender=Tenant, dispatch_uid="tenants.bump.tenant_saved")
@receiver(post_delete, sender=Tenant, dispatch_uid="tenants.bump.tenant_deleted")
@receiver(post_save, sender=TenantUser, dispatch_uid="tenants.bump.user_saved")
@receiver(post_delete, sender=TenantUser, dispatch_uid="tenants.bump.user_deleted")
def _bump_config_version(sender: type[models.Model], **kwargs: Any) -> None:
    ConfigVersion.bump(using=kwargs.get("using"))
