"""Request and response shapes of the REST API, for the OpenAPI schema and for rendering.

Validation of tenant documents is NOT done here: tenants.services is the single source of
truth (the same rules and messages as applytenants). These serializers describe the shapes
so drf-spectacular can publish them; field lists follow services.TENANT_FIELDS/USER_FIELDS.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rest_framework import serializers

from tenants.models import Tenant, TenantUser
from tenants.services import TENANT_FIELDS, USER_FIELDS, tenant_to_document

_TIMESTAMPS = ("inserted_at", "updated_at")


class _StringList(serializers.ListField):
    child = serializers.CharField()


class UserOutSerializer(serializers.ModelSerializer):
    """A user as the API returns it: never with db_password."""

    class Meta:
        model = TenantUser
        fields = [name for name, spec in USER_FIELDS.items() if not spec.secret]


class UserInSerializer(serializers.ModelSerializer):
    """A user in a PUT body (the applytenants shape); db_password is write-only."""

    class Meta:
        model = TenantUser
        fields = list(USER_FIELDS)
        extra_kwargs = {"db_password": {"write_only": True, "required": True}}


class UserPatchSerializer(UserInSerializer):
    """A user in a PATCH body: omitted fields (db_password too) keep their current values."""

    class Meta(UserInSerializer.Meta):
        extra_kwargs = {name: {"required": False} for name in USER_FIELDS}
        extra_kwargs["db_password"] = {"write_only": True, "required": False}


class TenantOutSerializer(serializers.ModelSerializer):
    """A tenant with its users, as GET returns it."""

    allow_list = _StringList()
    default_parameter_status = serializers.DictField(child=serializers.CharField())
    users = UserOutSerializer(many=True)

    class Meta:
        model = Tenant
        fields = [*TENANT_FIELDS, "users", *_TIMESTAMPS]
        read_only_fields = list(_TIMESTAMPS)


class TenantInSerializer(serializers.ModelSerializer):
    """The tenant object of a PUT body (an applytenants tenant); external_id may be omitted."""

    allow_list = _StringList(required=False)
    default_parameter_status = serializers.DictField(child=serializers.CharField(), required=False)
    users = UserInSerializer(many=True)

    class Meta:
        model = Tenant
        fields = [*TENANT_FIELDS, "users"]
        extra_kwargs = {"external_id": {"required": False}}


class TenantPatchSerializer(TenantInSerializer):
    """The tenant object of a PATCH body: only the fields to change.

    ``users``, when present, is the complete list of users afterwards; each entry is merged
    over the existing user with the same alias and mode, so it may omit db_password.
    """

    users = UserPatchSerializer(many=True, required=False)

    class Meta(TenantInSerializer.Meta):
        extra_kwargs = {name: {"required": False} for name in TENANT_FIELDS}


class TenantPutRequestSerializer(serializers.Serializer):
    tenant = TenantInSerializer()


class TenantPatchRequestSerializer(serializers.Serializer):
    tenant = TenantPatchSerializer()


class TenantResponseSerializer(serializers.Serializer):
    data = TenantOutSerializer()


class ClientRowSerializer(serializers.Serializer):
    """One client connection of the per-connection view."""

    address = serializers.CharField()
    port = serializers.IntegerField()
    tenant = serializers.CharField()
    user = serializers.CharField()
    database = serializers.CharField()
    mode = serializers.ChoiceField(choices=["transaction", "session"])
    state = serializers.ChoiceField(choices=["active", "waiting", "idle"])
    connected_since = serializers.DateTimeField()
    transactions = serializers.IntegerField()
    queries = serializers.IntegerField()
    bytes_in = serializers.IntegerField(help_text="bytes received from the client")
    bytes_out = serializers.IntegerField(help_text="bytes sent to the client")
    wait_seconds = serializers.FloatField(help_text="how long it has waited for a server now")


class ClientsResponseSerializer(serializers.Serializer):
    data = ClientRowSerializer(many=True)


class TerminateResultSerializer(serializers.Serializer):
    external_id = serializers.CharField()
    clients_closed = serializers.IntegerField()


class TerminateResponseSerializer(serializers.Serializer):
    data = TerminateResultSerializer()


class PoolActionResultSerializer(serializers.Serializer):
    external_id = serializers.CharField()
    action = serializers.ChoiceField(choices=["pause", "resume", "reconnect"])
    pools = serializers.IntegerField(help_text="pools of the tenant on this node")
    busy_servers = serializers.IntegerField(
        help_text="server connections still running a transaction (pause: wait for 0)"
    )


class PoolActionResponseSerializer(serializers.Serializer):
    data = PoolActionResultSerializer()


class ListenerSerializer(serializers.Serializer):
    name = serializers.CharField()
    host = serializers.CharField()
    port = serializers.IntegerField()
    serving = serializers.BooleanField()


class MetadataDbSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    vendor = serializers.CharField()
    error = serializers.CharField(required=False)


class PoolerStatusSerializer(serializers.Serializer):
    running = serializers.BooleanField()
    listeners = ListenerSerializer(many=True)
    config_version = serializers.IntegerField(allow_null=True)
    tenants = serializers.IntegerField(allow_null=True)
    pools = serializers.IntegerField(allow_null=True)
    clients = serializers.IntegerField(allow_null=True)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    metadata_db = MetadataDbSerializer()
    pooler = PoolerStatusSerializer()


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(allow_null=True, help_text="path of the field, e.g. users[0]")
    message = serializers.CharField()


class ValidationErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = FieldErrorSerializer(many=True)


def tenant_data(tenant: Tenant) -> dict[str, Any]:
    """The tenant as the API returns it: the applytenants object (no password) + timestamps."""
    doc = tenant_to_document(tenant)
    for name in _TIMESTAMPS:
        doc[name] = getattr(tenant, name)
    return doc


def client_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Client.describe() row with its timestamp as an aware datetime."""
    out = dict(row)
    out["connected_since"] = dt.datetime.fromtimestamp(row["connected_since"], tz=dt.UTC)
    return out
