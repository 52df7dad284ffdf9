"""The admin site: tenants with inline users whose password is masked and write-only, and
the read-only live pools page (numbers from the running node, or a clear note)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tenants.models import Tenant, TenantUser
from tenants.services import build_snapshot, upsert_tenant

pytestmark = [pytest.mark.api, pytest.mark.django_db]

PASSWORD = "admin-Pa55word-never-shown"


@pytest.fixture
def tenant() -> Tenant:
    created, _ = upsert_tenant(
        {
            "external_id": "t1",
            "db_host": "127.0.0.1",
            "db_database": "app",
            "users": [{"db_user": "app", "db_password": PASSWORD, "pool_size": 4}],
        }
    )
    return created


def test_change_page_masks_the_password(admin_client: Client, tenant: Tenant) -> None:
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert PASSWORD not in html and "gcm1:" not in html
    assert "\u2022" * 8 + " (encrypted)" in html
    assert 'type="password"' in html
    assert "live pool numbers of t1" in html


def test_list_search_and_filters(admin_client: Client, tenant: Tenant) -> None:
    upsert_tenant({"external_id": "other", "db_host": "h", "db_database": "d", "users": []})
    page = admin_client.get("/admin/tenants/tenant/?q=t1")
    assert page.status_code == 200
    assert b">t1<" in page.content and b">other<" not in page.content
    assert admin_client.get("/admin/tenants/tenant/?ip_version__exact=v6").status_code == 200


def test_saving_with_an_empty_password_keeps_it(admin_client: Client, tenant: Tenant) -> None:
    user = TenantUser.objects.get()
    form = {
        "external_id": "t1",
        "db_host": "db.internal",
        "db_port": "5432",
        "db_database": "app",
        "default_pool_size": "15",
        "default_max_clients": "1000",
        "require_user": "on",
        "ip_version": "auto",
        "allow_list": '["0.0.0.0/0"]',
        "client_idle_timeout": "0",
        "default_parameter_status": "{}",
        "session_state_policy": "reset",
        "upstream_verify": "none",
        "users-TOTAL_FORMS": "1",
        "users-INITIAL_FORMS": "1",
        "users-MIN_NUM_FORMS": "0",
        "users-MAX_NUM_FORMS": "1000",
        "users-0-id": str(user.pk),
        "users-0-tenant": str(tenant.pk),
        "users-0-db_user_alias": "app",
        "users-0-db_user": "app",
        "users-0-db_password": "",
        "users-0-mode_type": "transaction",
        "users-0-pool_size": "6",
        "users-0-pool_checkout_timeout": "60000",
    }
    response = admin_client.post(f"/admin/tenants/tenant/{tenant.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[-2000:]
    user.refresh_from_db()
    assert user.pool_size == 6 and user.db_password == PASSWORD
    assert Tenant.objects.get().db_host == "db.internal"


def test_live_pools_page_without_a_pooler_says_so(admin_client: Client, tenant: Tenant) -> None:
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/pools/")
    assert page.status_code == 200
    assert b"pooler is not running in this process" in page.content


def test_live_pools_page_shows_the_nodes_numbers(
    admin_client: Client, tenant: Tenant, node: Any
) -> None:
    config = build_snapshot().tenant("t1")
    assert config is not None
    node.apply_snapshot(build_snapshot())
    node.pool_for(config, config.users[0], "app", "transaction")
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/pools/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="live-pools"' in html
    for column in ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login", "pool_size"):
        assert f">{column}<" in html
    assert "<td>4</td>" in html  # the user's pool_size
    assert PASSWORD not in html


def test_live_pools_page_needs_a_staff_login(client: Client, tenant: Tenant) -> None:
    page = client.get(f"/admin/tenants/tenant/{tenant.pk}/pools/")
    assert page.status_code == 302
    assert "/admin/login/" in page["Location"]
