"""build_snapshot, tenant_to_document and the single-tenant service calls the API will use."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pooler.config import ConfigSnapshot, TenantConfig, UserConfig
from tenants.models import Tenant, TenantUser
from tenants.services import (
    TenantConfigError,
    apply_tenants,
    build_snapshot,
    config_version,
    delete_tenant,
    tenant_to_document,
    upsert_tenant,
)

pytestmark = [pytest.mark.api, pytest.mark.django_db]

PASSWORD = "snap-Pa55word"


def tenant_doc(external_id: str, *users: dict[str, Any], **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "external_id": external_id,
        "db_host": "db.internal",
        "db_database": "app",
    }
    doc.update(fields)
    doc["users"] = list(users)
    return doc


def user_doc(db_user: str, **fields: Any) -> dict[str, Any]:
    return {"db_user": db_user, "db_password": PASSWORD, **fields}


FULL_TENANT = tenant_doc(
    "acme",
    user_doc("app"),
    user_doc("app_session", db_user_alias="app", mode_type="session", pool_size=3),
    user_doc("admin", is_manager=True, max_clients=10, pool_checkout_timeout=500),
    db_port=6432,
    default_pool_size=20,
    default_max_clients=200,
    require_user=False,
    auth_query="SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1",
    enforce_ssl=True,
    sni_hostname="acme.db.example.com",
    ip_version="v6",
    allow_list=["10.0.0.0/8", "2001:db8::/32"],
    client_idle_timeout=300,
    default_parameter_status={"server_version": "15.6"},
    session_state_policy="warn",
    upstream_ssl=True,
    upstream_verify="peer",
    upstream_tls_ca=None,
)


def test_snapshot_holds_the_pooler_dataclasses() -> None:
    apply_tenants({"tenants": [FULL_TENANT, tenant_doc("bare")]})
    snapshot = build_snapshot()
    assert isinstance(snapshot, ConfigSnapshot)
    assert sorted(snapshot.tenants) == ["acme", "bare"]
    acme = snapshot.tenant("acme")
    assert isinstance(acme, TenantConfig)
    assert acme == TenantConfig(
        external_id="acme",
        db_host="db.internal",
        db_port=6432,
        db_database="app",
        default_pool_size=20,
        default_max_clients=200,
        require_user=False,
        auth_query="SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1",
        enforce_ssl=True,
        sni_hostname="acme.db.example.com",
        ip_version="v6",
        allow_list=("10.0.0.0/8", "2001:db8::/32"),
        client_idle_timeout=300,
        default_parameter_status={"server_version": "15.6"},
        session_state_policy="warn",
        upstream_ssl=True,
        upstream_verify="peer",
        users=acme.users,
    )
    assert type(acme.allow_list) is tuple
    assert type(acme.default_parameter_status) is dict
    assert all(isinstance(user, UserConfig) for user in acme.users)


def test_bare_tenant_gets_the_model_defaults() -> None:
    apply_tenants({"tenants": [tenant_doc("bare")]})
    bare = build_snapshot().tenant("bare")
    assert bare is not None
    assert (bare.db_port, bare.default_pool_size, bare.default_max_clients) == (5432, 15, 1000)
    assert (bare.require_user, bare.enforce_ssl, bare.ip_version) == (True, False, "auto")
    assert (bare.sni_hostname, bare.auth_query, bare.client_idle_timeout) == (None, None, 0)
    assert bare.session_state_policy == "reset"
    assert bare.allow_list == ("0.0.0.0/0", "::/0")
    assert bare.users == ()


def test_find_user_by_alias_and_mode() -> None:
    apply_tenants({"tenants": [FULL_TENANT]})
    acme = build_snapshot().tenant("acme")
    assert acme is not None
    transaction_user = acme.find_user("app", "transaction")
    session_user = acme.find_user("app", "session")
    assert transaction_user == UserConfig(
        db_user_alias="app", db_user="app", db_password=PASSWORD, mode_type="transaction"
    )
    assert session_user is not None
    assert (session_user.db_user, session_user.pool_size) == ("app_session", 3)
    admin = acme.find_user("admin", "session")  # only a transaction row: it supplies credentials
    assert admin is not None
    assert (admin.is_manager, admin.max_clients, admin.pool_checkout_timeout) == (True, 10, 500)
    assert admin.pool_size is None
    assert acme.find_user("nobody", "transaction") is None


def test_snapshot_never_contains_deleted_tenants() -> None:
    apply_tenants({"tenants": [tenant_doc("keep"), tenant_doc("drop"), tenant_doc("orm")]})
    assert delete_tenant("drop") is True
    Tenant.objects.filter(external_id="orm").delete()
    snapshot = build_snapshot()
    assert list(snapshot.tenants) == ["keep"]
    assert snapshot.tenant("drop") is None


def test_snapshot_never_contains_removed_users() -> None:
    apply_tenants({"tenants": [tenant_doc("t1", user_doc("a"), user_doc("b"))]})
    apply_tenants({"tenants": [tenant_doc("t1", user_doc("a"))]})
    t1 = build_snapshot().tenant("t1")
    assert t1 is not None
    assert [u.db_user_alias for u in t1.users] == ["a"]


def test_snapshot_version_follows_config_version() -> None:
    first = build_snapshot()
    assert first.version == config_version()
    apply_tenants({"tenants": [tenant_doc("t1")]})
    second = build_snapshot()
    assert second.version == config_version() > first.version


def test_snapshot_is_immutable() -> None:
    apply_tenants({"tenants": [tenant_doc("t1", user_doc("a"))]})
    t1 = build_snapshot().tenant("t1")
    assert t1 is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        t1.db_port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t1.users[0].db_password = "x"  # type: ignore[misc]


def test_snapshot_query_count_does_not_grow_with_tenants() -> None:
    many = [tenant_doc(f"t{i}", user_doc("a"), user_doc("b")) for i in range(12)]
    apply_tenants({"tenants": many})
    with CaptureQueriesContext(connection) as queries:
        snapshot = build_snapshot()
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(snapshot.tenants) == 12
    assert len(selects) == 3, selects  # version, tenants, users


def test_user_password_is_not_in_the_repr_of_the_snapshot() -> None:
    apply_tenants({"tenants": [tenant_doc("t1", user_doc("a"))]})
    assert PASSWORD not in repr(build_snapshot())


# --- tenant_to_document -------------------------------------------------------------------


def all_keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in all_keys(v)}
    return set()


def test_document_has_no_password_anywhere() -> None:
    apply_tenants({"tenants": [FULL_TENANT]})
    doc = tenant_to_document(Tenant.objects.get(external_id="acme"))
    assert "db_password" not in all_keys(doc)
    assert PASSWORD not in json.dumps(doc)
    assert len(doc["users"]) == 3


def test_document_round_trips_once_passwords_are_supplied() -> None:
    apply_tenants({"tenants": [FULL_TENANT]})
    doc = tenant_to_document(Tenant.objects.prefetch_related("users").get(external_id="acme"))
    expected = {k: v for k, v in FULL_TENANT.items() if k != "users"}
    assert {k: v for k, v in doc.items() if k != "users"} == expected
    for user in doc["users"]:
        user["db_password"] = PASSWORD
    result = apply_tenants({"tenants": [json.loads(json.dumps(doc))]})
    assert result.unchanged == ["acme"]


# --- upsert_tenant / delete_tenant --------------------------------------------------------


def test_upsert_creates_then_updates() -> None:
    tenant, created = upsert_tenant(tenant_doc("t1", user_doc("a")))
    assert created is True
    version = config_version()
    same, created_again = upsert_tenant(tenant_doc("t1", user_doc("a"), db_port=7000))
    assert (same.pk, created_again) == (tenant.pk, False)
    assert Tenant.objects.get(pk=tenant.pk).db_port == 7000
    assert config_version() > version


def test_upsert_without_changes_does_not_bump_the_version() -> None:
    upsert_tenant(tenant_doc("t1", user_doc("a")))
    version = config_version()
    upsert_tenant(tenant_doc("t1", user_doc("a")))
    assert config_version() == version


def test_upsert_rejects_invalid_data_and_writes_nothing() -> None:
    with pytest.raises(TenantConfigError) as info:
        upsert_tenant(tenant_doc("t1", user_doc("a", pool_size=-1)))
    assert info.value.errors == [
        "tenant 't1': users[0].pool_size: must be a positive integer, got -1"
    ]
    assert not Tenant.objects.exists()
    assert not TenantUser.objects.exists()


def test_delete_unknown_tenant_returns_false_and_keeps_the_version() -> None:
    version = config_version()
    assert delete_tenant("nope") is False
    assert config_version() == version


def test_session_state_policy_is_validated() -> None:
    with pytest.raises(TenantConfigError) as info:
        apply_tenants({"tenants": [tenant_doc("bad", session_state_policy="sometimes")]})
    assert "session_state_policy" in str(info.value)
    assert not Tenant.objects.filter(external_id="bad").exists()
